"""The compiled modules carry code for the architectures they claim, and nothing links libtorch.

``_C.ARCHS`` is what CMake compiled for (``80,89,90`` for heron-cuda unless the builder chose
otherwise; ``gfx90a`` and, with a new enough clang, ``gfx942`` for heron-rocm). These tests read
the device code embedded in the shared object (see :mod:`gpu_binaries`) and need no GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
from gpu_backends import import_backend, load_compiled
from gpu_binaries import cuda_fatbin_archs, hip_offload_targets

DEFAULT_CUDA_ARCHS = {80, 89, 90}


def _module_path(name: str) -> Path:
    import_backend(name)
    spec = importlib.util.find_spec(f"heron_{name}._C")
    if spec is None or spec.origin is None:
        pytest.skip(f"heron_{name}._C is not built")
    return Path(spec.origin)


def test_cuda_module_holds_sass_and_ptx_for_its_archs() -> None:
    path = _module_path("cuda")
    _C = load_compiled("cuda")

    claimed = {int(a.split("-")[0]) for a in _C.ARCHS.split(",") if a}
    assert claimed, "the module does not record its architectures"
    found = cuda_fatbin_archs(path)
    assert found.sass == claimed, f"SASS for {sorted(found.sass)}, built for {sorted(claimed)}"
    assert found.ptx, "no PTX: GPUs newer than the list could not JIT the kernels"
    if _C.ARCHS == "80,89,90":
        assert claimed == DEFAULT_CUDA_ARCHS


def test_cuda_module_agrees_with_cuobjdump() -> None:
    path = _module_path("cuda")
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump is None:
        pytest.skip("cuobjdump is not on PATH")
    listing = subprocess.run(
        [cuobjdump, "--list-elf", str(path)], capture_output=True, text=True, check=True
    ).stdout
    archs = {int(word.split("sm_")[1].split(".")[0]) for word in listing.split() if "sm_" in word}
    assert archs == cuda_fatbin_archs(path).sass


def test_rocm_module_holds_code_for_its_targets() -> None:
    path = _module_path("rocm")
    _C = load_compiled("rocm")

    claimed = {a for a in _C.ARCHS.split(",") if a}
    assert claimed, "the module does not record its targets"
    found = hip_offload_targets(path)
    if found is None:
        pytest.skip("compressed offload bundles (ROCm 6); use roc-obj-ls to inspect them")
    assert found == claimed


@pytest.mark.parametrize("name", ["cuda", "rocm"])
def test_modules_do_not_link_torch_or_shared_cudart(name: str) -> None:
    path = _module_path(name)
    ldd = shutil.which("ldd")
    if ldd is None:
        pytest.skip("ldd is not available")
    result = subprocess.run([ldd, str(path)], capture_output=True, text=True)
    libraries = result.stdout
    assert "libtorch" not in libraries and "libc10" not in libraries, libraries
    if name == "cuda":
        assert "libcudart" not in libraries, "cudart must be linked statically"


@pytest.mark.parametrize("name", ["cuda", "rocm"])
def test_modules_report_kernel_limits(name: str) -> None:
    module = load_compiled(name)
    runtime: str = module.RUNTIME
    assert runtime == name
    assert {64, 80, 96, 128, 256} <= set(module.HEAD_SIZES)
    assert module.PARTITION_SIZE > 0
