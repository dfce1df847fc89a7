"""Running several engine generations as one HTTP request, Server-Sent Events, and disconnects.

A completions request with a list of prompts is one engine request per prompt; they run
concurrently (continuous batching interleaves them with everybody else's) and their outputs are
merged in arrival order. Validation errors must reach the client as a 4xx *before* a streaming
response sends its headers, so :meth:`Generations.start` lets every generation run up to its first
suspension, which is after the engine accepted or refused the request.

Every path out (normal end, client disconnect, server shutdown, error) closes all generations, and
closing an engine generation aborts its request, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

from starlette.requests import Request

from heron.outputs import RequestOutput

logger = logging.getLogger(__name__)

T = TypeVar("T")

SSE_DONE = "data: [DONE]\n\n"


def sse_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


START_BATCH = 32
"""Requests of one HTTP request submitted per turn of the event loop (see Generations.start)."""


class Generations:
    """Iterate ``(index, output)`` over several engine generations, as outputs arrive."""

    def __init__(self, generators: list[AsyncGenerator[RequestOutput, None]]) -> None:
        self._generators = generators
        self._pending: dict[asyncio.Task[RequestOutput], int] = {}
        self._ready: list[tuple[int, RequestOutput]] = []
        self._closed = False

    async def start(self) -> None:
        """Submit every request to the engine; raises (having closed all) if one is refused.

        Requests go in batches of :data:`START_BATCH`, the event loop turning between batches:
        starting a few thousand prompts in one turn held every other client (``/health``
        included) for a quarter of a second.
        """
        for first in range(0, len(self._generators), START_BATCH):
            batch = range(first, min(first + START_BATCH, len(self._generators)))
            for index in batch:
                gen = self._generators[index]
                self._pending[asyncio.ensure_future(gen.__anext__())] = index
            # One turn of the loop runs each task to its first await, i.e. past the engine's
            # add_request: a refused request has raised by now.
            await asyncio.sleep(0)
            await self._check_started()

    async def _check_started(self) -> None:
        for task in [t for t in self._pending if t.done()]:
            index = self._pending.pop(task)
            error = None if task.cancelled() else task.exception()
            if isinstance(error, StopAsyncIteration):
                continue
            if error is not None:
                await self.aclose()
                raise error
            if not task.cancelled():
                self._take(index, task.result())

    def _take(self, index: int, output: RequestOutput) -> None:
        self._ready.append((index, output))
        if not output.finished:
            self._pending[asyncio.ensure_future(self._generators[index].__anext__())] = index

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        try:
            while self._ready or self._pending:
                while self._ready:
                    yield self._ready.pop(0)
                if not self._pending:
                    break
                done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: self._pending[t]):
                    index = self._pending.pop(task)
                    try:
                        output = task.result()
                    except StopAsyncIteration:
                        continue
                    self._take(index, output)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Abort whatever is still running; idempotent."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._pending)
        self._pending.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for gen in self._generators:
            with contextlib.suppress(Exception):
                await gen.aclose()


class ClientDisconnectedError(Exception):
    """The client went away before its (non-streaming) response was ready."""


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (which aborts its engine requests) if the client leaves.

    Starlette cancels streaming responses on disconnect by itself; non-streaming handlers get no
    such signal, so a client that times out would otherwise keep its tokens being generated.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if task.cancelled():
        logger.info("client disconnected from %s; its request was aborted", request.url.path)
        raise ClientDisconnectedError
    return task.result()
