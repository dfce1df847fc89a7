"""Host-memory numbers for backends whose KV cache lives in RAM, read from ``/proc`` (no psutil).

On a CPU the KV cache shares RAM with everything else, so core does not derive its size from
"free memory after the weights" as on a GPU; the user states it with an environment variable (GiB)
that each backend names (``HERON_CPU_KVCACHE_SPACE`` for heron-cpu), reported as ``kv_budget``. An
explicit value larger than the memory available right now is an error at start-up, instead of an
out-of-memory kill mid-serving. Light to import: standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from heron_interfaces.memory import MemoryProfiler, MemorySnapshot

logger = logging.getLogger(__name__)

GIB = 1 << 30
HUGE_PAGE = 2 << 20
"""x86-64 and arm64 transparent huge pages: one TLB entry covers 2 MiB instead of 4 KiB."""
_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25  # Linux 6.1+: back an already-written range with huge pages now
_MADV_POPULATE_WRITE = 23  # Linux 5.14+: fault a range in for writing, in one call
_UNLIMITED = 1 << 60  # cgroup v1 writes a huge number for "no limit"


class KvCacheSpaceError(ValueError):
    """The KV-space variable is malformed or asks for more memory than is available."""


def _meminfo(proc: Path) -> dict[str, int]:
    """``/proc/meminfo`` in bytes."""
    values = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) < _UNLIMITED else None


def _cgroup_limit_and_usage(sys_fs: Path) -> tuple[int | None, int | None]:
    """The container's memory limit and usage (cgroup v2, else v1); ``None`` when unlimited."""
    cgroup = sys_fs / "fs" / "cgroup"
    limit = _read_int(cgroup / "memory.max")
    if limit is not None:
        return limit, _read_int(cgroup / "memory.current")
    limit = _read_int(cgroup / "memory" / "memory.limit_in_bytes")
    return limit, _read_int(cgroup / "memory" / "memory.usage_in_bytes")


def system_memory(proc: Path = Path("/proc"), sys_fs: Path = Path("/sys")) -> tuple[int, int]:
    """``(available, total)`` bytes, as the machine or the container's limit allows."""
    info = _meminfo(proc)
    total = info["MemTotal"]
    available = info.get("MemAvailable", info.get("MemFree", 0))
    limit, usage = _cgroup_limit_and_usage(sys_fs)
    if limit is not None and limit < total:
        total = limit
        available = min(available, max(limit - (usage or 0), 0))
    return min(available, total), total


