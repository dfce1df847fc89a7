"""A short request sent while a long prompt prefills is answered before that prefill ends.

Through the whole engine (AsyncLLM, the server's engine), so the scheduler's reserve for waiting
requests and for the decodes behind a long chunk is proven where users feel it.
"""

from __future__ import annotations

import asyncio

import pytest
from model_utils import KERNEL_FRIENDLY, make_tiny_model_dir

from heron import AsyncLLM, SamplingParams


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_model_dir(
        tmp_path_factory.mktemp("hol"),
        "llama",
        **{**KERNEL_FRIENDLY, "max_position_embeddings": 2048},
    )


def test_short_request_finishes_during_a_long_prefill(model_dir) -> None:
    engine = AsyncLLM(
        model=str(model_dir),
        dtype="float32",
        block_size=16,
        max_model_len=2048,
        max_num_batched_tokens=64,  # the long prompt needs ~24 steps
        enable_prefix_caching=False,
    )
    events: list[str] = []

    async def long_request() -> None:
        prompt = {"prompt_token_ids": [(7 * i) % 200 + 3 for i in range(1500)]}
        async for _ in engine.generate(
            prompt, SamplingParams(max_tokens=1, ignore_eos=True), request_id="long"
        ):
            events.append("long: first token")

    async def short_request() -> None:
        for _ in range(500):  # until the long prompt is in prefill
            if engine.stats().num_running == 1:
                break
            await asyncio.sleep(0.005)
        async for out in engine.generate(
            "hi", SamplingParams(max_tokens=3, ignore_eos=True), request_id="short"
        ):
            if out.finished:
                events.append("short: finished")

    async def main() -> None:
        await asyncio.gather(long_request(), short_request())

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()
    assert events == ["short: finished", "long: first token"]
