"""heron-cpu's ``write_kv`` for one decode token, as a step-graph replay calls it.

Why: a profile that wraps each replayed launch in a timer counts the wrapper too; this times the
raw recorded ``_C.write_kv`` calls of 30 layers (SmolLM2's 3 KV heads of 64, blocks of 16) with
the caches evicted by a stream the size of one token's weights (what decode does between two
writes to the same block) and warm, beside the checked eager call.

    OMP_NUM_THREADS=2 python benchmarks/bench_write_kv.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from heron_cpu import ops
from heron_cpu.launch import LaunchGraph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=2000)
    parser.add_argument("--evict-mb", type=int, default=96, help="bytes streamed between steps")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()

    shape = (2, args.blocks, args.kv_heads, args.head_size, args.block_size)
    caches = [torch.zeros(shape, dtype=torch.bfloat16) for _ in range(args.layers)]
    stream = torch.ones(args.evict_mb * 2**20 // 4)
    key = torch.randn(1, args.kv_heads, args.head_size).bfloat16()
    value = torch.randn(1, args.kv_heads, args.head_size).bfloat16()
    slot = torch.tensor([args.blocks * args.block_size // 2], dtype=torch.int64)
    first = int(slot[0])

    with LaunchGraph() as graph:  # the raw launches, as a step graph records them
        for cache in caches:
            ops.write_kv_eager(key, value, cache, slot)

    def eager() -> None:
        for cache in caches:
            ops.write_kv_eager(key, value, cache, slot)

    for label, run in (("eager (checked) call", eager), ("raw replayed call", graph.replay)):
        for evict in (True, False):
            times = []
            for step in range(args.steps):
                if evict:
                    stream.sum()
                slot[0] = first + step % args.block_size
                start = time.perf_counter_ns()
                run()
                times.append((time.perf_counter_ns() - start) / args.layers / 1000)
            kept = times[5:]
            state = "caches evicted" if evict else "warm"
            print(
                f"{label}, {state}: median {statistics.median(kept):.2f} us per layer "
                f"(min {min(kept):.2f})"
            )


if __name__ == "__main__":
    main()
