"""Starting a request's many generations yields to the event loop between batches, so one
request of thousands of prompts never holds other clients (issue 23, item 1: request fan-out)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from types import SimpleNamespace

import pytest

from heron_server.streaming import START_BATCH, Generations


async def _one_output(index: int, refuse: int | None) -> AsyncGenerator[SimpleNamespace, None]:
    if index == refuse:
        raise ValueError(f"prompt {index} refused")
    yield SimpleNamespace(text=f"output {index}", finished=True)


def _run(count: int, refuse: int | None = None) -> tuple[int, list[str]]:
    async def main() -> tuple[int, list[str]]:
        turns = 0
        stop = False

        async def ticker() -> None:
            nonlocal turns
            while not stop:
                turns += 1
                await asyncio.sleep(0)

        tick = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        generations = Generations([_one_output(i, refuse) for i in range(count)])
        before = turns
        try:
            await generations.start()
            started = turns - before
            outputs = [out.text async for _index, out in generations]
        finally:
            stop = True
            await tick
        return started, outputs

    return asyncio.run(main())


def test_other_tasks_run_between_batches() -> None:
    count = START_BATCH * 8
    turns, outputs = _run(count)
    assert turns >= count // START_BATCH - 1  # the ticker ran between the batches
    assert sorted(outputs) == sorted(f"output {i}" for i in range(count))


def test_a_refused_prompt_in_a_later_batch_raises_and_closes_the_rest() -> None:
    with pytest.raises(ValueError, match="prompt 70 refused"):
        _run(START_BATCH * 4, refuse=70)
