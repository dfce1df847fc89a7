"""``heron serve [MODEL]`` / ``python -m heron_server``: load the engine, serve it with uvicorn.

The engine flags are generated from :class:`heron.config.EngineArgs` (the same definition the
Python API validates), so ``--max-model-len`` here and ``LLM(max_model_len=...)`` cannot drift.
The model is positional or ``--model`` (vLLM accepts both). The port is bound before the engine
loads (a port in use fails at once) and listens once it is ready: a client never reaches a
half-ready server, and the "ready" log line (with the real port, useful with ``--port 0``) means
requests will be served. SIGTERM and Ctrl-C stop accepting connections, let running requests
finish for up to ``--shutdown-timeout`` seconds, then end the rest with ``finish_reason "abort"``
(see :mod:`heron_server.lifecycle`), stop the engine, and exit with status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from heron.config import EngineArgsError, add_engine_arguments, engine_args_from_namespace
from heron_server.connections import (
    DEFAULT_HEADER_TIMEOUT_S,
    default_http_protocol,
    with_header_timeout,
)
from heron_server.lifecycle import ListenError, bind_sockets, make_server

logger = logging.getLogger("heron_server")

API_KEY_ENV = "HERON_API_KEY"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0


def build_parser() -> argparse.ArgumentParser:
    """``heron serve``'s flags; every help text states its default once, as ``(default: X)``."""
    parser = argparse.ArgumentParser(
        prog="heron serve",
        description="Serve a model over an OpenAI-compatible HTTP API.",
    )
    _add_model_arguments(parser)
    _add_server_arguments(parser.add_argument_group("server"))
    add_engine_arguments(parser, skip=("model",))
    return parser


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    help_text = (
        "Hugging Face folder, Hub id or .gguf file (default: the bundled SmolLM2-135M-Instruct)."
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help=help_text)
    parser.add_argument(
        "--model",
        dest="model_option",
        default=None,
        metavar="MODEL",
        help="The model, as an option instead of the positional MODEL (default: the bundled "
        "SmolLM2-135M-Instruct).",
    )


def _add_server_arguments(server: Any) -> None:
    from heron_server.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PROMPTS, positive_int
    from heron_server.reasoning_parsers import REASONING_PARSERS
    from heron_server.tool_parsers import TOOL_PARSERS

    server.add_argument("--host", default="127.0.0.1", help="Address to bind (default: 127.0.0.1).")
    server.add_argument(
        "--port", type=_port, default=8000, help="Port; 0 picks a free one (default: 8000)."
    )
    server.add_argument(
        "--api-key",
        action="append",
        default=None,
        metavar="KEY",
        help="Require this key as 'Authorization: Bearer <key>'; repeat the flag to accept "
        f"several keys (default: ${API_KEY_ENV} if set, else no key).",
    )
    server.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="Names clients use as `model`; the first is reported in responses "
        "(default: the model argument).",
    )
    server.add_argument(
        "--chat-template",
        default=None,
        help="Jinja chat template, as a file path or the template itself (default: the model's).",
    )
    server.add_argument(
        "--max-request-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"Larger request bodies get 413 (default: {DEFAULT_MAX_BODY_BYTES}).",
    )
    server.add_argument(
        "--max-prompts-per-request",
        type=positive_int,
        default=DEFAULT_MAX_PROMPTS,
        help=f"A completions request with more prompts gets 400 (default {DEFAULT_MAX_PROMPTS}).",
    )
    server.add_argument(
        "--shutdown-timeout",
        type=_non_negative_float,
        default=DEFAULT_SHUTDOWN_TIMEOUT_S,
        help="Seconds running requests may take to finish after SIGTERM or Ctrl-C; those still "
        'running then end with finish_reason "abort" (default: 30).',
    )
    server.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=DEFAULT_HEADER_TIMEOUT_S,
        help="Seconds a connection has to send a complete request's headers, from when it opens "
        f"or its previous response ended; slower ones are closed (default: "
        f"{DEFAULT_HEADER_TIMEOUT_S:g}).",
    )
    server.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default="info",
        help="Logging level, any case (default: info).",
    )
    server.add_argument(
        "--enable-auto-tool-choice",
        action="store_true",
        help="Let the model decide when to call tools (tool_choice 'auto'), parsing its answer "
        "with --tool-call-parser (default: off; 'required' and named tools work without it).",
    )
    server.add_argument(
        "--tool-call-parser",
        choices=sorted(TOOL_PARSERS),
        default=None,
        help="How tool calls look in this model's answers, by model family (default: none).",
    )
    server.add_argument(
        "--reasoning-parser",
        choices=sorted(REASONING_PARSERS),
        default=None,
        help="Move the model's <think>...</think> reasoning into reasoning_content, for this "
        "model family (default: none, reasoning stays in content).",
    )
    server.add_argument(
        "--disable-access-log",
        action="store_true",
        help="Do not log every HTTP request (default: off, requests are logged).",
    )


