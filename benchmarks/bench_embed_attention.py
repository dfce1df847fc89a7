"""heron-cpu's encoder attention kernel alone, at all-MiniLM-L6-v2's shape, on each loop it has.

One encoder layer's attention of a pooling step: ``--prompts`` prompts of 20-200 tokens (seeded),
``--heads`` heads of ``--head-size``, bfloat16 (``--dtype``), on the current thread count. The
loops alternate (``--rounds``), each timed over ``--iters`` calls after a warm-up, so a change in
the machine's load hits all of them; prints one JSON line per run, then the medians.

    OMP_NUM_THREADS=1 python benchmarks/bench_embed_attention.py
    OMP_NUM_THREADS=1 python benchmarks/bench_embed_attention.py --paths avx512,amx --rounds 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from heron_cpu import encoder_attention as ea


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=18, help="prompts per step (default 18)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--paths", default=",".join(ea.kernel_paths()), help="loops to time")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(0)
    starts = [0]
    for _ in range(args.prompts):
        starts.append(starts[-1] + rng.randint(20, 200))
    width = args.heads * args.head_size
    dtype = getattr(torch, args.dtype)
    qkv = torch.randn(starts[-1], 3 * width, generator=torch.Generator().manual_seed(0)).to(dtype)
    out = torch.empty(starts[-1], width, dtype=dtype)
    qsl = torch.tensor(starts, dtype=torch.int32)
    scale = args.head_size**-0.5
    times: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for path in args.paths.split(","):
            call = (out, qkv, qsl, args.heads, args.head_size, scale)
            for _ in range(20):
                ran = ea.encoder_attention_eager(*call, path=path)
            started = time.perf_counter()
            for _ in range(args.iters):
                ea.encoder_attention_eager(*call, path=path)
            ms = (time.perf_counter() - started) / args.iters * 1e3
            times.setdefault(ran, []).append(ms)
            print(json.dumps({"path": path, "ran": ran, "tokens": starts[-1], "ms": round(ms, 3)}))
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    print(json.dumps({"threads": torch.get_num_threads(), "median_ms": medians}))


if __name__ == "__main__":
    main()
