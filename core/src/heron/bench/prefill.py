"""``heron bench prefill``: how fast one long prompt is read, at several context lengths.

A user who pastes a long document waits for its prefill before the first token. The work grows
faster than the prompt (attention over the whole context), so one number at 128 tokens says
nothing about 8,000: each ``--context-lens`` value is timed on its own, one prompt at a time, as
``LLM.generate`` of a random-token prompt with one output token. Every timed prompt is new (a fresh
seed), so the prefix cache cannot answer it; ``--num-iters-warmup`` untimed prompts of each length
come first.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from heron.bench import datasets, offline, report
from heron.bench.stats import median_of_runs

DEFAULT_CONTEXT_LENS = (1024, 4096, 8000)
"""1k, 4k and (the longest prompt a model of 8,192 positions takes with one output token) ~8k."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload")
    group.add_argument(
        "--context-lens",
        type=int,
        nargs="+",
        default=list(DEFAULT_CONTEXT_LENS),
        help="Prompt lengths in tokens, each timed separately (default: 1024 4096 8000).",
    )
    group.add_argument(
        "--num-iters-warmup", type=int, default=1, help="Untimed prompts per length."
    )
    group.add_argument("--num-iters", type=int, default=3, help="Timed prompts per length.")
    offline.add_offline_arguments(parser)


def _check(args: argparse.Namespace, max_model_len: int) -> None:
    if args.num_iters < 1 or args.num_iters_warmup < 0:
        raise SystemExit("--num-iters must be at least 1 and --num-iters-warmup at least 0")
    too_long = [n for n in args.context_lens if not 0 < n < max_model_len]
    if too_long:
        raise SystemExit(
            f"--context-lens {too_long}: each must be between 1 and max_model_len - 1 "
            f"({max_model_len - 1})"
        )


def run(args: argparse.Namespace) -> int:
    engine = offline.start_engine(args)
    llm = engine.llm
    _check(args, llm.llm_engine.max_model_len)
    vocab_size, special = offline.synthetic_vocab(llm)
    params = offline.sampling_params(args, 1)
    rows: list[dict[str, Any]] = []
    for length in args.context_lens:
        count = args.num_iters_warmup + args.num_iters
        prompts = [
            r.engine_prompt()
            for r in datasets.synthetic_token_requests(
                count, length, 1, vocab_size, seed=args.seed + length, exclude_ids=special
            )
        ]
        times: list[float] = []
        for i, prompt in enumerate(prompts):
            t0 = time.perf_counter()
            llm.generate([prompt], params, use_tqdm=False)
            if i >= args.num_iters_warmup:
                times.append(time.perf_counter() - t0)
        seconds = median_of_runs(times)
        rows.append(
            {
                "context_len": length,
                "prefill_s": seconds,
                "prefill_tok_s": length / seconds["median"],
            }
        )
    result = {
        "benchmark": "prefill",
        "args": offline.namespace_record(args),
        "engine_args": engine.engine_args.model_dump(),
        "environment": report.environment(),
        "startup_s": engine.startup_s,
        "results": rows,
    }
    _print(result)
    if args.output_json:
        report.write_json(args.output_json, result)
    return 0


def _print(result: dict[str, Any]) -> None:
    table: list[tuple[str, Any] | str] = []
    for row in result["results"]:
        s = row["prefill_s"]
        table += [
            f"{row['context_len']} tokens of context, {len(s['all'])} prompts",
            ("Prefill time, median (s)", s["median"]),
            ("Prefill time, min / max (s)", f"{s['min']:.2f} / {s['max']:.2f}"),
            ("Prefill tok/s (median)", row["prefill_tok_s"]),
        ]
    report.print_table("Prefill Benchmark", table)
