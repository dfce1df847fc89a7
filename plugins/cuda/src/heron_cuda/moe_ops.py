"""Mixture-of-experts ops on this package's kernels (``csrc/moe_*.cu``), as torch custom ops.

:func:`fused_moe` is the whole expert computation of a MoE layer on the GPU in five launches that
never synchronise with the host (so it can be captured in a graph): group the (token, slot)
entries by expert (count, offsets, scatter), one grouped GEMM over every expert for gate and up
with SiLU-and-multiply fused in, one for down with the routing weight fused in, and a per-token
sum in expert order. It computes :func:`heron_interfaces.kernel_ops.moe_reference` and rounds
where it rounds. :func:`moe_topk_softmax` is the router (softmax, top-k, optional renormalising)
as one kernel; core routes with torch today (the 1.11 contract hands ``fused_moe`` the chosen
experts), so it is offered for callers that route themselves and checked against core's
``route_top_k`` on a GPU.

Tensors are checked here (dtype and shape first, then device, each error naming the argument),
because the kernels take raw addresses. Entries of ``topk_ids`` outside ``[0, num_experts)``
contribute nothing: the kernels cannot raise without a device sync (as ``write_kv`` skips slots
past the cache).

This file is shared verbatim by heron_cuda and heron_rocm (plugins/rocm's CMake installs it).
It avoids ``from __future__ import annotations``: ``custom_op`` reads real annotations.
"""

import dataclasses

import torch

from . import _C
from .ops import (
    _DTYPE_CODES,
    ELEMENTWISE_DTYPES,
    _check_contiguous,
    _check_device,
    _check_dtype,
    _check_ndim,
    _launch_context,
)

_NAMESPACE: str = __package__ or "heron_cuda"

MOE_DTYPES: tuple[torch.dtype, ...] = ELEMENTWISE_DTYPES
"""Dtypes the expert kernels are instantiated for (float16 and bfloat16 are what the platform
declares; float32 is there for exact checks)."""
MAX_EXPERTS: int = int(_C.MOE_MAX_EXPERTS)
MAX_TOP_K: int = int(_C.MOE_MAX_TOP_K)
BLOCK_M: int = int(_C.MOE_BLOCK_M)
"""Rows per GEMM tile: each expert's entries are padded to a multiple of it."""


@dataclasses.dataclass(frozen=True, slots=True)
class MoeShape:
    """Sizes of one fused_moe call, as validated by :func:`check_moe_inputs`."""

    num_tokens: int
    top_k: int
    hidden: int
    intermediate: int
    num_experts: int


def check_expert_weights(w13: torch.Tensor, w2: torch.Tensor) -> tuple[int, int, int]:
    """``(num_experts, hidden, intermediate)`` of ``w13`` ``[E, 2I, H]`` and ``w2`` ``[E, H, I]``."""
    _check_dtype("w13", w13, MOE_DTYPES)
    _check_ndim("w13", w13, 3, "[num_experts, 2 * intermediate, hidden]")
    _check_ndim("w2", w2, 3, "[num_experts, hidden, intermediate]")
    if w2.dtype != w13.dtype:
        raise ValueError(f"w2 has dtype {w2.dtype} but must match w13's {w13.dtype}")
    num_experts, two_inter, hidden = w13.shape
    if not 0 < num_experts <= MAX_EXPERTS:
        raise ValueError(f"w13 has {num_experts} experts; the kernels take 1 to {MAX_EXPERTS}")
    if two_inter % 2 or two_inter == 0 or hidden == 0:
        raise ValueError(
            f"w13 must be [num_experts, 2 * intermediate, hidden]; got {tuple(w13.shape)}"
        )
    intermediate = two_inter // 2
    if tuple(w2.shape) != (num_experts, hidden, intermediate):
        raise ValueError(
            f"w2 has shape {tuple(w2.shape)}; expected {(num_experts, hidden, intermediate)} to "
            f"match w13 {tuple(w13.shape)}"
        )
    return num_experts, hidden, intermediate


