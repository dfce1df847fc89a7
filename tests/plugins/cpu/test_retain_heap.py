"""heron-cpu keeps freed activations in glibc's heap (``memory.retain_freed_heap``): steps that
allocate and free tens of MB no longer fault their pages in again each time. Each case runs in a
fresh interpreter, since the setting is process-wide."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from heron_cpu.memory import retain_freed_heap

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

_STEPS = """
import resource, sys, torch
{setup}
def step():  # a prefill's activations: 12 buffers of 6 MB, written, then freed
    buffers = [torch.empty(3 << 20, dtype=torch.bfloat16).fill_(1) for _ in range(12)]
    del buffers
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setup: str) -> int:
    code = _STEPS.format(setup=setup)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def test_retained_heap_stops_refaulting_each_step() -> None:
    default = _faults("")
    retained = _faults("from heron_cpu.memory import retain_freed_heap; assert retain_freed_heap()")
    # 72 MB freed per step: glibc's default trims it and faults ~18,000 pages back in per step.
    assert default > 20_000, default
    assert retained < default // 10, (retained, default)


def test_kernel_ops_apply_it_unless_turned_off() -> None:
    applied = "from heron_cpu.kernel_ops import CpuKernelOps; CpuKernelOps()"
    assert _faults(applied) < 5_000
    assert retain_freed_heap({"HERON_CPU_RETAIN_HEAP": "0"}) is False
