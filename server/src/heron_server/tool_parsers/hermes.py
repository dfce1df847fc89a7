"""Hermes-style tool calls, also Qwen2.5's and Qwen3's chat template format.

The model writes each call as ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``,
one block per call, after optional text (NousResearch Hermes 2 Pro function-calling format; Qwen's
templates render tool calls the same way).
"""

from __future__ import annotations

import json
import re

from heron_server.tool_parsers.base import ToolCall, ToolParser, call_from_object, marker_prefix_len

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


class HermesToolParser(ToolParser):
    name = "hermes"
    start_marker = "<tool_call>"

    def section_start(self, text: str) -> int | None:
        index = text.find(self.start_marker)
        return None if index < 0 else index

    def held_back(self, text: str) -> int:
        return marker_prefix_len(text, (self.start_marker,))

    def parse_section(self, section: str) -> list[ToolCall] | None:
        calls = []
        for body in _BLOCK.findall(section):
            try:
                call = call_from_object(json.loads(body))
            except json.JSONDecodeError:
                return None
            if call is None:
                return None
            calls.append(call)
        leftover = _BLOCK.sub("", section).strip()
        return calls if calls and not leftover else None


class Qwen3ToolParser(HermesToolParser):
    """Qwen3's template writes Hermes blocks; named separately as vLLM's users expect."""

    name = "qwen3"
