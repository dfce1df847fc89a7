"""Tensor parallelism for the Transformers fallback, from transformers' own sharding plan.

transformers configs carry ``base_model_tp_plan``: glob-like module names (``layers.*.mlp.up_proj``)
mapped to a style. Heron takes the two Megatron styles it has layers for and swaps those modules
for its own parallel linears over this rank's shard: ``colwise`` -> :class:`ColumnParallelLinear`
(output rows), ``rowwise`` -> :class:`RowParallelLinear` (input columns, one all-reduce).
Every other style (``colwise_gather_output``, ``rowwise_split_input``, replicated norms,
embeddings, experts) stays replicated: each rank computes the full result, which is what those
styles amount to, at no saving but always correct. Attention modules read their head count from
the projection width (``view(..., -1, head_dim)``), so column-sharded q/k/v give each rank its
share of the heads, and Heron's attention runs on that share.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from heron.distributed.tensor_parallel import ShardingError, split_evenly
from heron.layers import ColumnParallelLinear, Linear, RowParallelLinear
from heron.models.context import ModelContext

SHARDED_STYLES = ("colwise", "rowwise")


def tp_plan(hf_config: Any) -> dict[str, str]:
    """The config's base-model plan, or a :class:`ShardingError` saying there is none."""
    plan = getattr(hf_config, "base_model_tp_plan", None)
    if not isinstance(plan, dict) or not plan:
        raise ShardingError(
            f"transformers has no tensor-parallel plan for {hf_config.model_type!r}, so the "
            "Transformers fallback runs it on one rank only (tensor_parallel_size 1)"
        )
    return plan


def _pattern(glob: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(glob).replace(r"\*", r"[^.]+") + "$")


def sharded_modules(base_model: nn.Module, plan: dict[str, str]) -> dict[str, str]:
    """``{module name (under the base model): "colwise" | "rowwise"}`` for this model."""
    patterns = [(_pattern(g), style) for g, style in plan.items() if style in SHARDED_STYLES]
    found: dict[str, str] = {}
    for name, module in base_model.named_modules():
        if not isinstance(module, nn.Linear | Linear):
            continue
        for pattern, style in patterns:
            if pattern.match(name):
                found[name] = style
                break
    return found


def heads_are_sharded(base_model: nn.Module, sharded: dict[str, str]) -> bool:
    """Whether attention projections are column-sharded (attention modules: ``layer_idx`` and
    ``is_causal``), which splits every layer's heads over the ranks."""
    for name, module in base_model.named_modules():
        if hasattr(module, "layer_idx") and hasattr(module, "is_causal"):
            children = {f"{name}.{child}" for child, _ in module.named_children()}
            return any(sharded.get(child) == "colwise" for child in children)
    return False


def shard_heads(num_heads: int, num_kv_heads: int, tp: int) -> tuple[int, int]:
    """Each rank's query and KV heads when attention is sharded (KV heads are not replicated)."""
    return (
        split_evenly(num_heads, tp, "the number of attention heads"),
        split_evenly(num_kv_heads, tp, "the number of KV heads"),
    )


def apply_tp_plan(base_model: nn.Module, sharded: dict[str, str], ctx: ModelContext) -> int:
    """Swap each planned linear layer for this rank's Column/RowParallelLinear (uninitialised:
    the checkpoint loader slices its shard in). Returns how many were swapped."""
    modules = dict(base_model.named_modules())
    for name, style in sharded.items():
        old = modules[name]
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else base_model
        cls = ColumnParallelLinear if style == "colwise" else RowParallelLinear
        if style == "colwise" and old.out_features % ctx.tp.size:
            raise ShardingError(
                f"{name}: {old.out_features} output features do not split over "
                f"tensor_parallel_size {ctx.tp.size}"
            )
        new = cls(
            old.in_features,
            old.out_features,
            bias=old.bias is not None,
            dtype=ctx.dtype,
            ops=ctx.ops,
            tp=ctx.tp,
        )
        setattr(parent, attr, new)
    return len(sharded)
