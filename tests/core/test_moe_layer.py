"""Core's mixture-of-experts layer: routing, the plain-torch expert routine, loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heron.layers.moe import FusedMoE, route_top_k
from heron.models.moe_block import check_experts_loaded
from heron.models.weights import CheckpointMismatchError
from heron_interfaces.kernel_ops import moe_reference


def per_token_experts(x, w13, w2, ids, weights):
    """Every token, every chosen expert, one at a time: the definition, no gathering."""
    inter = w2.shape[-1]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for slot in range(ids.shape[1]):
            e = int(ids[t, slot])
            h = w13[e] @ x[t]
            y = w2[e] @ (F.silu(h[:inter]) * h[inter:])
            out[t] += (y * weights[t, slot]).to(x.dtype)
    return out


@pytest.mark.parametrize(
    "tokens,experts,top_k,hidden,inter",
    [(1, 4, 2, 16, 8), (7, 8, 2, 32, 24), (33, 8, 1, 16, 16), (5, 3, 3, 8, 4), (64, 16, 4, 32, 8)],
)
def test_reference_routine_equals_the_per_token_definition(tokens, experts, top_k, hidden, inter):
    gen = torch.Generator().manual_seed(tokens * 100 + experts)
    x = torch.randn(tokens, hidden, generator=gen)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=gen) * 0.3
    w2 = torch.randn(experts, hidden, inter, generator=gen) * 0.3
    logits = torch.randn(tokens, experts, generator=gen)
    weights, ids = route_top_k(logits, top_k, renormalize=True)
    got = moe_reference(x, w13, w2, ids, weights)
    torch.testing.assert_close(got, per_token_experts(x, w13, w2, ids, weights))


def test_routing_is_a_float32_softmax_top_k_optionally_renormalised():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]], dtype=torch.bfloat16)
    weights, ids = route_top_k(logits, 2, renormalize=False)
    probs = torch.softmax(logits.float(), dim=-1)
    assert ids.tolist() == [[1, 2]]
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, probs[:, [1, 2]])
    weights, _ = route_top_k(logits, 2, renormalize=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1))


def test_top_k_out_of_range_is_refused():
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        FusedMoE(
            num_experts=2,
            top_k=3,
            hidden_size=8,
            intermediate_size=4,
            renormalize=True,
            dtype=torch.float32,
        )


def test_missing_and_misshapen_experts_are_named():
    moe = FusedMoE(
        num_experts=2, top_k=1, hidden_size=8, intermediate_size=4, renormalize=True,
        dtype=torch.float32,
    )  # fmt: skip
    holder = torch.nn.Module()
    holder.experts = moe
    for part in ("gate", "up"):
        moe.load_expert(0, part, torch.zeros(4, 8), f"experts.0.{part}")
    moe.load_expert(0, "down", torch.zeros(8, 4), "experts.0.down")
    with pytest.raises(CheckpointMismatchError, match="expert 1 down"):
        check_experts_loaded(holder)
    with pytest.raises(ValueError, match=r"expects \(4, 8\)"):
        moe.load_expert(1, "gate", torch.zeros(8, 4), "experts.1.w1.weight")
