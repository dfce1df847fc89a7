"""``speculative_config``: vLLM's spelling, parsed and checked once at the edge.

``{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 1}``
proposes by prompt lookup; ``{"model": DRAFT, "num_speculative_tokens": K}`` names a draft model.
Bad values raise ``ValueError`` naming the field and its allowed range, so the CLI, ``LLM(...)``
and the server all report the same message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

MAX_SPECULATIVE_TOKENS = 16
"""More drafts than this only lengthen the verification step: acceptance decays geometrically."""

_METHODS = ("ngram", "draft_model")


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    method: str
    """ngram (prompt lookup) or draft_model."""
    num_speculative_tokens: int
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    model: str | None = None
    """The draft model (a folder, Hub id or .gguf file) when ``method`` is draft_model."""
    quantization: str | None = None
    """The draft model's ``--quantization`` (gguf keeps a GGUF file's blocks quantized)."""

    @classmethod
    def from_value(cls, value: Any) -> SpeculativeConfig | None:
        """From JSON text or a dict (None or an empty value: speculation off)."""
        parsed = parse_speculative_config(value)
        return None if parsed is None else cls(**parsed)


def parse_speculative_config(value: Any) -> dict[str, Any] | None:
    """Validate ``speculative_config`` (JSON text or a dict) into a dict of known fields."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, SpeculativeConfig):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"speculative_config is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"speculative_config must be a JSON object, got {type(value).__name__}")
    known = {f.name for f in fields(SpeculativeConfig)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(
            f"speculative_config has unknown field(s) {unknown}; allowed: {sorted(known)}"
        )
    config = dict(value)
    method = config.get("method") or ("draft_model" if config.get("model") else None)
    if method not in _METHODS:
        raise ValueError(
            f"speculative_config.method must be one of {list(_METHODS)} (or give 'model' for a "
            f"draft model), got {config.get('method')!r}"
        )
    config["method"] = method
    k = config.get("num_speculative_tokens")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_SPECULATIVE_TOKENS:
        raise ValueError(
            "speculative_config.num_speculative_tokens must be an integer in "
            f"[1, {MAX_SPECULATIVE_TOKENS}], got {k!r}"
        )
    if method == "ngram":
        for name in ("model", "quantization"):
            if config.get(name) is not None:
                raise ValueError(f"speculative_config.{name} is only for method 'draft_model'")
        low = config.setdefault("prompt_lookup_min", 1)
        high = config.setdefault("prompt_lookup_max", max(4, low if isinstance(low, int) else 0))
        for name, n in (("prompt_lookup_min", low), ("prompt_lookup_max", high)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"speculative_config.{name} must be an integer >= 1, got {n!r}")
        if low > high:
            raise ValueError(
                f"speculative_config.prompt_lookup_min ({low}) must be <= "
                f"prompt_lookup_max ({high})"
            )
    else:
        if not isinstance(config.get("model"), str) or not config["model"]:
            raise ValueError("speculative_config.model must name the draft model (a path or id)")
        for name in ("prompt_lookup_min", "prompt_lookup_max"):
            if name in config:
                raise ValueError(f"speculative_config.{name} is only for method 'ngram'")
        if config.get("quantization") not in (None, "gguf", "none", "int8"):
            raise ValueError(
                "speculative_config.quantization must be one of gguf, none, int8, got "
                f"{config['quantization']!r}"
            )
    return config
