"""A deadline for a request's headers, so slow-header ("slowloris") connections are closed.

uvicorn times out only an idle keep-alive connection, and its timer is cancelled by the first byte
that arrives: a client that sends its headers one byte a second (or connects and sends nothing)
keeps its connection, its socket and a file descriptor forever, and a few thousand such clients
exhaust the server. nginx's ``client_header_timeout`` is the usual remedy; this is the same rule:
from the moment a connection may start a request (when it opens, or when the previous response
ended) the client has ``header_timeout`` seconds to complete the request's headers, or the
connection is closed. The request body and the response are not limited by it (a long prompt may
upload slowly, a stream may run for minutes).

It is a mixin over uvicorn's own HTTP protocol class (h11, or httptools when installed), added by
:func:`with_header_timeout`, so the HTTP parsing stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 10.0


class _HeaderDeadline:
    """Closes the connection unless a request's headers are complete ``header_timeout`` seconds
    after it could have started. Relies on uvicorn's protocols setting ``self.cycle`` to a new
    request/response cycle when a request's headers have been parsed."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    _deadline: asyncio.TimerHandle | None = None
    _armed_for: Any = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        if self._deadline is not None and self.cycle is not self._armed_for:  # type: ignore[attr-defined]
            self._disarm()  # a new request's headers were parsed in time

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        cycle = self.cycle  # type: ignore[attr-defined]
        # A pipelined request may already be running (uvicorn starts it from the buffer).
        if cycle is None or cycle.response_complete:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()
        if self.transport.is_closing():  # type: ignore[attr-defined]
            return
        self._armed_for = self.cycle  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        transport = self.transport  # type: ignore[attr-defined]
        if transport.is_closing():
            return
        client = getattr(self, "client", None)
        logger.debug(
            "Closing a connection from %s: no complete request headers within %g s",
            f"{client[0]}:{client[1]}" if client else "an unknown client",
            self.header_timeout,
        )
        transport.close()


def with_header_timeout(base: type[asyncio.Protocol], header_timeout: float) -> type:
    """``base`` (a uvicorn HTTP protocol class) with the header deadline; pass the result to
    ``uvicorn.Config(http=...)``."""
    if header_timeout <= 0:
        raise ValueError(f"header_timeout must be positive, got {header_timeout}")
    return type(
        f"HeaderTimeout{base.__name__}",
        (_HeaderDeadline, base),
        {"header_timeout": header_timeout},
    )


def default_http_protocol() -> type[asyncio.Protocol]:
    """The protocol uvicorn's ``http="auto"`` picks: httptools when installed, else h11."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol
