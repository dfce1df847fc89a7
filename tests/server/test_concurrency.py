"""Many streaming clients at once, and clients that leave: their requests abort and free KV."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
from server_utils import SERVED_NAME, RemoteServer

MODEL = SERVED_NAME
ABORTED = 'heron:request_success_total{finished_reason="abort"'


def wait_until_idle(server: RemoteServer, timeout: float = 30.0) -> dict[str, float]:
    """Metrics once no request runs or waits and no KV block is referenced."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = server.metrics()
        busy = sum(
            v
            for k, v in metrics.items()
            if k.startswith(
                (
                    "heron:num_requests_running",
                    "heron:num_requests_waiting",
                    "heron:kv_cache_usage_perc",
                )
            )
        )
        if busy == 0 or time.monotonic() > deadline:
            return metrics
        time.sleep(0.1)


def aborted(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(ABORTED))


async def _stream_one(client: openai.AsyncOpenAI, i: int, max_tokens: int) -> dict:
    first_token_at = None
    text = ""
    usage = None
    finish = None
    stream = await client.completions.create(
        model=MODEL,
        prompt=f"Client number {i} says",
        max_tokens=max_tokens,
        temperature=0.8,
        seed=i,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if first_token_at is None and choice.text:
                first_token_at = time.monotonic()
            text += choice.text
            finish = choice.finish_reason or finish
    return {
        "first": first_token_at,
        "done": time.monotonic(),
        "usage": usage,
        "finish": finish,
        "text": text,
    }


def test_64_concurrent_streams_progress_together(server: RemoteServer) -> None:
    before = server.metric("heron:generation_tokens_total")
    max_tokens = 32

    async def run() -> list[dict]:
        async with server.async_client(timeout=120) as client:
            return await asyncio.gather(*[_stream_one(client, i, max_tokens) for i in range(64)])

    results = asyncio.run(run())
    with server.http() as http:
        for i, r in enumerate(results):
            prompt_tokens = http.post("/tokenize", json={"prompt": f"Client number {i} says"})
            assert r["usage"].prompt_tokens == prompt_tokens.json()["count"]
            assert r["usage"].completion_tokens == max_tokens
            assert r["finish"] == "length"
    # Continuous batching: clients are served together, not one after the other. (All of them
    # usually see a token before the first finishes; half keeps this robust on a loaded machine.)
    first_done = min(r["done"] for r in results)
    assert sum(1 for r in results if r["first"] and r["first"] < first_done) >= 32
    metrics = wait_until_idle(server)
    generated = sum(v for k, v in metrics.items() if k.startswith("heron:generation_tokens_total"))
    assert generated - before == 64 * max_tokens


def test_a_disconnected_stream_is_aborted_and_frees_its_blocks(server: RemoteServer) -> None:
    before = aborted(wait_until_idle(server))
    body = {
        "model": MODEL,
        "prompt": "A long story:",
        "max_tokens": 480,
        "n": 4,
        "stream": True,
        "ignore_eos": True,
    }
    with server.http() as http, http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        events = []
        lines = response.iter_lines()  # kept: dropping the iterator closes the connection
        for line in lines:
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
            if len(events) >= 3:
                break
        assert server.metric("heron:kv_cache_usage_perc") > 0
    # Leaving the `with` closed the connection mid-stream.
    metrics = wait_until_idle(server)
    assert server.metric("heron:num_requests_running") == 0
    assert server.metric("heron:kv_cache_usage_perc") == 0
    assert aborted(metrics) - before == 4  # all four sequences, long before their 480 tokens


def test_a_client_that_times_out_aborts_its_request(server: RemoteServer) -> None:
    before = aborted(wait_until_idle(server))
    # 64 sequences x 500 tokens: long enough to outlast the timeout even as decode steps get faster.
    body = {"model": MODEL, "prompt": "Never read", "max_tokens": 500, "n": 64, "ignore_eos": True}
    try:
        with server.http() as http:
            http.post("/v1/completions", json=body, timeout=0.5)
    except httpx.TimeoutException:
        pass
    else:
        raise AssertionError("the request was expected to outlast the client's timeout")
    metrics = wait_until_idle(server)
    assert server.metric("heron:kv_cache_usage_perc") == 0
    assert aborted(metrics) - before == 64
