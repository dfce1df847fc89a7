"""Every linear product of one SmolLM2-135M decode token: heron-cpu's quantized loops vs bf16.

Why a kernel-level figure beside ``heron bench latency``: on a shared 2-core machine the whole
engine's tok/s swings with the other load, while one token's 211 products (30 layers of
q/k/v, o, gate/up, down, and the tied 49,152-row output projection), each with its own weight so
that nothing stays cached, isolate what the quantized weights change: bytes per token. The
arms run interleaved, one token each, and the medians are reported.

    python benchmarks/bench_quant_linear.py --threads 1 --tokens 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from heron_cpu import gemv, quant
from heron_interfaces.testing.quantized_suite import random_quantized_weight

LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # fused qkv, o, gate_up, down
LM_HEAD = (49152, 576)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    q4 = [
        quant.pack(random_quantized_weight("q4_1", n, k, seed=i))
        for i in range(LAYERS)
        for n, k in SHAPES
    ]
    q4.append(quant.pack(random_quantized_weight("q8_0", *LM_HEAD, seed=99)))
    bf16 = [w.dequantize(torch.bfloat16) for w in q4]
    x = {k: torch.randn(1, k).bfloat16() for k in (576, 1536)}
    arms = {
        "quantized (q4_1 + q8_0 head)": lambda: [quant.linear(x[w.k], w) for w in q4],
        "bfloat16 GEMV": lambda: [gemv.linear_small(x[w.shape[1]], w) for w in bf16],
    }
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.tokens):
        for name, run in arms.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    mb = {
        "quantized (q4_1 + q8_0 head)": sum(w.nbytes for w in q4) / 1e6,
        "bfloat16 GEMV": sum(w.numel() * 2 for w in bf16) / 1e6,
    }
    for name, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{name:30s} {median * 1e3:7.2f} ms/token  ({1 / median:6.1f} tokens/s of linears, "
            f"{mb[name]:.0f} MB/token, {mb[name] / 1e3 / median:.1f} GB/s)"
        )


if __name__ == "__main__":
    main()
