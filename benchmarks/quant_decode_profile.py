"""Where a single-stream decode token goes with quantized weights: the linears against the rest.

Why: a profiler's sampling cannot see inside the step-graph replay, but every quantized product
still calls ``heron_cpu._quant.quant_linear``; wrapping it with a timer gives the linears' share of
a decode token exactly. One 128-token prompt, 128 greedy tokens; decode time is the generation
minus a 1-token run of the same prompt (its prefill). Prints per-shape microseconds per call.

    OMP_NUM_THREADS=2 python benchmarks/quant_decode_profile.py [--quantization gguf] [--iters 3]
"""

from __future__ import annotations

import argparse
import collections
import time

import heron_cpu._quant as _quant
from heron import LLM, SamplingParams

_seconds: collections.Counter = collections.Counter()
_calls: collections.Counter = collections.Counter()
_plain = _quant.quant_linear


def _timed(*args: int) -> None:
    started = time.perf_counter()
    _plain(*args)
    shape = (args[7], args[8])  # (n, k) of quant_linear(out, x, qs, d, mins, bias, m, n, k, ...)
    _seconds[shape] += time.perf_counter() - started
    _calls[shape] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", default="gguf")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    _quant.quant_linear = _timed  # heron_cpu.quant looks it up at every call
    llm = LLM(dtype=args.dtype, quantization=args.quantization, max_model_len=1024)
    prompt = {"prompt_token_ids": list(range(100, 228))}
    tokens = 128
    whole = SamplingParams(temperature=0, max_tokens=tokens + 1, ignore_eos=True)
    first = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    llm.generate([prompt], whole, use_tqdm=False)  # warm-up: records the step graphs
    for it in range(args.iters):
        started = time.perf_counter()
        llm.generate([prompt], first, use_tqdm=False)
        prefill = time.perf_counter() - started
        _seconds.clear()
        _calls.clear()
        started = time.perf_counter()
        llm.generate([prompt], whole, use_tqdm=False)
        decode = (time.perf_counter() - started - prefill) / tokens
        linears = sum(_seconds.values()) / tokens
        print(
            f"iter {it}: decode {decode * 1e3:.2f} ms/token ({1 / decode:.0f} tok/s); quantized "
            f"linears {linears * 1e3:.2f} ms/token ({100 * linears / decode:.0f} %), "
            f"{sum(_calls.values()) / tokens:.0f} calls/token"
        )
        for shape in sorted(_seconds, key=lambda s: -_seconds[s])[:6]:
            per_call = _seconds[shape] / _calls[shape] * 1e6
            print(f"    n, k = {shape}: {per_call:.1f} us/call, {_calls[shape] / tokens:.1f}/token")


if __name__ == "__main__":
    main()
