"""nox session that compiles heron-tpu's Pallas kernels with the real TPU compiler; the root
noxfile imports it.

    nox -s check-tpu                  # every kernel at the engine's shapes, for v5e and v6e
    nox -s check-tpu -- --quick       # smallest and largest buckets only (what CI runs)

No TPU is needed: ``jax[tpu]`` brings libtpu, which compiles for a described topology. The
environment holds jax[tpu], heron-interfaces and heron-tpu only (no torch: the kernels and
``heron_tpu.aot`` are pure JAX), apart from the test environment on purpose: torch-tpu and
jax[tpu] pin different libtpu versions. After the compile report, the session runs the test that
proves the check can fail (a block shape the TPU compiler must reject).
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent.parent
JAX_TPU = "jax[tpu]>=0.10"


@nox.session(name="check-tpu")
def check_tpu(session: nox.Session) -> None:
    """Compile every heron-tpu kernel for v5e and v6e ahead of time (no TPU needed)."""
    session.install(JAX_TPU, "pluggy>=1.3", "pytest")
    session.install("--no-deps", str(ROOT / "interfaces"), str(ROOT / "plugins" / "tpu"))
    session.run("python", "-m", "heron_tpu.aot", *session.posargs)
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(ROOT / "tests" / "plugins" / "tpu" / "test_aot.py"),
        env={"HERON_TPU_AOT_PYTHON": session.virtualenv.bin + "/python"},
    )
