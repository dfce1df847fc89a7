"""The CPU backend's memory numbers: host RAM, with the KV cache sized by ``HERON_CPU_KVCACHE_SPACE``.

The reading of ``/proc`` and cgroups is shared with every RAM-backed backend in
:mod:`heron_interfaces.host_memory`; this module only names the variable and its default (4 GiB).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from heron_interfaces import host_memory
from heron_interfaces.host_memory import GIB, HostMemoryProfiler, KvCacheSpaceError, system_memory

KV_SPACE_ENV = "HERON_CPU_KVCACHE_SPACE"
DEFAULT_KV_SPACE_GIB = 4.0

__all__ = [
    "DEFAULT_KV_SPACE_GIB",
    "GIB",
    "KV_SPACE_ENV",
    "CpuMemoryProfiler",
    "KvCacheSpaceError",
    "kv_cache_space",
    "system_memory",
]


def kv_cache_space(available: int, environ: Mapping[str, str] | None = None) -> int:
    """Bytes of KV cache from ``HERON_CPU_KVCACHE_SPACE`` (see :func:`host_memory.kv_cache_space`)."""
    return host_memory.kv_cache_space(
        available, environ, env_var=KV_SPACE_ENV, default_gib=DEFAULT_KV_SPACE_GIB
    )


class CpuMemoryProfiler(HostMemoryProfiler):
    def __init__(
        self, environ: Mapping[str, str] | None = None, proc: Path = Path("/proc")
    ) -> None:
        super().__init__(
            env_var=KV_SPACE_ENV, default_gib=DEFAULT_KV_SPACE_GIB, environ=environ, proc=proc
        )
