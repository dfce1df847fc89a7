"""Per-request options of an embedding request (vLLM's ``PoolingParams``)."""

from __future__ import annotations

from dataclasses import dataclass


class PoolingParamsError(ValueError):
    """A pooling parameter is out of range; the message names it (``param``) and what is allowed."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True, kw_only=True)
class PoolingParams:
    """Attributes:
    dimensions: keep the first ``dimensions`` values of the embedding (Matryoshka models
        only), normalised after truncation; ``None`` keeps them all.
    normalize: override the model's normalisation for this request; ``None`` follows it.
    truncate_prompt_tokens: keep only the last ``k`` tokens of a longer prompt (vLLM's
        spelling and side); ``-1`` means ``max_model_len``; ``None`` rejects a prompt that does
        not fit.
    """

    dimensions: int | None = None
    normalize: bool | None = None
    truncate_prompt_tokens: int | None = None

    def check(self, *, hidden_size: int, matryoshka: bool, max_model_len: int) -> None:
        """Raise :class:`PoolingParamsError` for a value this model cannot honour."""
        if self.dimensions is not None:
            if not matryoshka:
                raise PoolingParamsError(
                    "dimensions",
                    "dimensions: this model does not support Matryoshka truncation, so it only "
                    f"returns all {hidden_size} dimensions; leave dimensions unset",
                )
            if isinstance(self.dimensions, bool) or not 1 <= self.dimensions <= hidden_size:
                raise PoolingParamsError(
                    "dimensions",
                    f"dimensions must be between 1 and {hidden_size}, got {self.dimensions}",
                )
        k = self.truncate_prompt_tokens
        if k is not None and k != -1 and not 1 <= k <= max_model_len:
            raise PoolingParamsError(
                "truncate_prompt_tokens",
                f"truncate_prompt_tokens must be -1 or between 1 and max_model_len "
                f"({max_model_len}), got {k}",
            )
