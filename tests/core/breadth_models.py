"""Tiny random-weight configs of architectures beyond the Llama family, for the breadth tests.

Every config has head size 64 (the smallest every backend's kernels accept) and exercises what
sets its architecture apart (partial rotary, parallel residuals, logit and attention multipliers,
learned positions, experts with few tokens each), so a mapping error changes the greedy ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from model_utils import EOS_ID, PAD_ID, TINY_VOCAB, build_tokenizer, tiny_hf_model

_COMMON: dict[str, Any] = {
    "vocab_size": TINY_VOCAB,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
}

# Architectures Heron has no native implementation of: they run through the Transformers fallback.
FALLBACK_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "olmo": ("OlmoConfig", {"clip_qkv": 3.0}),
    "olmo2": ("Olmo2Config", {}),
    "granite": (
        "GraniteConfig",
        {
            "embedding_multiplier": 2.0,
            "residual_multiplier": 0.5,
            "attention_multiplier": 0.1,
            "logits_scaling": 4.0,
            "num_key_value_heads": 2,
        },
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        {"rotary_pct": 0.5, "use_parallel_residual": True, "num_key_value_heads": None},
    ),
    "phi": (
        "PhiConfig",
        {"partial_rotary_factor": 0.5, "qk_layernorm": True, "num_key_value_heads": 2},
    ),
    "cohere": ("CohereConfig", {"logit_scale": 0.5, "use_qk_norm": False}),
    "gpt2": ("GPT2Config", {}),
    "gemma": ("GemmaConfig", {"head_dim": 64}),
    "glm": ("GlmConfig", {"head_dim": 64}),
    "starcoder2": ("Starcoder2Config", {"sliding_window": None}),
    # Mixture of experts: per-expert checkpoint tensors that transformers fuses on load.
    "olmoe": (
        "OlmoeConfig",
        {"num_experts": 4, "num_experts_per_tok": 2, "intermediate_size": 64},
    ),
}

# transformers' StableLM does not route attention through AttentionInterface: refused clearly.
UNSUPPORTED_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "stablelm": ("StableLmConfig", {"num_key_value_heads": 2}),
}

# Architectures with a native implementation added by issue 21.
NATIVE_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "phi3": ("Phi3Config", {}),
    # Partial rotary (Phi-4-mini) and LongRoPE (the 128k variants); the prompts stay inside the
    # original context, where transformers uses the short factors.
    "phi3-longrope": (
        "Phi3Config",
        {
            "partial_rotary_factor": 0.5,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0 + 0.25 * i for i in range(16)],
                "long_factor": [2.0 + 0.5 * i for i in range(16)],
                "original_max_position_embeddings": 256,
            },
        },
    ),
    "mixtral": (
        "MixtralConfig",
        {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None},
    ),
    # One dense layer (mlp_only_layers) beside a sparse one; routing weights not renormalised.
    "qwen3_moe": (
        "Qwen3MoeConfig",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 64,
            "norm_topk_prob": False,
            "mlp_only_layers": [0],
            "head_dim": 64,
        },
    ),
    # A gated shared expert; decoder_sparse_step 2 makes layer 0 dense.
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 64,
            "shared_expert_intermediate_size": 96,
            "norm_topk_prob": True,
            "decoder_sparse_step": 2,
            "use_sliding_window": False,
        },
    ),
}


def breadth_config(arch: str) -> Any:
    """The tiny config of ``arch`` (a key of FALLBACK_CONFIGS or NATIVE_CONFIGS)."""
    import transformers

    class_name, overrides = {**FALLBACK_CONFIGS, **NATIVE_CONFIGS, **UNSUPPORTED_CONFIGS}[arch]
    kwargs = dict(_COMMON)
    if arch == "gpt2":  # GPT-2 spells its sizes its own way
        kwargs = {
            "vocab_size": TINY_VOCAB,
            "n_embd": 128,
            "n_layer": 2,
            "n_head": 2,
            "n_positions": 512,
            "bos_token_id": EOS_ID,
            "eos_token_id": EOS_ID,
            "pad_token_id": PAD_ID,
        }
    kwargs.update(overrides)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "bos_token_id"}
    return getattr(transformers, class_name)(**kwargs)


def make_breadth_model_dir(tmp_path: Path, arch: str, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` model folder (config, safetensors, tokenizer) and return it."""
    from transformers import GenerationConfig

    folder = Path(tmp_path) / f"tiny-{arch}"
    model = tiny_hf_model(breadth_config(arch), seed)
    model.generation_config = GenerationConfig(eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def load_hf(folder: Path) -> Any:
    """The float32 transformers model of ``folder`` (eager attention: the plain reference)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
