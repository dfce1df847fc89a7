"""Conformance tests of a platform's :class:`~heron_interfaces.MemoryProfiler`.

Core turns these numbers into a KV-cache size with one formula, so they must be honest: plausible
magnitudes, ``free <= total``, ``allocated <= peak``, and a peak that follows a real allocation and
can be reset.
"""

from __future__ import annotations

import gc

import pytest

from heron_interfaces.memory import MemoryProfiler, MemorySnapshot
from heron_interfaces.platform import Platform

PROBE_BYTES = 256 << 20
"""Large enough to stand out of allocator noise, and to be returned to the OS when freed."""


@pytest.fixture
def profiler(backend_platform: type[Platform]) -> MemoryProfiler:
    profiler = backend_platform.memory_profiler()
    assert isinstance(profiler, MemoryProfiler)
    return profiler


def _check(snap: MemorySnapshot) -> None:
    assert isinstance(snap, MemorySnapshot)
    for field in ("free", "total", "allocated", "peak"):
        value = getattr(snap, field)
        assert isinstance(value, int) and value > 0, f"{field} = {value!r}"
    assert snap.free <= snap.total, snap
    assert snap.allocated <= snap.peak, snap
    if snap.kv_budget is not None:
        assert isinstance(snap.kv_budget, int) and 0 < snap.kv_budget <= snap.total, snap


def test_snapshot_is_sane(profiler: MemoryProfiler) -> None:
    _check(profiler.snapshot())


def test_peak_follows_allocation_and_resets(
    profiler: MemoryProfiler, backend_platform: type[Platform]
) -> None:
    """An allocation raises ``allocated`` and ``peak``; after freeing it, reset_peak lowers peak."""
    import torch

    device = torch.device(backend_platform.device_type, 0)
    gc.collect()
    if device.type == "cpu":
        _return_free_heap_to_os()
    profiler.reset_peak()
    before = profiler.snapshot()
    _check(before)
    probe = torch.ones(PROBE_BYTES // 4, dtype=torch.float32, device=device)
    backend_platform.synchronize()
    during = profiler.snapshot()
    _check(during)
    assert during.allocated >= before.allocated + PROBE_BYTES // 2, (before, during)
    assert during.peak >= before.allocated + PROBE_BYTES // 2, (before, during)
    del probe
    gc.collect()
    if device.type == "cpu":
        _return_free_heap_to_os()
    backend_platform.synchronize()
    profiler.reset_peak()
    after = profiler.snapshot()
    _check(after)
    assert after.peak <= during.peak - PROBE_BYTES // 2, ("reset_peak did not reset", during, after)


def _return_free_heap_to_os() -> None:
    """Give memory freed by earlier tests back to the OS (glibc ``malloc_trim``).

    In a long test process the C allocator keeps freed pages resident and hands them to the probe,
    so the process RSS would rightly not grow; trimming first makes the probe fault in new pages.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
