"""Errors: each bad request gets its 4xx in OpenAI's shape, and the server keeps serving."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest
from server_utils import API_KEYS, SERVED_NAME, RemoteServer

MODEL = SERVED_NAME
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "hi"}]

# (path, JSON body or raw bytes, expected status, the field the error should name or None)
BAD_REQUESTS: list[tuple[str, Any, int, str | None]] = [
    (COMPLETIONS, b'{"model": "tiny", "prompt": "x",', 400, None),  # truncated JSON
    (COMPLETIONS, b"not json at all", 400, None),
    (COMPLETIONS, {"model": MODEL}, 400, "prompt"),  # missing field
    (COMPLETIONS, {"model": MODEL, "prompt": 5}, 400, "prompt"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "temperature": -1}, 400, "temperature"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "top_p": 1.5}, 400, "top_p"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "n": 0}, 400, "n"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "n": 100000}, 400, "n"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "logprobs": 50}, 400, "logprobs"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "presence_penalty": 9}, 400, "presence_penalty"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "logit_bias": {"a": 1}}, 400, "logit_bias"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "logit_bias": {"999999": 1}}, 400, "logit_bias"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": 10**12}, 400, "max_tokens"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "stop": [""]}, 400, "stop"),
    (COMPLETIONS, {"model": MODEL, "prompt": ""}, 400, "prompt"),
    (COMPLETIONS, {"model": MODEL, "prompt": []}, 400, "prompt"),
    (COMPLETIONS, {"model": MODEL, "prompt": [1, 10**9]}, 400, "prompt"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x" * 600}, 400, "prompt"),  # > max_model_len
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "stream_options": {}}, 400, "stream_options"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "suffix": "y"}, 400, "suffix"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "use_beam_search": True}, 400, "use_beam_search"),
    (COMPLETIONS, {"model": "no-such-model", "prompt": "x"}, 404, "model"),
    (CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages"),
    (CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
    (
        CHAT,
        {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages.0.role",
    ),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "x" * 600}]}, 400, "messages"),
    (
        CHAT,
        {"model": MODEL, "messages": USER, "max_completion_tokens": 10**6},
        400,
        "max_completion_tokens",
    ),
    (CHAT, {"model": MODEL, "messages": USER, "top_logprobs": 2}, 400, "top_logprobs"),
    (
        CHAT,
        {"model": MODEL, "messages": USER, "logprobs": True, "top_logprobs": 99},
        400,
        "top_logprobs",
    ),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": USER,
            "tools": [{"type": "function", "function": {"description": "no name"}}],
        },
        400,
        "tools[0].function",
    ),
    (CHAT, {"model": MODEL, "messages": USER, "tool_choice": "required"}, 400, "tool_choice"),
    (
        CHAT,
        {"model": MODEL, "messages": USER, "response_format": {"type": "json_schema"}},
        400,
        "response_format.json_schema",
    ),
    (
        CHAT,
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                }
            ],
        },
        400,
        "messages[0].content",
    ),
    (
        CHAT,
        {"model": MODEL, "messages": [{"role": "function", "content": "x"}]},
        400,
        "messages[0]",
    ),
    (CHAT, {"model": "no-such-model", "messages": USER}, 404, "model"),
    ("/tokenize", {"model": MODEL}, 400, "prompt"),
    ("/detokenize", {"tokens": [-1]}, 400, "tokens"),
]


def check_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    return error


def greedy(client: openai.OpenAI) -> str:
    result = client.completions.create(
        model=MODEL,
        prompt="Still alive",
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    return result.choices[0].text


async def _send_all(server: RemoteServer) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60) as http:
        return await asyncio.gather(
            *[
                http.post(path, content=body)
                if isinstance(body, bytes)
                else http.post(path, json=body)
                for path, body, _, _ in BAD_REQUESTS
            ]
        )


def test_a_burst_of_bad_requests_gets_4xx_and_the_server_keeps_serving(
    server: RemoteServer, client: openai.OpenAI
) -> None:
    before = greedy(client)
    # The bad requests arrive together, while a good streaming request is running.
    args = {
        "model": MODEL,
        "prompt": "Concurrent",
        "max_tokens": 200,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    stream = iter(client.completions.create(**args, stream=True))
    chunks = [next(stream)]
    responses = asyncio.run(_send_all(server))
    for (_path, _body, status, param), response in zip(BAD_REQUESTS, responses):
        check_error(response, status, param)
    chunks.extend(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == client.completions.create(**args).choices[0].text
    assert greedy(client) == before
    with server.http() as http:
        assert http.get("/health").status_code == 200


def test_prompt_too_long_names_both_numbers(server: RemoteServer) -> None:
    with server.http() as http:
        response = http.post(COMPLETIONS, json={"model": MODEL, "prompt": "y" * 700})
    error = check_error(response, 400, "prompt")
    assert "700" in error["message"] and "512" in error["message"]
    assert error["code"] == "context_length_exceeded"
    with server.http() as http:
        response = http.post(COMPLETIONS, json={"model": MODEL, "prompt": "y", "max_tokens": 600})
    error = check_error(response, 400, "max_tokens")
    assert "512" in error["message"] and "600" in error["message"]


def test_openai_client_raises_the_right_exceptions(
    server: RemoteServer, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="x", temperature=-3)
    assert bad.value.param == "temperature" and "temperature" in bad.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=USER)
    with pytest.raises(openai.BadRequestError, match=r"needs json_schema\.schema"):
        client.chat.completions.create(
            model=MODEL, messages=USER, response_format={"type": "json_schema", "json_schema": {}}
        )


def test_api_keys(server: RemoteServer) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    error = check_error(httpx.post(f"{server.url}{COMPLETIONS}", json=body), 401, None)
    assert error["code"] == "invalid_api_key"
    wrong = {"Authorization": "Bearer nope"}
    check_error(httpx.post(f"{server.url}{COMPLETIONS}", json=body, headers=wrong), 401, None)
    check_error(httpx.get(f"{server.url}/v1/models"), 401, None)
    for key in API_KEYS:
        ok = httpx.post(
            f"{server.url}{COMPLETIONS}", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        assert ok.status_code == 200, ok.text
    bad_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="bad", max_retries=0)
    with bad_client, pytest.raises(openai.AuthenticationError):
        bad_client.models.list()


def test_oversized_body_gets_413(server: RemoteServer) -> None:
    body = {"model": MODEL, "prompt": "z" * 300_000}
    with server.http() as http:
        check_error(http.post(COMPLETIONS, json=body), 413, None)

        def chunked():  # no Content-Length: the limit applies to the bytes received
            yield b'{"model": "tiny", "prompt": "'
            for _ in range(30):
                yield b"z" * 10_000
            yield b'"}'

        response = http.post(
            COMPLETIONS, content=chunked(), headers={"content-type": "application/json"}
        )
        check_error(response, 413, None)
        assert http.get("/health").status_code == 200


def test_unknown_fields_are_ignored(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=MODEL, prompt="x", max_tokens=2, extra_body={"some_future_field": {"a": 1}}
    )
    assert result.choices[0].text is not None
