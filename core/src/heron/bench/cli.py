"""``heron bench {throughput,latency,prefill,serve}``: argument parsing and dispatch.

``heron.cli`` hands everything after ``bench`` to :func:`main`, so this parser owns its flags
and its ``--help``; each subcommand's module adds its own arguments and runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from heron.bench import latency, prefill, serve, throughput
from heron.bench.datasets import DatasetError

EPILOG = """examples:
  heron bench throughput --model PATH --dataset workload.jsonl --num-iters 3
  heron bench throughput --model PATH --input-len 128 --output-len 128 --num-prompts 64
  heron bench latency --model PATH --batch-size 1 --input-len 128 --output-len 128
  heron bench prefill --model PATH --context-lens 1024 4096 8000
  heron bench serve --base-url http://127.0.0.1:8000 --dataset workload.jsonl --max-concurrency 8
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heron bench",
        description="Benchmarks: offline throughput, batch latency, and load on any "
        "OpenAI-compatible server.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="benchmark", required=True)
    throughput.add_arguments(
        sub.add_parser("throughput", help="Offline throughput of one batch of requests.")
    )
    latency.add_arguments(
        sub.add_parser("latency", help="End-to-end latency of one batch; decode speed.")
    )
    prefill.add_arguments(
        sub.add_parser("prefill", help="Prefill speed of one long prompt at several lengths.")
    )
    serve.add_arguments(
        sub.add_parser("serve", help="Streaming load on an OpenAI-compatible server.")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one benchmark; returns the process exit status."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    runners = {
        "throughput": throughput.run,
        "latency": latency.run,
        "prefill": prefill.run,
        "serve": serve.run,
    }
    try:
        return runners[args.benchmark](args)
    except DatasetError as exc:
        raise SystemExit(f"heron bench {args.benchmark}: {exc}") from None
