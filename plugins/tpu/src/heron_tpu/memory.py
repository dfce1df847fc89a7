"""Memory numbers of the TPU backend: HBM from the TPU runtime, or host RAM in interpreter mode.

On a TPU the numbers come from the runtime's allocator statistics (``Device.memory_stats()``:
``bytes_limit``, ``bytes_in_use``, ``peak_bytes_in_use``), read once the worker owns the chip. The
runtime keeps its peak since process start and offers no reset, so :meth:`reset_peak` remembers
the level at the reset and a later peak counts only if the runtime's peak moved past it.

In interpreter mode the "device" is the host, so the KV cache is sized like heron-cpu's, by an
explicit ``HERON_TPU_KVCACHE_SPACE`` (GiB), small by default: every KV write copies the layer's
cache back from JAX into torch (see :mod:`heron_tpu.runtime`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heron_interfaces import MemoryProfiler, MemorySnapshot
from heron_interfaces.host_memory import HostMemoryProfiler

KV_SPACE_ENV = "HERON_TPU_KVCACHE_SPACE"
DEFAULT_INTERPRET_KV_SPACE_GIB = 0.0625


class TpuMemoryProfiler(MemoryProfiler):
    """HBM of one TPU chip through the JAX runtime's allocator statistics."""

    def __init__(self, device: Any = None) -> None:
        if device is None:
            import jax

            device = jax.local_devices()[0]
        self._device = device
        self._reset_at: int | None = None
        self._seen = 0

    def _stats(self) -> dict[str, int]:
        stats = self._device.memory_stats()
        if not stats or "bytes_limit" not in stats:
            raise RuntimeError(
                f"the TPU runtime reports no memory statistics for {self._device}; heron-tpu "
                "needs bytes_limit and bytes_in_use to size the KV cache"
            )
        return stats

    def snapshot(self) -> MemorySnapshot:
        stats = self._stats()
        total = int(stats["bytes_limit"])
        in_use = int(stats.get("bytes_in_use", 0))
        runtime_peak = int(stats.get("peak_bytes_in_use", in_use))
        self._seen = max(self._seen, in_use)
        if self._reset_at is None or runtime_peak > self._reset_at:
            peak = runtime_peak
        else:
            peak = self._seen
        return MemorySnapshot(
            free=max(0, total - in_use), total=total, allocated=in_use, peak=max(peak, in_use)
        )

    def reset_peak(self) -> None:
        stats = self._stats()
        self._reset_at = int(stats.get("peak_bytes_in_use", 0))
        self._seen = int(stats.get("bytes_in_use", 0))


class InterpretMemoryProfiler(HostMemoryProfiler):
    """Host RAM, with the KV cache sized by ``HERON_TPU_KVCACHE_SPACE``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(
            env_var=KV_SPACE_ENV, default_gib=DEFAULT_INTERPRET_KV_SPACE_GIB, environ=environ
        )
