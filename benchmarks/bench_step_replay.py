"""Where a single-stream decode step's host time goes, and what the C++ replay of its graph saves.

Why: a decode token of the bundled SmolLM2 Q4_1 is ~300 recorded kernel calls (the step graph)
plus the head, greedy selection, scheduling and output processing in Python. This measures

1. the recorded 1-sequence step graph replayed on its own, alternating the per-call Python loop
   (``LaunchGraph.replay_python``: one pybind11 call, argument conversion and GIL release per
   kernel) with the C++ programs (``LaunchGraph.replay``): their difference is the dispatch cost;
2. decode tok/s of ``LLM.generate`` (128-token prompt, ``--tokens`` greedy tokens, minus a
   1-token run of the same prompt), alternating the two modes, with no timers;
3. an engine decode step split by timers around its parts (scheduler, input loading, graph
   replay, head and greedy selection, scheduler update, output processing), in both replay modes.

    OMP_NUM_THREADS=2 python benchmarks/bench_step_replay.py [--quantization gguf] [--tokens 128]

``--replay-only N`` replays the graph N times back to back and exits, for a profiler:
``perf record -D 9000 -o perf.data python benchmarks/bench_step_replay.py --replay-only 3000``
(the delay skips start-up), then ``perf report -i perf.data --sort pid,dso``.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from heron import LLM, SamplingParams


class Timers:
    """Seconds per named part, summed over the wrapped calls since the last :meth:`clear`."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        plain: Callable[..., Any] = getattr(owner, attr)

        @functools.wraps(plain)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return plain(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        setattr(owner, attr, timed)

    def clear(self) -> None:
        self.seconds.clear()


def _graph(llm: LLM) -> Any:
    graphs = llm.llm_engine.core.runner.step_graphs
    if graphs is None:
        raise SystemExit("this engine records no step graphs (enforce_eager or no fast matmuls)")
    return graphs._graphs[(1, torch.get_num_threads())].graph


def replay_micro(graph: Any, reps: int, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per replay, alternating rounds of the two modes."""
    runs = {"python loop": graph.replay_python, "C++ programs": graph.replay}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            for _ in range(reps):
                run()
            times[name].append((time.perf_counter() - started) / reps * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2 Q4_1")
    parser.add_argument("--quantization", default="gguf")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=50, help="replays per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=3, help="decode runs per mode, alternating")
    parser.add_argument("--replay-only", type=int, default=0, help="only replay N times (perf)")
    args = parser.parse_args()

    llm = LLM(args.model, dtype=args.dtype, quantization=args.quantization, max_model_len=1024)
    warm = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    llm.generate([{"prompt_token_ids": list(range(100, 228))}], warm, use_tqdm=False)
    graph = _graph(llm)
    if args.replay_only:
        started = time.perf_counter()
        for _ in range(args.replay_only):
            graph.replay()
        per = (time.perf_counter() - started) / args.replay_only * 1e3
        print(f"{args.replay_only} C++ replays: {per:.3f} ms each")
        return
    print(
        f"threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), "
        f"load average {os.getloadavg()[0]:.2f}; 1-sequence graph: {len(graph)} calls in "
        f"{len(graph.segments)} replay steps ({', '.join(graph.segments[:4])}"
        f"{', ...' if len(graph.segments) > 4 else ''})"
    )

    times = replay_micro(graph, args.reps, args.rounds)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"replay, {name}: median {medians[name]:.3f} ms ({', '.join(f'{x:.3f}' for x in t)})")
    saved = medians["python loop"] - medians["C++ programs"]
    print(
        f"dispatch cost of the Python loop: {saved:.3f} ms per step, {saved / len(graph) * 1e3:.2f} us per call"
    )

    modes = {"python loop": graph.replay_python, "C++ programs": graph.replay}
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.passes):
        for mode, replay in modes.items():
            graph.replay = replay  # what step_graphs.run calls
            rates[mode].append(decode_rate(llm, args.tokens))
    for mode, r in rates.items():
        print(
            f"generate, {mode}: median {statistics.median(r):.1f} decode tok/s ({', '.join(f'{x:.1f}' for x in r)})"
        )

    timers = Timers()
    engine = llm.llm_engine
    core, runner = engine.core, engine.core.runner
    timers.wrap(core.scheduler, "schedule", "scheduler.schedule")
    timers.wrap(core.scheduler, "update_from_output", "scheduler.update_from_output")
    timers.wrap(runner, "execute", "runner.execute")
    timers.wrap(runner, "prepare_inputs", "  runner.prepare_inputs")
    timers.wrap(runner.step_graphs, "run", "  step_graphs.run (load + replay)")
    timers.wrap(runner, "sample", "  runner.sample")
    timers.wrap(runner.model, "greedy_tokens", "    head + argmax (greedy_tokens)")
    timers.wrap(engine.output_processor, "process", "output_processor.process")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    for _ in range(args.passes):
        for mode, replay in modes.items():
            graph.replay = replay  # what step_graphs.run calls, timed below
            timers.wrap(graph, "replay", "    replay")
            results[mode].append(decode_breakdown(llm, args.tokens, mode, timers))
    names = list(results["python loop"][0])
    order = ["whole step"] + [n for n in names if n != "whole step"]
    print(f"\ndecode step, ms (median of {args.passes} runs of {args.tokens} tokens)")
    print(f"{'part':40s} {'python loop':>12s} {'C++ programs':>13s}")
    for name in order:
        row = [statistics.median(r[name] for r in results[mode]) for mode in results]
        print(f"{name:40s} {row[0]:12.3f} {row[1]:13.3f}")
    tok_s = [1e3 / statistics.median(r["whole step"] for r in results[mode]) for mode in results]
    print(f"{'decode tok/s':40s} {tok_s[0]:12.1f} {tok_s[1]:13.1f}")


def decode_rate(llm: LLM, tokens: int) -> float:
    """Decode tok/s of one request: ``tokens`` greedy tokens after a 128-token prompt."""
    prompt = {"prompt_token_ids": list(range(100, 228))}
    whole = SamplingParams(temperature=0, max_tokens=tokens + 1, ignore_eos=True)
    first = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    started = time.perf_counter()
    llm.generate([prompt], first, use_tqdm=False)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    llm.generate([prompt], whole, use_tqdm=False)
    return tokens / (time.perf_counter() - started - prefill)


def decode_breakdown(llm: LLM, tokens: int, mode: str, timers: Timers) -> dict[str, float]:
    """Milliseconds per decode step by part: one request of ``tokens`` greedy tokens."""
    engine = llm.llm_engine
    params = SamplingParams(temperature=0, max_tokens=tokens + 1, ignore_eos=True)
    prompt = {"prompt_token_ids": list(range(100, 228))}
    engine.add_request(f"{mode}-{time.monotonic_ns()}", prompt, params)
    engine.step()  # the prefill
    timers.clear()
    steps = 0
    started = time.perf_counter()
    while engine.has_unfinished_requests():
        engine.step()
        steps += 1
    total = time.perf_counter() - started
    parts = {name: s / steps * 1e3 for name, s in timers.seconds.items()}
    parts["whole step"] = total / steps * 1e3
    return parts


if __name__ == "__main__":
    main()
