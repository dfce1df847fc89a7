"""What OpenMP's fork/join costs a single-stream decode step, measured two ways.

Why: by ``perf`` ~30 % of a C++ replay's samples were in libgomp (issue 24), with every kernel of
a decode step opening its own ``#pragma omp parallel`` region. Samples in libgomp include threads
spinning while they wait, so they do not say how much of a token's wall time the regions cost.
This settles it with numbers before anything is changed:

1. ``micro``: an empty ``omp parallel`` region, a near-empty one (each thread writes one value),
   one whose ``if`` clause is false (what a row kernel below its threshold opens), and an
   ``omp barrier`` inside one region, on ``--threads`` threads with libgomp's default
   settings (nothing in OMP_WAIT_POLICY / OMP_PROC_BIND), compiled at run time with the system's
   C compiler and called through ctypes; ns per region or barrier, medians of rounds.
2. ``replay``: the bundled SmolLM2 Q4_1 1-sequence step graph (as ``bench_step_replay.py`` builds
   it) replayed in a child process that preloads a small interposer of libgomp's
   ``GOMP_parallel`` (the entry every ``#pragma omp parallel`` of GCC calls). The interposer counts
   the regions a replay opens and, per region, timestamps the call, each thread's start and end of
   its share, and the return: so a token's time splits into work outside regions, the worker's
   wake-up (fork), the wait of the thread that finished first for the other (imbalance), and the
   join after the last thread finished.

    OMP_NUM_THREADS=2 python benchmarks/bench_omp_regions.py [micro|replay|both] [--reps 300]

(Commit e4186b1 tried one parallel region per run of kernels with a barrier between them, and had
an ``ab`` mode here comparing it with one region per kernel: no gain, reverted; see
benchmarks/RESULTS.md.)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_MICRO = r"""
#include <omp.h>
#include <stdint.h>
#include <time.h>
static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}
volatile int64_t sink[64 * 16];
/* ns per empty parallel region: n regions opened back to back. */
double empty_regions(int n, int threads) {
  double t0 = now_ns();
  for (int i = 0; i < n; ++i) {
#pragma omp parallel num_threads(threads)
    { __asm__ volatile("" ::: "memory"); }
  }
  return (now_ns() - t0) / n;
}
/* ns per near-empty region: each thread writes one value to its own cache line. */
double near_empty_regions(int n, int threads) {
  double t0 = now_ns();
  for (int i = 0; i < n; ++i) {
#pragma omp parallel num_threads(threads)
    { sink[omp_get_thread_num() * 16] += i; }
  }
  return (now_ns() - t0) / n;
}
/* ns per region whose if clause is false (one thread): what a row kernel below its parallel
   threshold pays for `#pragma omp parallel for ... if (parallel)`. */
