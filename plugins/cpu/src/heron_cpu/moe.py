"""heron-cpu's mixture-of-experts routine: route, group tokens by expert, GEMM on packed weights.

Why not the per-expert loop transformers runs: that loop builds a one-hot mask of every token for
every expert and searches it per expert, and its GEMMs read plain weights. Here one stable sort
groups the (token, slot) pairs by expert, one gather lays their rows out contiguously, and each
expert that has rows runs two matmuls through the backend's prepared weights (the packed
AVX512-BF16 GEMM, oneDNN's prepacked layout or the GEMV at decode sizes, as for any linear
layer) with the fused SiLU-and-mul between; one ``index_add_`` then sums each token's weighted
expert outputs in expert order, so the rounding is the reference's.

Tensors only: the caller (core's MoE layer) routes and passes ``topk_ids``/``topk_weights``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

Linear = Callable[[torch.Tensor, Any, "torch.Tensor | None"], torch.Tensor]


@dataclass(frozen=True, slots=True)
class PreparedExperts:
    """One layer's experts, each weight as the backend's ``prepare_linear`` laid it out."""

    w13: tuple[Any, ...]
    """Per expert: gate and up stacked, ``[2 * intermediate, hidden]`` before preparing."""
    w2: tuple[Any, ...]
    """Per expert: down, ``[hidden, intermediate]`` before preparing."""
    hidden_size: int


def prepare_experts(
    w13: torch.Tensor, w2: torch.Tensor, prepare_linear: Callable[[torch.Tensor], Any]
) -> PreparedExperts:
    """Prepare ``w13`` ``[E, 2I, H]`` and ``w2`` ``[E, H, I]`` one expert matrix at a time."""
    if w13.dim() != 3 or w2.dim() != 3 or w13.shape[0] != w2.shape[0]:
        raise ValueError(
            f"expert weights must be [E, 2I, H] and [E, H, I], got {tuple(w13.shape)} and "
            f"{tuple(w2.shape)}"
        )
    if w13.shape[1] != 2 * w2.shape[2] or w13.shape[2] != w2.shape[1]:
        raise ValueError(
            f"expert weights {tuple(w13.shape)} and {tuple(w2.shape)} disagree on the hidden or "
            "intermediate size"
        )
    return PreparedExperts(
        w13=tuple(prepare_linear(w.contiguous()) for w in w13),
        w2=tuple(prepare_linear(w.contiguous()) for w in w2),
        hidden_size=int(w13.shape[2]),
    )


def fused_moe(
    x: torch.Tensor,
    experts: PreparedExperts,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    *,
    linear: Linear,
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t])`` for every token ``t``.

    ``x`` ``[T, H]``; ``topk_ids`` ``[T, k]`` (int64), ``topk_weights`` ``[T, k]`` (float32 or
    ``x``'s dtype: the product is taken in the wider of the two and rounded to ``x``'s dtype, as
    the reference does).
    """
    num_experts = len(experts.w13)
    if x.dim() != 2 or x.shape[1] != experts.hidden_size:
        raise ValueError(f"x must be [tokens, {experts.hidden_size}], got {tuple(x.shape)}")
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(
            f"topk_ids {tuple(topk_ids.shape)} and topk_weights {tuple(topk_weights.shape)} must "
            f"both be [tokens={x.shape[0]}, k]"
        )
    top_k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    if len(counts) > num_experts:
        raise ValueError(f"topk_ids name an expert past the last ({num_experts - 1})")
    token_of = order // top_k
    rows = x.index_select(0, token_of)
    outputs = torch.empty_like(rows)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        end = start + count
        hidden = linear(rows[start:end], experts.w13[expert], None)
        outputs[start:end] = linear(silu_and_mul(hidden), experts.w2[expert], None)
        start = end
    scale = topk_weights.reshape(-1).index_select(0, order).unsqueeze(1)
    weighted = (outputs * scale).to(x.dtype)
    out = torch.zeros_like(x)
    out.index_add_(0, token_of, weighted)
    return out
