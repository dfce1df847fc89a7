"""RMSNorm with an optional fused residual add."""

from __future__ import annotations

import torch
from torch import nn

from heron_interfaces.kernel_ops import KernelOps


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as Hugging Face's Llama does.

    The arithmetic lives in :class:`KernelOps` (the platform's kernel or the torch reference),
    which casts back to the model dtype before the weight multiply, so that bfloat16 models produce
    the same numbers as ``transformers``. Passing ``residual`` fuses the pre-norm residual add of a
    decoder layer: ``x + residual`` is both normed and returned as the next residual, which saves
    one full read of the hidden states per layer.
    """

    def __init__(
        self, hidden_size: int, eps: float, *, dtype: torch.dtype, ops: KernelOps | None = None
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype), requires_grad=False)
        self.ops = ops or KernelOps()

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``norm(x)``, or ``(norm(x + residual), x + residual)`` when a residual is given."""
        if residual is None:
            return self.ops.rms_norm(x, self.weight, self.eps)
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)
