"""Every heron-xpu kernel goes through Triton's whole compiler for a GPU, on this GPU-less host.

The interpreter runs kernels as Python and accepts code the compiler would reject; this compiles
each kernel configuration to a cubin for NVIDIA sm_90 with upstream triton's bundled toolchain
(see aot_compile.py), in a child process without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("aot_compile.py")


def test_every_kernel_compiles_to_a_gpu_binary() -> None:
    pytest.importorskip("heron_xpu", reason="heron-xpu is not installed")
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("this triton build has no NVIDIA backend (Intel's XPU triton, say)")
    env = {
        k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "HERON_XPU_INTERPRET")
    }
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, set to silence it
    out = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 11 and all(line.endswith("ptx -> cubin") for line in lines), out.stdout
