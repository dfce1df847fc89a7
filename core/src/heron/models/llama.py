"""Llama-family architectures: thin subclasses of the shared decoder.

* Llama / Mistral: the base decoder (Mistral's sliding window is reported, not applied).
* Qwen2: always has q/k/v biases, whatever ``attention_bias`` says.
* Qwen3: per-head RMSNorm on q and k before rotary; ``head_dim`` comes from the config.
"""

from __future__ import annotations

from typing import Any

from heron.models.causal_lm import DecoderForCausalLM


class LlamaForCausalLM(DecoderForCausalLM):
    """Llama 2/3, SmolLM and other ``LlamaForCausalLM`` checkpoints."""


class MistralForCausalLM(DecoderForCausalLM):
    """Mistral 7B-style checkpoints."""


class Qwen2ForCausalLM(DecoderForCausalLM):
    """Qwen2 / Qwen2.5: q/k/v projections with biases."""

    @classmethod
    def qkv_bias(cls, hf_config: Any) -> bool:
        return True


class Qwen3ForCausalLM(DecoderForCausalLM):
    """Qwen3 dense models: q/k norms, explicit head size."""

    qk_norm = True
