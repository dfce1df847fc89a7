"""``heron bench throughput``: offline batch throughput of the engine in this process.

Every request is handed to one ``LLM.generate`` call, the way ``vllm bench throughput`` and the
W64 harness (``bench_offline.py``) do it: the number measures how fast the engine drains a full
queue, and start-up (process start → LLM ready) is reported beside it because users wait for both.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from heron.bench import datasets, offline, report
from heron.bench.stats import median_of_runs

WARMUP_OUTPUT_LEN = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload")
    group.add_argument(
        "--dataset",
        default=None,
        help="JSONL with {'prompt': ...} or {'prompt_token_ids': [...]} and optional "
        "'output_len'/'max_tokens' per line (the W64 workload.jsonl works as is). "
        "Without it: synthetic random token prompts.",
    )
    group.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help="Default: the whole dataset, or 64 synthetic prompts; a short dataset is cycled.",
    )
    group.add_argument("--input-len", type=int, default=128, help="Synthetic prompt tokens.")
    group.add_argument(
        "--output-len",
        type=int,
        default=None,
        help="Tokens to generate per request; overrides the dataset's (default: the dataset's, "
        f"else {datasets.DEFAULT_OUTPUT_LEN}).",
    )
    group.add_argument(
        "--range-ratio",
        type=float,
        default=0.0,
        help="Synthetic prompt lengths uniform in input_len·[1−r, 1+r] (default 0: all equal).",
    )
    group.add_argument("--num-iters", type=int, default=1, help="Timed runs (median reported).")
    group.add_argument(
        "--warmup-prompts",
        type=int,
        default=4,
        help=f"Untimed warm-up: this many prompts, {WARMUP_OUTPUT_LEN} tokens each (0: none).",
    )
    group.add_argument("--progress", action="store_true", help="Show a progress bar per run.")
    offline.add_offline_arguments(parser)


def build_requests(args: argparse.Namespace, llm: Any) -> list[datasets.BenchRequest]:
    if args.dataset:
        return datasets.take(datasets.load_dataset(args.dataset, args.output_len), args.num_prompts)
    vocab_size, special = offline.synthetic_vocab(llm)
    return datasets.synthetic_token_requests(
        args.num_prompts or 64,
        args.input_len,
        args.output_len or datasets.DEFAULT_OUTPUT_LEN,
        vocab_size,
        seed=args.seed,
        range_ratio=args.range_ratio,
        exclude_ids=special,
    )


def run(args: argparse.Namespace) -> int:
    if args.num_iters < 1:
        raise SystemExit("--num-iters must be at least 1")
    engine = offline.start_engine(args)
    llm = engine.llm
    requests = build_requests(args, llm)
    prompts = [r.engine_prompt() for r in requests]
    params = [offline.sampling_params(args, r.output_len) for r in requests]
    expected_output = sum(r.output_len for r in requests)

    if args.warmup_prompts > 0:
        warm = prompts[: args.warmup_prompts]
        llm.generate(warm, offline.sampling_params(args, WARMUP_OUTPUT_LEN), use_tqdm=False)

    runs: list[dict[str, float]] = []
    for i in range(args.num_iters):
        t0 = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=args.progress)
        elapsed = time.perf_counter() - t0
        prompt_tokens, output_tokens = offline.count_tokens(outputs)
        runs.append(
            {
                "elapsed_s": elapsed,
                "requests_per_s": len(requests) / elapsed,
                "output_tok_s": output_tokens / elapsed,
                "total_tok_s": (prompt_tokens + output_tokens) / elapsed,
                "prompt_tokens": prompt_tokens,
                "output_tokens": output_tokens,
            }
        )
        print(
            f"run {i + 1}/{args.num_iters}: {elapsed:.2f} s, {len(requests) / elapsed:.2f} req/s, "
            f"{output_tokens / elapsed:.1f} output tok/s, "
            f"{(prompt_tokens + output_tokens) / elapsed:.1f} total tok/s",
            flush=True,
        )
        if args.ignore_eos and output_tokens != expected_output:
            offline.warn(
                f"generated {output_tokens} tokens, expected {expected_output}: some requests "
                "stopped early (context limit?), so runs are not comparable"
            )

    result = _result(args, engine, requests, runs, expected_output)
    _print(result)
    if args.output_json:
        report.write_json(args.output_json, result)
    return 0


def _result(
    args: argparse.Namespace,
    engine: offline.ReadyEngine,
    requests: list[datasets.BenchRequest],
    runs: list[dict[str, float]],
    expected_output: int,
) -> dict[str, Any]:
    keys = ("elapsed_s", "requests_per_s", "output_tok_s", "total_tok_s")
    summary = {k: median_of_runs([r[k] for r in runs]) for k in keys}
    last = runs[-1]
    median_elapsed = summary["elapsed_s"]["median"]
    return {
        "benchmark": "throughput",
        "args": offline.namespace_record(args),
        "engine_args": engine.engine_args.model_dump(),
        "environment": report.environment(),
        "startup_s": engine.startup_s,
        "engine_init_s": engine.engine_init_s,
        "num_requests": len(requests),
        "prompt_tokens": last["prompt_tokens"],
        "output_tokens": last["output_tokens"],
        "expected_output_tokens": expected_output,
        **summary,
        "runs": runs,
        # vLLM's ``bench throughput`` keys, so scripts written for its JSON read this one
        "elapsed_time": median_elapsed,
        "requests_per_second": summary["requests_per_s"]["median"],
        "tokens_per_second": summary["total_tok_s"]["median"],
        "total_num_tokens": last["prompt_tokens"] + last["output_tokens"],
    }


def _print(result: dict[str, Any]) -> None:
    n = len(result["runs"])
    suffix = f" (median of {n})" if n > 1 else ""
    rows: list[tuple[str, Any] | str] = [
        ("Requests", result["num_requests"]),
        ("Prompt tokens", result["prompt_tokens"]),
        ("Output tokens", result["output_tokens"]),
        ("Start-up, process start → ready (s)", result["startup_s"]),
        ("Engine init, LLM(...) (s)", result["engine_init_s"]),
        "Timed runs" + suffix,
        ("Elapsed (s)", result["elapsed_s"]["median"]),
        ("Request throughput (req/s)", result["requests_per_s"]["median"]),
        ("Output token throughput (tok/s)", result["output_tok_s"]["median"]),
        ("Total token throughput (tok/s)", result["total_tok_s"]["median"]),
    ]
    if n > 1:
        spread = result["output_tok_s"]
        rows.append(("Output tok/s min – max", f"{spread['min']:.1f} – {spread['max']:.1f}"))
    report.print_table("Offline Throughput Benchmark", rows)
