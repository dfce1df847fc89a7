"""``heron bench latency``: how long one batch takes end to end, and how fast sequences decode.

One ``LLM.generate`` call of ``--batch-size`` random-token prompts per iteration, after untimed
warm-up iterations (as ``vllm bench latency``). With ``--batch-size 1`` the decode rate is the
single-stream speed users feel in a chat, the figure llama.cpp's ``tg`` reports.

Decode rate per sequence is (output tokens − 1) / (last token time − first token time) from the
engine's request metrics, so prefill does not dilute it. An engine whose outputs carry no metrics
gets it the way ``bench_offline.py`` does: prefill-only runs (``max_tokens=1``) are timed too and
decode = (output_len − 1) / (median e2e − median prefill).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

from heron.bench import datasets, offline, report
from heron.bench.stats import DEFAULT_PERCENTILES, percentile_key, scale, summarize


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workload")
    group.add_argument("--batch-size", type=int, default=8, help="Prompts per iteration.")
    group.add_argument("--input-len", type=int, default=32, help="Prompt tokens (random ids).")
    group.add_argument("--output-len", type=int, default=128, help="Tokens generated per prompt.")
    group.add_argument("--num-iters-warmup", type=int, default=10, help="Untimed iterations.")
    group.add_argument("--num-iters", type=int, default=30, help="Timed iterations.")
    group.add_argument(
        "--dataset",
        default=None,
        help="JSONL prompts (see heron.bench.datasets) instead of random ids: iteration i takes "
        "the next --batch-size of them, cycling, each with --output-len tokens at most (e.g. "
        "an input-grounded workload: benchmarks/make_rewrite_dataset.py).",
    )
    offline.add_offline_arguments(parser)


def _sequence_times(outputs: list[Any]) -> tuple[list[float], list[float]] | None:
    """Per sequence: time to first token and decode tok/s, from the engine's request metrics."""
    ttfts: list[float] = []
    rates: list[float] = []
    for out in outputs:
        m = getattr(out, "metrics", None)
        first = getattr(m, "first_token_time", None)
        last = getattr(m, "last_token_time", None)
        arrival = getattr(m, "arrival_time", None)
        if first is None or last is None or arrival is None:
            return None
        ttfts.append(first - arrival)
        n = len(out.outputs[0].token_ids)
        rates.append((n - 1) / (last - first) if n > 1 and last > first else math.nan)
    return ttfts, rates


def run(args: argparse.Namespace) -> int:
    if args.num_iters < 1 or args.batch_size < 1:
        raise SystemExit("--num-iters and --batch-size must be at least 1")
    engine = offline.start_engine(args)
    llm = engine.llm
    batches = _prompt_batches(args, llm)
    prompts = batches[0]
    params = offline.sampling_params(args, args.output_len)

    for i in range(args.num_iters_warmup):
        llm.generate(batches[i % len(batches)], params, use_tqdm=False)
    spec_before = _spec_counters(llm)

    latencies: list[float] = []
    ttfts: list[float] = []
    decode_rates: list[float] = []  # per iteration: median over the batch's sequences
    metrics_available = True
    output_tokens = 0
    for i in range(args.num_iters):
        t0 = time.perf_counter()
        outputs = llm.generate(batches[i % len(batches)], params, use_tqdm=False)
        latencies.append(time.perf_counter() - t0)
        output_tokens += offline.count_tokens(outputs)[1]
        times = _sequence_times(outputs)
        if times is None:
            metrics_available = False
            continue
        ttfts.extend(times[0])
        decode_rates.append(statistics.median(times[1]))

    method = "request metrics"
    if not metrics_available:
        method = "e2e minus prefill-only runs"
        ttfts, decode_rates = _prefill_fallback(args, llm, prompts, latencies)

    latency = summarize(latencies, DEFAULT_PERCENTILES)
    result = {
        "benchmark": "latency",
        "args": offline.namespace_record(args),
        "engine_args": engine.engine_args.model_dump(),
        "environment": report.environment(),
        "startup_s": engine.startup_s,
        "engine_init_s": engine.engine_init_s,
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "latency_s": latency,
        "latencies": latencies,
        "ttft_ms": scale(summarize(ttfts, DEFAULT_PERCENTILES), 1000.0),
        "decode_tok_s_per_seq": summarize(decode_rates, DEFAULT_PERCENTILES),
        "decode_tok_s_batch": statistics.median(decode_rates) * args.batch_size
        if decode_rates
        else math.nan,
        "decode_method": method,
        # vLLM's ``bench latency`` keys
        "avg_latency": latency["mean"],
        "percentiles": {str(int(p)): latency[percentile_key(p)] for p in DEFAULT_PERCENTILES},
        "dataset": args.dataset,
        "output_tokens": output_tokens,
        "output_tok_s": output_tokens / sum(latencies),
        "spec_decode": _spec_summary(spec_before, _spec_counters(llm)),
    }
    _print(result)
    if args.output_json:
        report.write_json(args.output_json, result)
    return 0


