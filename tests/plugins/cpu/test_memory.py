"""HERON_CPU_KVCACHE_SPACE handling and /proc parsing of the CPU memory profiler."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import pytest
import torch

from heron_cpu.attention import CpuAttentionBackend
from heron_cpu.memory import (
    GIB,
    HUGE_PAGES_ENV,
    KV_SPACE_ENV,
    CpuMemoryProfiler,
    HugePageArena,
    KvCacheSpaceError,
    huge_pages_enabled,
    kv_cache_space,
    system_memory,
)
from heron_cpu.platform import CpuPlatform
from heron_interfaces.host_memory import advise_huge_pages, prefault_for_write

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
needs_thp = pytest.mark.skipif(
    not sys.platform.startswith("linux")
    or not THP_MODE.exists()
    or "[never]" in THP_MODE.read_text(),
    reason="transparent huge pages are unavailable on this host",
)


def huge_bytes_at(address: int) -> int:
    """``AnonHugePages`` of the mapping of this process that contains ``address``."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0]
        if "-" in first and ":" not in first:
            start, end = (int(x, 16) for x in first.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("AnonHugePages:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no mapping holds {address:#x}")


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


@pytest.mark.parametrize(
    ("raw", "enabled"), [(None, True), ("1", True), ("0", False), ("off", False), ("No", False)]
)
def test_huge_pages_switch(raw: str | None, enabled: bool) -> None:
    assert huge_pages_enabled({} if raw is None else {HUGE_PAGES_ENV: raw}) is enabled


def test_advice_covers_only_whole_huge_pages() -> None:
    small = torch.empty(4096, dtype=torch.uint8)
    assert advise_huge_pages(small.data_ptr(), 4096, populated=False) == 0
    big = torch.empty(5 << 20, dtype=torch.uint8)
    advised = advise_huge_pages(big.data_ptr(), big.numel(), populated=False)
    if sys.platform.startswith("linux"):
        assert advised in (2 << 20, 4 << 20)  # the aligned 2 MiB pages inside 5 MiB


def test_arena_moves_weights_in_place_with_their_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    gen = torch.Generator().manual_seed(0)
    weights = [
        torch.nn.Parameter(torch.randn(rows, 576, generator=gen).to(torch.bfloat16), False)
        for rows in (960, 3, 3072)
    ]
    before = [(w.data_ptr(), w.detach().clone()) for w in weights]
    arena = HugePageArena()
    for w in weights:
        assert arena.adopt(w) is w
    for w, (old_ptr, values) in zip(weights, before, strict=True):
        assert w.data_ptr() != old_ptr and w.data_ptr() % HugePageArena.align == 0
        assert isinstance(w, torch.nn.Parameter) and torch.equal(w, values)
    # Side by side in one chunk, each starting where the previous one (padded) ends.
    first, second = weights[0], weights[1]
    assert second.data_ptr() - first.data_ptr() == 960 * 576 * 2


@needs_thp
def test_arena_weights_land_on_huge_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    arena = HugePageArena()
    weights = [torch.nn.Parameter(torch.ones(1024, 1024, dtype=torch.bfloat16), False)]
    weights += [torch.nn.Parameter(torch.ones(1536, 1024, dtype=torch.bfloat16), False)]
    for w in weights:
        arena.adopt(w)
    assert huge_bytes_at(weights[0].data_ptr()) >= 2 << 20


def test_arena_off_leaves_weights_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HUGE_PAGES_ENV, "0")
    w = torch.nn.Parameter(torch.ones(2048, 1024, dtype=torch.bfloat16), False)
    ptr = w.data_ptr()
    HugePageArena().adopt(w)
    assert w.data_ptr() == ptr


@needs_thp
def test_kv_cache_is_allocated_on_huge_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HUGE_PAGES_ENV, raising=False)
    # 64 MiB: above glibc's largest mmap threshold, so fresh pages as in an engine's cache.
    shape = CpuAttentionBackend.kv_cache_shape(4096, 16, 4, 64)
    cache = CpuAttentionBackend.allocate_kv_cache(shape, torch.bfloat16, torch.device("cpu"))
    assert cache.shape == shape and cache.dtype == torch.bfloat16 and cache.is_contiguous()
    cache.zero_()
    assert huge_bytes_at(cache.data_ptr() + (4 << 20)) >= 2 << 20


def test_prefault_for_write_keeps_the_memory_usable() -> None:
    buf = torch.empty(3 << 20, dtype=torch.uint8)
    done = prefault_for_write(buf.data_ptr() + 100, buf.numel() - 200)
    release = tuple(int(p) for p in platform.release().split(".")[:2] if p.isdigit())
    if sys.platform.startswith("linux") and release >= (5, 14):
        assert done
    buf.fill_(7)
    assert int(buf.sum()) == 7 * buf.numel()


@needs_thp
def test_advice_collapses_memory_that_already_holds_data() -> None:
    """``populated=True`` (MADV_COLLAPSE, Linux 6.1+) moves written pages onto huge pages now."""
    release = tuple(int(p) for p in platform.release().split(".")[:2] if p.isdigit())
    if release < (6, 1):
        pytest.skip(f"MADV_COLLAPSE needs Linux 6.1+, this is {platform.release()}")
    # 64 MiB: a fresh mapping of small pages (above glibc's largest mmap threshold).
    data = torch.arange(16 << 20, dtype=torch.int32)
    address = data.data_ptr() + (8 << 20)
    assert advise_huge_pages(data.data_ptr(), data.numel() * 4, populated=True) > 0
    assert huge_bytes_at(address) >= 2 << 20
    assert torch.equal(data[:: 1 << 20], torch.arange(0, 16 << 20, 1 << 20, dtype=torch.int32))
