"""RMSNorm with an optional fused residual add."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as Hugging Face's Llama does.

    The statistics are computed in float32 and the result is cast back before the weight multiply,
    so that bfloat16 models produce the same numbers as ``transformers``. Passing ``residual``
    fuses the pre-norm residual add of a decoder layer: ``x + residual`` is both normed and
    returned as the next residual, which saves one full read of the hidden states per layer.
    """

    def __init__(self, hidden_size: int, eps: float, *, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``norm(x)``, or ``(norm(x + residual), x + residual)`` when a residual is given."""
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x
