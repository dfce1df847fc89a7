"""ASGI middleware: API keys and the request body limit.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which buffers responses and interferes
with streaming and with disconnect detection; both checks here run before any endpoint code, so
a refused request costs no parsing and never reaches the engine.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heron_server.errors import error_body

OPEN_PATHS = frozenset({"/health", "/version", "/metrics", "/ping"})
"""Endpoints that load balancers and Prometheus reach without a key (vLLM leaves them open too)."""


async def _send_error(send: Send, status: int, body: dict, headers: Iterable = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class APIKeyMiddleware:
    """401 unless ``Authorization: Bearer <key>`` names one of the keys (compared in constant
    time). OpenAI clients always send this header, so a key works with every SDK."""

    def __init__(self, app: ASGIApp, api_keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
        if given and any(secrets.compare_digest(given, key) for key in self.keys):
            await self.app(scope, receive, send)
            return
        message = (
            "Incorrect API key provided."
            if given
            else ("You didn't provide an API key: send it as 'Authorization: Bearer <key>'.")
        )
        body = error_body(401, message, code="invalid_api_key")
        await _send_error(send, 401, body, [(b"www-authenticate", b"Bearer")])


class BodySizeLimitMiddleware:
    """413 for request bodies over ``max_bytes``, checked on ``Content-Length`` and on the bytes
    actually received (chunked uploads have no length), before the app parses anything."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(send)
                return
        # Read the whole body here (it is needed whole anyway), then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its whole body: nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        body = error_body(
            413,
            f"the request body is larger than the server's limit of {self.max_bytes} bytes",
            code="request_too_large",
        )
        await _send_error(send, 413, body, [(b"connection", b"close")])
