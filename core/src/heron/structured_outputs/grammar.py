"""From :class:`StructuredOutputsParams` to an xgrammar ``Grammar``: parsing only, no vocabulary.

Parsing is fast and tokenizer-free, so it runs when a request is prepared and turns a bad schema,
regex or grammar into a ``StructuredOutputsError`` for that request alone (an HTTP 400); compiling
the grammar against the vocabulary (the slow part) happens later, in the manager's worker thread.
"""

from __future__ import annotations

import json
from typing import Any

from heron.structured_outputs.params import StructuredOutputsError, StructuredOutputsParams


def build_grammar(params: StructuredOutputsParams) -> Any:
    """The xgrammar ``Grammar`` of ``params``; raises StructuredOutputsError naming the field."""
    import xgrammar as xgr

    kind = params.kind
    try:
        if kind == "json":
            schema = params.json
            if isinstance(schema, str):
                schema = json.loads(schema)
            return xgr.Grammar.from_json_schema(
                schema, any_whitespace=not params.disable_any_whitespace
            )
        if kind == "json_object":
            return xgr.Grammar.from_json_schema(
                {"type": "object"}, any_whitespace=not params.disable_any_whitespace
            )
        if kind == "regex":
            return xgr.Grammar.from_regex(params.regex)
        if kind == "choice":
            # JSON string escapes are EBNF string escapes, so json.dumps quotes each choice.
            alternatives = " | ".join(
                json.dumps(c, ensure_ascii=False) for c in params.choice or ()
            )
            return xgr.Grammar.from_ebnf(f"root ::= {alternatives}")
        return xgr.Grammar.from_ebnf(params.grammar)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise StructuredOutputsError(f"structured_outputs.{kind}", _first_line(exc)) from exc


def _first_line(exc: Exception) -> str:
    """xgrammar's messages start with a C++ source location; keep what a user can act on."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    marker = text.find(": ", text.find(".cc:")) if ".cc:" in text else -1
    return text[marker + 2 :] if marker >= 0 else text
