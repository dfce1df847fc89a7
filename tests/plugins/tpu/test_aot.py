"""The ahead-of-time TPU compile check can fail: the TPU compiler rejects a bad block shape.

Runs the check's own code (``heron_tpu.aot``) in an environment with libtpu: the one named by
``HERON_TPU_AOT_PYTHON`` (``nox -s check-tpu`` sets it), else ``plugins/tpu/.aot-venv`` or
``.nox/check-tpu`` when present; skips, with the reason, where none exists. A subprocess, because
jax[tpu] and the test environment's jax/torch live in different environments.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CANDIDATES = (ROOT / "plugins" / "tpu" / ".aot-venv", ROOT / ".nox" / "check-tpu")


def _aot_python() -> str:
    named = os.environ.get("HERON_TPU_AOT_PYTHON")
    if named:
        return named
    for venv in CANDIDATES:
        python = venv / "bin" / "python"
        if python.exists():
            return str(python)
    pytest.skip(
        "no environment with jax[tpu] (run `nox -s check-tpu`, or set HERON_TPU_AOT_PYTHON)"
    )


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERON_", "JAX_"))}
    return subprocess.run(
        [_aot_python(), "-c", code], capture_output=True, text=True, env=env, timeout=600
    )


def test_compiler_rejects_a_block_the_tpu_cannot_hold() -> None:
    """4-row float32 blocks: rejected by the TPU compiler for v5e and v6e, where 8-row blocks of
    the same kernel compile (``must_reject`` compiles those first)."""
    code = (
        "from heron_tpu import aot\n"
        "for chip in ('v5e', 'v6e'):\n"
        "    print(chip, aot.must_reject(aot.target(chip)))\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [x for x in out.stdout.splitlines() if x.startswith(("v5e ", "v6e "))]
    assert len(lines) == 2, out.stdout
    assert all("divisible by 8" in x for x in lines), lines


def test_a_compile_failure_fails_the_check() -> None:
    """``heron_tpu.aot.run`` counts a kernel the compiler rejects as a failure (exit status 1)."""
    code = (
        "import io, sys\n"
        "from heron_tpu import aot\n"
        "import jax.numpy as jnp\n"
        "aot.engine_jobs = lambda quick: [aot.norm_job(64, 1024, jnp.float32, False, tile_rows=4)]\n"
        "buf = io.StringIO()\n"
        "sys.exit(min(aot.run(['v6e'], True, out=buf), 1) or print(buf.getvalue()))\n"
    )
    out = _run(code)
    assert out.returncode == 1, (out.stdout, out.stderr[-2000:])
