"""What ``bench throughput`` and ``bench latency`` share: engine flags, start-up timing, sampling.

Both run the engine in this process through the vLLM-shaped ``LLM`` API, so their numbers compare
directly with ``vllm bench throughput/latency`` and with ``/work/shared/bench/bench_offline.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heron.config import EngineArgs, add_engine_arguments, engine_args_from_namespace


def add_offline_arguments(parser: argparse.ArgumentParser) -> None:
    """Every engine argument plus the sampling and output flags of the offline benchmarks.

    The engine's ``--seed`` is replaced by the benchmark's, which seeds both the synthetic prompts
    and the engine (as in ``vllm bench``), so one flag reproduces a run.
    """
    add_engine_arguments(parser, skip=("seed",))
    group = parser.add_argument_group("benchmark")
    group.add_argument(
        "--seed", type=int, default=0, help="Seeds the synthetic prompts and the engine."
    )
    group.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="Sampling temperature (default 0: greedy, deterministic work per run).",
    )
    group.add_argument(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Generate exactly the output length, past EOS (default on, so every engine does the "
        "same amount of work).",
    )
    group.add_argument("--output-json", default=None, help="Write the results to this JSON file.")


def seconds_since_process_start() -> float | None:
    """Wall time since this process started, imports included (what a user waits for).

    Linux: the process start in clock ticks since boot (``/proc/self/stat``) against the uptime
    (``/proc/uptime``), both at 10 ms resolution; ``/proc/stat``'s boot time is whole seconds, too
    coarse for a start-up of a few seconds. Elsewhere psutil when installed, else None.
    """
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # type: ignore[import-not-found]
    except ImportError:
        return None
    return time.time() - psutil.Process().create_time()


@dataclass(slots=True)
class ReadyEngine:
    """An ``LLM`` with how long it took to get there."""

    llm: Any
    engine_args: EngineArgs
    startup_s: float | None
    """Process start → LLM ready: interpreter, imports, weights, KV cache (all a user waits for)."""
    engine_init_s: float
    """The ``LLM(...)`` constructor alone."""


def start_engine(args: argparse.Namespace) -> ReadyEngine:
    """Build the engine from the parsed flags and time its start-up."""
    engine_args = engine_args_from_namespace(args, seed=args.seed)
    from heron import LLM

    t0 = time.perf_counter()
    llm = LLM(**engine_args.model_dump())
    init_s = time.perf_counter() - t0
    return ReadyEngine(llm, engine_args, seconds_since_process_start(), init_s)


def sampling_params(args: argparse.Namespace, output_len: int) -> Any:
    """Greedy (unless ``--temperature``); exactly ``output_len`` tokens under ``--ignore-eos``."""
    from heron import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        max_tokens=output_len,
        ignore_eos=args.ignore_eos,
        seed=args.seed if args.temperature > 0 else None,
    )


def synthetic_vocab(llm: Any) -> tuple[int, set[int]]:
    """Vocabulary size and special token ids of the engine's tokenizer, for random-id prompts."""
    tokenizer = llm.get_tokenizer()
    return len(tokenizer), set(getattr(tokenizer, "all_special_ids", ()) or ())


def count_tokens(outputs: list[Any]) -> tuple[int, int]:
    """Prompt and output tokens of ``LLM.generate``'s results (all sequences of each request)."""
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    output = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    return prompt, output


def namespace_record(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as JSON-ready values, for the result file."""
    return {
        k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))
    }


def warn(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)