double if_false_regions(int n, int threads) {
  double t0 = now_ns();
  for (int i = 0; i < n; ++i) {
#pragma omp parallel num_threads(threads) if (i < 0)
    { sink[omp_get_thread_num() * 16] += i; }
  }
  return (now_ns() - t0) / n;
}
/* ns per barrier: n barriers inside one region (the region's own cost spread over n). */
double barriers(int n, int threads) {
  double t0 = now_ns();
#pragma omp parallel num_threads(threads)
  {
    for (int i = 0; i < n; ++i) {
      sink[omp_get_thread_num() * 16] += i;
#pragma omp barrier
    }
  }
  return (now_ns() - t0) / n;
}
"""

# An LD_PRELOAD interposer of GOMP_parallel (GCC's entry for `#pragma omp parallel`): timestamps
# per region, summed; read back with ctypes (the preloaded library is the one dlopen returns).
_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <omp.h>
#include <stdint.h>
#include <time.h>
typedef void (*body_t)(void*);
typedef void (*gomp_parallel_t)(body_t, void*, unsigned, unsigned);
static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}
struct wrap { body_t fn; void* data; double start[8], end[8]; };
static void body(void* p) {
  struct wrap* w = (struct wrap*)p;
  int t = omp_get_thread_num();
  if (t < 8) w->start[t] = now_ns();
  w->fn(w->data);
  if (t < 8) w->end[t] = now_ns();
}
/* Totals since shim_reset, in ns: [0] regions with >1 thread, [1] regions with 1 thread,
   [2] wall inside multi-thread regions (call to return), [3] fork (last thread's start - call),
   [4] imbalance (last end - first end), [5] join (return - last end), [6] wall inside 1-thread
   regions, [7] thread 0's work, [8] the other threads' work (summed). */
static double totals[9];
static int enabled;
void shim_reset(int on) { for (int i = 0; i < 9; ++i) totals[i] = 0; enabled = on; }
void shim_read(double* out) { for (int i = 0; i < 9; ++i) out[i] = totals[i]; }
void GOMP_parallel(body_t fn, void* data, unsigned threads, unsigned flags) {
  static gomp_parallel_t real;
  if (!real) real = (gomp_parallel_t)dlvsym(RTLD_NEXT, "GOMP_parallel", "GOMP_4.0");
  if (!enabled) { real(fn, data, threads, flags); return; }
  struct wrap w = {fn, data, {0}, {0}};
  double t0 = now_ns();
  real(body, &w, threads, flags);
  double t1 = now_ns();
  int n = 0;
  double last_start = 0, first_end = 1e300, last_end = 0;
  for (int t = 0; t < 8; ++t) {
    if (w.end[t] == 0) continue;
    ++n;
    if (w.start[t] > last_start) last_start = w.start[t];
    if (w.end[t] < first_end) first_end = w.end[t];
    if (w.end[t] > last_end) last_end = w.end[t];
    totals[t == 0 ? 7 : 8] += w.end[t] - w.start[t];
  }
  if (n > 1) {
    totals[0] += 1; totals[2] += t1 - t0; totals[3] += last_start - t0;
    totals[4] += last_end - first_end; totals[5] += t1 - last_end;
  } else {
    totals[1] += 1; totals[6] += t1 - t0;
  }
}
"""


def _build(source: str, name: str, extra: list[str]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="heron-omp-"))
    (tmp / f"{name}.c").write_text(source)
    library = tmp / f"{name}.so"
    cmd = ["cc", "-O2", "-fopenmp", "-shared", "-fPIC", "-o", str(library), str(tmp / f"{name}.c")]
    subprocess.run(cmd + extra, check=True)
    return library


def micro(threads: int, rounds: int) -> None:
    """Prints ns per empty / near-empty region and per barrier, medians of ``rounds``."""
    lib = ctypes.CDLL(str(_build(_MICRO, "micro", [])))
    for fn in (lib.empty_regions, lib.near_empty_regions, lib.if_false_regions, lib.barriers):
        fn.restype = ctypes.c_double
        fn.argtypes = [ctypes.c_int, ctypes.c_int]
    print(f"micro: {threads} threads, load average {os.getloadavg()[0]:.2f}")
    for label, fn, n in (
        ("empty parallel region", lib.empty_regions, 20000),
        ("near-empty parallel region", lib.near_empty_regions, 20000),
        ("region with if(false)", lib.if_false_regions, 20000),
        ("barrier in one region", lib.barriers, 20000),
    ):
        fn(n, threads)  # warm
        ns = [fn(n, threads) for _ in range(rounds)]
        print(
            f"  {label:28s} median {statistics.median(ns):7.0f} ns ({', '.join(f'{x:.0f}' for x in ns)})"
        )


