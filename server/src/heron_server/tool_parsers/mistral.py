"""Mistral tool calls: ``[TOOL_CALLS]`` then the calls.

Two generations of the format: ``[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]`` (tokenizer
v3, Mistral 7B v0.3 / Mixtral), and ``[TOOL_CALLS]f[ARGS]{...}`` repeated per call (tokenizer v11+,
Mistral Small 3.2 and later). ``[TOOL_CALLS]`` is a special token, so it must survive
detokenization (``keeps_special_tokens``). Mistral's call ids are nine alphanumeric characters.
"""

from __future__ import annotations

import json
import random
import string

from heron_server.tool_parsers.base import (
    ToolCall,
    ToolParser,
    call_from_object,
    decode_json_sequence,
    marker_prefix_len,
)

TOOL_CALLS = "[TOOL_CALLS]"
ARGS = "[ARGS]"


def mistral_call_id() -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=9))


class MistralToolParser(ToolParser):
    name = "mistral"
    keeps_special_tokens = True

    def section_start(self, text: str) -> int | None:
        index = text.find(TOOL_CALLS)
        return None if index < 0 else index

    def held_back(self, text: str) -> int:
        return marker_prefix_len(text, (TOOL_CALLS,))

    def parse_section(self, section: str) -> list[ToolCall] | None:
        pieces = [p for p in section.split(TOOL_CALLS) if p.strip()]
        calls: list[ToolCall] = []
        for piece in pieces:
            parsed = self._parse_piece(piece.strip())
            if parsed is None:
                return None
            calls.extend(parsed)
        for call in calls:
            call.id = mistral_call_id()
        return calls or None

    @staticmethod
    def _parse_piece(piece: str) -> list[ToolCall] | None:
        if ARGS in piece:  # v11: name[ARGS]{...}
            name, _, arguments = piece.partition(ARGS)
            try:
                value = json.loads(arguments)
            except json.JSONDecodeError:
                return None
            call = call_from_object({"name": name.strip(), "arguments": value})
            return None if call is None else [call]
        values = decode_json_sequence(piece)
        if not values:
            return None
        objects = [o for v in values for o in (v if isinstance(v, list) else [v])]
        calls = [call_from_object(o) for o in objects]
        return None if not calls or any(c is None for c in calls) else calls  # type: ignore[return-value]
