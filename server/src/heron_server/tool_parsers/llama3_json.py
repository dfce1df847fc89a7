"""Llama 3.1 / 3.2 JSON tool calls: the whole answer is ``{"name": "f", "parameters": {...}}``.

Meta's format for custom tools: the answer starts with the JSON object (optionally after the
``<|python_tag|>`` token); several calls are separated by ``;``. An answer that starts with
anything else is plain content.
"""

from __future__ import annotations

from heron_server.tool_parsers.base import (
    ToolCall,
    ToolParser,
    call_from_object,
    decode_json_sequence,
)

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    keeps_special_tokens = True

    def section_start(self, text: str) -> int | None:
        stripped = text.lstrip()
        if stripped.startswith(PYTHON_TAG) or stripped.startswith("{"):
            return len(text) - len(stripped)
        return None

    def held_back(self, text: str) -> int:
        stripped = text.lstrip()
        # Nothing yet but whitespace, or a prefix of the tag: it may still become a call.
        return len(text) if PYTHON_TAG.startswith(stripped) else 0

    def parse_section(self, section: str) -> list[ToolCall] | None:
        body = section.lstrip().removeprefix(PYTHON_TAG)
        values = decode_json_sequence(body, separators=" \n\t\r;")
        if not values:
            return None
        calls = [call_from_object(v, "parameters") for v in values]
        return None if any(c is None for c in calls) else calls  # type: ignore[return-value]
