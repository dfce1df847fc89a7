"""Conformance tests of a platform's :class:`~heron_interfaces.MemoryProfiler`.

Core turns these numbers into a KV-cache size with one formula, so they must be honest: plausible
magnitudes, ``free <= total``, ``allocated <= peak``, and a peak that follows a real allocation and
can be reset.

``allocated`` and ``peak`` may be 0 on an accelerator: a fresh GPU process has allocated nothing
yet (``torch.cuda.memory_allocated()`` before the first tensor). On the CPU they measure the
process itself, which always holds memory, so there they must be positive.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import pytest

from heron_interfaces.memory import MemoryProfiler, MemorySnapshot
from heron_interfaces.platform import Platform

if TYPE_CHECKING:
    import torch

PROBE_BYTES = 256 << 20
"""Large enough to stand out of allocator noise, and to be returned to the OS when freed."""


@pytest.fixture
def profiler(backend_platform: type[Platform], backend_device: torch.device) -> MemoryProfiler:
    """The platform's profiler, created once ``backend_device`` is the current device."""
    profiler = backend_platform.memory_profiler()
    assert isinstance(profiler, MemoryProfiler)
    return profiler


def _check(snap: MemorySnapshot, device: torch.device) -> None:
    assert isinstance(snap, MemorySnapshot)
    for field in ("free", "total", "allocated", "peak"):
        value = getattr(snap, field)
        assert isinstance(value, int), f"{field} = {value!r}"
    assert snap.free > 0 and snap.total > 0, snap
    # Host memory of a running process is never 0; a device allocator's is before first use.
    least = 1 if device.type == "cpu" else 0
    assert snap.allocated >= least and snap.peak >= least, snap
    assert snap.free <= snap.total, snap
    assert snap.allocated <= snap.peak, snap
    if snap.kv_budget is not None:
        assert isinstance(snap.kv_budget, int) and 0 < snap.kv_budget <= snap.total, snap


def test_snapshot_is_sane(profiler: MemoryProfiler, backend_device: torch.device) -> None:
    _check(profiler.snapshot(), backend_device)


def test_peak_follows_allocation_and_resets(
    profiler: MemoryProfiler, backend_platform: type[Platform], backend_device: torch.device
) -> None:
    """An allocation raises ``allocated`` and ``peak``; after freeing it, reset_peak lowers peak."""
    import torch

    device = backend_device
    gc.collect()
    if device.type == "cpu":
        _return_free_heap_to_os()
    profiler.reset_peak()
    before = profiler.snapshot()
    _check(before, device)
    probe = torch.ones(PROBE_BYTES // 4, dtype=torch.float32, device=device)
    backend_platform.synchronize()
    during = profiler.snapshot()
    _check(during, device)
    assert during.allocated >= before.allocated + PROBE_BYTES // 2, (before, during)
    assert during.peak >= before.allocated + PROBE_BYTES // 2, (before, during)
    del probe
    gc.collect()
    if device.type == "cpu":
        _return_free_heap_to_os()
    backend_platform.synchronize()
    profiler.reset_peak()
    after = profiler.snapshot()
    _check(after, device)
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
