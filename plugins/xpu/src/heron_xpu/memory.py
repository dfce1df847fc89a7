"""Raw memory numbers of an Intel GPU through torch.xpu's caching allocator.

The snapshot leaves ``kv_budget`` as ``None``: core owns the formula that turns device memory into
KV blocks (its ``memory_utilization`` of total memory, less weights and the profiled activation
peak), exactly as for any GPU. ``torch.xpu.mem_get_info`` asks the driver (Level Zero) for free
and total memory; allocated and peak come from torch's allocator statistics.

In interpreter mode the "device" is host RAM, sized like heron-cpu's KV cache by an explicit
variable, ``HERON_XPU_KVCACHE_SPACE`` (GiB).
"""

from __future__ import annotations

import torch

from heron_interfaces import MemoryProfiler, MemorySnapshot
from heron_interfaces.host_memory import HostMemoryProfiler

INTERPRET_KV_SPACE_ENV = "HERON_XPU_KVCACHE_SPACE"
INTERPRET_DEFAULT_KV_SPACE_GIB = 1.0


class XpuMemoryProfiler(MemoryProfiler):
    """Memory of one Intel GPU (the current one when ``device`` is ``None``)."""

    def __init__(self, device: torch.device | int | None = None) -> None:
        self._device = device

    def snapshot(self) -> MemorySnapshot:
        free, total = torch.xpu.mem_get_info(self._device)
        allocated = torch.xpu.memory_allocated(self._device)
        peak = max(torch.xpu.max_memory_allocated(self._device), allocated)
        return MemorySnapshot(free=free, total=total, allocated=allocated, peak=peak)

    def reset_peak(self) -> None:
        torch.xpu.reset_peak_memory_stats(self._device)


def interpret_memory_profiler() -> HostMemoryProfiler:
    """Host RAM numbers with the KV budget from ``HERON_XPU_KVCACHE_SPACE`` (default 1 GiB)."""
    return HostMemoryProfiler(
        env_var=INTERPRET_KV_SPACE_ENV, default_gib=INTERPRET_DEFAULT_KV_SPACE_GIB
    )
