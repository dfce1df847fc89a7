"""Tool-call parsers (issue 20) on each family's documented output format, whole and streamed.

Fixtures follow the formats as their model cards and chat templates document them: Hermes 2 Pro /
Qwen (``<tool_call>`` JSON blocks), Llama 3.1 JSON tool calling (``{"name", "parameters"}``,
optionally after ``<|python_tag|>``), Mistral v3 (``[TOOL_CALLS][...]``) and v11
(``[TOOL_CALLS]name[ARGS]{...}``). Streaming feeds the text in small pieces, as tokens arrive.
"""

from __future__ import annotations

import json

import pytest

from heron_server.tool_parsers import TOOL_PARSERS, ToolCallStream, get_tool_parser

WEATHER = {"city": "Paris", "unit": "celsius"}

CASES = {
    "hermes": [
        (
            "Let me check.\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
            "</tool_call>\n<tool_call>\n"
            '{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>',
            "Let me check.\n",
            [("get_weather", WEATHER), ("get_time", {"tz": "CET"})],
        ),
    ],
    "qwen3": [
        (
            "<tool_call>\n"
            '{"name": "get_current_temperature", "arguments": {"location": "San Francisco, CA, '
            'USA", "unit": "celsius"}}\n</tool_call>',
            None,
            [
                (
                    "get_current_temperature",
                    {"location": "San Francisco, CA, USA", "unit": "celsius"},
                )
            ],
        ),
    ],
    "llama3_json": [
        (
            '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
            None,
            [("get_weather", WEATHER)],
        ),
        (
            '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": '
            '"celsius"}}; {"name": "get_time", "parameters": {"tz": "CET"}}',
            None,
            [("get_weather", WEATHER), ("get_time", {"tz": "CET"})],
        ),
    ],
    "mistral": [
        (
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
            '"celsius"}}, {"name": "get_time", "arguments": {"tz": "CET"}}]',
            None,
            [("get_weather", WEATHER), ("get_time", {"tz": "CET"})],
        ),
        (
            'Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}'
            '[TOOL_CALLS]get_time[ARGS]{"tz": "CET"}',
            "Sure.",
            [("get_weather", WEATHER), ("get_time", {"tz": "CET"})],
        ),
    ],
}
PLAIN = "The weather in Paris is mild; no tool needed {really}."
BROKEN = {
    "hermes": 'Hi <tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>',
    "qwen3": '<tool_call>\n{"arguments": {}}\n</tool_call>',
    "llama3_json": '{"name": "get_weather", "parameters": {"city": "Par',
    "mistral": "[TOOL_CALLS] [not json]",
}


def _cases():
    for name, cases in CASES.items():
        for i, case in enumerate(cases):
            yield pytest.param(name, *case, id=f"{name}-{i}")


def _pieces(text: str) -> list[str]:
    """Token-like pieces of 1 to 4 characters."""
    sizes = [1, 3, 2, 4]
    out, i, k = [], 0, 0
    while i < len(text):
        out.append(text[i : i + sizes[k % 4]])
        i += sizes[k % 4]
        k += 1
    return out


def _stream(name: str, text: str) -> tuple[str, list, list[str]]:
    stream = ToolCallStream(get_tool_parser(name))
    so_far, deltas = "", []
    for piece in _pieces(text):
        so_far += piece
        deltas.append(stream.feed(so_far))
    rest, calls = stream.finish(so_far)
    deltas.append(rest)
    return "".join(deltas), calls, deltas


def test_every_vllm_parser_name_is_registered() -> None:
    assert set(TOOL_PARSERS) >= {"hermes", "llama3_json", "mistral", "qwen3"}
    with pytest.raises(ValueError, match="unknown tool call parser 'nope'"):
        get_tool_parser("nope")


@pytest.mark.parametrize(("name", "text", "content", "expected"), _cases())
def test_whole_and_streamed_answers_give_the_same_calls(name, text, content, expected) -> None:
    result = get_tool_parser(name).extract(text)
    assert result.content == content
    assert [(c.name, json.loads(c.arguments)) for c in result.calls] == expected
    assert len({c.id for c in result.calls}) == len(expected)
    streamed, calls, deltas = _stream(name, text)
    assert streamed == (content or "")
    assert [(c.name, json.loads(c.arguments)) for c in calls] == expected
    # No piece of a tool-call marker ever leaks into the streamed content.
    for marker in ("<tool", "[TOOL", "<|python", '{"name"'):
        assert not any(marker in d for d in deltas)


@pytest.mark.parametrize("name", sorted(CASES))
def test_plain_and_malformed_answers_are_content(name: str) -> None:
    for text in (PLAIN, BROKEN[name]):
        result = get_tool_parser(name).extract(text)
        assert result.content == text and result.calls == []
        streamed, calls, _ = _stream(name, text)
        assert streamed == text and calls == []


def test_plain_text_streams_before_the_answer_ends() -> None:
    """Content is not held back until the end: only a possible marker prefix waits."""
    stream = ToolCallStream(get_tool_parser("hermes"))
    assert stream.feed("Hello wor") == "Hello wor"
    assert stream.feed("Hello world <tool") == "ld "
    assert stream.feed("Hello world <tool_c") == ""
    assert stream.feed("Hello world <tool_cx") == "<tool_cx"
