"""What the GPU backends do on any machine, GPU or not: register, probe honestly, import cheaply.

Core discovers every installed backend in every process, so these properties matter most on the
machines *without* the backend's GPU: the hook registers a spec, the probe answers 0 with a reason
a user can act on, and neither the import nor the probe loads torch or the device runtime.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pluggy
import pytest
from gpu_backends import BACKENDS, import_backend, load_compiled

from heron_interfaces import API_VERSION, BACKENDS_ENTRY_POINT_GROUP, BackendSpec, hookspecs


class _Registry:
    def __init__(self) -> None:
        self.specs: list[BackendSpec] = []

    def register(self, spec: BackendSpec) -> None:
        self.specs.append(spec)


def _registered_spec(package: ModuleType) -> BackendSpec:
    """Register ``package`` with a real pluggy manager, as core does, and return its one spec."""
    pm = pluggy.PluginManager("heron")
    pm.add_hookspecs(hookspecs)
    pm.register(package)
    pm.check_pending()
    registry = _Registry()
    pm.hook.heron_register_backends(registry=registry)
    assert len(registry.specs) == 1, registry.specs
    return registry.specs[0]


def _availability(name: str) -> ModuleType:
    import_backend(name)
    return importlib.import_module(f"heron_{name}.availability")


def _has_device_driver(name: str) -> bool:
    """Whether this machine has the vendor driver the probe looks for."""
    if name == "cuda":
        import ctypes.util

        return (
            Path("/proc/driver/nvidia/version").exists()
            or ctypes.util.find_library("cuda") is not None
        )
    return Path("/dev/kfd").exists()


@pytest.mark.parametrize("name", BACKENDS)
def test_hook_registers_spec(name: str) -> None:
    package = import_backend(name)
    spec = _registered_spec(package)
    assert spec.name == name
    assert spec.api_version[0] == API_VERSION[0]
    assert spec.platform == f"heron_{name}.platform:{name.capitalize()}Platform"
    assert spec.dist_name == f"heron-{name}"
    assert callable(spec.probe) and callable(spec.unavailable_reason)


@pytest.mark.parametrize("name", BACKENDS)
def test_entry_point_names_the_package(name: str) -> None:
    import_backend(name)
    try:
        dist = importlib.metadata.distribution(f"heron-{name}")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(
            f"heron_{name} is importable but the heron-{name} distribution is not installed"
        )
    points = [ep for ep in dist.entry_points if ep.group == BACKENDS_ENTRY_POINT_GROUP]
    assert [(ep.name, ep.value) for ep in points] == [(name, f"heron_{name}")]


@pytest.mark.parametrize("name", BACKENDS)
def test_probe_agrees_with_reason(name: str) -> None:
    availability = _availability(name)
    reason = availability.unavailable_reason()
    score = availability.probe()
    assert isinstance(score, int) and isinstance(reason, str)
    assert (score == 0) == bool(reason), (score, reason)


@pytest.mark.parametrize("name", BACKENDS)
def test_probe_is_zero_without_driver(name: str) -> None:
    if _has_device_driver(name):
        pytest.skip(f"this machine has a {name} driver")
    availability = _availability(name)
    assert availability.probe() == 0
    reason = availability.unavailable_reason()
    assert "driver" in reason and ("missing" in reason or "not" in reason), reason


@pytest.mark.parametrize("name", BACKENDS)
def test_import_and_probe_stay_cheap(name: str) -> None:
    """Neither the entry-point import nor the probe may load torch or the compiled module."""
    import_backend(name)
    code = (
        f"import sys, heron_{name}\n"
        f"from heron_{name}.availability import probe, unavailable_reason\n"
        "probe(); unavailable_reason()\n"
        f"heavy = ('torch', 'heron_{name}._C', 'heron_{name}.ops')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "", f"loaded at probe time: {result.stdout.strip()}"


def _make_usable(monkeypatch: pytest.MonkeyPatch, name: str, tmp_path: Path) -> ModuleType:
    """Patch the probe's view of the machine into one where ``name`` could run."""
    availability = _availability(name)
    from heron_cuda._torch_build import TorchBuild

    driver = tmp_path / "driver"
    driver.write_text("present\n")
    for variable in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(variable, raising=False)
    if name == "cuda":
        monkeypatch.setattr(availability, "NVIDIA_DRIVER_VERSION_FILE", driver)
        build = TorchBuild(version="2.13.0", cuda="12.8", hip=None)
    else:
        monkeypatch.setattr(availability, "KFD_DEVICE", driver)
        build = TorchBuild(version="2.13.0+rocm6.4", cuda=None, hip="6.4")
    monkeypatch.setattr(availability, "installed_torch_build", lambda: build)
    return availability


