"""What the ``heron generate`` and ``heron chat`` commands share: their sampling flags, how a
mistake is reported (:class:`CLIError`), and the checks both make before generating.

Its own module so that :mod:`heron.cli` (the parser and the commands) and :mod:`heron.chat_cli`
(the chat loop) both import it and neither imports the other's module-level names.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from heron.sampling_params import SamplingParams

DEFAULT_MAX_TOKENS = 128
# SamplingParams field -> the flag that sets it, so that an error names what the user typed.
SAMPLING_FLAGS = {
    "max_tokens": "--max-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "top_k": "--top-k",
    "seed": "--sampling-seed",
}


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, then exit with ``status``."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    # max_tokens defaults to None here so that an explicit --max-tokens can be told from the
    # default: an explicit one that cannot fit beside the prompt is an error (as in the server),
    # the default just stops at the model's limit.
    group.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help=f"Most tokens to generate per answer (default: {DEFAULT_MAX_TOKENS}; always "
        "stopping at the model's context limit).",
    )
    group.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="Sampling temperature, >= 0; 0 is greedy (default: the model's "
        "generation_config.json, else 1.0).",
    )
    group.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="Nucleus sampling: the smallest set of tokens whose probabilities add up to this, "
        "in (0, 1] (default: the model's generation_config.json, else 1.0).",
    )
    group.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="Sample from the k most likely tokens; 0 or -1: all (default: the model's "
        "generation_config.json, else 0).",
    )
    group.add_argument(
        "--sampling-seed",
        type=int,
        default=None,
        help="Seed of this run's sampling, for repeatable answers (default: none, the engine's "
        "random generator).",
    )


def sampling_params_from_args(args: argparse.Namespace) -> SamplingParams:
    """The sampling flags as SamplingParams; a bad value is a CLIError naming its flag."""
    from heron.sampling_params import SamplingParams, SamplingParamsError

    values = {
        "max_tokens": DEFAULT_MAX_TOKENS if args.max_tokens is None else args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.sampling_seed,
    }
    try:
        return SamplingParams(**{k: v for k, v in values.items() if v is not None})
    except SamplingParamsError as exc:
        flag = SAMPLING_FLAGS.get(exc.param, exc.param)
        raise CLIError(f"{flag}{str(exc).removeprefix(exc.param)}") from None


def check_max_tokens(args: argparse.Namespace, num_prompt_tokens: int, max_model_len: int) -> None:
    """An explicit ``--max-tokens`` must fit beside the prompt, as the server requires (its 400).

    The default is left alone: generation then stops at ``max_model_len`` (finish reason
    "length"), as it does for a request without ``max_tokens``.
    """
    if args.max_tokens is None:
        return
    room = max_model_len - num_prompt_tokens
    if num_prompt_tokens + args.max_tokens > max_model_len:
        raise CLIError(
            f"--max-tokens {args.max_tokens} does not fit: this model's maximum context length "
            f"is {max_model_len} tokens and the prompt has {num_prompt_tokens} "
            f"(at most {room} here)"
        )


def load_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this model cannot be loaded here", whose message says it all."""
    from heron.engine.kv_sizing import KVCacheTooSmallError
    from heron.plugins import NoBackendError

    return (ValueError, OSError, NoBackendError, KVCacheTooSmallError)