def check_moe_inputs(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> MoeShape:
    """Every condition the kernels rely on, as a ``ValueError`` naming the argument."""
    num_experts, hidden, intermediate = check_expert_weights(w13, w2)
    _check_ndim("x", x, 2, "[num_tokens, hidden]")
    if x.dtype != w13.dtype:
        raise ValueError(f"x has dtype {x.dtype} but the experts' weights are {w13.dtype}")
    if x.shape[1] != hidden:
        raise ValueError(f"x has {x.shape[1]} features; the experts take hidden={hidden}")
    _check_dtype("topk_ids", topk_ids, (torch.int64,))
    _check_ndim("topk_ids", topk_ids, 2, "[num_tokens, top_k]")
    num_tokens, top_k = topk_ids.shape
    if num_tokens != x.shape[0]:
        raise ValueError(f"topk_ids has {num_tokens} rows but x has {x.shape[0]} tokens")
    if not 0 < top_k <= min(MAX_TOP_K, num_experts):
        raise ValueError(
            f"topk_ids has top_k={top_k} columns; it must be in [1, "
            f"{min(MAX_TOP_K, num_experts)}] for {num_experts} experts"
        )
    if topk_weights.dtype not in (torch.float32, x.dtype):
        raise ValueError(
            f"topk_weights must be float32 or x's dtype {x.dtype}; got {topk_weights.dtype}"
        )
    if topk_weights.shape != topk_ids.shape:
        raise ValueError(
            f"topk_weights has shape {tuple(topk_weights.shape)} but topk_ids has "
            f"{tuple(topk_ids.shape)}"
        )
    if num_tokens * top_k >= 2**31:
        raise ValueError(f"{num_tokens} tokens x top_k {top_k} entries exceed the int32 indices")
    _check_device("x", x)
    others = {"w13": w13, "w2": w2, "topk_ids": topk_ids, "topk_weights": topk_weights}
    for name, t in others.items():
        _check_device(name, t, x.device)
    for name, t in others.items():
        _check_contiguous(name, t)
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"x must have contiguous features per token (strides {x.stride()})")
    return MoeShape(num_tokens, top_k, hidden, intermediate, num_experts)


def _workspace(num_slots: int, num_experts: int, device: torch.device) -> torch.Tensor:
    ints, _tiles = _C.moe_workspace_size(num_slots, num_experts)
    return torch.empty(max(int(ints), 1), dtype=torch.int32, device=device)


@torch.library.custom_op(f"{_NAMESPACE}::fused_moe", mutates_args=("out",), device_types="cuda")
def fused_moe(
    out: torch.Tensor,
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
) -> None:
    """``out[t] = sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t])``, each expert
    ``silu(x W_gate^T) * (x W_up^T)`` then ``W_down``; ``w13`` ``[E, 2I, H]`` (gate rows, then up
    rows), ``w2`` ``[E, H, I]``; ``out`` like ``x`` ``[tokens, H]`` (token stride free).
    Intermediate results are rounded to ``x``'s dtype where ``moe_reference`` rounds them."""
    shape = check_moe_inputs(x, w13, w2, topk_ids, topk_weights)
    _check_device("out", out, x.device)
    if out.dtype != x.dtype or out.shape != x.shape:
        raise ValueError(
            f"out must be {tuple(x.shape)} {x.dtype} like x; got {tuple(out.shape)} {out.dtype}"
        )
    if out.shape[1] > 1 and out.stride(1) != 1:
        raise ValueError(f"out must have contiguous features per token (strides {out.stride()})")
    if shape.num_tokens == 0:
        return
    num_slots = shape.num_tokens * shape.top_k
    workspace = _workspace(num_slots, shape.num_experts, x.device)
    act = torch.empty(num_slots, shape.intermediate, dtype=x.dtype, device=x.device)
    expert_out = torch.empty(num_slots, shape.hidden, dtype=x.dtype, device=x.device)
    dev, stream = _launch_context(x)
    _C.fused_moe(
        out.data_ptr(),
        out.stride(0),
        x.data_ptr(),
        x.stride(0),
        w13.data_ptr(),
        w2.data_ptr(),
        topk_ids.data_ptr(),
        topk_weights.data_ptr(),
        int(topk_weights.dtype == torch.float32),
        shape.num_tokens,
        shape.top_k,
        shape.hidden,
        shape.intermediate,
        shape.num_experts,
        workspace.data_ptr(),
        workspace.numel(),
        act.data_ptr(),
        expert_out.data_ptr(),
        _DTYPE_CODES[x.dtype],
        dev,
        stream,
    )


