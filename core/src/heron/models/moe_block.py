"""The sparse feed-forward block of MoE decoders, and loading its checkpoint tensors.

Mixtral, Qwen2-MoE and Qwen3-MoE share it: a replicated router (``gate``), the packed experts
(:class:`~heron.layers.moe.FusedMoE`) and, for Qwen2-MoE, a shared expert (a dense SwiGLU, sharded
like any MLP) whose output is scaled by ``sigmoid(shared_expert_gate(x))``. It plugs into the
shared decoder through :attr:`~heron.models.decoder.DecoderOptions.mlp_factory`, so attention,
norms, tensor and pipeline parallelism are the Llama family's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heron.layers import Linear
from heron.layers.moe import FusedMoE
from heron.models.causal_lm import DecoderForCausalLM
from heron.models.context import ModelContext
from heron.models.decoder import MLP, DecoderOptions
from heron.models.weights import CheckpointMismatchError, _show


@dataclass(frozen=True, slots=True, kw_only=True)
class MoEOptions:
    """What a config says about its experts."""

    num_experts: int
    top_k: int
    intermediate_size: int
    renormalize: bool
    weights_in_model_dtype: bool = False
    """Qwen-MoE rounds the routing weights to the model dtype before scaling; Mixtral does not."""
    shared_expert_size: int = 0
    """Intermediate size of Qwen2-MoE's shared expert; 0: none."""
    dense_layers: frozenset[int] = frozenset()
    """Layers that keep a dense MLP of ``DecoderOptions.intermediate_size`` (Qwen's
    ``mlp_only_layers`` and ``decoder_sparse_step``)."""


class SparseMoeBlock(nn.Module):
    """Router, experts and the optional gated shared expert of one layer."""

    def __init__(self, opts: DecoderOptions, moe: MoEOptions, ctx: ModelContext) -> None:
        super().__init__()
        self.gate = Linear(
            opts.hidden_size, moe.num_experts, bias=False, dtype=ctx.dtype, ops=ctx.ops
        )
        self.experts = FusedMoE(
            num_experts=moe.num_experts,
            top_k=moe.top_k,
            hidden_size=opts.hidden_size,
            intermediate_size=moe.intermediate_size,
            renormalize=moe.renormalize,
            weights_in_model_dtype=moe.weights_in_model_dtype,
            dtype=ctx.dtype,
            ops=ctx.ops,
            tp=ctx.tp,
        )
        self.shared_expert: MLP | None = None
        self.shared_expert_gate: Linear | None = None
        if moe.shared_expert_size:
            shared = dataclasses.replace(
                opts, intermediate_size=moe.shared_expert_size, mlp_bias=False
            )
            self.shared_expert = MLP(shared, ctx)
            self.shared_expert_gate = Linear(
                opts.hidden_size, 1, bias=False, dtype=ctx.dtype, ops=ctx.ops
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.experts(x, self.gate(x))
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out


def moe_mlp_factory(moe: MoEOptions):
    """A :attr:`DecoderOptions.mlp_factory`: the sparse block, or a dense MLP on dense layers."""

    def build(opts: DecoderOptions, ctx: ModelContext, layer_index: int) -> nn.Module:
        if layer_index in moe.dense_layers:
            return MLP(opts, ctx)
        return SparseMoeBlock(opts, moe, ctx)

    return build


# ``<layer>.mlp.experts.<e>.<part>.weight``; Mixtral names the block ``block_sparse_moe`` and the
# parts w1 (gate), w3 (up), w2 (down).
_EXPERT = re.compile(r"^(?P<block>.+)\.experts\.(?P<expert>\d+)\.(?P<part>\w+)\.weight$")
_FUSED = re.compile(r"^(?P<block>.+)\.experts\.(?P<kind>gate_up_proj|down_proj)$")
_PARTS = {
    "w1": "gate",
    "w3": "up",
    "w2": "down",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
}


def route_expert_weights(
    model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], block_alias: str | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Load every expert tensor of ``weights`` into its :class:`FusedMoE` and pass the rest on
    (renaming ``block_alias`` to ``mlp``: Mixtral's ``block_sparse_moe``).

    Expert tensors of layers this pipeline stage does not hold pass on too, and the generic
    loader skips them with the rest of those layers.
    """
    experts = {
        name.removesuffix(".experts"): module
        for name, module in model.named_modules()
        if isinstance(module, FusedMoE)
    }
    alias = f".{block_alias}." if block_alias else None
    for name, tensor in weights:
        if alias and alias in name:
            name = name.replace(alias, ".mlp.", 1)
        match = _EXPERT.match(name)
        if match and match["block"] in experts and match["part"] in _PARTS:
            experts[match["block"]].load_expert(
                int(match["expert"]), _PARTS[match["part"]], tensor, name
            )
            continue
        match = _FUSED.match(name)
        if match and match["block"] in experts:
            experts[match["block"]].load_fused(match["kind"], tensor, name)
            continue
        yield name, tensor


def check_experts_loaded(model: nn.Module) -> None:
    """Raise :class:`CheckpointMismatchError` naming the expert tensors no checkpoint provided."""
    missing = [
        f"{name}: {item}"
        for name, module in model.named_modules()
        if isinstance(module, FusedMoE)
        for item in module.missing()
    ]
    if missing:
        raise CheckpointMismatchError(
            f"checkpoint does not match {type(model).__name__}: {len(missing)} missing expert "
            f"weight(s): {_show(missing)}"
        )


class MoEForCausalLM(DecoderForCausalLM):
    """The shared decoder with sparse feed-forward blocks; subclasses read :class:`MoEOptions`."""

    step_graphs_off = "expert routing decides on the host which GEMMs run"
    """Read by the runner: a recorded decode step would replay one step's choice of experts."""

    block_alias: str | None = None
    """The checkpoint's name of the feed-forward block when it is not ``mlp``."""

    @classmethod
    def moe_options(cls, hf_config: Any) -> MoEOptions:
        """The experts of ``hf_config``: each architecture reads its own field names."""
        raise NotImplementedError(f"{cls.__name__} does not say how to read its experts")

    @classmethod
    def options(cls, hf_config: Any) -> DecoderOptions:
        opts = super().options(hf_config)
        return dataclasses.replace(opts, mlp_factory=moe_mlp_factory(cls.moe_options(hf_config)))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(route_expert_weights(self, weights, self.block_alias))
        check_experts_loaded(self)

    def prepare_for_inference(self) -> None:
        super().prepare_for_inference()
        for module in self.modules():
            if isinstance(module, FusedMoE):
                module.prepare_for_inference()
