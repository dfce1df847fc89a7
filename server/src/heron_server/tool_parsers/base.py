"""What every tool-call parser shares: the parsed call, the parser contract, and streaming.

A parser finds where the model's tool-call section starts (a marker such as ``<tool_call>``, or a
JSON object at the start of the answer) and parses that section into calls. Text before the
section is the message's ``content``. A section that does not parse is not a tool call: the whole
text is then content, as vLLM's parsers do.

Streaming is shared too (:class:`ToolCallStream`): content streams while no section has started
(a tail that could be the start of a marker is held back), and the calls are sent when the
answer ends, parsed from the whole text by the same ``extract`` as a whole answer, so a streamed
answer joined equals the non-streamed one.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ToolCall:
    """One function call; ``arguments`` is JSON text, as OpenAI sends it."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class ExtractedToolCalls:
    content: str | None
    calls: list[ToolCall]


class ToolParser(ABC):
    """Turns a model's answer into content and tool calls, in one model family's format."""

    name: str = ""
    keeps_special_tokens: bool = False
    """The format's markers are special tokens, so detokenization must keep them."""

    @abstractmethod
    def section_start(self, text: str) -> int | None:
        """Where the tool-call section starts in ``text`` (complete so far), or None."""

    @abstractmethod
    def parse_section(self, section: str) -> list[ToolCall] | None:
        """The calls of a whole section, or None when it is not valid tool-call syntax."""

    def held_back(self, text: str) -> int:
        """How many trailing characters might begin a section, so must not stream as content."""
        return 0

    def extract(self, text: str) -> ExtractedToolCalls:
        start = self.section_start(text)
        if start is None:
            return ExtractedToolCalls(content=text, calls=[])
        calls = self.parse_section(text[start:])
        if not calls:
            return ExtractedToolCalls(content=text, calls=[])
        return ExtractedToolCalls(content=text[:start] or None, calls=calls)


def marker_prefix_len(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a marker."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best


def call_from_object(obj: Any, arguments_key: str = "arguments") -> ToolCall | None:
    """A call from ``{"name": ..., "arguments"|"parameters": {...}}``, or None if malformed."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get(arguments_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(arguments, str):  # some models send the arguments as JSON text already
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name=obj["name"], arguments=json.dumps(arguments, ensure_ascii=False))


def decode_json_sequence(text: str, separators: str = " \n\t\r;,") -> list[Any] | None:
    """Every JSON value in ``text``, one after another (separated by whitespace, ``;`` or
    ``,``); None when anything else is left."""
    decoder = json.JSONDecoder()
    values = []
    index = 0
    while True:
        while index < len(text) and text[index] in separators:
            index += 1
        if index == len(text):
            return values
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return None
        values.append(value)


class ToolCallStream:
    """Streaming for one choice: feed the cumulative text, get content deltas, then the calls."""

    def __init__(self, parser: ToolParser) -> None:
        self.parser = parser
        self.sent = 0
        """Characters of the text already sent as content."""

    def feed(self, text: str) -> str:
        """The content delta that is safe to send now (none once a section has started)."""
        start = self.parser.section_start(text)
        safe = start if start is not None else len(text) - self.parser.held_back(text)
        delta = text[self.sent : max(self.sent, safe)]
        self.sent = max(self.sent, safe)
        return delta

    def finish(self, text: str) -> tuple[str, list[ToolCall]]:
        """At the end: the content not yet sent, and the calls of the whole answer."""
        result = self.parser.extract(text)
        content = text if not result.calls else (result.content or "")
        delta = content[self.sent :]
        self.sent = len(content)
        return delta, result.calls
