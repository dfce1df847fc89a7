"""The non-attention compute of a decoder layer that a backend may replace with its own kernels.

A decode step of a small model is dominated by many small operations: each RMSNorm, rotary
embedding or SiLU gate is half a dozen torch calls, and at a few rows per call their dispatch
costs more than their arithmetic. A backend that ships fused kernels subclasses :class:`KernelOps`
and returns it from ``Platform.kernel_ops()``; core's layers call these methods and nothing else.

The methods of this base class are the plain-torch reference: they round exactly where
Hugging Face ``transformers`` rounds (its Llama modules, in the model dtype), so that greedy
outputs match ``generate()``. An override must keep those rounding points; the conformance suite
(``heron_interfaces.testing``) compares every override with this class.

Importing this module imports torch, so ``heron_interfaces`` itself only names it lazily.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class KernelOps:
    """Plain-torch implementations; every method is a per-step call, so overrides stay cheap.

    Inputs are flattened tokens: ``[num_tokens, features]`` (or ``[num_tokens, heads, head_size]``
    for rotary). Methods return new tensors and never modify their inputs.
    """

    name = "torch"
    """Shown in the start-up log next to the attention backend."""

    # -- matmuls ---------------------------------------------------------------------------------
    def prepare_linear(self, weight: torch.Tensor) -> Any:
        """Called once per weight after loading: return whatever :meth:`linear` wants to get.

        Backends prepack into their GEMM library's blocked layout here (doing it per call costs
        more than the matmul at decode sizes) and may drop ``weight``; the default keeps it. A
        backend may also move ``weight``'s storage (``weight.data = ...``, same values), as
        heron-cpu does to put the weights its GEMV streams on huge pages.
        """
        return weight

    def linear(self, x: torch.Tensor, prepared: Any, bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W^T + bias`` with ``prepared`` from :meth:`prepare_linear`."""
        return F.linear(x, prepared, bias)

    # -- normalisation ---------------------------------------------------------------------------
    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """Statistics in float32, cast back to ``x``'s dtype before the weight multiply (as HF)."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return weight * x32.to(x.dtype)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rms_norm(x + residual), x + residual)``: a decoder layer's residual add and norm."""
        summed = x + residual
        return self.rms_norm(summed, weight, eps), summed

    # -- activation ------------------------------------------------------------------------------
    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` where ``x = [gate | up]`` along the last dimension."""
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up

    # -- rotary embedding ------------------------------------------------------------------------
    def rotary(
        self, positions: torch.Tensor, heads: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> torch.Tensor:
        """GPT-NeoX-style rotation of ``heads`` ``[tokens, n, head_size]`` by token position.

        ``cos_sin_cache`` is ``[max_position, rotary_dim]``: cos in the first half of each row,
        sin in the second. Channels past ``rotary_dim`` pass through unchanged.
        """
        rotary_dim = cos_sin_cache.shape[-1]
        cos, sin = cos_sin_cache[positions].chunk(2, dim=-1)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        rot, rest = heads[..., :rotary_dim], heads[..., rotary_dim:]
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        if rest.shape[-1] == 0:
            return rotated
        return torch.cat([rotated, rest], dim=-1)


__all__ = ["KernelOps"]
