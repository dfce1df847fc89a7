"""heron-cpu's bfloat16 LayerNorm rounds with vcvtneps2bf16 where the CPU has AVX512-BF16. That
instruction flushes denormal inputs to zero; the kernel redoes such lanes with the exact rounding,
so sums and outputs in the denormal range come out as torch's, not as zeros."""

from __future__ import annotations

import pytest
import torch

from heron_interfaces.kernel_ops import KernelOps

heron_cpu = pytest.importorskip("heron_cpu")
from heron_cpu.kernel_ops import CpuKernelOps  # noqa: E402

HIDDEN = 384


def _both(x, weight, bias, residual):
    ops = CpuKernelOps()
    got = ops.layer_norm(x.clone(), weight, bias, 1e-12, residual)
    want = KernelOps.layer_norm(ops, x.clone(), weight, bias, 1e-12, residual)
    return got, want


def test_denormal_sums_are_not_flushed() -> None:
    gen = torch.Generator().manual_seed(0)
    # x + residual lies in the denormal range (|v| < 2^-126): its variance underflows, so the
    # outputs are (v - mean) * 1e6 * weight, ~1e-33; flushed sums would make them all zero.
    x = (torch.randn(64, HIDDEN, generator=gen) * 1e-39).bfloat16()
    residual = (torch.randn(64, HIDDEN, generator=gen) * 1e-39).bfloat16()
    weight = torch.randn(HIDDEN, generator=gen).bfloat16()
    bias = torch.zeros(HIDDEN, dtype=torch.bfloat16)
    assert (x.float() + residual.float()).abs().max() < 2.0**-126
    got, want = _both(x, weight, bias, residual)
    assert (want != 0).float().mean() > 0.9 and (got != 0).float().mean() > 0.9
    # Outputs near zero (v close to the mean) differ with the summation order of the mean.
    torch.testing.assert_close(got.float(), want.float(), atol=1e-35, rtol=2.0**-7)


def test_denormal_outputs_are_not_flushed() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, HIDDEN, generator=gen).bfloat16()
    residual = torch.randn(64, HIDDEN, generator=gen).bfloat16()
    weight = torch.full((HIDDEN,), 1e-39).bfloat16()  # every output in the denormal range
    bias = torch.zeros(HIDDEN, dtype=torch.bfloat16)
    got, want = _both(x, weight, bias, residual)
    assert (want != 0).float().mean() > 0.9
    assert torch.equal(got != 0, want != 0)
    torch.testing.assert_close(got.float(), want.float(), atol=2.0**-133, rtol=0.0)
