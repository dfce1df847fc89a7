"""What a request asks its output to follow, spelled as vLLM's ``StructuredOutputsParams``.

Kept free of xgrammar so that building ``SamplingParams`` stays cheap; the grammar itself is built
(and so checked) by :mod:`heron.structured_outputs.grammar` when the request is prepared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_KINDS = ("json", "regex", "choice", "grammar", "json_object")


class StructuredOutputsError(ValueError):
    """A structured-outputs constraint is malformed; ``param`` names the field (HTTP 400 bodies)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(kw_only=True)
class StructuredOutputsParams:
    """Exactly one constraint: a JSON schema, a regex, a list of choices, an EBNF grammar, or any
    JSON object. ``disable_any_whitespace`` makes JSON compact (vLLM's flag of the same name)."""

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        given = [k for k in _KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise StructuredOutputsError(
                "structured_outputs",
                f"exactly one of {list(_KINDS)} must be set, got "
                + (", ".join(given) if given else "none"),
            )
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise StructuredOutputsError(
                "structured_outputs.json",
                f"must be a JSON schema (an object or its JSON text), got {type(self.json).__name__}",
            )
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise StructuredOutputsError(
                    f"structured_outputs.{name}", f"must be a non-empty string, got {value!r}"
                )
        if self.choice is not None:
            if (
                not isinstance(self.choice, (list, tuple))
                or not self.choice
                or not all(isinstance(c, str) and c for c in self.choice)
            ):
                raise StructuredOutputsError(
                    "structured_outputs.choice",
                    f"must be a non-empty list of non-empty strings, got {self.choice!r}",
                )
            self.choice = list(self.choice)
        if self.json_object is not None and self.json_object is not True:
            raise StructuredOutputsError(
                "structured_outputs.json_object",
                f"must be true when given, got {self.json_object!r}",
            )

    @classmethod
    def coerce(cls, value: Any) -> StructuredOutputsParams:
        """Accept the dataclass or a plain dict of its fields (what JSON bodies carry)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(_KINDS) - {"disable_any_whitespace"}
            if unknown:
                raise StructuredOutputsError(
                    "structured_outputs",
                    f"unknown field {sorted(unknown)[0]!r}; known: "
                    f"{[*_KINDS, 'disable_any_whitespace']}",
                )
            return cls(**value)
        raise StructuredOutputsError(
            "structured_outputs",
            f"must be StructuredOutputsParams or a dict, got {type(value).__name__}",
        )

    @property
    def kind(self) -> str:
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    @property
    def key(self) -> tuple[str, str, bool]:
        """What identifies the compiled grammar: equal keys share one compile (the cache key)."""
        kind = self.kind
        value = getattr(self, kind)
        if kind == "json" and isinstance(value, dict):
            text = json.dumps(value, sort_keys=True)
        elif kind == "choice":
            text = json.dumps(value)
        else:
            text = str(value)
        return (kind, text, self.disable_any_whitespace)
