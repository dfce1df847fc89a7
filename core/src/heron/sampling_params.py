"""Per-request sampling settings, shaped like vLLM's ``SamplingParams`` so user code carries over."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from heron.structured_outputs.params import StructuredOutputsParams

_GREEDY_EPSILON = 1e-5


class SamplingParamsError(ValueError):
    """A sampling parameter is out of its allowed range; ``param`` names it (for HTTP 400 bodies)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(kw_only=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    Every field is checked in ``__post_init__`` so that a bad value fails at the call site with the
    field's name and allowed range, not deep inside a batched step where it would hurt other requests.
    """

    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    detokenize: bool = True
    structured_outputs: StructuredOutputsParams | None = None
    """Constrain the output to a JSON schema, regex, choice or grammar (a dict of its fields works)."""
    _explicit: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def __init__(self, **kwargs: Any) -> None:
        known = {f.name for f in fields(self) if not f.name.startswith("_")}
        unknown = set(kwargs) - known
        if unknown:
            name = sorted(unknown)[0]
            raise SamplingParamsError(name, f"unknown sampling parameter; known: {sorted(known)}")
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            setattr(self, f.name, kwargs.get(f.name, default))
        self._explicit = frozenset(kwargs)
        self.__post_init__()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.logit_bias:
            self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
        if self.structured_outputs is not None:
            self.structured_outputs = StructuredOutputsParams.coerce(self.structured_outputs)
        self._validate()

    # -- validation ---------------------------------------------------------------------------
    def _validate(self) -> None:
        _check_int("n", self.n, low=1)
        if self.best_of is not None:
            _check_int("best_of", self.best_of, low=1)
            if self.best_of < self.n:
                raise SamplingParamsError("best_of", f"must be >= n ({self.n}), got {self.best_of}")
        _check_float("temperature", self.temperature, low=0.0)
        _check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        _check_int("top_k", self.top_k, low=-1)
        _check_float("min_p", self.min_p, low=0.0, high=1.0)
        _check_float("presence_penalty", self.presence_penalty, low=-2.0, high=2.0)
        _check_float("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0)
        _check_float("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True)
        if self.seed is not None:
            _check_int("seed", self.seed, low=-(2**63), high=2**64 - 1)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise SamplingParamsError(
                "min_tokens", f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}"
            )
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, high=20)
        if self.prompt_logprobs is not None:
            _check_int("prompt_logprobs", self.prompt_logprobs, low=0, high=20)
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise SamplingParamsError(
                    "stop", f"stop strings must be non-empty strings, got {s!r}"
                )
        for t in self.stop_token_ids:
            _check_int("stop_token_ids", t, low=0)
        for token, bias in (self.logit_bias or {}).items():
            _check_int("logit_bias", token, low=0)
            _check_float("logit_bias", bias, low=-100.0, high=100.0)

    def check_vocab(self, vocab_size: int) -> None:
        """Token ids in the request must exist in the model's vocabulary."""
        for name, ids in (
            ("stop_token_ids", self.stop_token_ids),
            ("logit_bias", self.logit_bias or {}),
        ):
            bad = [t for t in ids if t >= vocab_size]
            if bad:
                raise SamplingParamsError(
                    name, f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})"
                )

    # -- derived --------------------------------------------------------------------------------
    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPSILON

    @property
    def num_sequences(self) -> int:
        """How many sequences to generate before choosing ``n`` of them."""
        return self.best_of or self.n

    def was_set(self, name: str) -> bool:
        return name in self._explicit

    def with_defaults(self, defaults: dict[str, Any]) -> SamplingParams:
        """A copy where fields the user did not set take the model's generation_config values."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        explicit = set(self._explicit)
        for name, value in defaults.items():
            if name in values and name not in explicit:
                values[name] = value
        params = SamplingParams(
            **{k: v for k, v in values.items() if k in explicit or k in defaults}
        )
        params._explicit = frozenset(explicit)
        return params

    def clone(self, **changes: Any) -> SamplingParams:
        values = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        values.update(changes)
        params = SamplingParams(**values)
        params._explicit = self._explicit | frozenset(changes)
        return params


def _check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingParamsError(name, f"must be an integer, got {value!r}")
    _check_range(name, value, low, high, low_open=False)


def _check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SamplingParamsError(name, f"must be a number, got {value!r}")
    _check_range(name, value, low, high, low_open=low_open)


def _check_range(
    name: str, value: float, low: float | None, high: float | None, *, low_open: bool
) -> None:
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and value > high
    if below or above:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        bracket = "(" if low_open else "["
        raise SamplingParamsError(name, f"must be in {bracket}{lo}, {hi}], got {value!r}")
