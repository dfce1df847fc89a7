"""bf16 linear: heron_cpu.gemv.linear_small and heron_cpu.gemm.linear_packed against oneDNN.

Each with its own weight layout: plain for the GEMV, packed panels for the packed GEMM (where the
CPU has AVX512-BF16), oneDNN's blocked layout for oneDNN.

SmolLM2-135M's decode projections (N out features, K in features): fused qkv (960, 576), o_proj
(576, 576), fused gate/up (3072, 576), down (576, 1536) and the tied lm_head (49152, 576), at
1, 2, 4 and 8 rows. Each call uses the next of several distinct copies of the weight, more bytes in
all than the last-level cache holds, so that the weight comes from memory as in a decode step
(where ~270 MB of weights pass between two uses of the same layer). ``--rows 64 2048`` times a
busy decode step and a prefill chunk.

    python plugins/cpu/benchmarks/bench_gemv.py [--rows 1 2 4 8] [--paths auto amx ...]
                                                [--megabytes 256] [--repeats 5] [--threads N]

Prints, per shape and row count, the minimum over repeats of the mean time per call, the
effective bandwidth (weight bytes / time) and the arithmetic rate (GFLOP/s). The machine may be shared: the minimum is the least
disturbed measurement.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from heron_cpu import gemm, gemv

SHAPES: dict[str, tuple[int, int]] = {
    "qkv": (960, 576),
    "o_proj": (576, 576),
    "gate_up": (3072, 576),
    "down": (576, 1536),
    "lm_head": (49152, 576),
}


def _copies(n: int, k: int, megabytes: int) -> list[torch.Tensor]:
    """Distinct copies of one random weight, ``megabytes`` in all (at least two)."""
    weight = (torch.randn(n, k) * k**-0.5).to(torch.bfloat16)
    count = max(2, -(-megabytes * 2**20 // weight.nbytes))
    return [weight.clone() for _ in range(count)]


def _time(fn: Callable[[int], object], copies: int, repeats: int, min_calls: int) -> float:
    """Minimum over repeats of the mean seconds per call, cycling over the weight copies."""
    calls = -(-min_calls // copies) * copies
    for i in range(copies):  # warm-up: page in every copy, start the thread team
        fn(i)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            fn(i % copies)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def _ours(x: torch.Tensor, weights: list[torch.Tensor], path: str) -> Callable[[int], object]:
    out = torch.empty(x.shape[0], weights[0].shape[0], dtype=torch.bfloat16)
    return lambda i: gemv.linear_small(x, weights[i], None, out, path=path)


def _packed(x: torch.Tensor, weights: list[gemm.PackedWeight]) -> Callable[[int], object]:
    out = torch.empty(x.shape[0], weights[0].n, dtype=torch.bfloat16)
    return lambda i: gemm.linear_packed(x, weights[i], None, out)


def _onednn(x: torch.Tensor, packed: list[torch.Tensor]) -> Callable[[int], object]:
    return lambda i: torch.ops.mkldnn._linear_pointwise(x, packed[i], None, "none", [], "")


def _bench_shape(name: str, n: int, k: int, args: argparse.Namespace) -> None:
    weights = _copies(n, k, args.megabytes)
    onednn = [torch.ops.mkldnn._reorder_linear_weight(w, 64) for w in weights]
    panels = [gemm.pack(w) for w in weights] if gemm.available() else []
    nbytes = weights[0].nbytes
    for m in args.rows:
        x = torch.randn(m, k).to(torch.bfloat16)
        fns = [_ours(x, weights, path) for path in args.paths]
        fns += [_packed(x, panels)] if panels else []
        fns += [_onednn(x, onednn)]
        cells = []
        for fn in fns:
            calls = args.calls if m <= 64 else max(4, args.calls // 20)
            seconds = _time(fn, len(weights), args.repeats, calls)
            gflops = 2 * m * n * k / seconds / 1e9
            cells.append(f"{seconds * 1e6:9.1f} {nbytes / seconds / 1e9:6.1f} {gflops:6.0f}")
        print(f"{name:8s} {n:6d} {k:5d} {m:3d}  " + "  ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--paths", nargs="+", default=["auto"], choices=sorted(gemv.PATHS), help="our loops to time"
    )
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--megabytes", type=int, default=256, help="weight copies per shape, MB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100, help="at least this many calls a repeat")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"threads {torch.get_num_threads()}, paths this CPU runs: {gemv.available_paths()}, "
        f"MAX_ROWS {gemv.MAX_ROWS}"
    )
    columns = [*args.paths, *(["packed"] if gemm.available() else []), "onednn"]
    header = "  ".join(f"{p + ' us':>9s} {'GB/s':>6s} {'GFLOPs':>6s}" for p in columns)
    print(f"{'shape':8s} {'N':>6s} {'K':>5s} {'M':>3s}  {header}")
    for name in args.shapes:
        _bench_shape(name, *SHAPES[name], args)


if __name__ == "__main__":
    main()
