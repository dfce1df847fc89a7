"""The ``heron`` command: plugins, generate, chat, serve and bench.

Subcommands import what they need only when they run, so ``heron plugins`` answers quickly.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

from heron.config import add_engine_arguments, engine_args_from_namespace


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heron", description="Fast LLM inference and serving.")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO).")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("plugins", help="List discovered plugins and the selected backend.")

    gen = sub.add_parser("generate", help="Generate completions for prompts (offline).")
    gen.add_argument("prompts", nargs="*", help="Prompts; with none, read one per line from stdin.")
    _add_sampling_arguments(gen)
    gen.add_argument("--chat", action="store_true", help="Wrap each prompt in the chat template.")
    add_engine_arguments(gen)

    chat = sub.add_parser("chat", help="Chat interactively with a model, streaming its answers.")
    chat.add_argument("--system", default=None, help="A system message to start with.")
    _add_sampling_arguments(chat)
    add_engine_arguments(chat)

    serve = sub.add_parser(
        "serve", help="Run the OpenAI-compatible server (needs heron-server).", add_help=False
    )
    serve.add_argument("rest", nargs=argparse.REMAINDER)

    bench = sub.add_parser("bench", help="Benchmarks: throughput, latency, serve.", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)

    # argparse's REMAINDER does not take arguments that start with "-" (`heron serve --port 0`),
    # so what follows `serve` / `bench` is split off here and handed over untouched.
    head, passthrough = _split_passthrough(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(head)
    if passthrough is not None:
        args.rest = passthrough
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "plugins":
        return _plugins()
    if args.command == "generate":
        return _generate(args)
    if args.command == "chat":
        from heron.chat_cli import run_chat

        return run_chat(args, engine_args_from_namespace(args))
    if args.command == "serve":
        if importlib.util.find_spec("heron_server") is None:
            print(
                "heron serve needs the server package: pip install heron-server "
                "(from this repository: pip install ./server)",
                file=sys.stderr,
            )
            return 2
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


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=128)
    group.add_argument("--temperature", type=float, default=None)
    group.add_argument("--top-p", type=float, default=None)
    group.add_argument("--top-k", type=int, default=None)
    group.add_argument("--sampling-seed", type=int, default=None, help="Per-request seed.")


def sampling_params_from_args(args: argparse.Namespace):
    from heron.sampling_params import SamplingParams

    values = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.sampling_seed,
    }
    return SamplingParams(**{k: v for k, v in values.items() if v is not None})


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
        print(f"{mark} {b.name:<12} {b.dist_name} {b.dist_version}  {state}")
    if selected:
        print(f"Selected backend: {selected}")
        return 0
    print(f"No backend selected: {error}", file=sys.stderr)
    return 1


def _generate(args: argparse.Namespace) -> int:
    from heron.engine.llm import LLM

    prompts = args.prompts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        print("no prompts given (pass them as arguments or on stdin)", file=sys.stderr)
        return 2
    engine_args = engine_args_from_namespace(args)
    llm = LLM(**engine_args.model_dump())
    params = sampling_params_from_args(args)
    if args.chat:
        outputs = llm.chat([[{"role": "user", "content": p}] for p in prompts], params)
    else:
        outputs = llm.generate(prompts, params)
    for prompt, output in zip(prompts, outputs):
        print(f"### {prompt}\n{output.outputs[0].text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
