"""The CPU backend's memory numbers: host RAM, with the KV cache sized by ``HERON_CPU_KVCACHE_SPACE``.

The reading of ``/proc`` and cgroups is shared with every RAM-backed backend in
:mod:`heron_interfaces.host_memory`; this module only names the variable and its default (4 GiB),
and decides which of the backend's memory goes on transparent huge pages (``HERON_CPU_HUGE_PAGES``,
on unless set to 0): the KV cache and the weights the GEMV kernel streams.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from heron_interfaces import host_memory
from heron_interfaces.host_memory import GIB, HostMemoryProfiler, KvCacheSpaceError, system_memory

logger = logging.getLogger(__name__)

KV_SPACE_ENV = "HERON_CPU_KVCACHE_SPACE"
DEFAULT_KV_SPACE_GIB = 4.0
HUGE_PAGES_ENV = "HERON_CPU_HUGE_PAGES"
RETAIN_HEAP_ENV = "HERON_CPU_RETAIN_HEAP"

__all__ = [
    "DEFAULT_KV_SPACE_GIB",
    "GIB",
    "HUGE_PAGES_ENV",
    "KV_SPACE_ENV",
    "RETAIN_HEAP_ENV",
    "CpuMemoryProfiler",
    "HugePageArena",
    "KvCacheSpaceError",
    "huge_pages_enabled",
    "kv_cache_space",
    "place_on_huge_pages",
    "retain_freed_heap",
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


def huge_pages_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """``HERON_CPU_HUGE_PAGES`` is unset or anything but ``0``/``false``/``no``/``off``."""
    raw = (os.environ if environ is None else environ).get(HUGE_PAGES_ENV, "1")
    return raw.strip().lower() not in {"0", "false", "no", "off"}


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def retain_freed_heap(environ: Mapping[str, str] | None = None) -> bool:
    """Keep freed activations in the process's heap instead of handing them back to the OS.

    Why: a prefill or encoder step of 2,048 tokens allocates and frees ~90 MB of activations.
    Under glibc's default, adaptive thresholds the freed top of the heap goes back to the OS
    whenever it exceeds twice the largest recent chunk, so the next step faults every page in
    again, zeroed by the kernel: 320,000 page faults and 7 % of a MiniLM embedding run in system
    time here. Buffers up to 32 MB (glibc's ceiling) then come from the heap, and its top is kept
    up to 1 GiB; the peak memory is the same, it is only not returned between steps.

    Process-wide, idempotent; False (nothing changed) where the C library is not glibc or
    ``HERON_CPU_RETAIN_HEAP`` is ``0``/``false``/``no``/``off`` (glibc's defaults kept). An
    allocator preloaded in glibc's place (tcmalloc, jemalloc) keeps its own caching.
    """
    raw = (os.environ if environ is None else environ).get(RETAIN_HEAP_ENV, "1")
    if raw.strip().lower() in {"0", "false", "no", "off"}:
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


_reported: set[str] = set()


def _report(what: str, advised: int) -> None:
    """Log once per kind of memory whether it went on huge pages, so a user sees which path runs."""
    enabled = huge_pages_enabled()
    if what in _reported or (enabled and not advised):  # too small or unsupported: nothing to say
        return
    _reported.add(what)
    if enabled:
        logger.info(
            "heron-cpu: %s on transparent huge pages (%s=0 turns this off)", what, HUGE_PAGES_ENV
        )
    else:
        logger.info("heron-cpu: %s on normal pages (%s=0)", what, HUGE_PAGES_ENV)


def place_on_huge_pages(tensor: Any, what: str) -> int:
    """Advise an untouched host tensor onto huge pages before it is first written.

    Returns the bytes advised (0 when disabled, unsupported or smaller than one huge page).
    """
    advised = 0
    if huge_pages_enabled():
        nbytes = tensor.numel() * tensor.element_size()
        advised = host_memory.advise_huge_pages(tensor.data_ptr(), nbytes, populated=False)
    _report(what, advised)
    return advised


class HugePageArena:
    """Packs many weights into a few huge-page-backed chunks.

    A decoder's matrices are 0.5-4 MiB each and every one is its own allocation, which the kernel
    cannot map with 2 MiB pages (a huge page needs an aligned 2 MiB of one mapping). Moving them
    side by side into chunks of :attr:`chunk_bytes` puts nearly all of the weights the GEMV streams
    on huge pages. Chunks are never freed: weights live as long as the model.
    """

    chunk_bytes = 64 << 20
    align = 64

    def __init__(self) -> None:
        self._chunk: Any = None
        self._used = 0

    def adopt(self, weight: Any, what: str = "GEMV weights") -> Any:
        """Move ``weight``'s data (a contiguous CPU tensor or parameter) into the arena, in place.

        ``weight.data`` is re-pointed, so the module that owns the parameter reads the new copy
        and the old storage is released; returns the weight. Without huge pages it is unchanged.
        """
        import torch

        if not huge_pages_enabled() or not weight.is_contiguous():
            return weight
        slot = self.empty(weight.shape, weight.dtype, what)
        with torch.no_grad():
            slot.copy_(weight)
        weight.data = slot
        return weight

    def empty(self, shape: Any, dtype: Any, what: str) -> Any:
        """An uninitialised contiguous tensor in the arena (plain ``torch.empty`` without huge
        pages), its pages already faulted in: for a layout built straight into it."""
        import torch

        if not huge_pages_enabled():
            return torch.empty(shape, dtype=dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        padded = -(-nbytes // self.align) * self.align
        if nbytes >= self.chunk_bytes // 2:
            chunk, offset = self._new_chunk(padded, what), 0
        else:
            if self._chunk is None or self._used + padded > self._chunk.numel():
                self._chunk, self._used = self._new_chunk(self.chunk_bytes, what), 0
            chunk, offset = self._chunk, self._used
            self._used += padded
        slot = chunk[offset : offset + nbytes].view(dtype).view(shape)
        host_memory.prefault_for_write(slot.data_ptr(), nbytes)
        return slot

    @staticmethod
    def _new_chunk(nbytes: int, what: str) -> Any:
        """``nbytes`` of uint8 starting on a huge-page boundary, advised before first touch."""
        import torch

        huge = host_memory.HUGE_PAGE
        nbytes = -(-nbytes // huge) * huge
        raw = torch.empty(nbytes + huge, dtype=torch.uint8)
        start = -raw.data_ptr() % huge
        chunk = raw[start : start + nbytes]
        place_on_huge_pages(chunk, what)
        return chunk
