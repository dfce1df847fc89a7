"""An encoder layer's elementwise work at a MiniLM step's size: torch against heron-cpu's kernels.

Times the post-norm (``x + residual`` then LayerNorm, ``[rows, 384]``) and the GELU of the
intermediate activation (``[rows, 1536]``) as core's BERT runs them: the reference
``KernelOps`` (torch's in-place add and gelu, ``F.layer_norm``) against heron-cpu's
``CpuKernelOps`` (one pass each, heron_interfaces 1.14). Inputs are refreshed from a saved copy
before every call (the ops write into them), outside the timed region.

    OMP_NUM_THREADS=1 python benchmarks/bench_encoder_elementwise.py --rows 2048 --rounds 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from heron_cpu.kernel_ops import CpuKernelOps
from heron_interfaces.kernel_ops import KernelOps


def _time(fn, refresh, rounds: int) -> float:
    """Median milliseconds of ``fn()`` over ``rounds`` calls, ``refresh()`` untimed before each."""
    samples = []
    for _ in range(rounds):
        refresh()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    saved_x = torch.randn(args.rows, args.hidden, generator=gen).to(dtype)
    residual = torch.randn(args.rows, args.hidden, generator=gen).to(dtype)
    weight = torch.randn(args.hidden, generator=gen).to(dtype)
    bias = torch.randn(args.hidden, generator=gen).to(dtype)
    saved_h = (torch.randn(args.rows, args.intermediate, generator=gen) * 3).to(dtype)
    x, h = saved_x.clone(), saved_h.clone()
    print(f"rows {args.rows}, {args.dtype}, {torch.get_num_threads()} thread(s), ms per call:")
    for name, ops in (("torch (reference ops)", KernelOps()), ("heron-cpu", CpuKernelOps())):
        norm = _time(
            lambda ops=ops: ops.layer_norm(x, weight, bias, 1e-12, residual),
            lambda: x.copy_(saved_x),
            args.rounds,
        )
        gelu = _time(lambda ops=ops: ops.gelu(h), lambda: h.copy_(saved_h), args.rounds)
        print(f"  {name:22s} add+LayerNorm {norm:.3f}   GELU {gelu:.3f}")


if __name__ == "__main__":
    main()
