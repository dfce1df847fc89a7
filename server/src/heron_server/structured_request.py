"""What a request's ``response_format``, ``structured_outputs``, ``tools`` and ``tool_choice`` mean
for the engine: a :class:`StructuredOutputsParams` constraint, and how to read the answer back.

``tool_choice="required"`` and a named function constrain decoding (vLLM's approach): a named
function's answer is its arguments object, validated by the function's parameter schema; a
required choice's answer is a JSON array of ``{"name", "parameters"}`` objects, one schema branch
per tool. ``auto`` leaves decoding free and parses the text with ``--tool-call-parser``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from heron.structured_outputs import StructuredOutputsError, StructuredOutputsParams
from heron.structured_outputs.grammar import build_grammar
from heron_server.errors import APIError
from heron_server.reasoning_parsers import REASONING_PARSERS, ReasoningParser
from heron_server.tool_parsers import ToolCall, get_tool_parser
from heron_server.tool_parsers.base import ToolParser


@dataclass(slots=True)
class ToolCallingConfig:
    """The server's tool-calling flags (``--enable-auto-tool-choice --tool-call-parser NAME``)."""

    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    """``--reasoning-parser NAME``: ``<think>`` blocks go to ``reasoning_content``."""

    def parser(self) -> ToolParser | None:
        return get_tool_parser(self.tool_call_parser) if self.tool_call_parser else None

    def reasoning(self) -> ReasoningParser | None:
        return REASONING_PARSERS[self.reasoning_parser]() if self.reasoning_parser else None


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def checked(params: StructuredOutputsParams, param: str | None = None) -> StructuredOutputsParams:
    """``params`` once xgrammar has parsed its schema/regex/grammar; a 400 naming ``param``
    (default: the constraint's own field) when it cannot."""
    try:
        build_grammar(params)
    except StructuredOutputsError as exc:
        raise _bad(str(exc), param or exc.param) from None
    return params


def constraint_from_fields(
    response_format: Any, structured_outputs: dict[str, Any] | None
) -> StructuredOutputsParams | None:
    """The constraint of ``response_format`` or vLLM's ``structured_outputs`` (not both),
    checked by xgrammar's parser (a 400 naming the field)."""
    kind = getattr(response_format, "type", None)
    given = kind not in (None, "text")
    if given and structured_outputs:
        raise _bad("set response_format or structured_outputs, not both", "response_format")
    if structured_outputs:
        try:
            return checked(StructuredOutputsParams.coerce(structured_outputs))
        except StructuredOutputsError as exc:
            raise _bad(str(exc), exc.param) from None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = response_format.json_schema
        if spec is None or spec.schema_ is None:
            raise _bad(
                "response_format of type 'json_schema' needs json_schema.schema",
                "response_format.json_schema",
            )
        return checked(StructuredOutputsParams(json=spec.schema_), "response_format.json_schema")
    return None


def validate_tools(tools: list[Any] | None, tool_choice: Any) -> dict[str, dict[str, Any]]:
    """The tools by name, after OpenAI's shape checks (a 400 names the bad field)."""
    by_name: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools or []):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise _bad(f"{where} must be {{'type': 'function', 'function': {{...}}}}", where)
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(f"{where}.function needs a string `name`", f"{where}.function")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise _bad(
                f"{where}.function.parameters must be a JSON schema object",
                f"{where}.function.parameters",
            )
        by_name[function["name"]] = {**function, "parameters": parameters}
    if tool_choice is None or tool_choice in ("none", "auto", "required"):
        if tool_choice in ("auto", "required") and not by_name:
            raise _bad(f"tool_choice {tool_choice!r} needs `tools`", "tool_choice")
        return by_name
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise _bad(
                "tool_choice must be 'none', 'auto', 'required' or "
                "{'type': 'function', 'function': {'name': NAME}}",
                "tool_choice",
            )
        if not by_name:
            raise _bad("tool_choice names a function but no `tools` were given", "tool_choice")
        if name not in by_name:
            raise _bad(
                f"tool_choice names {name!r}, which is not among the tools {sorted(by_name)}",
                "tool_choice",
            )
        return by_name
    raise _bad(
        f"tool_choice {tool_choice!r} is not one of none/auto/required/a function", "tool_choice"
    )


