"""Packed bf16 GEMM for CPUs with AVX512-BF16 and no AMX: ``out = x @ weight.T (+ bias)``.

On such CPUs (measured: AMD EPYC Zen 4) oneDNN's bf16 GEMM runs a decode step's small
projections well below the dot-product peak, and every call also pays torch's dispatch. The loop in
``csrc/gemm.cpp`` reaches the peak on those shapes and matches oneDNN at prefill sizes, from one
weight layout packed once at load (:func:`pack`), so the backend keeps a single copy of each
weight for every row count (``benchmarks/bench_gemv.py`` has the figures). On AMX machines
oneDNN's tile kernels are faster and this module is not used (see ``heron_cpu.kernel_ops``).

Like :mod:`heron_cpu.gemv`, the call goes straight to ``_C`` with one combined check; only a
failing call pays for naming the bad argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from heron_cpu._kernels import _C
from heron_cpu.gemv import check_tensor, kernel_paths, operands_ok, raise_invalid_operands
from heron_cpu.launch import launch

__all__ = ["PANEL", "PackedWeight", "available", "linear_packed", "pack"]

PANEL: int = _C.packed_panel_columns()
"""Output columns per panel of the packed layout (three 16-lane accumulators per x row)."""

_BF16 = torch.bfloat16


def available() -> bool:
    """Whether this CPU runs the packed GEMM (it has AVX512-BF16)."""
    return kernel_paths()["packed"]


@dataclass(frozen=True, slots=True)
class PackedWeight:
    """A ``[n, k]`` bf16 weight as panels: ``data[p, kk, c, e] = weight[p * PANEL + c, 2 * kk + e]``.

    Zero past ``n`` and ``k``. One 64-byte load of a panel is 16 output columns times one pair of
    K, the operand layout of the AVX512-BF16 dot product.
    """

    data: torch.Tensor
    n: int
    k: int

    def unpack(self) -> torch.Tensor:
        """The ``[n, k]`` weight again (for tests and for the torch fallback of odd calls)."""
        panels, pairs = self.data.shape[:2]
        plain = self.data.transpose(1, 2).reshape(panels * PANEL, pairs * 2)
        return plain[: self.n, : self.k]


def pack(
    weight: torch.Tensor,
    empty: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None,
) -> PackedWeight:
    """Pack a ``[n, k]`` bfloat16 CPU weight into panels (a copy; the input is not kept).

    ``empty(shape, dtype)`` allocates the packed tensor (default ``torch.empty``): the backend
    passes its huge-page arena, so that the panels are written once, where they will stay.
    """
    weight = check_tensor("weight", weight, 2)
    n, k = weight.shape
    if n % PANEL or k % 2:
        weight = F.pad(weight, (0, k % 2, 0, -n % PANEL))
    rows, cols = weight.shape
    panels = weight.view(rows // PANEL, PANEL, cols // 2, 2).transpose(1, 2)
    data = (empty or _empty)(tuple(panels.shape), weight.dtype)
    with torch.no_grad():
        data.copy_(panels)
    return PackedWeight(data, n, k)


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def linear_packed(
    x: torch.Tensor,
    weight: PackedWeight,
    bias: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ weight.T + bias`` in bfloat16, accumulated in fp32 and rounded to nearest even.

    ``x`` is ``[M, K]`` with a contiguous last dimension (rows may be strided), ``bias`` ``[N]`` or
    None, ``out`` ``[M, N]`` contiguous (allocated when None; it must not overlap the inputs). Runs
    on ``torch.get_num_threads()`` threads, without autograd.
    """
    n, k = weight.n, weight.k
    try:
        if out is None:
            out = x.new_empty(x.shape[0], n)
        valid = operands_ok(x, n, k, bias, out)
    except (AttributeError, TypeError, ValueError):  # not tensors, or not 2-D
        valid = False
    if not valid:
        raise_invalid_operands(x, n, k, bias, out)
        raise ValueError("invalid arguments")  # unreachable unless the two checks disagree
    launch(
        _C.linear_bf16_packed,
        out.data_ptr(),
        x.data_ptr(),
        weight.data.data_ptr(),
        0 if bias is None else bias.data_ptr(),
        x.shape[0],
        n,
        k,
        x.stride(0),
        torch.get_num_threads(),
    )
    return out
