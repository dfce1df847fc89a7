"""The decoder layer's elementwise ops on heron-xpu's Triton kernels.

RMSNorm (with the fused residual add), SiLU-and-multiply and rotary embedding go to the kernels,
which round where the plain-torch reference rounds; embedding and matmuls stay with torch (on an
Intel GPU torch runs them through oneDNN/oneMKL at the device's rate). Inputs the kernels do not
take (a dtype they were not written for, a layout whose rows are not evenly strided, a cos/sin table
in another dtype than the heads) go to the reference implementation rather than failing.
"""

from __future__ import annotations

import torch

from heron_interfaces.kernel_ops import KernelOps


def _norm_layout_ok(x: torch.Tensor) -> bool:
    """Rows the RMSNorm kernel reads in place: a contiguous last dim with 2-D/3-D strides, or
    any contiguous tensor."""
    if x.dim() == 0 or (x.shape[-1] > 1 and x.stride(-1) != 1):
        return False
    return x.dim() <= 3 or x.is_contiguous()


class XpuKernelOps(KernelOps):
    """Triton kernels where their layout fits, the reference elsewhere."""

    name = "xpu-triton"

    def __init__(self) -> None:
        from heron_xpu import ops

        self._ops = ops

    def _fits(self, *tensors: torch.Tensor) -> bool:
        first = tensors[0]
        return first.dtype in self._ops.FLOAT_DTYPES and all(
            t.dtype == first.dtype and t.device == first.device for t in tensors
        )

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if not (self._fits(x, weight) and weight.dim() == 1 and _norm_layout_ok(x)):
            return super().rms_norm(x, weight, eps)
        return self._ops.rms_norm(x, weight.contiguous(), eps)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not (
            self._fits(x, residual, weight)
            and weight.dim() == 1
            and residual.shape == x.shape
            and _norm_layout_ok(x)
            and _norm_layout_ok(residual)
        ):
            return super().add_rms_norm(x, residual, weight, eps)
        return self._ops.add_rms_norm(x, residual, weight.contiguous(), eps)

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        plain_rows = (x.dim() == 2 and (x.stride(1) == 1 or x.shape[1] <= 1)) or x.is_contiguous()
        if not (self._fits(x) and x.dim() >= 1 and x.shape[-1] % 2 == 0 and plain_rows):
            return super().silu_and_mul(x)
        return self._ops.silu_and_mul(x)

    def rotary(
        self, positions: torch.Tensor, heads: torch.Tensor, cos_sin_cache: torch.Tensor
    ) -> torch.Tensor:
        if not (
            self._fits(heads, cos_sin_cache)
            and heads.dim() == 3
            and heads.stride(-1) == 1
            and positions.dim() == 1
            and positions.dtype in (torch.int64, torch.int32)
            and positions.is_contiguous()
            and positions.device == heads.device
            and cos_sin_cache.dim() == 2
            and cos_sin_cache.stride(1) == 1
            and cos_sin_cache.shape[1] % 2 == 0
            and 0 < cos_sin_cache.shape[1] <= heads.shape[2]
        ):
            return super().rotary(positions, heads, cos_sin_cache)
        return self._ops.rotary(positions, heads, cos_sin_cache)
