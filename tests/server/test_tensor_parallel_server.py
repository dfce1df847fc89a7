"""``heron serve --tensor-parallel-size 2``: answers like one process, and a killed worker rank
ends every stream with an error and the server with a non-zero status, leaving no process."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from server_utils import SERVED_NAME, TINY_ARGS, RemoteServer, child_pids, start_server

pytestmark = pytest.mark.slow


def worker_pids(parent: int) -> list[int]:
    return child_pids(parent, "heron.distributed.worker_process")


@pytest.fixture
def tp_server(tmp_path: Path, tiny_model: Path):
    remote = start_server(
        tmp_path,
        str(tiny_model),
        *TINY_ARGS,
        "--served-model-name",
        SERVED_NAME,
        "--tensor-parallel-size",
        "2",
        env={"HERON_CPU_KVCACHE_SPACE": "0.1"},
    )
    yield remote
    remote.stop(signal.SIGKILL)


def test_two_ranks_answer_like_one(tp_server: RemoteServer, server: RemoteServer) -> None:
    assert "tensor parallel 2 x pipeline parallel 1" in tp_server.log()
    assert len(worker_pids(tp_server.proc.pid)) == 1
    messages = [{"role": "user", "content": "Tell me about herons."}]
    kwargs = {"messages": messages, "max_tokens": 12, "temperature": 0}
    one = server.client().chat.completions.create(model=SERVED_NAME, **kwargs)
    two = tp_server.client().chat.completions.create(model=SERVED_NAME, **kwargs)
    assert two.choices[0].message.content == one.choices[0].message.content
    stream = tp_server.client().chat.completions.create(model=SERVED_NAME, stream=True, **kwargs)
    joined = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert joined == one.choices[0].message.content


def test_killed_worker_ends_every_stream_and_the_server(tp_server: RemoteServer) -> None:
    (worker,) = worker_pids(tp_server.proc.pid)
    client = tp_server.async_client()
    started = asyncio.Event()

    async def stream(i: int) -> str:
        try:
            response = await client.completions.create(
                model=SERVED_NAME,
                prompt=f"stream {i}",
                max_tokens=400,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            async for _chunk in response:
                started.set()
            return "finished"  # a stream that ends without an error would be a silent cut
        except Exception as exc:
            return f"error: {exc}"

    async def whole(i: int) -> httpx.Response:
        """A non-streaming request (no retries, unlike the openai client's)."""
        async with httpx.AsyncClient(base_url=tp_server.url, timeout=60) as http:
            return await http.post(
                "/v1/completions",
                json={
                    "model": SERVED_NAME,
                    "prompt": f"whole {i}",
                    "max_tokens": 400,
                    "ignore_eos": True,
                },
            )

    async def main() -> tuple[list[str], list[httpx.Response]]:
        tasks = [asyncio.create_task(stream(i)) for i in range(16)]
        wholes = [asyncio.create_task(whole(i)) for i in range(2)]
        await asyncio.wait_for(started.wait(), 60)
        os.kill(worker, signal.SIGKILL)
        streams = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return streams, await asyncio.wait_for(asyncio.gather(*wholes), 30)

    killed = time.monotonic()
    outcomes, responses = asyncio.run(main())
    assert all(o.startswith("error") for o in outcomes), outcomes
    assert any("rank 1" in o for o in outcomes), outcomes
    # In flight when the rank died: a 500 whose OpenAI error body names the rank.
    for response in responses:
        assert response.status_code == 500, response.text
        assert "rank 1" in response.json()["error"]["message"]
    status = tp_server.proc.wait(timeout=10)
    assert time.monotonic() - killed < 40
    assert status != 0
    assert "worker rank 1 exited" in tp_server.log()
    assert not worker_pids(tp_server.proc.pid)
