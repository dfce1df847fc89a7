"""Can this machine run the CUDA backend? Answered without importing torch or touching a GPU.

Core calls the probe in every process, including the API server and before workers fork, so every
check here is a file lookup: the compiled module exists (``find_spec`` locates it without loading
it), an NVIDIA driver is installed, ``CUDA_VISIBLE_DEVICES`` does not hide every GPU, and the
installed torch is a CUDA build. The first failing check becomes the user-facing reason.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
from pathlib import Path

from heron_cuda._torch_build import installed_torch_build

PROBE_SCORE = 1000
"""Score when usable: well above the CPU backend (100) and core's reference backend (1), so that a
machine with a usable GPU runs on it; an equal score would leave the choice to entry-point order."""

NVIDIA_DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")


def unavailable_reason() -> str:
    """Why the CUDA backend cannot run here, in plain words; empty when it can."""
    if importlib.util.find_spec("heron_cuda._C") is None:
        return (
            "the compiled kernel module heron_cuda._C is missing: install the heron-cuda wheel or "
            "build it with `pip install ./plugins/cuda` (needs nvcc)"
        )
    if not NVIDIA_DRIVER_VERSION_FILE.exists() and ctypes.util.find_library("cuda") is None:
        return (
            f"no NVIDIA driver found ({NVIDIA_DRIVER_VERSION_FILE} missing and libcuda.so not on "
            "the library path)"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    build = installed_torch_build()
    if build is None:
        return "torch is not installed (or its torch/version.py is unreadable)"
    if build.cuda is None:
        kind = f"a ROCm build (hip {build.hip})" if build.hip else "a CPU-only build"
        return (
            f"the installed torch {build.version} is {kind}; the CUDA backend needs a CUDA build "
            "of torch"
        )
    return ""


def probe() -> int:
    """Availability score for backend selection; 0 when :func:`unavailable_reason` says why."""
    return 0 if unavailable_reason() else PROBE_SCORE
