"""What ``LLM.embed`` / ``AsyncLLM.encode`` return, shaped like vLLM's pooling outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(slots=True)
class EmbeddingOutput:
    """``embedding``: the vector as a list of floats (vLLM's field)."""

    embedding: list[float]

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass(slots=True)
class PoolingOutput:
    """vLLM's raw pooling output: ``data`` is the pooled tensor (float32, on the CPU)."""

    data: torch.Tensor


@dataclass(slots=True)
class EmbeddingRequestOutput:
    """One input's embedding: ``outputs.embedding`` as in vLLM.

    ``finished`` is always true for a result (an embedding comes in one piece); an aborted
    request's output has ``outputs`` ``None``.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput | None
    finished: bool = True

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


PoolingRequestOutput = EmbeddingRequestOutput
"""vLLM's name for the same shape (``encode`` returns these)."""
