"""Every linear product of one SmolLM2-135M step at R rows: each quantized loop vs bfloat16.

Why: a decode step with many sequences (W64: 64 rows), a speculative verification step (k + 1
rows) and a prefill chunk multiply every weight by several rows of activations. This times one
step's 121 products (30 layers of fused qkv, o, gate_up, down, Q4_1, each with its own weight so
that nothing stays cached, plus the tied 49,152-row Q8_0 output projection) per loop of
``heron_cpu.quant`` (``path=``) and, as the ``--quantization none`` baseline, torch's bfloat16
``F.linear`` on the dequantized weights and oneDNN's prepacked bf16 linear (``bf16 packed``, what
heron-cpu's ``none`` path runs on AMX machines past its GEMV rows). Arms run interleaved, one
step each, medians reported.

    python benchmarks/bench_quant_rows.py --rows 1 4 8 9 16 17 32 64 128 256 --steps 7
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from heron_cpu import quant
from heron_cpu.kernel_ops import PACK_BATCH_HINT
from heron_interfaces.testing.quantized_suite import random_quantized_weight

LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # fused qkv, o, gate_up, down
LM_HEAD = (49152, 576)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 9, 16, 17, 64, 256])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument(
        "--paths", nargs="+", default=["amx", "vnni512", "dequant"], help="quant.linear paths"
    )
    parser.add_argument("--no-head", action="store_true", help="leave out the output projection")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    packed = [
        quant.pack(random_quantized_weight("q4_1", n, k, seed=i))
        for i in range(LAYERS)
        for n, k in SHAPES
    ]
    if not args.no_head:
        packed.append(quant.pack(random_quantized_weight("q8_0", *LM_HEAD, seed=99)))
    bf16 = [w.dequantize(torch.bfloat16) for w in packed]
    reorder = torch.ops.mkldnn._reorder_linear_weight
    prepacked = [reorder(w, PACK_BATCH_HINT) for w in bf16]
    pointwise = torch.ops.mkldnn._linear_pointwise
    paths = [p for p in args.paths if p in quant.available_paths()]
    print(f"threads {args.threads}, {len(packed)} products per step")
    names = [*paths, "bf16", "bf16 packed"]
    print(f"{'rows':>5s} " + " ".join(f"{name:>11s}" for name in names) + "   ms/step")
    for rows in args.rows:
        x = {k: torch.randn(rows, k).bfloat16() for k in (576, 1536)}
        arms: dict[str, Callable[[], object]] = {
            p: (lambda p=p, x=x: [quant.linear(x[w.k], w, path=p) for w in packed]) for p in paths
        }
        arms["bf16"] = lambda x=x: [F.linear(x[w.shape[1]], w) for w in bf16]
        arms["bf16 packed"] = lambda x=x: [
            pointwise(x[w.shape[1]], p, None, "none", [], "") for w, p in zip(bf16, prepacked)
        ]
        times: dict[str, list[float]] = {name: [] for name in arms}
        for run in arms.values():  # warm-up
            run()
        for _ in range(args.steps):
            for name, run in arms.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(s) * 1e3 for name, s in times.items()}
        print(f"{rows:5d} " + " ".join(f"{medians[name]:11.2f}" for name in arms))


if __name__ == "__main__":
    main()
