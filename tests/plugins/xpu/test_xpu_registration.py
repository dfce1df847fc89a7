"""heron-xpu on a machine without an Intel GPU: it registers, probes honestly, imports cheaply,
and its interpreter mode makes it available below the CPU backend.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest

import heron_interfaces
from heron_interfaces import BackendSpec, hookspecs

pytest.importorskip("heron_xpu", reason="heron-xpu is not installed")

import heron_xpu
from heron_xpu import availability


class _Registry:
    def __init__(self) -> None:
        self.specs: list[BackendSpec] = []

    def register(self, spec: BackendSpec) -> None:
        self.specs.append(spec)


def _spec() -> BackendSpec:
    """Register heron_xpu with a real pluggy manager, as core does, and return its one spec."""
    pm = pluggy.PluginManager("heron")
    pm.add_hookspecs(hookspecs)
    pm.register(heron_xpu)
    pm.check_pending()
    registry = _Registry()
    pm.hook.heron_register_backends(registry=registry)
    assert len(registry.specs) == 1
    return registry.specs[0]


def _env_without_interpret() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HERON_XPU_INTERPRET", "HERON_BACKEND")}
    env.pop("HERON_PLUGINS", None)
    return env


def test_spec_speaks_this_api_major(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERON_XPU_INTERPRET", raising=False)
    spec = _spec()
    assert spec.name == "xpu" and spec.dist_name == "heron-xpu"
    assert spec.api_version[0] == heron_interfaces.API_VERSION[0]
    assert spec.api_version <= heron_interfaces.API_VERSION
    assert spec.platform == "heron_xpu.platform:XpuPlatform"


def test_import_and_probe_load_neither_torch_nor_triton() -> None:
    """Core imports every backend in the API server; probing must not start a device runtime."""
    code = (
        "import sys, heron_xpu\n"
        "heron_xpu.probe(); heron_xpu.unavailable_reason()\n"
        "print(sorted(m for m in ('torch', 'triton') if m in sys.modules))\n"
    )
    for interpret in ("0", "1"):
        env = {**_env_without_interpret(), "HERON_XPU_INTERPRET": interpret}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "[]", (interpret, out.stdout, out.stderr)


def test_not_available_here_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERON_XPU_INTERPRET", raising=False)
    reason = availability.unavailable_reason()
    if not reason:
        pytest.skip("this machine has a usable Intel GPU")
    assert availability.probe() == 0
    assert "HERON_XPU_INTERPRET=1" in reason


def test_interpreter_mode_scores_between_reference_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_XPU_INTERPRET", "1")
    assert availability.unavailable_reason() == ""
    assert 1 < availability.probe() == availability.INTERPRET_SCORE
    if importlib.util.find_spec("heron_cpu") is not None:
        import heron_cpu

        assert availability.INTERPRET_SCORE < heron_cpu.PROBE_SCORE
    assert _spec().platform == "heron_xpu.platform:XpuInterpretPlatform"


def test_heron_plugins_lists_xpu_as_unavailable_with_the_reason() -> None:
    pytest.importorskip("heron", reason="heron-core is not installed")
    reason = availability.unavailable_reason()
    if not reason or os.environ.get("HERON_XPU_INTERPRET"):
        pytest.skip("xpu is usable in this environment")
    out = subprocess.run(
        [sys.executable, "-m", "heron.cli", "plugins"],
        env=_env_without_interpret(),
        capture_output=True,
        text=True,
        check=False,
    )
    text = out.stdout + out.stderr
    line = next(
        (ln for ln in text.splitlines() if ln.split()[:1] == ["xpu"] and "not available" in ln),
        None,
    )
    assert line is not None, text
    assert reason.split(";")[0] in line


def test_intel_render_nodes_are_found_by_pci_vendor(tmp_path: Path) -> None:
    for node, vendor in (("renderD128", "0x10de"), ("renderD129", "0x8086"), ("card0", "0x8086")):
        (tmp_path / node / "device").mkdir(parents=True)
        (tmp_path / node / "device" / "vendor").write_text(vendor + "\n")
    (tmp_path / "renderD130").mkdir()  # no device link: skipped
    assert availability.intel_render_nodes(tmp_path) == ["renderD129"]


def test_torch_build_is_read_without_importing_torch() -> None:
    found, version = availability.torch_build_field("__version__")
    import torch

    assert found and version == torch.__version__
    assert availability.torch_build_field("xpu") == (True, torch.version.xpu)


def test_interpret_platform_describes_a_host_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from heron_xpu.platform import XpuInterpretPlatform, XpuPlatform

    assert (XpuPlatform.name, XpuPlatform.device_type, XpuPlatform.dist_backend) == (
        "xpu",
        "xpu",
        "xccl",
    )
    assert XpuPlatform.capabilities().default_dtype == "bfloat16"
    assert XpuInterpretPlatform.name == "xpu"
    assert (XpuInterpretPlatform.device_type, XpuInterpretPlatform.dist_backend) == ("cpu", "gloo")
    assert XpuInterpretPlatform.device_count() == 1
    monkeypatch.setenv("HERON_XPU_KVCACHE_SPACE", "0.5")
    snap = XpuInterpretPlatform.memory_profiler().snapshot()
    assert snap.kv_budget == 1 << 29
    assert "HERON_XPU_KVCACHE_SPACE" in XpuInterpretPlatform.memory_budget_hint()


def test_head_size_limit_agrees_with_the_kernels() -> None:
    from heron_xpu import attention, ops

    from heron_interfaces import AttentionLayerSpec

    assert attention.MAX_HEAD_SIZE == ops.MAX_HEAD_SIZE
    spec = AttentionLayerSpec(
        num_heads=4, num_kv_heads=2, head_size=320, scale=1.0, block_size=16, dtype="float16"
    )
    assert any("head size 320" in r for r in attention.XpuAttentionBackend.check_support(spec))


def test_interpreter_mode_works_when_triton_was_imported_first() -> None:
    """In an engine process torch._dynamo (through transformers) often imports triton before core
    loads heron_xpu; the late switch must still give working interpreted kernels."""
    code = (
        "import os, triton, torch\n"
        "import triton.language as tl\n"
        "assert type(tl.sum).__name__ == 'JITFunction'\n"
        "os.environ['HERON_XPU_INTERPRET'] = '1'\n"
        "import heron_xpu.ops as ops\n"
        "from heron_interfaces.kernel_ops import KernelOps\n"
        "x, w = torch.randn(3, 64), torch.rand(64)\n"
        "torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), KernelOps().rms_norm(x, w, 1e-6))\n"
        "print('ok', ops.INTERPRETED)\n"
    )
    env = {
        k: v
        for k, v in _env_without_interpret().items()
        if k not in ("TRITON_INTERPRET", "HERON_XPU_DEVICE")
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ok True", out.stderr
