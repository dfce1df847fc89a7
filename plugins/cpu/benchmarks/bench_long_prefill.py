"""Attention of one prefill chunk, the kernel against the long-prefill path (heron_cpu.long_prefill).

SmolLM2-135M's shape (9 query heads over 3 KV heads of 64, bfloat16, block size 16): a fresh
prompt of L tokens, and an L-token chunk over a cached prefix, for several L. The crossover of the
two columns is where ``HERON_CPU_LONG_PREFILL_TOKENS`` (the path's threshold) belongs.

    python plugins/cpu/benchmarks/bench_long_prefill.py [--repeats 3] [--lens 64 128 256 512]

Prints the minimum over repeats of one call's time, in ms (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from heron_cpu import long_prefill
from heron_cpu.attention import CpuAttentionBackend
from heron_interfaces.testing.batches import Scenario, make_batch

NUM_HEADS, NUM_KV_HEADS, HEAD_SIZE, BLOCK_SIZE = 9, 3, 64, 16


def _time_forward(seqs: tuple[tuple[int, int], ...], threshold: int, repeats: int) -> float:
    scenario = Scenario(
        seqs=seqs,
        num_heads=NUM_HEADS,
        num_kv_heads=NUM_KV_HEADS,
        head_size=HEAD_SIZE,
        block_size=BLOCK_SIZE,
        dtype="bfloat16",
    )
    batch = make_batch(scenario)
    backend = CpuAttentionBackend(scenario.layer_spec())
    num_blocks = batch.key_cache.shape[0]
    shape = CpuAttentionBackend.kv_cache_shape(num_blocks, BLOCK_SIZE, NUM_KV_HEADS, HEAD_SIZE)
    cache = torch.zeros(shape, dtype=torch.bfloat16)
    out = torch.empty_like(batch.query)
    os.environ[long_prefill.MIN_QUERY_TOKENS_ENV] = str(threshold)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        t0 = time.perf_counter()
        backend.forward(batch.query, batch.key, batch.value, cache, batch.metadata, out)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lens", type=int, nargs="+", default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--prefix", type=int, default=2048, help="cached tokens before a chunk")
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}; ms per call (kernel / long-prefill path)")
    print(
        f"{'L':>6} {'fresh kernel':>13} {'fresh path':>11} {'chunk kernel':>13} {'chunk path':>11}"
    )
    for n in args.lens:
        fresh = ((n, n),)
        chunk = ((args.prefix + n, n),)
        row = [_time_forward(s, t, args.repeats) for s in (fresh, chunk) for t in (0, 1)]
        print(f"{n:>6} {row[0]:>13.2f} {row[1]:>11.2f} {row[2]:>13.2f} {row[3]:>11.2f}")


if __name__ == "__main__":
    main()
