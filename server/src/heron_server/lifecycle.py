"""The server process's start and end: the listening socket, the "ready" line, the shutdown.

Start: the port is bound *before* the engine loads (:func:`bind_sockets`), so a port already in
use is reported in a second, not after a minute of model loading; it only starts listening once
the engine is ready, so a client never reaches a half-ready server.

End (SIGTERM or Ctrl-C): uvicorn stops accepting connections and waits for running requests.
When ``--shutdown-timeout`` is reached, uvicorn itself would cancel the request tasks, which cuts
each stream mid-body (the client sees an incomplete chunked read, no final chunk, no ``[DONE]``)
and logs a ``CancelledError`` traceback per stream. :class:`HeronServer` instead aborts the
engine's running requests at the timeout (:meth:`AsyncLLM.abort_all`): each stream then ends the
normal way, with a final chunk whose ``finish_reason`` is ``"abort"`` and ``data: [DONE]``, and one
log line says how many were cut. uvicorn's own cancellation stays as a backstop
:data:`FLUSH_GRACE_S` later, for a request that is stuck elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn

logger = logging.getLogger("heron_server")

FLUSH_GRACE_S = 5.0
"""After aborting, how long streams get to send their last chunks before uvicorn cancels them."""


class ListenError(OSError):
    """The address cannot be bound; the message names host:port and the reason."""


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound (not yet listening) sockets for every address ``host`` resolves to, as asyncio's
    ``create_server`` would bind them; raises :class:`ListenError` naming host:port."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host_port(host, port)}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            if port == 0 and sockets:  # one port for every address, as with a fixed port
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sockets.append(_bind(family, kind, proto, address))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {host_port(host, port)}: {reason}") from None
    return sockets


def _bind(family: int, kind: int, proto: int, address: tuple[Any, ...]) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class HeronServer(uvicorn.Server):
    """uvicorn's Server that logs the URL once it listens (with the real port, for ``--port
    0``) and ends running requests through the engine when the shutdown timeout is reached."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        engine: Any,
        model: str,
        auth: bool,
        shutdown_timeout: float,
    ) -> None:
        super().__init__(config)
        self.engine = engine
        self.engine_failed = False
        """Set when the engine stopped on its own: the process then exits with status 1."""
        self.model = model
        self.auth = auth
        self.shutdown_timeout = shutdown_timeout

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._log_ready()
            self._watcher = asyncio.ensure_future(self._exit_when_engine_dies())

    async def _exit_when_engine_dies(self) -> None:
        """A dead engine (a worker rank killed, say) cannot recover: requests in flight have
        their errors, /health answers 503, and the server stops instead of lingering, with
        exit status 1 so that a supervisor restarts it."""
        while not self.should_exit:
            error = getattr(self.engine, "dead_error", None)
            if error is not None:
                logger.error("The engine stopped (%s); shutting the server down", error)
                self.engine_failed = True
                self.should_exit = True
                return
            await asyncio.sleep(0.25)

    def _log_ready(self) -> None:
        port = self.config.port
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                port = sock.getsockname()[1]
        logger.info(
            "Heron server ready at http://%s (model %s%s)",
            host_port(self.config.host, port),
            self.model,
            ", API key required" if self.auth else "",
        )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        cutter = asyncio.ensure_future(self._cut_at_timeout())
        try:
            await super().shutdown(sockets)
        finally:
            cutter.cancel()

    async def _cut_at_timeout(self) -> None:
        """At the shutdown timeout, abort what still runs so that every stream ends visibly."""
        await asyncio.sleep(self.shutdown_timeout)
        running = len(self.server_state.tasks)
        cut = self.engine.abort_all()
        if cut:
            logger.warning(
                "Shutdown timeout (%g s) reached with %d request(s) still running: cut %d "
                'generation(s); their clients get finish_reason "abort" and [DONE]',
                self.shutdown_timeout,
                running,
                cut,
            )


def make_server(
    app: Any,
    *,
    engine: Any,
    args: Any,
    model: str,
    auth: bool,
    http: type[asyncio.Protocol],
) -> HeronServer:
    """The uvicorn server for ``heron serve``'s parsed ``args``."""
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http=http,
        log_level=args.log_level,
        access_log=not args.disable_access_log,
        timeout_graceful_shutdown=args.shutdown_timeout + FLUSH_GRACE_S,
        lifespan="off",
    )
    return HeronServer(
        config, engine=engine, model=model, auth=auth, shutdown_timeout=args.shutdown_timeout
    )