@pytest.mark.parametrize("name", BACKENDS)
def test_probe_scores_a_usable_machine(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import_backend(name)  # skips, saying so, when the package is not installed
    if importlib.util.find_spec(f"heron_{name}._C") is None:
        pytest.skip(f"heron_{name}._C is not built")
    availability = _make_usable(monkeypatch, name, tmp_path)
    assert availability.unavailable_reason() == ""
    assert availability.probe() > 0
    if importlib.util.find_spec("heron_cpu") is not None:
        import heron_cpu

        # A tie would leave the choice between GPU and CPU to entry-point order.
        assert availability.probe() > heron_cpu.probe() or heron_cpu.probe() == 0
        assert availability.probe() > heron_cpu.PROBE_SCORE


@pytest.mark.parametrize("name", BACKENDS)
def test_probe_explains_hidden_devices(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import_backend(name)  # skips, saying so, when the package is not installed
    if importlib.util.find_spec(f"heron_{name}._C") is None:
        pytest.skip(f"heron_{name}._C is not built")
    availability = _make_usable(monkeypatch, name, tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert availability.probe() == 0
    assert "CUDA_VISIBLE_DEVICES" in availability.unavailable_reason()


@pytest.mark.parametrize("name", BACKENDS)
def test_probe_explains_wrong_torch_build(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import_backend(name)  # skips, saying so, when the package is not installed
    if importlib.util.find_spec(f"heron_{name}._C") is None:
        pytest.skip(f"heron_{name}._C is not built")
    availability = _make_usable(monkeypatch, name, tmp_path)
    from heron_cuda._torch_build import TorchBuild

    cpu_build = TorchBuild(version="2.13.0+cpu", cuda=None, hip=None)
    monkeypatch.setattr(availability, "installed_torch_build", lambda: cpu_build)
    assert availability.probe() == 0
    assert "CPU-only build" in availability.unavailable_reason()


@pytest.mark.parametrize("name", BACKENDS)
def test_probe_explains_missing_module(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    availability = _make_usable(monkeypatch, name, tmp_path)
    real_find_spec = importlib.util.find_spec

    def find_spec(module: str, package: str | None = None) -> object:
        return None if module == f"heron_{name}._C" else real_find_spec(module, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert availability.probe() == 0
    assert f"heron_{name}._C is missing" in availability.unavailable_reason()


def test_torch_build_is_read_without_import(tmp_path: Path) -> None:
    import_backend("cuda")
    from heron_cuda import _torch_build

    version_file = tmp_path / "version.py"
    version_file.write_text(
        "from typing import Optional\n"
        "__version__ = '2.13.0+rocm6.4'\n"
        "cuda: Optional[str] = None\n"
        "hip: Optional[str] = '6.4.43482'\n"
    )
    build = _torch_build._parse_version_file(version_file)
    assert build == _torch_build.TorchBuild(version="2.13.0+rocm6.4", cuda=None, hip="6.4.43482")
    installed = _torch_build.installed_torch_build()
    assert installed is not None and installed.version is not None


@pytest.mark.parametrize("name", BACKENDS)
def test_platform_without_device(name: str) -> None:
    """The platform class resolves and describes itself on a machine with no GPU."""
    load_compiled(name)
    from heron_interfaces import AttentionBackend, Communicator, Platform

    platform = getattr(
        importlib.import_module(f"heron_{name}.platform"), f"{name.capitalize()}Platform"
    )
    assert issubclass(platform, Platform)
    assert (platform.name, platform.device_type, platform.dist_backend) == (name, "cuda", "nccl")
    caps = platform.capabilities()
    assert caps.dtypes == ("float16", "bfloat16") and caps.block_sizes == (16, 32)
    assert {64, 80, 96, 128, 256} <= set(caps.head_sizes or ())
    module, _, cls_name = platform.attention_backend().partition(":")
    attention_cls = getattr(importlib.import_module(module), cls_name)
    assert issubclass(attention_cls, AttentionBackend) and attention_cls.name == name
    from heron_interfaces import CommContext

    comm = platform.communicator(CommContext(world_size=1, rank=0))
    assert isinstance(comm, Communicator) and type(comm).__module__ == f"heron_{name}.communicator"
    if importlib.util.find_spec("torch") is not None:
        import torch

        if not torch.cuda.is_available():
            assert platform.device_count() == 0


@pytest.mark.parametrize("name", BACKENDS)
def test_kv_cache_layout_and_support(name: str) -> None:
    """The cache layout is plain torch, so it is checked on CPU tensors here."""
    load_compiled(name)
    import torch

    from heron_interfaces import AttentionLayerSpec

    cls = importlib.import_module(f"heron_{name}.gpu_attention").GpuAttentionBackend
    shape = cls.kv_cache_shape(5, 16, 2, 64)
    assert shape == (2, 5, 2, 16, 64)
    kv_cache = torch.zeros(shape, dtype=torch.bfloat16)
    key_view, value_view = cls.kv_views(kv_cache)
    assert tuple(key_view.shape) == (5, 16, 2, 64) == tuple(value_view.shape)
    key_view[3, 7, 1] = 1
    value_view[3, 7, 1] = 2
    assert bool((kv_cache[0, 3, 1, 7] == 1).all()) and bool((kv_cache[1, 3, 1, 7] == 2).all())
    assert int((kv_cache != 0).sum()) == 2 * 64

    def spec(**overrides: object) -> AttentionLayerSpec:
        fields: dict = dict(
            num_heads=8, num_kv_heads=2, head_size=128, scale=0.1, block_size=16, dtype="bfloat16"
        )
        fields.update(overrides)
        return AttentionLayerSpec(**fields)

    assert cls.check_support(spec()) == []
    assert any("dtype float32" in r for r in cls.check_support(spec(dtype="float32")))
    assert any("head size 72" in r for r in cls.check_support(spec(head_size=72)))
    assert any("block_size 8" in r for r in cls.check_support(spec(block_size=8)))
    with pytest.raises(ValueError, match="head size 72"):
        cls(spec(head_size=72))


def test_memory_budget_formula() -> None:
    import_backend("cuda")
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    from heron_cuda.memory import kv_budget_bytes

    gib = 1 << 30
    # 80 GiB card, 10 GiB used outside torch, torch reserved 20 GiB with a 18 GiB peak.
    budget = kv_budget_bytes(
        utilization=0.9, free=50 * gib, total=80 * gib, reserved=20 * gib, peak=18 * gib
    )
    assert budget == int(0.9 * 80 * gib) - 10 * gib - 18 * gib
    assert kv_budget_bytes(utilization=0.1, free=gib, total=80 * gib, reserved=0, peak=gib) == 0


def test_memory_utilization_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import_backend("cuda")
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    from heron_cuda.memory import UTILIZATION_ENV, utilization_from_env

    monkeypatch.delenv(UTILIZATION_ENV, raising=False)
    assert utilization_from_env() is None
    monkeypatch.setenv(UTILIZATION_ENV, "0.85")
    assert utilization_from_env() == 0.85
    for bad in ("1.5", "0", "most"):
        monkeypatch.setenv(UTILIZATION_ENV, bad)
        with pytest.raises(ValueError, match=UTILIZATION_ENV):
            utilization_from_env()
