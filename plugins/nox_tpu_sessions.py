"""nox session that compiles heron-tpu's Pallas kernels with the real TPU compiler, and the
conformance selection CI runs in the interpreter; the root noxfile imports both.

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
TPU_INTERPRET_ENV = {"HERON_TPU_INTERPRET": "1", "HERON_TPU_DETECT_RACES": "1"}
"""The interpreter with its race detector on: what every heron-tpu conformance run uses."""
QUICK_SELECTION = (
    "not bfloat16 and not long_context and (not test_forward_matches_reference or float32-1-0)"
    " or test_forward_matches_reference and bfloat16-8-0"
)
"""CI's share of the conformance suite (62 tests, ~75 s of its ~4 min here): every test in
float32 but the 3000-token context, and one random mixed batch per dtype. The kernel tests
(tests/plugins/tpu/test_kernels.py) cover bfloat16 attention, norm and KV write, also with race
detection. The whole suite: ``HERON_TPU_INTERPRET=1 python -m heron_interfaces.testing tpu``."""
TPU_CONFORMANCE_QUICK = (
    "python", "-m", "heron_interfaces.testing", "tpu", "-q", "-k", QUICK_SELECTION,
)  # fmt: skip


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
