"""Tool calling on /v1/chat/completions (issue 20), with the official ``openai`` client.

A server of its own: a tiny random model, ``--enable-auto-tool-choice --tool-call-parser hermes
--reasoning-parser qwen3`` and a chat template that renders tools, assistant tool calls and tool results (written here in
Hermes' shape). ``required`` and named choices constrain decoding, so even random weights call
the tools with arguments that validate; streamed calls, joined, equal the whole answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest
from server_utils import TINY_ARGS, RemoteServer, start_server

TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools:"
    "{%- for tool in tools %} {{ tool.function.name }}{% endfor %}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n"
    "{%- if m.role == 'tool' %}<tool_response id={{ m.tool_call_id }}>{{ m.content }}"
    "</tool_response>"
    "{%- else %}{{ m.content or '' }}{% for c in m.tool_calls or [] %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n'
    "</tool_call>{% endfor %}{% endif %}<|im_end|>\n"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Oslo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CLOCK = {
    "type": "object",
    "properties": {"tz": {"enum": ["CET", "UTC"]}},
    "required": ["tz"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Now", "parameters": CLOCK},
    },
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}
MESSAGES = [{"role": "user", "content": "Weather in Oslo?"}]


@pytest.fixture(scope="module")
def tool_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> Iterator[RemoteServer]:
    folder = tmp_path_factory.mktemp("tools")
    template = folder / "template.jinja"
    template.write_text(TEMPLATE)
    remote = start_server(
        folder,
        str(tiny_model),
        *TINY_ARGS,
        "--served-model-name",
        "tiny",
        "--chat-template",
        str(template),
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--reasoning-parser",
        "qwen3",
    )
    yield remote
    assert remote.stop() == 0, remote.log()


@pytest.fixture
def tools_client(tool_server: RemoteServer) -> Iterator[openai.OpenAI]:
    with tool_server.client() as c:
        yield c


def _create(client: openai.OpenAI, **kwargs):
    args = dict(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=400, temperature=1.0)
    args.update(kwargs)
    return client.chat.completions.create(**args)


def _calls(message) -> list[tuple[str, str]]:
    return [(c.function.name, c.function.arguments) for c in message.tool_calls or []]


def _streamed(client: openai.OpenAI, **kwargs) -> tuple[str, list[tuple[str, str]], str]:
    """Content, tool calls and finish reason of a stream, joined as clients join them."""
    content, calls, ids, finish = "", {}, {}, None
    for chunk in _create(client, stream=True, **kwargs):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for call in choice.delta.tool_calls or []:
            if call.id is not None:  # the header: id, type and name come first
                assert call.type == "function" and call.index not in ids
                ids[call.index] = call.id
                calls[call.index] = [call.function.name, ""]
            calls[call.index][1] += call.function.arguments or ""
        finish = choice.finish_reason or finish
    return content, [tuple(calls[i]) for i in sorted(calls)], finish


def test_required_calls_validate_and_stream_the_same(tools_client: openai.OpenAI) -> None:
    names = set()
    for seed in range(6):
        kwargs = dict(tool_choice="required", seed=seed, parallel_tool_calls=False)
        choice = _create(tools_client, **kwargs).choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = _calls(choice.message)
        assert len(calls) == 1  # parallel_tool_calls=False: exactly one
        for name, arguments in calls:
            jsonschema.validate(json.loads(arguments), SCHEMAS[name])
            names.add(name)
        assert all(
            c.id.startswith("call_") and c.type == "function" for c in choice.message.tool_calls
        )
        if seed < 2:
            assert _streamed(tools_client, **kwargs) == ("", calls, "tool_calls")
    assert names == set(SCHEMAS)
    # Parallel calls allowed: a random model keeps adding calls, so give it room and compare.
    kwargs = dict(tool_choice="required", seed=2, max_tokens=60)
    whole = _create(tools_client, **kwargs).choices[0]
    content, calls, finish = _streamed(tools_client, **kwargs)
    assert (content or None, calls, finish) == (
        whole.message.content,
        _calls(whole.message),
        whole.finish_reason,
    )


def test_named_function_calls_it_and_streams_arguments(tools_client: openai.OpenAI) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(3):
        whole = _create(tools_client, tool_choice=choice, seed=seed).choices[0]
        calls = _calls(whole.message)
        assert [n for n, _ in calls] == ["get_weather"]
        jsonschema.validate(json.loads(calls[0][1]), WEATHER)
        assert _streamed(tools_client, tool_choice=choice, seed=seed) == ("", calls, "tool_calls")


def test_auto_parses_hermes_tool_calls_from_the_text(tools_client: openai.OpenAI) -> None:
    """The random model is steered into Hermes' format by a regex, as a tool-trained model
    would write it; the parser turns it into content and a call, whole and streamed."""
    regex = (
        r'Sure\. <tool_call>\n\{"name": "get_weather", "arguments": '
        r'\{"city": "(Oslo|Lima)", "days": [1-7]\}\}\n</tool_call>'
    )
    kwargs = dict(tool_choice="auto", seed=4, extra_body={"structured_outputs": {"regex": regex}})
    whole = _create(tools_client, **kwargs).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content == "Sure. "
    calls = _calls(whole.message)
    assert [n for n, _ in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0][1]), WEATHER)
    assert _streamed(tools_client, **kwargs) == ("Sure. ", calls, "tool_calls")
    plain = _create(tools_client, seed=4, max_tokens=8).choices[0]  # auto is the default
    assert plain.message.tool_calls is None and plain.finish_reason in ("stop", "length")


def test_tool_choice_none_answers_in_text(tools_client: openai.OpenAI) -> None:
    choice = _create(tools_client, tool_choice="none", seed=0, max_tokens=8).choices[0]
    assert choice.message.tool_calls is None and choice.message.content


def test_tool_results_and_calls_go_through_the_template(tool_server: RemoteServer) -> None:
    messages = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_7",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_7", "content": "rain, 4 C"},
    ]
    with tool_server.http() as http:
        ids = http.post("/tokenize", json={"messages": messages}).json()["tokens"]
        text = http.post("/detokenize", json={"tokens": ids}).json()["prompt"]
    assert '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}' in text
    assert "<tool_response id=call_7>rain, 4 C</tool_response>" in text
    with tool_server.client() as client:
        answer = client.chat.completions.create(
            model="tiny", messages=messages, tools=TOOLS, tool_choice="none", max_tokens=4
        )
    # With tools the template adds their list: "<|im_start|>system\nTools: get_weather get_time".
    assert (
        answer.usage.prompt_tokens == len(ids) + 1 + len("system\nTools: get_weather get_time") + 2
    )


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"tools": None, "tool_choice": "required"}, "needs `tools`"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "not among the tools",
        ),
        ({"tools": [{"type": "function", "function": {}}]}, "needs a string `name`"),
        ({"tool_choice": "sometimes"}, "not one of"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"$ref": 1}}}
                ],
                "tool_choice": "required",
            },
            "structured_outputs.json",
        ),
    ],
)
def test_bad_tool_requests_are_400(tools_client: openai.OpenAI, kwargs, words) -> None:
    args = dict(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=4)
    args.update(kwargs)
    if args["tools"] is None:
        del args["tools"]
    with pytest.raises(openai.BadRequestError) as info:
        tools_client.chat.completions.create(**args)
    assert words in info.value.body["message"]
    assert info.value.body["param"] in ("tool_choice", "tools", "tools[0].function")


def test_reasoning_goes_to_reasoning_content_whole_and_streamed(
    tools_client: openai.OpenAI,
) -> None:
    """Steered into Qwen3's thinking format by a regex: the think block is reasoning_content,
    the rest content; a streamed answer joins to the same, and a tool call after the reasoning
    is still parsed."""
    regex = r"<think>\nI should check\.\n</think>\n\nIt is (sunny|rainy)\."
    kwargs = dict(
        model="tiny", messages=MESSAGES, seed=1, extra_body={"structured_outputs": {"regex": regex}}
    )
    whole = tools_client.chat.completions.create(**kwargs).choices[0].message
    reasoning = whole.model_extra["reasoning_content"]
    assert reasoning == "\nI should check.\n"
    assert whole.content in ("\n\nIt is sunny.", "\n\nIt is rainy.")
    parts = {"reasoning_content": "", "content": ""}
    for chunk in tools_client.chat.completions.create(stream=True, **kwargs):
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is not None:
            parts["reasoning_content"] += (delta.model_extra or {}).get("reasoning_content") or ""
            parts["content"] += delta.content or ""
    assert parts == {"reasoning_content": reasoning, "content": whole.content}
    regex = (
        r'<think>\nA tool\.\n</think>\n\n<tool_call>\n\{"name": "get_time", '
        r'"arguments": \{"tz": "(CET|UTC)"\}\}\n</tool_call>'
    )
    args = dict(kwargs, tools=TOOLS, extra_body={"structured_outputs": {"regex": regex}})
    choice = tools_client.chat.completions.create(**args).choices[0]
    assert choice.message.model_extra["reasoning_content"] == "\nA tool.\n"
    assert choice.finish_reason == "tool_calls" and choice.message.content == "\n\n"
    assert [c.function.name for c in choice.message.tool_calls] == ["get_time"]
