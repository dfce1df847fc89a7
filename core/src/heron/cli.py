"""The ``heron`` command: plugins, generate, chat, serve and bench.

Subcommands import what they need only when they run, so ``heron plugins`` answers quickly.
Mistakes a user can make (a bad flag value, a prompt too long for the model, a model that cannot
be loaded) end in one line naming the problem and a non-zero status, never in a traceback:
status 2 for bad input, 1 when the model cannot be loaded.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from heron.cli_common import (
    CLIError,
    add_sampling_arguments,
    check_max_tokens,
    load_error_types,
    sampling_params_from_args,
)
from heron.config import EngineArgsError, add_engine_arguments, engine_args_from_namespace

if TYPE_CHECKING:
    from heron.config import EngineArgs

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

GENERATE_USAGE = """heron generate [options] [PROMPT ...]
       heron generate [options] [MODEL] -p PROMPT [-p PROMPT ...]"""
GENERATE_EPILOG = """\
The model: --model MODEL always works. A positional MODEL (as in `heron serve MODEL` and
`heron chat MODEL`) is accepted only together with -p/--prompt: positional arguments are
prompts unless the prompts are given with -p, and then the one positional argument is the
model. Which one a word is thus never depends on what it looks like.
Examples:
  heron generate "The capital of France is"
  heron generate --model ./my-model "Hello" "Bonjour"
  heron generate ./my-model.gguf -p "Hello" -p "Bonjour"
  printf 'Hello\\nBonjour\\n' | heron generate --chat"""


def build_parser() -> argparse.ArgumentParser:
    """The ``heron`` parser; ``serve`` and ``bench`` parse their own arguments."""
    parser = argparse.ArgumentParser(prog="heron", description="Fast LLM inference and serving.")
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        metavar="LEVEL",
        help="Python logging level: debug, info, warning, error or critical, in any case "
        "(default: info; warning for `heron chat`, so that the engine's log lines do not land "
        "in the middle of its answers).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("plugins", help="List discovered plugins and the selected backend.")

    gen = sub.add_parser(
        "generate",
        help="Generate completions for prompts (offline).",
        usage=GENERATE_USAGE,
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument(
        "positionals",
        nargs="*",
        metavar="PROMPT",
        help="Prompts; with none, read one per line from stdin. With -p/--prompt, the one "
        "positional argument is the MODEL instead (see below).",
    )
    gen.add_argument(
        "-p",
        "--prompt",
        action="append",
        dest="prompt_flags",
        default=None,
        metavar="PROMPT",
        help="A prompt (repeatable); lets a positional argument name the model (default: none, "
        "the positional arguments are the prompts).",
    )
    gen.add_argument(
        "--chat", action="store_true", help="Wrap each prompt in the chat template (default: off)."
    )
    add_sampling_arguments(gen)
    add_engine_arguments(gen)

    chat = sub.add_parser(
        "chat",
        help="Chat interactively with a model, streaming its answers.",
        description="Chat with a model. An empty line, Ctrl-D or Ctrl-C at the prompt quits; "
        "Ctrl-C during an answer stops that answer and keeps the conversation.",
    )
    chat.add_argument(
        "positional_model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="The model, as with --model (default: the bundled SmolLM2-135M-Instruct).",
    )
    chat.add_argument(
        "--system", default=None, help="A system message to start with (default: none)."
    )
    add_sampling_arguments(chat)
    add_engine_arguments(chat)

    serve = sub.add_parser(
        "serve", help="Run the OpenAI-compatible server (needs heron-server).", add_help=False
    )
    serve.add_argument("rest", nargs=argparse.REMAINDER)

    bench = sub.add_parser("bench", help="Benchmarks: throughput, latency, serve.", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``heron``; returns the exit status."""
    parser = build_parser()
    # argparse's REMAINDER does not take arguments that start with "-" (`heron serve --port 0`),
    # so what follows `serve` / `bench` is split off here and handed over untouched.
    head, passthrough = _split_passthrough(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(head)
    if passthrough is not None:
        args.rest = passthrough
    level = args.log_level or ("WARNING" if args.command == "chat" else "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except CLIError as exc:
        print(f"heron {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:  # e.g. Ctrl-C while the model loads: no traceback for that
        print(f"\nheron {args.command}: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "plugins":
        return _plugins()
    if args.command == "generate":
        return _generate(args)
    if args.command == "chat":
        from heron.chat_cli import run_chat

        model = _one_model(args.model, args.positional_model)
        return run_chat(args, _engine_args(args, model))
    if args.command == "serve":
        if importlib.util.find_spec("heron_server") is None:
            raise CLIError(
                "needs the server package: pip install heron-server "
                "(from this repository: pip install ./server)"
            )
        from heron_server.cli import main as serve_main

        return serve_main(args.rest)
    if args.command == "bench":
        from heron.bench.cli import main as bench_main

        return bench_main(args.rest)
    return 2


def _split_passthrough(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``(argv up to the command, the command's own arguments)`` for ``serve`` and ``bench``."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--log-level" else 1
    if i < len(argv) and argv[i] in ("serve", "bench"):
        return argv[: i + 1], argv[i + 1 :]
    return argv, None


def _engine_args(args: argparse.Namespace, model: str | None) -> EngineArgs:
    try:
        return engine_args_from_namespace(args, model=model)
    except EngineArgsError as exc:
        raise CLIError(str(exc)) from None


def _one_model(flag: str | None, positional: str | None) -> str | None:
    if flag is not None and positional is not None and flag != positional:
        raise CLIError(f"two models given ({positional!r} and --model {flag!r}); give one")
    return flag if flag is not None else positional


def _plugins() -> int:
    from heron.plugins import NoBackendError, load_plugins

    host = load_plugins()
    print("Plugins:")
    for p in host.plugins:
        status = "loaded" if p.loaded else f"SKIPPED: {p.error}"
        print(f"  {p.name:<12} {p.group:<15} {p.dist_name} {p.dist_version}  {status}")
    try:
        selected = host.select_backend(os.environ.get("HERON_BACKEND") or None).name
        error = None
    except NoBackendError as exc:
        selected, error = None, str(exc)
    print("Backends:")
    for b in sorted(host.backends.values(), key=lambda r: -r.score):
        mark = "*" if b.name == selected else " "
        state = f"available, score {b.score}" if b.available else f"not available: {b.reason}"
        if b.available:
            state += f", communicator {_communicator_name(b)}"
        print(f"{mark} {b.name:<12} {b.dist_name} {b.dist_version}  {state}")
    _print_models(host)
    if selected:
        print(f"Selected backend: {selected}")
        return 0
    print(f"No backend selected: {error}", file=sys.stderr)
    return 1


def _print_models(host: Any) -> None:
    """The architectures Heron runs and how (native or through the Transformers fallback)."""
    from heron.models.registry import builtin_registry, support_lines

    registry = builtin_registry()
    try:
        host.register_models(registry)
    except Exception as exc:  # a broken model plugin must not break the listing
        print(f"Models (plugins' models unknown: {type(exc).__name__}: {exc}):")
    else:
        print("Models:")
    for line in support_lines(registry):
        print(line)


def _communicator_name(record: Any) -> str:
    """The class a backend's ranks talk through (tensor and pipeline parallelism), and its
    torch.distributed backend; building one for a group of one touches no device."""
    from heron.plugins import resolve_platform
    from heron_interfaces import CommContext

    try:
        platform = resolve_platform(record)
        comm = platform.communicator(CommContext(world_size=1, rank=0))
    except Exception as exc:  # a broken plugin must not break the listing
        return f"unknown ({type(exc).__name__}: {exc})"
    return f"{type(comm).__name__} ({platform.dist_backend})"


def generate_inputs(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """``(model, prompts)`` from the positionals, ``-p`` and ``--model`` (see GENERATE_EPILOG)."""
    positional_model = None
    if args.prompt_flags is not None:
        if len(args.positionals) > 1:
            raise CLIError(
                "with -p/--prompt, at most one positional argument (the MODEL) is allowed; got "
                f"{len(args.positionals)}: give every prompt with -p, or none with -p"
            )
        positional_model = args.positionals[0] if args.positionals else None
        prompts = list(args.prompt_flags)
    else:
        prompts = list(args.positionals)
    if not prompts:
        prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        raise CLIError("no prompts given (pass them as arguments, with -p, or on stdin)")
    return _one_model(args.model, positional_model), prompts


def _generate(args: argparse.Namespace) -> int:
    model, prompts = generate_inputs(args)
    # Everything that can be checked without the model is checked before loading it.
    params = sampling_params_from_args(args)
    engine_args = _engine_args(args, model)

    from heron.engine.llm import LLM

    try:
        llm = LLM(**engine_args.model_dump())
    except load_error_types() as exc:
        raise CLIError(f"cannot load the model: {exc}", status=1) from None
    # The engine's own checks (tokenization, the prompt fits max_model_len, valid token ids), run
    # for every prompt before any is generated, so one bad prompt does not waste the others' work.
    processor = llm.llm_engine.input_processor
    token_prompts: list[dict[str, Any]] = []
    for number, prompt in enumerate(prompts, 1):
        try:
            if args.chat:
                processed = processor.render_chat([{"role": "user", "content": prompt}])
            else:
                processed = processor.process_prompt(prompt)
            check_max_tokens(args, len(processed.prompt_token_ids), llm.llm_engine.max_model_len)
        except (ValueError, CLIError) as exc:
            raise CLIError(f"prompt {number}: {exc}" if len(prompts) > 1 else str(exc)) from None
        token_prompts.append(
            {"prompt_token_ids": processed.prompt_token_ids, "prompt": processed.prompt}
        )
    outputs = llm.generate(token_prompts, params)
    for prompt, output in zip(prompts, outputs):
        print(f"### {prompt}\n{output.outputs[0].text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
