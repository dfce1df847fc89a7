"""``heron bench serve``: streaming load on any OpenAI-compatible server (Heron, vLLM, llama.cpp).

Requests arrive as a Poisson process at ``--request-rate`` (all at once by default) and at most
``--max-concurrency`` are in flight; each is timed by :mod:`heron.bench.serve_client`. The metrics
are those of ``vllm bench serve`` (USERS.md §4.4) with the same JSON keys (``mean_ttft_ms``,
``p99_tpot_ms``, ``output_throughput``...), so results from either tool can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from heron.bench import datasets, report
from heron.bench.serve_client import (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    RequestResult,
    build_body,
    send_request,
)
from heron.bench.stats import SERVE_PERCENTILES, percentile_key, summarize

SLO_METRICS = ("ttft", "tpot", "e2el")
METRIC_TITLES = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2el": "End-to-end Latency",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--base-url", default="http://127.0.0.1:8000", help="Server root URL.")
    server.add_argument("--endpoint", default=COMPLETIONS, choices=[COMPLETIONS, CHAT_COMPLETIONS])
    server.add_argument("--model", default=None, help="Model name; default: first of /v1/models.")
    server.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_API_KEY"),
        help="Bearer token (default: $OPENAI_API_KEY).",
    )
    server.add_argument(
        "--ready-timeout",
        type=float,
        default=0.0,
        help="Wait up to this many "
        "seconds for /v1/models to answer (for a server that is starting).",
    )
    server.add_argument("--timeout", type=float, default=3600.0, help="Per-request timeout (s).")
    load = parser.add_argument_group("load")
    load.add_argument("--max-concurrency", type=int, default=None, help="Most requests in flight.")
    load.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="Poisson arrival rate (req/s); inf (default): all requests at once.",
    )
    load.add_argument(
        "--num-warmups",
        type=int,
        default=1,
        help="Untimed requests sent first, one by one; the run stops if they fail.",
    )
    load.add_argument(
        "--goodput",
        nargs="+",
        default=None,
        metavar="KEY:MS",
        help="SLOs for goodput, e.g. ttft:500 tpot:50 e2el:10000.",
    )
    work = parser.add_argument_group("workload")
    work.add_argument(
        "--dataset",
        default=None,
        help="JSONL dataset (see heron bench throughput -h); without it: prompts of random words.",
    )
    work.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help="Default: the whole dataset, or 64 synthetic prompts.",
    )
    work.add_argument(
        "--input-len",
        type=int,
        default=128,
        help="Synthetic prompt length (words, about one token each).",
    )
    work.add_argument(
        "--output-len",
        type=int,
        default=None,
        help="Tokens per request; overrides "
        f"the dataset's (default: the dataset's, else {datasets.DEFAULT_OUTPUT_LEN}).",
    )
    work.add_argument("--range-ratio", type=float, default=0.0, help="Synthetic length spread.")
    work.add_argument("--seed", type=int, default=0, help="Seeds synthetic prompts and arrivals.")
    work.add_argument("--temperature", type=float, default=0.0)
    work.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Send ignore_eos and min_tokens so outputs have exactly the length.",
    )
    work.add_argument("--extra-body", default=None, help="JSON merged into every request body.")
    out = parser.add_argument_group("output")
    out.add_argument("--output-json", default=None, help="Write the results to this JSON file.")
    out.add_argument("--save-detailed", action="store_true", help="Add per-request times to JSON.")


def parse_goodput(items: Sequence[str] | None) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` → ``{"ttft": 0.5, "tpot": 0.05}`` (seconds)."""
    slos: dict[str, float] = {}
    for item in items or ():
        key, sep, value = item.partition(":")
        if not sep or key not in SLO_METRICS:
            raise SystemExit(f"--goodput: expected KEY:MS with KEY in {SLO_METRICS}, got {item!r}")
        try:
            slos[key] = float(value) / 1000.0
        except ValueError:
            raise SystemExit(f"--goodput: {value!r} is not a number of milliseconds") from None
    return slos


