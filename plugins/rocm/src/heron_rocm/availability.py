"""Can this machine run the ROCm backend? Answered without importing torch or touching a GPU.

Core calls the probe in every process, including the API server and before workers fork, so every
check here is a file lookup: the compiled module exists (``find_spec`` locates it without loading
it, which would load the HIP runtime), the amdgpu kernel driver exposes ``/dev/kfd``, no
``*_VISIBLE_DEVICES`` variable hides every GPU, and the installed torch is a ROCm build. The first
failing check becomes the user-facing reason.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from heron_rocm._torch_build import installed_torch_build

PROBE_SCORE = 1000
"""Score when usable: well above the CPU backend (100) and core's reference backend (1), so that a
machine with a usable GPU runs on it; an equal score would leave the choice to entry-point order."""

KFD_DEVICE = Path("/dev/kfd")
VISIBILITY_VARIABLES = ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


def unavailable_reason() -> str:
    """Why the ROCm backend cannot run here, in plain words; empty when it can."""
    if importlib.util.find_spec("heron_rocm._C") is None:
        return (
            "the compiled kernel module heron_rocm._C is missing: install the heron-rocm wheel or "
            "build it with `pip install ./plugins/rocm` (needs hipcc / ROCm clang)"
        )
    if not KFD_DEVICE.exists():
        return (
            f"no AMD GPU driver found ({KFD_DEVICE} missing: amdgpu/KFD not loaded or not exposed)"
        )
    for variable in VISIBILITY_VARIABLES:
        visible = os.environ.get(variable)
        if visible is not None and visible.strip() in ("", "-1"):
            return f"{variable}={visible!r} hides every GPU"
    build = installed_torch_build()
    if build is None:
        return "torch is not installed (or its torch/version.py is unreadable)"
    if build.hip is None:
        kind = f"a CUDA build (cuda {build.cuda})" if build.cuda else "a CPU-only build"
        return (
            f"the installed torch {build.version} is {kind}; the ROCm backend needs a ROCm build "
            "of torch"
        )
    return ""


def probe() -> int:
    """Availability score for backend selection; 0 when :func:`unavailable_reason` says why."""
    return 0 if unavailable_reason() else PROBE_SCORE
