"""Gated activations."""

from __future__ import annotations

import torch
from torch import nn

from heron_interfaces.kernel_ops import KernelOps


class SiluAndMul(nn.Module):
    """``silu(gate) * up`` over the two halves of a fused gate/up projection.

    The MLP computes gate and up in one matmul (one read of the activations); the first half of
    the result is the gate, the second the up projection.
    """

    def __init__(self, ops: KernelOps | None = None) -> None:
        super().__init__()
        self.ops = ops or KernelOps()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.silu_and_mul(x)
