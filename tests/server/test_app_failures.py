"""Engine failures, in process: a fake engine fails on cue, the app answers in OpenAI's shape.

A real engine cannot be made to fail on demand, so these tests build the app around a stand-in
with the same surface (``generate``, ``process_prompt``, ``stats``, ...) and drive it with the
official client over httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from model_utils import build_tokenizer

from heron.engine.async_llm import EngineDeadError
from heron.engine.input_processor import ProcessedPrompt
from heron.engine.output_processor import RequestOutputKind
from heron.engine.stats_logger import EngineStats
from heron.outputs import CompletionOutput, RequestOutput
from heron_server.app import build_app


class FakeEngine:
    """Generates "ab" (a letter per DELTA output); ``fail`` makes the next request whose id
    starts with ``fail_prefix`` raise after its first letter (handlers prepare requests in
    threads, so concurrent requests reach the engine in no fixed order)."""

    model_name = "fake"
    max_model_len = 64

    def __init__(self) -> None:
        self.tokenizer = build_tokenizer()
        self.is_running = True
        self.fail: BaseException | None = None
        self.fail_prefix = ""
        self.aborted: list[str] = []

    def process_prompt(self, prompt: str | list[int]) -> ProcessedPrompt:
        ids = prompt if isinstance(prompt, list) else self.tokenizer(prompt)["input_ids"]
        return ProcessedPrompt(
            prompt=prompt if isinstance(prompt, str) else None, prompt_token_ids=list(ids)
        )

    def render_chat(self, messages: list[dict[str, Any]], **_kwargs: Any) -> ProcessedPrompt:
        return self.process_prompt(" ".join(m["content"] for m in messages))

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=0,
            num_waiting=0,
            kv_cache_usage=0.0,
            prefix_cache_queries=0,
            prefix_cache_hits=0,
            num_preemptions=0,
        )

    async def generate(
        self, prompt: ProcessedPrompt, params: Any, request_id: str, *, output_kind: Any
    ) -> AsyncIterator[RequestOutput]:
        fail = None
        if request_id.startswith(self.fail_prefix):
            fail, self.fail = self.fail, None
        finished = False
        try:
            for i, letter in enumerate("ab"):
                await asyncio.sleep(0)
                if fail is not None and i == 1:
                    raise fail
                last = i == 1
                finished = last
                delta = output_kind is RequestOutputKind.DELTA
                if not (delta or last):
                    continue
                text = letter if delta else "ab"[: i + 1]
                yield RequestOutput(
                    request_id=request_id,
                    prompt=prompt.prompt,
                    prompt_token_ids=prompt.prompt_token_ids,
                    prompt_logprobs=None,
                    outputs=[
                        CompletionOutput(
                            index=0,
                            text=text,
                            token_ids=[ord(c) for c in text],
                            cumulative_logprob=None,
                            logprobs=None,
                            finish_reason="length" if last else None,
                        )
                    ],
                    finished=last,
                )
        finally:
            if not finished:
                self.aborted.append(request_id)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(engine: FakeEngine) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=build_app(engine))  # type: ignore[arg-type]
    http = httpx.AsyncClient(transport=transport, base_url="http://test")
    return openai.AsyncOpenAI(
        base_url="http://test/v1", api_key="x", http_client=http, max_retries=0
    )


def test_an_engine_failure_mid_stream_is_an_error_event(
    engine: FakeEngine, client: openai.AsyncOpenAI
) -> None:
    async def run() -> tuple[list[str], str]:
        engine.fail = EngineDeadError("the accelerator fell off")
        texts = []
        with pytest.raises(openai.APIError, match="accelerator fell off"):
            stream = await client.completions.create(model="fake", prompt="x", stream=True)
            async for chunk in stream:
                texts.append(chunk.choices[0].text)
        # The next request is served normally.
        result = await client.completions.create(model="fake", prompt="x")
        return texts, result.choices[0].text

    texts, after = asyncio.run(run())
    assert texts == ["a"]
    assert after == "ab"
    assert len(engine.aborted) == 1


def test_an_unexpected_error_is_a_500_and_isolated(
    engine: FakeEngine, client: openai.AsyncOpenAI
) -> None:
    async def run() -> list[Any]:
        engine.fail = RuntimeError("kernel bug")
        engine.fail_prefix = "chatcmpl"
        failing = client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "x"}]
        )
        healthy = client.completions.create(model="fake", prompt="y")
        return await asyncio.gather(failing, healthy, return_exceptions=True)

    failed, healthy = asyncio.run(run())
    assert isinstance(failed, openai.InternalServerError)
    assert "kernel bug" in failed.message
    assert healthy.choices[0].text == "ab"


def test_a_request_running_when_the_engine_dies_is_a_500_naming_the_failure(
    engine: FakeEngine, client: openai.AsyncOpenAI
) -> None:
    """Issue 17: in flight, the request failed (500, and the body says which rank died); only
    requests that arrive after the death get the 503 of an engine that has stopped."""

    async def run() -> openai.APIStatusError:
        engine.fail = EngineDeadError("worker rank 1 exited with status -9", in_flight=True)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.completions.create(model="fake", prompt="x")
        return caught.value

    error = asyncio.run(run())
    assert error.status_code == 500
    assert "worker rank 1 exited" in error.message


def test_a_dead_engine_turns_health_and_requests_into_503(engine: FakeEngine) -> None:
    engine.is_running = False

    async def run() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=build_app(engine))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            health = await http.get("/health")
            completion = await http.post("/v1/completions", json={"prompt": "x"})
            return health, completion

    health, completion = asyncio.run(run())
    assert health.status_code == 503 and completion.status_code == 503
    assert completion.json()["error"]["code"] == "engine_dead"