def _prompt_batches(args: argparse.Namespace, llm: Any) -> list[list[Any]]:
    """The prompts of each iteration: one random-id batch, or the dataset in batches."""
    if args.dataset is None:
        vocab_size, special = offline.synthetic_vocab(llm)
        requests = datasets.synthetic_token_requests(
            args.batch_size,
            args.input_len,
            args.output_len,
            vocab_size,
            seed=args.seed,
            exclude_ids=special,
        )
        return [[r.engine_prompt() for r in requests]]
    requests = datasets.load_dataset(args.dataset, args.output_len)
    count = max(len(requests), args.batch_size)
    count += -count % args.batch_size  # whole batches, cycling through the dataset
    prompts = [r.engine_prompt() for r in datasets.take(requests, count)]
    return [prompts[i : i + args.batch_size] for i in range(0, count, args.batch_size)]


def _spec_counters(llm: Any) -> Any:
    stats = getattr(llm.llm_engine, "stats", None)
    return getattr(stats(), "spec_decode", None) if stats is not None else None


def _spec_summary(before: Any, after: Any) -> dict[str, float] | None:
    """Speculative decoding over the timed runs: acceptance rate and mean acceptance length."""
    if after is None:
        return None
    drafts = after.num_drafts - (before.num_drafts if before else 0)
    drafted = after.num_draft_tokens - (before.num_draft_tokens if before else 0)
    accepted = after.num_accepted_tokens - (before.num_accepted_tokens if before else 0)
    return {
        "num_drafts": drafts,
        "num_draft_tokens": drafted,
        "num_accepted_tokens": accepted,
        "acceptance_rate": accepted / drafted if drafted else math.nan,
        "mean_acceptance_length": 1 + accepted / drafts if drafts else math.nan,
    }


def _prefill_fallback(
    args: argparse.Namespace, llm: Any, prompts: list[Any], latencies: list[float]
) -> tuple[list[float], list[float]]:
    """Prefill times and one decode rate per iteration when the engine reports no metrics."""
    one = offline.sampling_params(args, 1)
    prefill: list[float] = []
    for _ in range(args.num_iters):
        t0 = time.perf_counter()
        llm.generate(prompts, one, use_tqdm=False)
        prefill.append(time.perf_counter() - t0)
    decode_s = statistics.median(latencies) - statistics.median(prefill)
    rate = (args.output_len - 1) / decode_s if args.output_len > 1 and decode_s > 0 else math.nan
    return prefill, [rate]


def _print(result: dict[str, Any]) -> None:
    lat = result["latency_s"]
    dec = result["decode_tok_s_per_seq"]
    rows: list[tuple[str, Any] | str] = [
        ("Batch size", result["batch_size"]),
        ("Input / output tokens", f"{result['input_len']} / {result['output_len']}"),
        ("Start-up, process start → ready (s)", result["startup_s"]),
        f"End-to-end latency of one batch, {len(result['latencies'])} runs (s)",
        ("Mean", lat["mean"]),
    ]
    rows += [(f"P{p:g}", lat[percentile_key(p)]) for p in DEFAULT_PERCENTILES]
    rows += [
        "Per sequence",
        ("Time to first token, median (ms)", result["ttft_ms"]["median"]),
        ("Decode tok/s per sequence, median", dec["median"]),
        ("Decode tok/s, whole batch", result["decode_tok_s_batch"]),
        ("Decode measured from", result["decode_method"]),
        ("Output tok/s over the timed runs (end to end)", result["output_tok_s"]),
    ]
    spec = result["spec_decode"]
    if spec is not None:
        rows += [
            "Speculative decoding (timed runs)",
            ("Draft acceptance rate", spec["acceptance_rate"]),
            ("Mean acceptance length (tokens per step)", spec["mean_acceptance_length"]),
        ]
    report.print_table("Latency Benchmark", rows)
