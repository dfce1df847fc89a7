"""``heron serve [MODEL]`` / ``python -m heron_server``: load the engine, serve it with uvicorn.

The engine flags are generated from :class:`heron.config.EngineArgs` (the same definition the
Python API validates), so ``--max-model-len`` here and ``LLM(max_model_len=...)`` cannot drift.
The engine loads before the socket opens: a client never reaches a half-ready server, and the
"ready" log line (with the real port, useful with ``--port 0``) means requests will be served.
SIGTERM and Ctrl-C stop accepting connections, let running requests finish (up to
``--shutdown-timeout``), stop the engine, and exit with status 0.
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

import uvicorn

from heron.config import EngineArgsError, add_engine_arguments, engine_args_from_namespace

logger = logging.getLogger("heron_server")

API_KEY_ENV = "HERON_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    from heron_server.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PROMPTS, positive_int

    parser = argparse.ArgumentParser(
        prog="heron serve",
        description="Serve a model over an OpenAI-compatible HTTP API.",
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="Hugging Face folder, Hub id or .gguf file; default: the bundled "
        "SmolLM2-135M-Instruct.",
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="Address to bind (default 127.0.0.1).")
    server.add_argument(
        "--port", type=int, default=8000, help="Port (default 8000; 0 picks a free one)."
    )
    server.add_argument(
        "--api-key",
        action="extend",
        nargs="+",
        default=None,
        help=f"Require one of these keys as 'Authorization: Bearer <key>' (also ${API_KEY_ENV}).",
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
        help=f"Larger request bodies get 413 (default {DEFAULT_MAX_BODY_BYTES}).",
    )
    server.add_argument(
        "--max-prompts-per-request",
        type=positive_int,
        default=DEFAULT_MAX_PROMPTS,
        help="A completions request with more prompts gets 400 "
        f"(default {DEFAULT_MAX_PROMPTS}).",
    )
    server.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="Seconds running requests may take to finish after SIGTERM (default 30).",
    )
    server.add_argument("--log-level", default="info", help="Logging level (default info).")
    server.add_argument(
        "--disable-access-log", action="store_true", help="Do not log every HTTP request."
    )
    add_engine_arguments(parser, skip=("model",))
    return parser


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
    level = str(args.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    try:
        engine_args = engine_args_from_namespace(args, model=args.model)
        chat_template = load_chat_template(args.chat_template)
    except (EngineArgsError, ValueError, OSError) as exc:
        print(f"heron serve: {exc}", file=sys.stderr)
        return 2
    api_keys = list(args.api_key or [])
    if not api_keys and os.environ.get(API_KEY_ENV):
        api_keys = [os.environ[API_KEY_ENV]]

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
        return _serve(args, engine, api_keys, chat_template)
    except (_GracefulStop, KeyboardInterrupt):
        logger.info("Stopped")
        return 0
    finally:
        if engine is not None:
            engine.shutdown()
        signal.signal(signal.SIGTERM, previous)


def _serve(args: argparse.Namespace, engine: Any, api_keys: list[str], template: str | None) -> int:
    from heron_server.app import build_app

    names = args.served_model_name or ([args.model] if args.model else [engine.model_name])
    app = build_app(
        engine,
        served_model_names=names,
        api_keys=api_keys,
        chat_template=template,
        max_body_bytes=args.max_request_body_bytes,
        max_prompts_per_request=args.max_prompts_per_request,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=str(args.log_level).lower(),
        access_log=not args.disable_access_log,
        timeout_graceful_shutdown=args.shutdown_timeout,
        lifespan="off",
    )
    server = _Server(config, names[0], bool(api_keys))
    server.run()
    return 0 if server.started else 1


class _Server(uvicorn.Server):
    """uvicorn's Server, logging the URL once the socket listens (with the real port)."""

    def __init__(self, config: uvicorn.Config, model: str, auth: bool) -> None:
        super().__init__(config)
        self.model = model
        self.auth = auth

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        port = self.config.port
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                port = sock.getsockname()[1]
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        logger.info(
            "Heron server ready at http://%s:%d (model %s%s)",
            host,
            port,
            self.model,
            ", API key required" if self.auth else "",
        )


def console_main() -> None:
    """The ``heron-server`` console script."""
    sys.exit(main())