def replay_child(reps: int, rounds: int) -> None:
    """In the preloaded child: replay the step graph, timed with and without the region timers."""
    import torch

    from heron import LLM, SamplingParams

    shim = ctypes.CDLL(os.environ["HERON_OMP_SHIM"])
    shim.shim_reset.argtypes = [ctypes.c_int]
    llm = LLM(None, dtype="bfloat16", quantization="gguf", max_model_len=1024)
    warm = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    llm.generate([{"prompt_token_ids": list(range(100, 228))}], warm, use_tqdm=False)
    graph = llm.llm_engine.core.runner.step_graphs._graphs[(1, torch.get_num_threads())].graph
    out = (ctypes.c_double * 9)()
    plain, timed, parts = [], [], []
    for _ in range(rounds):
        shim.shim_reset(0)
        started = time.perf_counter()
        for _ in range(reps):
            graph.replay()
        plain.append((time.perf_counter() - started) / reps * 1e6)
        shim.shim_reset(1)
        started = time.perf_counter()
        for _ in range(reps):
            graph.replay()
        timed.append((time.perf_counter() - started) / reps * 1e6)
        shim.shim_read(out)
        parts.append([v / reps for v in out])
    shim.shim_reset(0)
    result = {
        "calls": len(graph),
        "load": os.getloadavg()[0],
        "plain_us": plain,
        "timed_us": timed,
        "parts": parts,
    }
    print("RESULT " + json.dumps(result))


def replay(threads: int, reps: int, rounds: int) -> None:
    """Runs :func:`replay_child` with the interposer preloaded and prints a token's split."""
    shim = _build(_SHIM, "shim", ["-ldl"])
    env = dict(os.environ, LD_PRELOAD=str(shim), HERON_OMP_SHIM=str(shim))
    env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "_child", "--reps", str(reps), "--rounds", str(rounds)]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    r = json.loads(line[len("RESULT ") :])
    med = [statistics.median(p[i] for p in r["parts"]) / 1e3 for i in range(9)]  # us per replay
    plain, timed = statistics.median(r["plain_us"]), statistics.median(r["timed_us"])
    print(
        f"replay: {threads} threads, load average {r['load']:.2f}, {r['calls']} recorded calls; "
        f"us per replay, medians of {rounds} rounds of {reps}"
    )
    print(f"  replay without timers {plain:8.1f} ({', '.join(f'{x:.0f}' for x in r['plain_us'])})")
    print(f"  replay with timers    {timed:8.1f} ({', '.join(f'{x:.0f}' for x in r['timed_us'])})")
    multi, single = (
        statistics.median(p[0] for p in r["parts"]),
        statistics.median(p[1] for p in r["parts"]),
    )
    print(
        f"  regions per replay: {multi:.0f} on >1 thread, {single:.0f} on 1 thread (if-clause false)"
    )
    inside = med[2]
    print(
        f"  wall inside multi-thread regions {inside:8.1f} ({inside / timed * 100:.1f} % of a replay)"
    )
    print(f"    fork (call -> last thread starts)  {med[3]:8.1f} ({med[3] / timed * 100:.1f} %)")
    print(f"    imbalance (first end -> last end)  {med[4]:8.1f} ({med[4] / timed * 100:.1f} %)")
    print(f"    join (last end -> return)          {med[5]:8.1f} ({med[5] / timed * 100:.1f} %)")
    print(f"    thread 0 work {med[7]:8.1f}, other threads' work {med[8]:8.1f}")
    print(f"  wall inside 1-thread regions {med[6]:8.1f}")
    print(f"  outside any region (serial parts, dispatch) {timed - inside - med[6]:8.1f}")
    per = (med[3] + med[5]) / max(multi, 1) * 1e3
    print(f"  fork + join per multi-thread region: {per:.0f} ns")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what", nargs="?", default="both", choices=["micro", "replay", "both", "_child"]
    )
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--reps", type=int, default=300, help="replays per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.what == "_child":
        replay_child(args.reps, args.rounds)
        return
    if args.what in ("micro", "both"):
        micro(args.threads, args.rounds)
    if args.what in ("replay", "both"):
        replay(args.threads, args.reps, args.rounds)


if __name__ == "__main__":
    main()
