"""Gated activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SiluAndMul(nn.Module):
    """``silu(gate) * up`` over the two halves of a fused gate/up projection.

    The MLP computes gate and up in one matmul (one read of the activations); this splits the
    result along the last dimension, first half gate, second half up.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