@torch.library.custom_op(
    f"{_NAMESPACE}::moe_topk_softmax", mutates_args=("weights", "ids"), device_types="cuda"
)
def moe_topk_softmax(
    weights: torch.Tensor, ids: torch.Tensor, router_logits: torch.Tensor, renormalize: bool
) -> None:
    """Softmax (float32) over each row of ``router_logits`` ``[tokens, experts]``, then the
    ``top_k`` largest probabilities into ``weights`` (float32) and their experts into ``ids``
    (int64), both ``[tokens, top_k]``; equal probabilities go to the lower expert id.
    ``renormalize`` rescales each row of ``weights`` to sum to one (core's ``route_top_k``)."""
    _check_dtype("router_logits", router_logits, ELEMENTWISE_DTYPES)
    _check_ndim("router_logits", router_logits, 2, "[num_tokens, num_experts]")
    _check_dtype("weights", weights, (torch.float32,))
    _check_dtype("ids", ids, (torch.int64,))
    num_tokens, num_experts = router_logits.shape
    for name, t in (("weights", weights), ("ids", ids)):
        _check_ndim(name, t, 2, "[num_tokens, top_k]")
        if t.shape[0] != num_tokens:
            raise ValueError(f"{name} has {t.shape[0]} rows but router_logits has {num_tokens}")
    top_k = ids.shape[1]
    if weights.shape != ids.shape:
        raise ValueError(f"weights has shape {tuple(weights.shape)} but ids {tuple(ids.shape)}")
    if not 0 < top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
    _check_device("router_logits", router_logits)
    for name, t in (("weights", weights), ("ids", ids)):
        _check_device(name, t, router_logits.device)
        _check_contiguous(name, t)
    if num_experts > 1 and router_logits.stride(1) != 1:
        raise ValueError(
            f"router_logits must have contiguous experts per token (strides {router_logits.stride()})"
        )
    if num_tokens == 0:
        return
    dev, stream = _launch_context(router_logits)
    _C.moe_topk_softmax(
        weights.data_ptr(),
        ids.data_ptr(),
        router_logits.data_ptr(),
        router_logits.stride(0),
        num_tokens,
        num_experts,
        top_k,
        int(renormalize),
        _DTYPE_CODES[router_logits.dtype],
        dev,
        stream,
    )


def moe_align(topk_ids: torch.Tensor, num_experts: int) -> dict[str, torch.Tensor]:
    """The expert grouping ``fused_moe`` computes first, for tests and tools: ``offsets``
    ``[E + 1]`` (expert ``e``'s rows start at ``offsets[e]``, each padded to :data:`BLOCK_M`),
    ``sorted_slots`` (the entry ``token * top_k + slot`` of each row, -1 for padding) and
    ``tile_experts`` (each tile's expert, -1 if unused). Layout: ``csrc/moe_logic.h``."""
    _check_dtype("topk_ids", topk_ids, (torch.int64,))
    _check_device("topk_ids", topk_ids)
    _check_contiguous("topk_ids", topk_ids)
    num_slots = topk_ids.numel()
    ints, tiles = (int(v) for v in _C.moe_workspace_size(num_slots, num_experts))
    workspace = _workspace(num_slots, num_experts, topk_ids.device)
    dev, stream = _launch_context(topk_ids)
    _C.moe_align(
        topk_ids.data_ptr(), num_slots, num_experts, workspace.data_ptr(), ints, dev, stream
    )
    rows = tiles * BLOCK_M
    tail = workspace[ints - tiles - rows - num_experts - 1 : ints]
    return {
        "offsets": tail[: num_experts + 1].long(),
        "sorted_slots": tail[num_experts + 1 : num_experts + 1 + rows].long(),
        "tile_experts": tail[num_experts + 1 + rows :].long(),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class GpuExperts:
    """One MoE layer's experts as :func:`fused_moe` reads them: contiguous, on the GPU."""

    w13: torch.Tensor
    w2: torch.Tensor


def prepare_experts(w13: torch.Tensor, w2: torch.Tensor) -> GpuExperts | None:
    """The layer's experts for the kernels, or None where they cannot run them (host tensors, a
    dtype without kernels, more experts than the kernels count): core then runs the reference."""
    if not (w13.is_cuda and w2.is_cuda and w13.device == w2.device):
        return None
    if w13.dtype not in MOE_DTYPES or w13.dim() != 3 or w13.shape[0] > MAX_EXPERTS:
        return None
    check_expert_weights(w13, w2)  # the shapes are the model's: a mismatch is an error
    return GpuExperts(w13=w13.contiguous(), w2=w2.contiguous())
