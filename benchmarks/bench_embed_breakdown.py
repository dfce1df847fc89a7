"""Where an offline embedding run's time goes: heron-cpu's kernel-op calls, page faults, system time.

Wraps ``CpuKernelOps``'s ``linear``, ``encoder_attention``, ``layer_norm`` and ``gelu`` with wall
timers (a few microseconds per call on top) and reports each one's share of an ``LLM.embed`` run
over sentences of 20-200 tokens (``bench_embeddings.make_sentences``), after a 200-sentence
warm-up, with the run's minor page faults and system time (``getrusage``).

    OMP_NUM_THREADS=1 python benchmarks/bench_embed_breakdown.py --num 2000
    HERON_CPU_RETAIN_HEAP=0 OMP_NUM_THREADS=1 python benchmarks/bench_embed_breakdown.py
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_embeddings

OPS = ("linear", "encoder_attention", "layer_norm", "gelu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()

    from heron import LLM
    from heron_cpu.kernel_ops import CpuKernelOps

    seconds: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()

    def timed(name: str, method):
        @functools.wraps(method)
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                seconds[name] += time.perf_counter() - started
                calls[name] += 1

        return wrapper

    for name in OPS:  # before the engine binds any of them
        setattr(CpuKernelOps, name, timed(name, getattr(CpuKernelOps, name)))
    sentences = bench_embeddings.make_sentences(args.num)
    llm = LLM(bench_embeddings.model_path(), dtype=args.dtype)
    llm.embed(sentences[:200], use_tqdm=False)
    seconds.clear()
    calls.clear()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    llm.embed(sentences, use_tqdm=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    ops = {
        name: {
            "calls": calls[name],
            "ms_per_call": round(1e3 * seconds[name] / max(calls[name], 1), 3),
            "share": round(seconds[name] / elapsed, 3),
        }
        for name in OPS
    }
    print(
        json.dumps(
            {
                "sentences_per_s": round(len(sentences) / elapsed, 1),
                "seconds": round(elapsed, 2),
                "minor_faults": after.ru_minflt - before.ru_minflt,
                "system_s": round(after.ru_stime - before.ru_stime, 2),
                "ops": ops,
                "outside_these_ops": round(1 - sum(o["share"] for o in ops.values()), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
