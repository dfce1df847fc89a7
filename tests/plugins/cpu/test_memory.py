"""HERON_CPU_KVCACHE_SPACE handling and /proc parsing of the CPU memory profiler."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron_cpu.memory import (
    GIB,
    KV_SPACE_ENV,
    CpuMemoryProfiler,
    KvCacheSpaceError,
    kv_cache_space,
    system_memory,
)
from heron_cpu.platform import CpuPlatform


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "inf", "4GiB"])
def test_invalid_values_name_the_variable(raw: str) -> None:
    with pytest.raises(KvCacheSpaceError, match=f"{KV_SPACE_ENV}=.*not a positive number of GiB"):
        kv_cache_space(64 * GIB, {KV_SPACE_ENV: raw})


def test_more_than_available_is_an_error_with_both_sizes() -> None:
    with pytest.raises(KvCacheSpaceError) as info:
        kv_cache_space(3 * GIB, {KV_SPACE_ENV: "6.5"})
    message = str(info.value)
    assert KV_SPACE_ENV in message and "6.50 GiB" in message and "3.00 GiB" in message


def test_explicit_values_and_fractions() -> None:
    assert kv_cache_space(64 * GIB, {KV_SPACE_ENV: "0.5"}) == GIB // 2
    assert kv_cache_space(64 * GIB, {KV_SPACE_ENV: " 2 "}) == 2 * GIB


def test_default_is_four_gib_capped_on_small_machines(caplog: pytest.LogCaptureFixture) -> None:
    assert kv_cache_space(64 * GIB, {}) == 4 * GIB
    assert kv_cache_space(2 * GIB, {}) == GIB
    assert KV_SPACE_ENV in caplog.text


def _fake_proc(tmp_path: Path, rss_kib: int, hwm_kib: int) -> Path:
    (tmp_path / "self").mkdir(exist_ok=True)
    (tmp_path / "meminfo").write_text(
        "MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    8192000 kB\n"
    )
    (tmp_path / "self" / "status").write_text(
        f"Name:\tpython\nVmHWM:\t{hwm_kib} kB\nVmRSS:\t{rss_kib} kB\n"
    )
    return tmp_path


def test_snapshot_reads_proc(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, rss_kib=1000, hwm_kib=3000)
    snap = CpuMemoryProfiler(environ={KV_SPACE_ENV: "1"}, proc=proc).snapshot()
    assert snap.allocated == 1000 * 1024 and snap.peak == 3000 * 1024
    assert snap.kv_budget == GIB and snap.total >= snap.free > 0


def test_peak_tracking_when_clear_refs_is_refused(tmp_path: Path) -> None:
    """Without a writable clear_refs the profiler tracks the peak of the RSS it has seen."""
    proc = _fake_proc(tmp_path, rss_kib=1000, hwm_kib=9000)
    (proc / "self" / "clear_refs").mkdir()  # writing to a directory fails like a refusal
    profiler = CpuMemoryProfiler(environ={}, proc=proc)
    profiler.reset_peak()
    assert profiler.snapshot().peak == 1000 * 1024
    _fake_proc(tmp_path, rss_kib=4000, hwm_kib=9000)
    profiler.snapshot()
    _fake_proc(tmp_path, rss_kib=2000, hwm_kib=9000)
    assert profiler.snapshot().peak == 4000 * 1024


def test_cgroup_limit_caps_total_and_available(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    proc = _fake_proc(tmp_path / "proc", rss_kib=1, hwm_kib=1)
    cgroup = tmp_path / "sys" / "fs" / "cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "memory.max").write_text(f"{4 * GIB}\n")
    (cgroup / "memory.current").write_text(f"{3 * GIB}\n")
    assert system_memory(proc, tmp_path / "sys") == (GIB, 4 * GIB)
    (cgroup / "memory.max").write_text("max\n")
    assert system_memory(proc, tmp_path / "sys") == (8192000 * 1024, 16384000 * 1024)


def test_budget_hint_names_the_variable() -> None:
    assert KV_SPACE_ENV in CpuPlatform.memory_budget_hint()
