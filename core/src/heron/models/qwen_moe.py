"""Qwen2-MoE and Qwen3-MoE: the Qwen2 / Qwen3 decoders with sparse blocks.

Both route ``num_experts_per_tok`` of ``num_experts`` experts of ``moe_intermediate_size``
(renormalised when ``norm_topk_prob``); layers listed in ``mlp_only_layers``, or not on the
``decoder_sparse_step`` grid, keep a dense MLP of ``intermediate_size``. Qwen2-MoE adds a shared
expert gated by ``sigmoid(shared_expert_gate(x))``; Qwen3-MoE has none and norms q and k.
"""

from __future__ import annotations

from typing import Any

from heron.models.moe_block import MoEForCausalLM, MoEOptions


def _qwen_moe_options(hf_config: Any, shared_expert_size: int) -> MoEOptions:
    step = getattr(hf_config, "decoder_sparse_step", 1) or 1
    mlp_only = set(getattr(hf_config, "mlp_only_layers", None) or ())
    num_experts = hf_config.num_experts
    dense = {
        i
        for i in range(hf_config.num_hidden_layers)
        if i in mlp_only or num_experts == 0 or (i + 1) % step != 0
    }
    return MoEOptions(
        num_experts=num_experts,
        top_k=hf_config.num_experts_per_tok,
        intermediate_size=hf_config.moe_intermediate_size,
        renormalize=bool(getattr(hf_config, "norm_topk_prob", False)),
        weights_in_model_dtype=True,
        shared_expert_size=shared_expert_size,
        dense_layers=frozenset(dense),
    )


class Qwen2MoeForCausalLM(MoEForCausalLM):
    """Qwen1.5-MoE / Qwen2-57B-A14B: q/k/v biases (``qkv_bias``) and a gated shared expert."""

    @classmethod
    def qkv_bias(cls, hf_config: Any) -> bool:
        return bool(getattr(hf_config, "qkv_bias", True))

    @classmethod
    def moe_options(cls, hf_config: Any) -> MoEOptions:
        return _qwen_moe_options(hf_config, hf_config.shared_expert_intermediate_size)


class Qwen3MoeForCausalLM(MoEForCausalLM):
    """Qwen3-30B-A3B / 235B-A22B: q/k norms, explicit head size, no shared expert."""

    qk_norm = True

    @classmethod
    def moe_options(cls, hf_config: Any) -> MoEOptions:
        return _qwen_moe_options(hf_config, 0)
