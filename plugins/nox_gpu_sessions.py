"""nox sessions that build the GPU backend wheels; the root noxfile imports them.

    nox -s build-cuda                 # dist/heron_cuda-*.whl (needs nvcc)
    nox -s build-rocm                 # dist/heron_rocm-*.whl (needs hipcc / a HIP clang)
    nox -s build-cuda -- -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90   # extra pip arguments

Each session builds in its own virtual environment that holds the build requirements (so the build
runs without build isolation and with a CMake new enough for both plugins) and fails at once, with
the reason, when the compiler is missing. ``CMAKE_BUILD_PARALLEL_LEVEL`` (default 2) bounds the
compile jobs. The sessions live beside the plugins rather than in the root noxfile so that the
GPU build recipe changes together with the plugins.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
BUILD_REQUIREMENTS = ("scikit-build-core>=0.10", "pybind11>=2.12", "cmake>=3.28", "ninja")


def _require_compiler(session: nox.Session, program: str, env_var: str, package: str) -> None:
    """Stop the session with a plain message when ``program`` (or ``$env_var``) is unavailable."""
    override = os.environ.get(env_var)
    if override and Path(override).exists():
        return
    if shutil.which(program) is None:
        session.error(
            f"{program} is not on PATH (and ${env_var} is not set): building {package} needs it"
        )


def build_gpu_wheel(session: nox.Session, plugin: str) -> None:
    """``pip wheel --no-deps plugins/<plugin> -w dist/`` with the build requirements installed."""
    session.install(*BUILD_REQUIREMENTS)
    DIST.mkdir(exist_ok=True)
    session.run(
        "python",
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        str(ROOT / "plugins" / plugin),
        "-w",
        str(DIST),
        *session.posargs,
        env={"CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")},
    )


@nox.session(name="build-cuda")
def build_cuda(session: nox.Session) -> None:
    """The heron-cuda wheel (sm_80, sm_89, sm_90 unless CMAKE_CUDA_ARCHITECTURES says otherwise)."""
    _require_compiler(session, "nvcc", "CUDACXX", "heron-cuda")
    build_gpu_wheel(session, "cuda")


@nox.session(name="build-rocm")
def build_rocm(session: nox.Session) -> None:
    """The heron-rocm wheel (gfx90a and gfx942, each only if the HIP clang knows it)."""
    _require_compiler(session, "hipcc", "HIPCXX", "heron-rocm")
    build_gpu_wheel(session, "rocm")
