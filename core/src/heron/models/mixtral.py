"""Mixtral: Mistral's decoder with a sparse block of ``num_local_experts`` SwiGLU experts, of
which the router picks ``num_experts_per_tok`` per token (weights renormalised to sum to one)."""

from __future__ import annotations

from typing import Any

from heron.models.moe_block import MoEForCausalLM, MoEOptions


class MixtralForCausalLM(MoEForCausalLM):
    """Mixtral 8x7B / 8x22B-style checkpoints (``block_sparse_moe.experts.E.w1/w2/w3``)."""

    block_alias = "block_sparse_moe"

    @classmethod
    def moe_options(cls, hf_config: Any) -> MoEOptions:
        return MoEOptions(
            num_experts=hf_config.num_local_experts,
            top_k=hf_config.num_experts_per_tok,
            intermediate_size=hf_config.intermediate_size,
            renormalize=True,
        )
