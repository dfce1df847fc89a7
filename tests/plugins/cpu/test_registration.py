"""Discovery, cheap import, ISA selection and coexistence with torch's OpenMP runtime."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import heron_cpu
from heron_cpu import _kernels
from heron_cpu.platform import CpuPlatform
from heron_interfaces.testing import discover_backends


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_entry_point_registers_cpu() -> None:
    specs, _ = discover_backends()
    spec = specs["cpu"]
    assert spec.dist_name == "heron-cpu" and spec.platform == "heron_cpu.platform:CpuPlatform"
    assert spec.probe() == heron_cpu.PROBE_SCORE


def test_registration_and_probe_import_neither_torch_nor_kernels() -> None:
    proc = _python(
        "import sys, heron_cpu\n"
        "assert heron_cpu.probe() > 0\n"
        "bad = [m for m in ('torch', 'heron_cpu._C', 'heron') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("first", ["heron_cpu._C", "torch"])
def test_openmp_runtimes_coexist_in_either_import_order(first: str) -> None:
    """torch ships its own libgomp.so.1; whichever loads first serves both, in parallel regions."""
    proc = _python(
        f"import {first}\n"
        "import torch\n"
        "from heron_cpu.attention import CpuAttentionBackend\n"
        "from heron_interfaces.testing.attention_suite import check_forward\n"
        "from heron_interfaces.testing.batches import Scenario, make_batch\n"
        "torch.set_num_threads(2)\n"
        "s = Scenario(seqs=((700, 1), (300, 300)), num_heads=4, num_kv_heads=1, head_size=64,\n"
        "             block_size=16, dtype='float32')\n"
        "check_forward(CpuAttentionBackend, make_batch(s))\n"
        "x = torch.randn(256, 256)\n"
        "assert torch.isfinite(x @ x).all()\n"
    )
    assert proc.returncode == 0, proc.stderr


def test_isa_env_forces_a_variant_or_fails_loudly() -> None:
    ok = _python("from heron_cpu import ops; print(ops.isa())", HERON_CPU_ISA="portable")
    assert ok.returncode == 0 and ok.stdout.strip() == "portable", ok.stderr
    bad = _python("import heron_cpu.ops", HERON_CPU_ISA="avx9000")
    assert bad.returncode != 0 and "HERON_CPU_ISA='avx9000'" in bad.stderr


def test_isa_switching() -> None:
    available = _kernels.available_isas()
    assert available[-1] == "portable" and _kernels.isa() == available[0]
    with pytest.raises(ValueError, match="unknown ISA variant"):
        _kernels.set_isa("sse9")
    _kernels.set_isa("portable")
    try:
        assert _kernels.isa() == "portable"
    finally:
        _kernels.set_isa("auto")
    assert _kernels.isa() == available[0]


def test_default_dtype_follows_native_bf16() -> None:
    caps = CpuPlatform.capabilities()
    native = _kernels.cpu_features().get("avx512_bf16", False)
    assert caps.default_dtype == ("bfloat16" if native else "float32")
