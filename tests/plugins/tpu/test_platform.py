"""heron-tpu's registration, availability, memory numbers, communicator and bucket clamping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from heron_tpu import availability


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
    env.update(extra)
    return env


def test_import_and_probe_touch_no_device_runtime() -> None:
    """Core imports every backend to probe it: neither may load jax, libtpu or torch."""
    code = (
        "import sys, heron_tpu; from heron_tpu.availability import probe; probe();"
        "print(','.join(m for m in ('jax', 'jaxlib', 'libtpu', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_clean_env()
    )
    assert out.stdout.strip() == ""


def test_unavailable_without_a_tpu_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERON_TPU_INTERPRET")
    monkeypatch.setattr(availability, "tpu_chips", lambda: [])
    assert availability.probe() == 0
    reason = availability.unavailable_reason()
    assert "no TPU found" in reason and "HERON_TPU_INTERPRET=1" in reason


def test_interpreter_mode_scores_below_cpu() -> None:
    """HERON_TPU_INTERPRET=1 (set by conftest) makes tpu usable, but never chosen over cpu."""
    import heron_cpu

    assert 0 < availability.probe() < heron_cpu.PROBE_SCORE
    assert availability.unavailable_reason() == ""


def test_tpu_chips_are_found_in_sysfs(tmp_path: Path) -> None:
    """A Google PCI function (vendor 0x1ae0) is a chip; other vendors are not."""
    devices = tmp_path / "bus" / "pci" / "devices"
    for name, vendor in (("0000:00:04.0", "0x1ae0"), ("0000:00:05.0", "0x8086")):
        (devices / name).mkdir(parents=True)
        (devices / name / "vendor").write_text(vendor + "\n")
    assert availability.tpu_chips(tmp_path, tmp_path / "dev") == ["0000:00:04.0"]
    assert availability.tpu_chips(tmp_path / "none", tmp_path / "dev") == []


def test_heron_plugins_lists_tpu_as_unavailable_with_the_reason() -> None:
    """On this TPU-less host, ``heron plugins`` shows tpu, not available, and why."""
    out = subprocess.run(
        [sys.executable, "-m", "heron.cli", "plugins"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    backends = out.stdout.partition("Backends:")[2].splitlines()
    line = next((x for x in backends if x.strip().lstrip("* ").startswith("tpu ")), "")
    if availability.tpu_chips():
        pytest.skip("this host has a TPU")
    assert "heron-tpu" in line and "not available: no TPU found" in line, out.stdout


def test_registered_platform_follows_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    from heron_tpu.platform import TpuInterpretPlatform, TpuPlatform

    from heron_interfaces.testing import load_platform

    platform, spec = load_platform(name="tpu")
    assert platform is TpuInterpretPlatform and platform.device_type == "cpu"
    assert spec is not None and spec.dist_name == "heron-tpu"
    assert TpuPlatform.device_type == "tpu" and TpuPlatform.name == platform.name


def test_check_config_clamps_step_limits_to_the_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    from heron_tpu.platform import TpuInterpretPlatform

    monkeypatch.setenv("HERON_TPU_TOKEN_BUCKETS", "16,8,32")
    monkeypatch.setenv("HERON_TPU_SEQ_BUCKETS", "2,4")
    caps = TpuInterpretPlatform.capabilities()
    assert caps.static_shapes and caps.token_buckets == (8, 16, 32) and caps.seq_buckets == (2, 4)
    changes = TpuInterpretPlatform.check_config(
        SimpleNamespace(max_num_batched_tokens=None, max_num_seqs=128)
    )
    assert {c.field: c.value for c in changes} == {"max_num_batched_tokens": 32, "max_num_seqs": 4}
    assert (
        TpuInterpretPlatform.check_config(
            SimpleNamespace(max_num_batched_tokens=16, max_num_seqs=3)
        )
        == []
    )
    monkeypatch.setenv("HERON_TPU_SEQ_BUCKETS", "two")
    with pytest.raises(ValueError, match="HERON_TPU_SEQ_BUCKETS"):
        TpuInterpretPlatform.capabilities()


def test_aot_compiles_the_real_platforms_buckets() -> None:
    """heron_tpu.aot restates the TPU buckets (to stay torch-free): they must agree."""
    from heron_tpu import aot
    from heron_tpu.platform import TpuPlatform

    assert TpuPlatform.default_token_buckets == aot.TOKEN_BUCKETS
    assert TpuPlatform.default_seq_buckets == aot.SEQ_BUCKETS


class _FakeDevice:
    """A device whose runtime statistics the test controls."""

    def __init__(self) -> None:
        self.stats = {
            "bytes_limit": 16 << 30,
            "bytes_in_use": 1 << 30,
            "peak_bytes_in_use": 3 << 30,
        }

    def memory_stats(self) -> dict[str, int]:
        return dict(self.stats)


def test_hbm_profiler_reads_runtime_stats_and_resets_peak() -> None:
    from heron_tpu.memory import TpuMemoryProfiler

    device = _FakeDevice()
    profiler = TpuMemoryProfiler(device)
    snap = profiler.snapshot()
    assert (snap.total, snap.free, snap.allocated, snap.peak) == (
        16 << 30,
        15 << 30,
        1 << 30,
        3 << 30,
    )
    assert snap.kv_budget is None  # core derives the budget from free HBM
    profiler.reset_peak()
    assert profiler.snapshot().peak == 1 << 30  # the runtime's old peak no longer counts
    device.stats["bytes_in_use"] = 2 << 30
    assert profiler.snapshot().peak == 2 << 30
    device.stats.update(bytes_in_use=1 << 30, peak_bytes_in_use=5 << 30)
    assert profiler.snapshot().peak == 5 << 30  # a new runtime peak after the reset
    device.stats = {}
    with pytest.raises(RuntimeError, match="no memory statistics"):
        profiler.snapshot()


def test_tpu_communicator_refuses_without_xla_collectives() -> None:
    from heron_tpu.communicator import TpuCommunicator

    from heron_interfaces import CommContext

    assert TpuCommunicator(CommContext(world_size=1, rank=0)).all_reduce is not None
    with pytest.raises(RuntimeError, match="torch-tpu"):
        TpuCommunicator(CommContext(world_size=2, rank=0))
