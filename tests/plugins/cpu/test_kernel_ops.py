"""heron-cpu's KernelOps inside a whole model: the same logits as the torch reference ops.

The conformance suite checks each op alone; here a bfloat16 model runs a prefill (oneDNN's packed
matmuls, many rows) and decode steps (the GEMV kernel, one row), with a tied and an untied output
projection, once with the reference ops and once with the CPU kernels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from heron_cpu.kernel_ops import CpuKernelOps, PreparedLinear, onednn_bf16_available
from heron_interfaces.kernel_ops import KernelOps

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from model_utils import KERNEL_FRIENDLY, Harness, make_context, make_tiny_model_dir


@pytest.mark.parametrize("tied", [True, False])
def test_model_with_cpu_kernels_matches_reference_ops(tmp_path: Path, tied: bool) -> None:
    from heron.loader import build_model, load_model_source

    folder = make_tiny_model_dir(tmp_path, "llama", tie_word_embeddings=tied, **KERNEL_FRIENDLY)
    source = load_model_source(str(folder))
    ids = list(range(3, 40))
    logits = []
    for ops in (KernelOps(), CpuKernelOps()):
        ctx = make_context(dtype=torch.bfloat16, block_size=16, ops=ops)
        model = build_model(source, ctx)
        model.prepare_for_inference()
        harness = Harness(model, ctx)
        seq = harness.add(len(ids) + 4)
        steps = [harness.step({seq: ids})[seq]]
        for token in (5, 9, 11):  # decode steps: one row per matmul
            steps.append(harness.step({seq: [token]})[seq])
        logits.append(torch.cat(steps))
    reference, cpu = logits
    # Matmuls may accumulate in another order than torch's: close, and the same greedy choice.
    torch.testing.assert_close(cpu, reference, rtol=2e-2, atol=2e-2)
    assert torch.equal(cpu.argmax(-1), reference.argmax(-1))


def test_prepared_weights_keep_both_layouts() -> None:
    ops = CpuKernelOps()
    weight = torch.randn(64, 32).bfloat16()
    prepared = ops.prepare_linear(weight)
    assert isinstance(prepared, PreparedLinear)
    assert torch.equal(prepared.weight, weight)
    assert (prepared.packed is not None) == onednn_bf16_available()
    assert ops.prepare_linear(weight.float()) is not None  # float32 stays a plain weight
    assert not isinstance(ops.prepare_linear(weight.float()), PreparedLinear)


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
