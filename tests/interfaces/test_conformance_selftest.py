"""The conformance suite run on a toy backend built from the torch reference kernels.

This checks the suite itself: a backend that *is* the reference must pass every test, so a failure
here is a bug in the suite (or in the reference), never in a backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from heron_interfaces import AttentionBackend, Capabilities, Platform
from heron_interfaces import reference as ref
from heron_interfaces.memory import MemoryProfiler, MemorySnapshot
from heron_interfaces.testing.conformance import *  # noqa: F403


class ToyAttention(ref.ReferenceAttention):
    """The reference kernels, declaring only the block sizes the toy platform advertises."""

    name = "toy"

    @classmethod
    def supported_block_sizes(cls) -> Sequence[int]:
        return (16, 32)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


class ToyProfiler(MemoryProfiler):
    """Process RSS and its high-water mark, reset through ``/proc/self/clear_refs``."""

    def snapshot(self) -> MemorySnapshot:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        rss = _status_kib("VmRSS")
        peak = max(_status_kib("VmHWM"), rss)
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return MemorySnapshot(free=min(free, pages), total=pages, allocated=rss, peak=peak)

    def reset_peak(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


class ToyPlatform(Platform):
    name = "toy"
    device_type = "cpu"
    dist_backend = "gloo"

    @classmethod
    def device_count(cls) -> int:
        return 1

    @classmethod
    def capabilities(cls) -> Capabilities:
        return Capabilities(
            dtypes=("float32", "bfloat16"), block_sizes=(16, 32), head_sizes=(64, 80)
        )

    @classmethod
    def attention_backend(cls) -> type[AttentionBackend]:
        return ToyAttention

    @classmethod
    def memory_profiler(cls) -> MemoryProfiler:
        return ToyProfiler()


@pytest.fixture(scope="session")
def backend_platform() -> type[Platform]:
    return ToyPlatform
