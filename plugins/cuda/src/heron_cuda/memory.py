"""Raw GPU memory numbers through torch's caching allocator (CUDA and ROCm builds alike).

By default the snapshot leaves ``kv_budget`` as ``None``: core owns the formula that turns free
memory into KV blocks. A user who sets ``HERON_GPU_MEMORY_UTILIZATION`` (a fraction in (0, 1])
gets an explicit budget instead, computed the way vLLM does, from numbers taken after the weights
are loaded and one profiling forward pass ran::

    non_torch = (total - free) - reserved      # CUDA context, NCCL buffers, other processes
    kv_budget = utilization * total - non_torch - peak

where ``reserved`` is what torch's caching allocator holds and ``peak`` its peak allocation (weights
plus activations). Everything the KV cache may not take is thus: the (1 - utilization) headroom,
memory used outside torch, and torch's own peak.

This file is shared verbatim by heron_cuda and heron_rocm (plugins/rocm's CMake installs it).
"""

from __future__ import annotations

import os

import torch

from heron_interfaces import MemoryProfiler, MemorySnapshot

UTILIZATION_ENV = "HERON_GPU_MEMORY_UTILIZATION"


def utilization_from_env() -> float | None:
    """The fraction set in ``HERON_GPU_MEMORY_UTILIZATION``, or ``None`` when it is unset."""
    raw = os.environ.get(UTILIZATION_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{UTILIZATION_ENV}={raw!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{UTILIZATION_ENV}={raw!r} must be in (0, 1]")
    return value


def kv_budget_bytes(*, utilization: float, free: int, total: int, reserved: int, peak: int) -> int:
    """The explicit KV budget of the module docstring, never negative."""
    non_torch = max(0, (total - free) - reserved)
    return max(0, int(utilization * total) - non_torch - peak)


class GpuMemoryProfiler(MemoryProfiler):
    """Memory of one GPU (the current one when ``device`` is ``None``)."""

    def __init__(
        self, device: torch.device | int | None = None, utilization: float | None = None
    ) -> None:
        self._device = device
        self._utilization = utilization if utilization is not None else utilization_from_env()

    def snapshot(self) -> MemorySnapshot:
        free, total = torch.cuda.mem_get_info(self._device)
        allocated = torch.cuda.memory_allocated(self._device)
        peak = max(torch.cuda.max_memory_allocated(self._device), allocated)
        kv_budget = None
        if self._utilization is not None:
            kv_budget = kv_budget_bytes(
                utilization=self._utilization,
                free=free,
                total=total,
                reserved=torch.cuda.memory_reserved(self._device),
                peak=peak,
            )
        return MemorySnapshot(
            free=free, total=total, allocated=allocated, peak=peak, kv_budget=kv_budget
        )

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self._device)
