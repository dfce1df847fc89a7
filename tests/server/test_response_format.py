"""response_format and structured_outputs over HTTP (issue 20), with the official ``openai`` client.

The shared server runs a tiny model of random weights: its answers follow a schema only because
the grammar makes them.
"""

from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from server_utils import SERVED_NAME


class Address(BaseModel):
    city: Literal["Oslo", "Lima", "Pune"]
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(pattern=r"^[a-z]{1,8}$")
    age: int = Field(ge=0, le=120)
    tags: list[Literal["a", "b"]] = Field(max_length=3)
    address: Address
    active: bool


MESSAGES = [{"role": "user", "content": "Describe a person."}]


def test_parse_with_a_pydantic_model_returns_the_object(client: openai.OpenAI) -> None:
    for seed in range(3):
        completion = client.chat.completions.parse(
            model=SERVED_NAME,
            messages=MESSAGES,
            response_format=Person,
            max_tokens=400,
            seed=seed,
            temperature=1.0,
        )
        message = completion.choices[0].message
        assert completion.choices[0].finish_reason == "stop"
        assert isinstance(message.parsed, Person)
        assert message.parsed == Person.model_validate_json(message.content)


def test_streamed_json_schema_joined_equals_the_whole_answer(client: openai.OpenAI) -> None:
    schema = Person.model_json_schema()
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema, "strict": True},
    }
    kwargs = dict(
        model=SERVED_NAME,
        messages=MESSAGES,
        response_format=response_format,
        max_tokens=400,
        seed=11,
        temperature=1.0,
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(stream=True, **kwargs)
    joined = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert joined == whole
    Person.model_validate(json.loads(whole))
    jsonschema.validate(json.loads(whole), schema)


def test_completions_take_response_format_and_structured_outputs(client: openai.OpenAI) -> None:
    texts = [
        choice.text
        for choice in client.completions.create(
            model=SERVED_NAME,
            prompt="JSON:",
            n=8,
            max_tokens=80,
            seed=3,
            temperature=1.0,
            extra_body={"response_format": {"type": "json_object"}},
        ).choices
        if choice.finish_reason == "stop"
    ]
    assert texts and all(isinstance(json.loads(t), dict) for t in texts)
    for body, check in (
        ({"regex": r"[0-9]{3}-[a-z]{3}"}, lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{3}", t)),
        ({"choice": ["left", "right"]}, lambda t: t in ("left", "right")),
    ):
        out = client.completions.create(
            model=SERVED_NAME,
            prompt="Go",
            n=4,
            max_tokens=20,
            temperature=1.0,
            extra_body={"structured_outputs": body},
        )
        assert all(check(c.text) for c in out.choices), [c.text for c in out.choices]


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type", "json_schema"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "schema"),
        ({"structured_outputs": {"regex": "a("}}, "structured_outputs.regex", "parenthesis"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "one"),
        (
            {"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}},
            "response_format",
            "not both",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "$ref": "#/no"}},
                }
            },
            "response_format.json_schema",
            "structured_outputs.json",
        ),
    ],
)
def test_malformed_constraints_are_400(client: openai.OpenAI, extra, param, words) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=SERVED_NAME, messages=MESSAGES, max_tokens=5, extra_body=extra
        )
    error = info.value.body
    assert words in error["message"]
    if param is not None:
        assert error["param"] == param


def test_auto_tool_choice_needs_the_server_flags(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError, match="--enable-auto-tool-choice"):
        client.chat.completions.create(
            model=SERVED_NAME, messages=MESSAGES, max_tokens=5, tools=tools
        )
