"""Sustained memory read bandwidth on this machine, and the single-stream tok/s it allows.

Why: a decode token of a small model reads every weight once, so tok/s can never exceed
bandwidth / bytes per token. Before chasing a speed goal (issue 24: Q4_1 at 2x llama.cpp's tg128)
this settles whether the goal is physically possible here. A STREAM-like read kernel (AVX-512
loads summed into a few registers, each OpenMP thread streaming its own contiguous half) is
compiled at run time with the system's C compiler and called through ctypes, so nothing but the
loads is timed; ``torch.sum`` over the same buffer is printed beside it as a cross-check.

Two buffer sizes: the bytes one token reads (the quantized model, re-read every token as decode
does; on a CPU with a large shared L3 some of it may stay cached, which is the real decode case)
and 1 GiB (well past any cache: DRAM). The token's bytes are computed from the model's shapes for
each storage layout: the file's own blocks (what llama.cpp reads) and Heron's repacked ones.

    OMP_NUM_THREADS=2 python benchmarks/bench_read_bandwidth.py --threads 2 --reps 30
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

_SOURCE = r"""
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
/* Reads n bytes (a multiple of 256) from p with `threads` threads; returns a value that depends on
   every byte so that the loads cannot be dropped. */
__attribute__((target("avx512f")))
int64_t read_bytes(const char* p, int64_t n, int threads) {
  int64_t total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    const int64_t t = omp_get_thread_num(), c = omp_get_num_threads();
    const int64_t chunks = n / 256;
    const char* begin = p + chunks * t / c * 256;
    const char* end = p + chunks * (t + 1) / c * 256;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (const char* q = begin; q < end; q += 256) {
      a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void*)q));
      a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void*)(q + 64)));
      a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void*)(q + 128)));
      a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void*)(q + 192)));
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3));
    total += _mm512_reduce_add_epi64(a0);
  }
  return total;
}
"""

# SmolLM2-135M: 30 layers of fused qkv, o, gate_up, down (as [n, k]) and the tied 49,152-row head.
LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
HEAD = (49152, 576)

# Bytes per 32-weight block: (layers, head), per file and layout. The bundled Q4_1 file has Q4_1
# layers and a Q8_0 head; benchmarks/make_q8_0_gguf.py's file is Q8_0 throughout.
LAYOUTS = {
    "Q4_1 file as stored (llama.cpp)": (20, 34),
    "Q4_1, Heron fp32 scales (before)": (24, 36),
    "Q4_1, Heron f16 scales": (20, 34),
    "Q8_0 file as stored (llama.cpp)": (34, 34),
    "Q8_0, Heron fp32 scales (before)": (36, 36),
    "Q8_0, Heron f16 scales": (34, 34),
}


def token_bytes(layer_block: int, head_block: int) -> int:
    """Weight bytes one SmolLM2 decode token reads (the Q4_1 file: layers Q4_1, head Q8_0)."""
    layer = LAYERS * sum(n * k for n, k in SHAPES) // 32 * layer_block
    return layer + HEAD[0] * HEAD[1] // 32 * head_block


def _compile() -> ctypes.CDLL:
    tmp = Path(tempfile.mkdtemp(prefix="heron-readbw-"))
    (tmp / "read.c").write_text(_SOURCE)
    library = tmp / "read.so"
    subprocess.run(
        ["cc", "-O2", "-fopenmp", "-shared", "-fPIC", "-o", library, tmp / "read.c"], check=True
    )
    lib = ctypes.CDLL(str(library))
    lib.read_bytes.restype = ctypes.c_int64
    lib.read_bytes.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    return lib


def measure(lib: ctypes.CDLL, size: int, threads: int, reps: int) -> tuple[float, float]:
    """Median GB/s of the compiled read and of torch.sum over a ``size``-byte buffer."""
    buf = torch.ones(size // 8, dtype=torch.int64)  # touched: pages really mapped
    ptr = buf.data_ptr()
    assert ptr % 64 == 0
    raw, summed = [], []
    lib.read_bytes(ptr, size, threads)  # warm-up
    as_f32 = buf.view(torch.float32)
    for _ in range(reps):
        started = time.perf_counter()
        lib.read_bytes(ptr, size, threads)
        raw.append(size / (time.perf_counter() - started) / 1e9)
        started = time.perf_counter()
        as_f32.sum()
        summed.append(size / (time.perf_counter() - started) / 1e9)
    return statistics.median(raw), statistics.median(summed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lib = _compile()
    print(f"load average {os.getloadavg()[0]:.2f}, {args.threads} threads")
    model = token_bytes(*LAYOUTS["Q4_1, Heron fp32 scales (before)"])
    sizes = {"one token's weights": model // 256 * 256, "1 GiB": 1 << 30}
    rates = {}
    for name, size in sizes.items():
        raw, summed = measure(lib, size, args.threads, args.reps)
        rates[name] = raw
        print(f"read {name:20s} ({size / 1e6:7.1f} MB): {raw:6.1f} GB/s (torch.sum {summed:5.1f})")
    for layout, blocks in LAYOUTS.items():
        mb = token_bytes(*blocks) / 1e6
        ceilings = ", ".join(
            f"{rate * 1e3 / mb:.0f} at the {name} rate" for name, rate in rates.items()
        )
        print(f"{layout:33s} {mb:6.1f} MB/token -> ceiling {ceilings} tok/s")


if __name__ == "__main__":
    main()
