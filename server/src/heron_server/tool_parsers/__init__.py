"""Tool-call parsers for ``--tool-call-parser NAME`` (vLLM's names), and their registry."""

from __future__ import annotations

from heron_server.tool_parsers.base import (
    ExtractedToolCalls,
    ToolCall,
    ToolCallStream,
    ToolParser,
)
from heron_server.tool_parsers.hermes import HermesToolParser, Qwen3ToolParser
from heron_server.tool_parsers.llama3_json import Llama3JsonToolParser
from heron_server.tool_parsers.mistral import MistralToolParser

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    parser.name: parser
    for parser in (HermesToolParser, Llama3JsonToolParser, MistralToolParser, Qwen3ToolParser)
}


def get_tool_parser(name: str) -> ToolParser:
    try:
        return TOOL_PARSERS[name]()
    except KeyError:
        raise ValueError(
            f"unknown tool call parser {name!r}; choose one of {sorted(TOOL_PARSERS)}"
        ) from None


__all__ = [
    "TOOL_PARSERS",
    "ExtractedToolCalls",
    "ToolCall",
    "ToolCallStream",
    "ToolParser",
    "get_tool_parser",
]