def kv_cache_space(
    available: int,
    environ: Mapping[str, str] | None = None,
    *,
    env_var: str,
    default_gib: float,
) -> int:
    """Bytes of KV cache from ``env_var`` (GiB), checked against ``available`` bytes.

    Unset, the default is capped at half the available memory (with a warning) so that a
    small machine still starts; a value the user chose is never silently shrunk.
    """
    env = os.environ if environ is None else environ
    raw = env.get(env_var, "").strip()
    if not raw:
        requested = int(default_gib * GIB)
        if requested > available:
            capped = max(available // 2, 1)
            logger.warning(
                "%s is unset and the default %.1f GiB exceeds the %.2f GiB available; "
                "using %.2f GiB",
                env_var,
                default_gib,
                available / GIB,
                capped / GIB,
            )
            return capped
        return requested
    try:
        gib = float(raw)
    except ValueError:
        gib = math.nan
    if not math.isfinite(gib) or gib <= 0:
        raise KvCacheSpaceError(
            f"{env_var}={raw!r} is not a positive number of GiB (for example 4 or 0.5)"
        )
    requested = int(gib * GIB)
    if requested > available:
        raise KvCacheSpaceError(
            f"{env_var}={raw} asks for {gib:.2f} GiB of KV cache, but only "
            f"{available / GIB:.2f} GiB of memory is available; lower {env_var}"
        )
    return max(requested, 1)


def _status_bytes(proc_self: Path, field: str) -> int:
    for line in (proc_self / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"{field} is missing from {proc_self / 'status'}")


class HostMemoryProfiler(MemoryProfiler):
    """Process RSS as ``allocated`` and its high-water mark (``VmHWM``) as ``peak``.

    ``reset_peak`` writes ``5`` to ``/proc/self/clear_refs``, which makes the kernel restart
    ``VmHWM`` at the current RSS; where that is not allowed, the peak falls back to the largest
    RSS seen by :meth:`snapshot` since the reset.
    """

    def __init__(
        self,
        *,
        env_var: str,
        default_gib: float,
        environ: Mapping[str, str] | None = None,
        proc: Path = Path("/proc"),
    ) -> None:
        self.env_var = env_var
        self.default_gib = default_gib
        self._environ = environ
        self._proc = proc
        self._proc_self = proc / "self"
        self._kernel_peak = True
        self._seen_peak = 0

    def snapshot(self) -> MemorySnapshot:
        available, total = system_memory(self._proc)
        rss = _status_bytes(self._proc_self, "VmRSS")
        self._seen_peak = max(self._seen_peak, rss)
        peak = _status_bytes(self._proc_self, "VmHWM") if self._kernel_peak else self._seen_peak
        return MemorySnapshot(
            free=available,
            total=total,
            allocated=rss,
            peak=max(peak, rss),
            kv_budget=kv_cache_space(
                available, self._environ, env_var=self.env_var, default_gib=self.default_gib
            ),
        )

    def reset_peak(self) -> None:
        try:
            (self._proc_self / "clear_refs").write_text("5")
            self._kernel_peak = True
        except OSError:
            self._kernel_peak = False
        self._seen_peak = _status_bytes(self._proc_self, "VmRSS")


_libc: ctypes.CDLL | None = None


def _madvise() -> Callable[[int, int, int], int] | None:
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    return _libc.madvise


def advise_huge_pages(address: int, nbytes: int, *, populated: bool) -> int:
    """Ask Linux to back ``[address, address + nbytes)`` with transparent huge pages.

    Decode steps stream the weights and scattered KV tiles from RAM; with 4 KiB pages nearly every
    tile is a TLB miss and the hardware prefetchers stop at each page, which costs ~10 % of the
    bandwidth (measured: 22 -> 25 GB/s streamed with two threads). Most distributions leave THP at
    ``madvise``, so a backend has to ask. ``populated``: the range already holds data (weights),
    so also collapse it now (``MADV_COLLAPSE``); an untouched range (a fresh KV cache) gets huge
    pages as it is first written. Only whole 2 MiB pages inside the range are advised; returns
    their byte count, 0 where the platform or the kernel does not support it (nothing to fix: the
    memory stays on small pages).
    """
    madvise = _madvise()
    start = (address + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
    end = (address + nbytes) & ~(HUGE_PAGE - 1)
    if madvise is None or end <= start:
        return 0
    if madvise(start, end - start, _MADV_HUGEPAGE) != 0:
        logger.debug("madvise(MADV_HUGEPAGE) failed: errno %d", ctypes.get_errno())
        return 0
    if populated and madvise(start, end - start, _MADV_COLLAPSE) != 0:
        # Older kernels lack MADV_COLLAPSE; khugepaged still collapses the range in the background.
        logger.debug("madvise(MADV_COLLAPSE) failed: errno %d", ctypes.get_errno())
    return end - start


def prefault_for_write(address: int, nbytes: int) -> bool:
    """Fault ``[address, address + nbytes)`` in before a bulk copy fills it.

    A multi-threaded copy into fresh memory pays one page fault per page from every thread
    (measured: 212 MB of weights copied in 0.35-0.40 s that way, 0.05 s after this call), so the
    copy into a new huge-page arena goes through here first. False where unsupported (Linux < 5.14,
    other platforms): the copy then faults the pages in itself.
    """
    madvise = _madvise()
    start = address & ~4095
    end = (address + nbytes + 4095) & ~4095
    if madvise is None or end <= start:
        return False
    return madvise(start, end - start, _MADV_POPULATE_WRITE) == 0