def _non_negative_float(text: str) -> float:
    """argparse type: a usage error (not a traceback) for a negative or non-numeric value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _port(text: str) -> int:
    """argparse type: a TCP port; out-of-range numbers would otherwise wrap around silently."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [0, 65535], got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return value


def resolve_model(args: argparse.Namespace) -> str | None:
    """The model from the positional MODEL or ``--model``; both are fine only if they agree
    (silently preferring one would serve a model the user did not mean)."""
    positional, option = args.model, args.model_option
    if positional is not None and option is not None and positional != option:
        raise ValueError(
            f"the model is given twice, as {positional!r} and as --model {option!r}; give it once"
        )
    model = option if option is not None else positional
    if model is None:
        _check_no_swallowed_model(args.served_model_name)
    return model


def _check_no_swallowed_model(names: list[str] | None) -> None:
    """``--served-model-name`` takes several values (as in vLLM), so in ``heron serve
    --served-model-name x ./model.gguf`` it takes the model too, and the bundled model would be
    served under that path's name. A served name that is an existing file or folder, with no
    model given, is that mistake."""
    for name in names or []:
        if Path(name).expanduser().exists():
            raise ValueError(
                f"--served-model-name took {name!r}, which looks like the model to serve; put "
                "MODEL before the flags or give it as --model"
            )


def load_chat_template(value: str | None) -> str | None:
    """A path to a template file, or the template text itself (as vLLM accepts both)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(f"--chat-template: {value!r} is neither a file nor a Jinja template")


class _GracefulStop(Exception):
    """Raised by our SIGTERM handler once uvicorn has finished its own graceful shutdown."""


def _raise_stop(_signum: int, _frame: Any) -> None:
    raise _GracefulStop


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``heron serve``; returns the process exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    level = args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    try:
        args.model = resolve_model(args)
        engine_args = engine_args_from_namespace(args, model=args.model)
        chat_template = load_chat_template(args.chat_template)
        if args.enable_auto_tool_choice and not args.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice needs --tool-call-parser NAME")
    except (EngineArgsError, ValueError, OSError) as exc:
        print(f"heron serve: {exc}", file=sys.stderr)
        return 2
    try:
        sockets = bind_sockets(args.host, args.port)
    except ListenError as exc:
        print(f"heron serve: {exc}", file=sys.stderr)
        return 1
    try:
        return _load_and_serve(args, engine_args, chat_template, sockets)
    finally:
        for sock in sockets:
            sock.close()


def _api_keys(args: argparse.Namespace) -> list[str]:
    keys = list(args.api_key or [])
    if not keys and os.environ.get(API_KEY_ENV):
        keys = [os.environ[API_KEY_ENV]]
    return keys


def _load_and_serve(
    args: argparse.Namespace, engine_args: Any, template: str | None, sockets: list[socket.socket]
) -> int:
    # uvicorn re-raises the SIGTERM it handled once it has shut down; this handler turns that
    # (and a SIGTERM during loading) into a normal exit that still stops the engine.
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    engine = None
    try:
        from heron.engine.async_llm import AsyncLLM

        logger.info("Loading %s", engine_args.model or "the bundled SmolLM2-135M-Instruct")
        try:
            engine = AsyncLLM(engine_args)
        except (ValueError, OSError) as exc:  # configuration problems: the message says it all
            logger.error("Cannot start the engine: %s", exc)
            return 1
        return _serve(args, engine, _api_keys(args), template, sockets)
    except (_GracefulStop, KeyboardInterrupt):
        logger.info("Stopped")
        return 0
    finally:
        if engine is not None:
            engine.shutdown()
        signal.signal(signal.SIGTERM, previous)


def _serve(
    args: argparse.Namespace,
    engine: Any,
    api_keys: list[str],
    template: str | None,
    sockets: list[socket.socket],
) -> int:
    from heron_server.app import build_app
    from heron_server.structured_request import ToolCallingConfig

    names = args.served_model_name or ([args.model] if args.model else [engine.model_name])
    app = build_app(
        engine,
        served_model_names=names,
        api_keys=api_keys,
        chat_template=template,
        max_body_bytes=args.max_request_body_bytes,
        max_prompts_per_request=args.max_prompts_per_request,
    )
    app.state.heron.tool_calling = ToolCallingConfig(
        enable_auto_tool_choice=args.enable_auto_tool_choice,
        tool_call_parser=args.tool_call_parser,
        reasoning_parser=args.reasoning_parser,
    )
    server = make_server(
        app,
        engine=engine,
        args=args,
        model=names[0],
        auth=bool(api_keys),
        http=with_header_timeout(default_http_protocol(), args.header_timeout),
    )
    server.run(sockets=sockets)
    return 0 if server.started and not server.engine_failed else 1


def console_main() -> None:
    """The ``heron-server`` console script."""
    sys.exit(main())
