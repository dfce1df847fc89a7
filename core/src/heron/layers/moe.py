"""Mixture-of-experts feed-forward: a router picks ``top_k`` experts per token, each a SwiGLU MLP.

The experts' weights are packed per layer, ``w13`` ``[experts, 2 * intermediate, hidden]`` (gate
rows, then up rows) and ``w2`` ``[experts, hidden, intermediate]``, filled from the checkpoint's
per-expert tensors (or transformers 5's already fused ones). Under tensor parallelism every rank
holds every expert's slice of the intermediate dimension (as vLLM shards experts without expert
parallelism), so the router stays replicated and the ranks' partial outputs are summed with one
all-reduce, like a row-parallel layer.

The expert computation itself (gather the tokens of each expert, two GEMMs, weighted sum) runs
in the platform's kernels when they offer it: a :class:`~heron_interfaces.kernel_ops.KernelOps`
with ``prepare_moe(w13, w2)`` and ``fused_moe(x, prepared, topk_ids, topk_weights)`` (heron-cpu
has them). Otherwise :func:`~heron_interfaces.kernel_ops.moe_reference` (the contract's
definition, in plain torch) runs it. The weights are kept as
buffers, not parameters: the generic checkpoint loader never sees them, and
:meth:`FusedMoE.check_loaded` reports missing experts instead.
"""

from __future__ import annotations

import torch
from torch import nn

from heron.distributed.tensor_parallel import SINGLE, TensorParallel
from heron_interfaces.kernel_ops import KernelOps, moe_reference

EXPERT_PARTS = ("gate", "up", "down")


def route_top_k(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax routing in float32 as transformers does it: ``(weights [T, k] float32, ids [T, k]
    int64)``; ``renormalize`` rescales the chosen weights to sum to one (Mixtral, and Qwen-MoE
    with ``norm_topk_prob``)."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


class FusedMoE(nn.Module):
    """The experts of one layer (this rank's intermediate slice of each); see the module docstring."""

    def __init__(
        self,
        *,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        renormalize: bool,
        weights_in_model_dtype: bool = False,
        dtype: torch.dtype,
        ops: KernelOps | None = None,
        tp: TensorParallel = SINGLE,
    ) -> None:
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(
                f"num_experts_per_tok ({top_k}) must be between 1 and the number of experts "
                f"({num_experts})"
            )
        self.num_experts = num_experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.weights_in_model_dtype = weights_in_model_dtype
        """Round the routing weights to the activations' dtype before scaling (Qwen-MoE does;
        Mixtral scales in float32): the same rounding as transformers in bfloat16."""
        self.ops = ops or KernelOps()
        self.tp = tp
        self.full_intermediate = intermediate_size
        self.intermediate = tp.split(intermediate_size, "the experts' intermediate size")
        self.first_column = tp.rank * self.intermediate
        self.register_buffer(
            "w13", torch.empty(num_experts, 2 * self.intermediate, hidden_size, dtype=dtype)
        )
        self.register_buffer(
            "w2", torch.empty(num_experts, hidden_size, self.intermediate, dtype=dtype)
        )
        self._loaded: set[tuple[int, str]] = set()

    # -- loading ---------------------------------------------------------------------------------
    def load_expert(self, expert: int, part: str, loaded: torch.Tensor, name: str) -> None:
        """Copy this rank's slice of checkpoint tensor ``loaded`` (one expert's ``part``: gate,
        up ``[intermediate, hidden]`` or down ``[hidden, intermediate]``)."""
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"{name!r}: expert {expert} of a layer with {self.num_experts}")
        if part not in EXPERT_PARTS:
            raise ValueError(f"{name!r}: expert part {part!r} is not one of {EXPERT_PARTS}")
        rows = slice(self.first_column, self.first_column + self.intermediate)
        if part == "down":
            expected = (self.w2.shape[1], self.full_intermediate)
            target, source = self.w2[expert], loaded
            source_slice = (slice(None), rows)
        else:
            expected = (self.full_intermediate, self.w13.shape[2])
            start = 0 if part == "gate" else self.intermediate
            target = self.w13[expert, start : start + self.intermediate]
            source, source_slice = loaded, (rows, slice(None))
        if tuple(loaded.shape) != expected:
            raise ValueError(
                f"weight {name!r} has shape {tuple(loaded.shape)} in the checkpoint but the model "
                f"expects {expected}; the config does not match the weights"
            )
        with torch.no_grad():
            target.copy_(source[source_slice])
        self._loaded.add((expert, part))

    def load_fused(self, kind: str, loaded: torch.Tensor, name: str) -> None:
        """transformers 5's fused layout: ``gate_up_proj`` ``[E, 2I, H]`` or ``down_proj``
        ``[E, H, I]``, split into the per-expert parts."""
        for expert in range(loaded.shape[0]):
            if kind == "gate_up_proj":
                gate, up = loaded[expert].chunk(2, dim=0)
                self.load_expert(expert, "gate", gate, name)
                self.load_expert(expert, "up", up, name)
            elif kind == "down_proj":
                self.load_expert(expert, "down", loaded[expert], name)
            else:
                raise ValueError(f"{name!r}: unknown fused expert tensor {kind!r}")

    def missing(self) -> list[str]:
        """``"expert E part"`` for every expert tensor the checkpoint did not provide."""
        return [
            f"expert {e} {part}"
            for e in range(self.num_experts)
            for part in EXPERT_PARTS
            if (e, part) not in self._loaded
        ]

    def prepare_for_inference(self) -> None:
        """Let the platform's kernels pack the experts' weights once, when they can run experts."""
        prepare = getattr(self.ops, "prepare_moe", None)
        if prepare is not None and getattr(self.ops, "fused_moe", None) is not None:
            self.__dict__["_prepared"] = prepare(self.w13, self.w2)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        """The weighted sum of each token's ``top_k`` experts (summed over ranks)."""
        weights, ids = route_top_k(router_logits, self.top_k, self.renormalize)
        if self.weights_in_model_dtype:
            weights = weights.to(x.dtype)
        prepared = self.__dict__.get("_prepared")
        if prepared is None:
            out = moe_reference(x, self.w13, self.w2, ids, weights)
        else:
            out = self.ops.fused_moe(x, prepared, ids, weights)
        return out if self.tp.size == 1 else self.tp.all_reduce(out)