@dataclass(slots=True)
class ToolPlan:
    """How one chat request uses its tools."""

    mode: str
    """'none' (no tools), 'auto' (parse text), 'required' or 'named' (constrained JSON)."""
    tools: dict[str, dict[str, Any]]
    named: str | None = None
    parser: ToolParser | None = None

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools as chat templates take them (OpenAI's shape), or None. Sent with
        ``tool_choice="none"`` too (vLLM's default): the model still knows what it was given."""
        if not self.tools:
            return None
        return [{"type": "function", "function": f} for f in self.tools.values()]

    def constraint(self, parallel_tool_calls: bool | None) -> StructuredOutputsParams | None:
        if self.mode == "named":
            return checked(
                StructuredOutputsParams(
                    json=self.tools[self.named or ""]["parameters"], disable_any_whitespace=True
                ),
                "tools",
            )
        if self.mode != "required":
            return None
        branches = [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "parameters": function["parameters"]},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
            for name, function in self.tools.items()
        ]
        schema: dict[str, Any] = {"type": "array", "items": {"anyOf": branches}, "minItems": 1}
        if parallel_tool_calls is False:
            schema["maxItems"] = 1
        # Compact JSON: arguments are for programs, and free whitespace only lengthens them.
        return checked(StructuredOutputsParams(json=schema, disable_any_whitespace=True), "tools")

    def calls_of(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The message content and tool calls of a whole answer."""
        if self.mode == "named":
            return None, [ToolCall(name=self.named or "", arguments=text)]
        if self.mode == "required":
            try:
                items = json.loads(text)
            except json.JSONDecodeError:  # cut by max_tokens: what was written stays content
                return text, []
            return None, [
                ToolCall(name=i["name"], arguments=json.dumps(i["parameters"], ensure_ascii=False))
                for i in items
            ]
        if self.mode == "auto" and self.parser is not None:
            result = self.parser.extract(text)
            return result.content, result.calls
        return text, []


def plan_tools(tools: list[Any] | None, tool_choice: Any, config: ToolCallingConfig) -> ToolPlan:
    """Check ``tools`` and ``tool_choice`` and decide how the answer is made and read."""
    by_name = validate_tools(tools, tool_choice)
    if not by_name or tool_choice == "none":
        return ToolPlan(mode="none", tools=by_name)
    if isinstance(tool_choice, dict):
        return ToolPlan(mode="named", tools=by_name, named=tool_choice["function"]["name"])
    if tool_choice == "required":
        return ToolPlan(mode="required", tools=by_name)
    if not (config.enable_auto_tool_choice and config.tool_call_parser):
        raise _bad(
            '"auto" tool choice (the default when tools are given) needs the server to run with '
            "--enable-auto-tool-choice --tool-call-parser NAME; or send tool_choice 'required', "
            "'none' or a named function",
            "tool_choice",
        )
    return ToolPlan(mode="auto", tools=by_name, parser=config.parser())


def template_tool_calls(tool_calls: list[Any], where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` for chat templates: ``arguments`` as an object
    (Llama's and Qwen's templates write it with ``tojson``), the rest as OpenAI sent it."""
    calls = []
    for i, call in enumerate(tool_calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(f"{where}.tool_calls[{i}] needs function.name", f"{where}.tool_calls[{i}]")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError:
                raise _bad(
                    f"{where}.tool_calls[{i}].function.arguments is not valid JSON",
                    f"{where}.tool_calls[{i}].function.arguments",
                ) from None
        calls.append(
            {
                "id": call.get("id"),
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return calls