def _tpot(r: RequestResult) -> float | None:
    return (r.e2el - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else None


def _meets(r: RequestResult, slos: dict[str, float]) -> bool:
    """Whether a request met every SLO (TPOT is vacuous for a one-token output)."""
    values = {"ttft": r.ttft, "tpot": _tpot(r), "e2el": r.e2el}
    return all(values[k] is None or values[k] <= slo for k, slo in slos.items())


def compute_metrics(
    results: Sequence[RequestResult], duration: float, slos: dict[str, float] | None = None
) -> dict[str, Any]:
    """vLLM ``bench serve`` metrics: throughputs over ``duration`` and mean/median/std/p90/p99 of
    TTFT, TPOT = (e2el − TTFT)/(output tokens − 1), ITL and e2el, in milliseconds."""
    ok = [r for r in results if r.success]
    input_tokens = sum(r.prompt_tokens or 0 for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    series = {
        "ttft": [r.ttft for r in ok],
        "tpot": [t for t in map(_tpot, ok) if t is not None],
        "itl": [gap for r in ok for gap in r.itl],
        "e2el": [r.e2el for r in ok],
    }
    metrics: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(ok) / duration,
        "output_throughput": output_tokens / duration,
        "total_token_throughput": (input_tokens + output_tokens) / duration,
        "usage_reported": all(r.usage_reported for r in ok) if ok else False,
        "input_tokens_known": all(r.prompt_tokens is not None for r in ok),
    }
    for name, values in series.items():
        s = summarize([v * 1000.0 for v in values], SERVE_PERCENTILES)
        for stat in ("mean", "median", "std", *map(percentile_key, SERVE_PERCENTILES)):
            metrics[f"{stat}_{name}_ms"] = s[stat]
    if slos:
        good = sum(1 for r in ok if _meets(r, slos))
        metrics["request_goodput"] = good / duration
    return metrics


async def _arrivals(count: int, rate: float, rng: random.Random) -> Any:
    """Yield request indices at Poisson arrival times (at once when ``rate`` is infinite)."""
    for i in range(count):
        yield i
        if math.isfinite(rate) and i + 1 < count:
            await asyncio.sleep(rng.expovariate(rate))


async def run_load(
    client: Any,
    url: str,
    bodies: Sequence[dict[str, Any]],
    requests: Sequence[datasets.BenchRequest],
    headers: dict[str, str],
    *,
    request_rate: float = math.inf,
    max_concurrency: int | None = None,
    seed: int = 0,
) -> tuple[list[RequestResult], float]:
    """Send every body under the arrival process and concurrency cap; results in request order
    and the duration from the first arrival to the last response."""
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(i: int) -> RequestResult:
        if limit is None:
            return await send_request(client, url, bodies[i], headers, requests[i])
        async with limit:  # TTFT is timed from the send, not from the wait for a slot (as vLLM)
            return await send_request(client, url, bodies[i], headers, requests[i])

    start = time.perf_counter()
    tasks = [
        asyncio.create_task(one(i))
        async for i in _arrivals(len(bodies), request_rate, random.Random(seed))
    ]
    results = await asyncio.gather(*tasks)
    return list(results), time.perf_counter() - start


async def discover_model(client: Any, root: str, headers: dict[str, str], wait_s: float) -> str:
    """The first model id of ``GET /v1/models``, retrying for ``wait_s`` while the server starts."""
    import httpx

    deadline = time.monotonic() + wait_s
    while True:
        try:
            resp = await client.get(root + "/v1/models", headers=headers)
            resp.raise_for_status()
            return str(resp.json()["data"][0]["id"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise SystemExit(f"cannot list models at {root}/v1/models: {exc}") from None
        await asyncio.sleep(0.5)


def build_requests(args: argparse.Namespace) -> list[datasets.BenchRequest]:
    if args.dataset:
        return datasets.take(datasets.load_dataset(args.dataset, args.output_len), args.num_prompts)
    return datasets.synthetic_text_requests(
        args.num_prompts or 64,
        args.input_len,
        args.output_len or datasets.DEFAULT_OUTPUT_LEN,
        seed=args.seed,
        range_ratio=args.range_ratio,
    )


async def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """The whole ``bench serve`` run; returns the result record."""
    import httpx

    root = args.base_url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    extra = json.loads(args.extra_body) if args.extra_body else {}
    slos = parse_goodput(args.goodput)
    requests = build_requests(args)
    # A fresh connection per request: llama-server closes kept-alive connections, and a reused
    # closed socket fails the next POST; on loopback a connect costs well under a millisecond.
    # trust_env=False keeps HTTP(S)_PROXY from routing benchmark traffic through a proxy.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    timeout = httpx.Timeout(args.timeout, connect=30.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        model = args.model or await discover_model(client, root, headers, args.ready_timeout)
        url = root + args.endpoint
        bodies = [
            build_body(
                args.endpoint,
                model,
                r,
                temperature=args.temperature,
                ignore_eos=args.ignore_eos,
                extra=extra,
            )
            for r in requests
        ]
        for i in range(args.num_warmups):
            k = i % len(requests)
            warm = await send_request(client, url, bodies[k], headers, requests[k])
            if not warm.success:
                raise SystemExit(f"warm-up request failed, is {url} serving {model}? {warm.error}")
        print(
            f"{len(requests)} requests to {url} (model {model}), request rate "
            f"{args.request_rate}, max concurrency {args.max_concurrency}",
            flush=True,
        )
        results, duration = await run_load(
            client,
            url,
            bodies,
            requests,
            headers,
            request_rate=args.request_rate,
            max_concurrency=args.max_concurrency,
            seed=args.seed,
        )
    record: dict[str, Any] = {
        "benchmark": "serve",
        "args": {k: v for k, v in vars(args).items() if k != "api_key"},
        "environment": report.environment(),
        "base_url": root,
        "endpoint": args.endpoint,
        "model": model,
        "num_prompts": len(requests),
        "request_rate": str(args.request_rate),
        "max_concurrency": args.max_concurrency,
        **compute_metrics(results, duration, slos),
        "errors": sorted({r.error for r in results if not r.success})[:20],
    }
    if args.save_detailed:
        record["requests"] = [
            {
                "success": r.success,
                "error": r.error,
                "ttft": r.ttft,
                "e2el": r.e2el,
                "itl": r.itl,
                "output_tokens": r.output_tokens,
                "prompt_tokens": r.prompt_tokens,
            }
            for r in results
        ]
    return record


def print_result(m: dict[str, Any]) -> None:
    rows: list[tuple[str, Any] | str] = [
        ("Successful requests", m["completed"]),
        ("Failed requests", m["failed"]),
        ("Maximum request concurrency", str(m["max_concurrency"])),
        ("Request rate (req/s)", m["request_rate"]),
        ("Benchmark duration (s)", m["duration"]),
        ("Total input tokens", m["total_input_tokens"]),
        ("Total generated tokens", m["total_output_tokens"]),
        ("Request throughput (req/s)", m["request_throughput"]),
        ("Output token throughput (tok/s)", m["output_throughput"]),
        ("Total token throughput (tok/s)", m["total_token_throughput"]),
    ]
    if "request_goodput" in m:
        rows.append(("Request goodput (req/s)", m["request_goodput"]))
    for name, title in METRIC_TITLES.items():
        rows.append(title)
        rows += [
            (f"{label} {name.upper()} (ms)", m[f"{stat}_{name}_ms"])
            for label, stat in [("Mean", "mean"), ("Median", "median")]
            + [(f"P{p:g}", percentile_key(p)) for p in SERVE_PERCENTILES]
        ]
    report.print_table("Serving Benchmark Result", rows)
    if not m["usage_reported"] and m["completed"]:
        print("note: the server sent no usage; output tokens were counted as streamed chunks")
    for error in m["errors"]:
        print(f"error: {error}")


def run(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise SystemExit("heron bench serve needs httpx: pip install httpx") from None
    # httpx logs every request at INFO: noise in the table, and client CPU taken from the server
    logging.getLogger("httpx").setLevel(logging.WARNING)
    record = asyncio.run(benchmark(args))
    print_result(record)
    if args.output_json:
        report.write_json(args.output_json, record)
    return 0 if record["completed"] else 1
