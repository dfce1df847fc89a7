"""``heron serve --data-parallel-size 2``: two engine replicas answer like one engine, their load
logs name them, and a killed replica ends every stream with an error naming it and the server
with a non-zero status, leaving no process behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from server_utils import SERVED_NAME, TINY_ARGS, RemoteServer, child_pids, start_server

pytestmark = pytest.mark.slow


def replica_pids(parent: int) -> list[int]:
    return child_pids(parent, "heron.engine.replica_process")


@pytest.fixture
def dp_server(tmp_path: Path, tiny_model: Path):
    remote = start_server(
        tmp_path,
        str(tiny_model),
        *TINY_ARGS,
        "--served-model-name",
        SERVED_NAME,
        "-dp",
        "2",
        env={"HERON_CPU_KVCACHE_SPACE": "0.1"},
    )
    yield remote
    remote.stop(signal.SIGKILL)


def test_two_replicas_answer_like_one(dp_server: RemoteServer, server: RemoteServer) -> None:
    assert "Data parallelism: 2 engine replicas" in dp_server.log()
    assert len(replica_pids(dp_server.proc.pid)) == 2
    kwargs = {"prompt": "Herons wade", "max_tokens": 12, "temperature": 0}
    one = server.client().completions.create(model=SERVED_NAME, **kwargs)
    client = dp_server.async_client()

    async def many() -> list[str]:
        answers = await asyncio.gather(
            *(client.completions.create(model=SERVED_NAME, **kwargs) for _ in range(6))
        )
        return [a.choices[0].text for a in answers]

    assert asyncio.run(many()) == [one.choices[0].text] * 6
    assert dp_server.metric("heron:generation_tokens_total") == 6 * 12
    log = dp_server.log()
    assert "INFO (dp 0)" in log and "INFO (dp 1)" in log  # each replica's lines say which
    bad = dp_server.http().post(
        "/v1/completions", json={"model": SERVED_NAME, "prompt": "x" * 5000, "max_tokens": 1}
    )
    assert bad.status_code == 400 and "maximum context length" in bad.text


def test_killed_replica_ends_every_stream_and_the_server(dp_server: RemoteServer) -> None:
    _, victim = replica_pids(dp_server.proc.pid)
    client = dp_server.async_client()
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
            return "finished"
        except Exception as exc:
            return f"error: {exc}"

    async def main() -> list[str]:
        tasks = [asyncio.create_task(stream(i)) for i in range(8)]
        await asyncio.wait_for(started.wait(), 60)
        os.kill(victim, signal.SIGKILL)
        return await asyncio.wait_for(asyncio.gather(*tasks), 30)

    killed = time.monotonic()
    outcomes = asyncio.run(main())
    assert all(o.startswith("error") for o in outcomes), outcomes
    status = dp_server.proc.wait(timeout=20)
    assert time.monotonic() - killed < 40
    assert status != 0
    assert "data-parallel replica 1 failed" in dp_server.log()
    assert not replica_pids(dp_server.proc.pid)
