"""heron-cpu's KernelOps inside a whole model: the same logits as the torch reference ops.

The conformance suite checks each op alone; here a bfloat16 model runs a prefill (many rows per
matmul) and decode steps (one row), with a tied and an untied output projection, once with the
reference ops and once with the CPU kernels, in each matmul arrangement this CPU runs: ``packed``
(heron-cpu's packed GEMM for every row count) and ``onednn`` (oneDNN's prepacked GEMM, the GEMV
kernel for few rows).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from heron_cpu import gemm
from heron_cpu.kernel_ops import (
    GEMM_ENV,
    CpuKernelOps,
    PreparedLinear,
    choose_gemm,
    onednn_bf16_available,
)
from heron_interfaces.kernel_ops import KernelOps

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from model_utils import KERNEL_FRIENDLY, Harness, make_context, make_tiny_model_dir


@pytest.fixture(params=["packed", "onednn"])
def arrangement(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``HERON_CPU_GEMM`` for the CpuKernelOps a test builds."""
    if request.param == "packed" and not gemm.available():
        pytest.skip("this CPU has no AVX512-BF16")
    monkeypatch.setenv(GEMM_ENV, request.param)
    return request.param


@pytest.mark.parametrize("tied", [True, False])
def test_model_with_cpu_kernels_matches_reference_ops(
    tmp_path: Path, tied: bool, arrangement: str
) -> None:
    from heron.loader import build_model, load_model_source

    folder = make_tiny_model_dir(tmp_path, "llama", tie_word_embeddings=tied, **KERNEL_FRIENDLY)
    source = load_model_source(str(folder))
    ids = list(range(3, 40))
    logits = []
    for ops, dtype in (
        (KernelOps(), torch.float32),
        (KernelOps(), torch.bfloat16),
        (CpuKernelOps(), torch.bfloat16),
    ):
        ctx = make_context(dtype=dtype, block_size=16, ops=ops)
        model = build_model(source, ctx)
        model.prepare_for_inference()
        harness = Harness(model, ctx)
        seq = harness.add(len(ids) + 4)
        steps = [harness.step({seq: ids})[seq]]
        for token in (5, 9, 11):  # decode steps: one row per matmul
            steps.append(harness.step({seq: [token]})[seq])
        logits.append(torch.cat(steps).float())
    exact, reference, cpu = logits
    # bfloat16 activations round at 2^-8 between layers, so the order a GEMM accumulates in (the
    # packed GEMM's pairwise dot products, oneDNN's blocks) moves logits by a few hundredths:
    # the kernels must be as close to the float32 model as torch's own bfloat16 run is, and
    # choose the same tokens.
    torch_error = (reference - exact).abs().max()
    assert (cpu - exact).abs().max() <= torch_error * 1.25 + 2e-2
    torch.testing.assert_close(cpu, reference, rtol=0.1, atol=0.1)
    assert torch.equal(cpu.argmax(-1), reference.argmax(-1))


def test_prepared_weights(arrangement: str) -> None:
    """onednn keeps the plain weight and oneDNN's layout; packed keeps only the panels."""
    ops = CpuKernelOps()
    assert ops.gemm == arrangement
    weight = torch.randn(64, 32).bfloat16()
    prepared = ops.prepare_linear(weight)
    if arrangement == "packed":
        assert isinstance(prepared, gemm.PackedWeight)
        assert torch.equal(prepared.unpack(), weight)
    else:
        assert isinstance(prepared, PreparedLinear)
        assert torch.equal(prepared.weight, weight)
        assert (prepared.packed is not None) == onednn_bf16_available()
    float32 = ops.prepare_linear(weight.float())  # float32 stays a plain weight
    assert isinstance(float32, torch.Tensor)
    x = torch.randn(5, 32)
    torch.testing.assert_close(ops.linear(x, float32, None), x @ weight.float().T)


def test_packed_linear_takes_any_input_layout(arrangement: str) -> None:
    """3-D and strided inputs give what a 2-D contiguous one gives; float32 goes through torch."""
    ops = CpuKernelOps()
    weight = torch.randn(40, 64).bfloat16()
    prepared = ops.prepare_linear(weight)
    x = torch.randn(2, 3, 64).bfloat16()
    flat = ops.linear(x.reshape(6, 64), prepared, None)
    assert torch.equal(ops.linear(x, prepared, None), flat.view(2, 3, 40))
    strided = torch.randn(6, 128).bfloat16()[:, ::2].copy_(x.reshape(6, 64))
    assert torch.equal(ops.linear(strided, prepared, None), flat)
    with pytest.raises(RuntimeError):  # torch's own dtype mismatch, as F.linear raises it
        ops.linear(x.float(), prepared, None)


def test_choose_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_gemm({}) in ("packed", "onednn")
    assert choose_gemm({GEMM_ENV: " ONEDNN "}) == "onednn"
    with pytest.raises(ValueError, match=f"{GEMM_ENV}='mkl': expected one of auto, packed"):
        choose_gemm({GEMM_ENV: "mkl"})
    monkeypatch.setattr(gemm, "available", lambda: False)
    assert choose_gemm({}) == "onednn"
    with pytest.raises(ValueError, match="packed: this CPU has no AVX512-BF16"):
        choose_gemm({GEMM_ENV: "packed"})


def test_unsupported_layouts_fall_back_to_the_reference() -> None:
    """A 3-D input (per-head q/k norms) and float16 go through torch, with the same results."""
    ops, reference = CpuKernelOps(), KernelOps()
    x = torch.randn(4, 3, 64).bfloat16()
    weight = torch.randn(64).bfloat16()
    assert torch.equal(ops.rms_norm(x, weight, 1e-6), reference.rms_norm(x, weight, 1e-6))
    half = torch.randn(4, 128).half()
    assert torch.equal(ops.silu_and_mul(half), reference.silu_and_mul(half))


def test_rotary_rejects_positions_outside_the_cache() -> None:
    ops = CpuKernelOps()
    heads = torch.randn(2, 3, 64).bfloat16()
    cache = torch.randn(10, 64).bfloat16()
    with pytest.raises(ValueError, match=r"positions\[1\] = 10 is outside"):
        ops.rotary(torch.tensor([0, 10]), heads, cache)
