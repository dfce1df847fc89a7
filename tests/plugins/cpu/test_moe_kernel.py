"""heron-cpu's fused mixture-of-experts routine against a plain-torch per-expert loop.

Many shapes (one decode token to a prefill chunk; top-1 to top-4 of 3 to 16 experts; experts that
get no token), float32 and bfloat16, in each matmul arrangement this CPU runs (the experts'
weights go through the same ``prepare_linear`` as any layer's).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heron_cpu import gemm
from heron_cpu.kernel_ops import GEMM_ENV, CpuKernelOps
from heron_cpu.moe import fused_moe, prepare_experts


def loop_reference(x, w13, w2, ids, weights):
    """transformers' per-expert loop in float32: mask, gather, two matmuls, weighted add."""
    xf, out = x.float(), torch.zeros(x.shape, dtype=torch.float32)
    inter = w2.shape[-1]
    for e in range(w13.shape[0]):
        tokens, slots = torch.where(ids == e)
        if tokens.numel() == 0:
            continue
        h = xf[tokens] @ w13[e].float().T
        y = (F.silu(h[:, :inter]) * h[:, inter:]) @ w2[e].float().T
        out.index_add_(0, tokens, y * weights[tokens, slots, None])
    return out


SHAPES = [
    # tokens, experts, top_k, hidden, intermediate
    (1, 8, 2, 64, 32),
    (3, 4, 1, 32, 48),
    (17, 8, 2, 128, 64),
    (64, 16, 4, 64, 32),
    (5, 3, 3, 32, 16),
    (200, 8, 2, 96, 128),
]


@pytest.fixture(params=["packed", "onednn"])
def ops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CpuKernelOps:
    if request.param == "packed" and not gemm.available():
        pytest.skip("this CPU has no AVX512-BF16")
    monkeypatch.setenv(GEMM_ENV, request.param)
    return CpuKernelOps()


def _case(shape, dtype, seed):
    tokens, experts, top_k, hidden, inter = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype)
    w13 = (torch.randn(experts, 2 * inter, hidden, generator=gen) / hidden**0.5).to(dtype)
    w2 = (torch.randn(experts, hidden, inter, generator=gen) / inter**0.5).to(dtype)
    probs = torch.softmax(torch.randn(tokens, experts, generator=gen), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    return x, w13, w2, ids, weights


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_moe_equals_the_per_expert_loop(ops, shape, dtype) -> None:
    x, w13, w2, ids, weights = _case(shape, dtype, seed=sum(shape))
    prepared = ops.prepare_moe(w13, w2)
    got = ops.fused_moe(x, prepared, ids, weights)
    assert got.dtype == dtype and got.shape == x.shape
    expected = loop_reference(x, w13, w2, ids, weights)
    if dtype == torch.float32:
        torch.testing.assert_close(got.float(), expected, rtol=1e-5, atol=1e-5)
    else:  # bfloat16 activations between the GEMMs: a few bf16 ulps of the output's scale
        scale = expected.abs().max().item()
        torch.testing.assert_close(got.float(), expected, rtol=0.03, atol=0.02 * scale)


def test_unused_experts_and_a_single_expert_batch() -> None:
    x, w13, w2, ids, weights = _case((9, 6, 2, 32, 16), torch.float32, seed=3)
    ids = torch.where(ids == ids[0, 0], ids, torch.full_like(ids, 5))  # two experts in use at most
    prepared = prepare_experts(w13, w2, lambda w: w)
    got = fused_moe(
        x, prepared, ids, weights, linear=torch.nn.functional.linear,
        silu_and_mul=lambda h: F.silu(h[:, : h.shape[1] // 2]) * h[:, h.shape[1] // 2 :],
    )  # fmt: skip
    torch.testing.assert_close(got, loop_reference(x, w13, w2, ids, weights))


def test_bad_shapes_are_refused_naming_them() -> None:
    w13, w2 = torch.zeros(4, 32, 16), torch.zeros(4, 16, 16)
    prepared = prepare_experts(w13, w2, lambda w: w)
    with pytest.raises(ValueError, match=r"x must be \[tokens, 16\]"):
        fused_moe(
            torch.zeros(2, 8), prepared, torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1),
            linear=F.linear, silu_and_mul=lambda h: h,
        )  # fmt: skip
    with pytest.raises(ValueError, match="disagree"):
        prepare_experts(torch.zeros(4, 30, 16), w2, lambda w: w)
    with pytest.raises(ValueError, match="past the last"):
        fused_moe(
            torch.zeros(1, 16), prepared, torch.tensor([[7]]), torch.ones(1, 1),
            linear=F.linear, silu_and_mul=lambda h: h[:, :16] * h[:, 16:],
        )  # fmt: skip


def test_bfloat16_mixtral_with_cpu_kernels_matches_reference_ops(tmp_path, ops) -> None:
    """A whole bfloat16 Mixtral, prefill and decode, with heron-cpu's experts: as close to the
    float32 model as torch's own bfloat16 run is, choosing the same tokens."""
    import sys
    from pathlib import Path

    from heron_interfaces.kernel_ops import KernelOps

    sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
    from breadth_models import breadth_config
    from model_utils import Harness, make_context, tiny_hf_model

    from heron.models.mixtral import MixtralForCausalLM

    config = breadth_config("mixtral")
    state = tiny_hf_model(config).state_dict()
    ids = list(range(3, 40))
    logits = []
    for kernel_ops, dtype in (
        (KernelOps(), torch.float32),
        (KernelOps(), torch.bfloat16),
        (ops, torch.bfloat16),
    ):
        ctx = make_context(dtype=dtype, block_size=16, ops=kernel_ops)
        model = MixtralForCausalLM(config, ctx)
        model.load_weights(state.items())
        model.prepare_for_inference()
        assert (model.model.layers[0].mlp.experts.__dict__.get("_prepared") is not None) == (
            kernel_ops is ops
        )
        harness = Harness(model, ctx)
        seq = harness.add(len(ids) + 4)
        steps = [harness.step({seq: ids})[seq]]
        for token in (5, 9, 11):
            steps.append(harness.step({seq: [token]})[seq])
        logits.append(torch.cat(steps).float())
    exact, reference, cpu = logits
    torch_error = (reference - exact).abs().max()
    assert (cpu - exact).abs().max() <= torch_error * 1.25 + 2e-2
    assert torch.equal(cpu.argmax(-1), reference.argmax(-1))
