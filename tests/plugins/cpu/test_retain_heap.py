"""heron-cpu keeps freed activations in glibc's heap (``memory.retain_freed_heap``): a step that
allocates and frees tens of MB leaves them in the heap for the next one, instead of handing them
back to the OS, which the next step would fault in again page by page. Each case runs in a fresh
interpreter, since the setting is process-wide. What glibc did is read from its ``mallinfo2``
(page-fault counts are not deterministic here: the kernel may reclaim idle pages on its own)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from heron_cpu.memory import retain_freed_heap

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

_STEP = """
import ctypes, torch
{setup}
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
before = mallinfo2()
# A prefill's activations: 12 buffers of 6 MB, written, then freed.
buffers = [torch.empty(3 << 20, dtype=torch.bfloat16).fill_(1) for _ in range(12)]
during = mallinfo2()
del buffers
after = mallinfo2()
print(during.hblks - before.hblks, after.arena - before.arena)
"""
_STEP_BYTES = 12 * (6 << 20)


def _one_step(setup: str) -> tuple[int, int]:
    """(buffers glibc mapped with mmap, bytes the heap still holds after the step's frees)."""
    code = _STEP.format(setup=setup)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    mapped, kept = done.stdout.split()[-2:]
    return int(mapped), int(kept)


def test_retained_heap_keeps_a_steps_buffers() -> None:
    # glibc's default: each buffer its own mmap, unmapped (its pages gone) when freed.
    mapped, kept = _one_step("")
    assert mapped == 12 and kept < _STEP_BYTES // 2, (mapped, kept)
    # Retained: the buffers come from the heap and stay there for the next step.
    mapped, kept = _one_step(
        "from heron_cpu.memory import retain_freed_heap; assert retain_freed_heap()"
    )
    assert mapped == 0 and kept > _STEP_BYTES * 9 // 10, (mapped, kept)


def test_kernel_ops_apply_it_unless_turned_off() -> None:
    applied = "from heron_cpu.kernel_ops import CpuKernelOps; CpuKernelOps()"
    mapped, kept = _one_step(applied)
    assert mapped == 0 and kept > _STEP_BYTES * 9 // 10, (mapped, kept)
    assert retain_freed_heap({"HERON_CPU_RETAIN_HEAP": "0"}) is False
