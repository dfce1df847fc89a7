"""``AsyncLLM``: the engine for asyncio applications (the server), stepping in a background thread.

The engine loop runs in one thread so that the event loop stays free to accept and stream requests;
torch releases the GIL inside its kernels. Validation runs in the caller, so bad input raises right
away at the ``generate`` call and never reaches the loop that serves everyone else. The loop also
writes the periodic stats line (:mod:`heron.engine.stats_logger`) unless ``disable_log_stats``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from heron.config import EngineArgs, make_engine_args
from heron.engine.data_parallel import DataParallelEngine, build_engine
from heron.engine.input_processor import ChatMessages, ProcessedPrompt, PromptType
from heron.engine.llm_engine import LLMEngine, PreparedRequest
from heron.engine.output_processor import RequestOutputKind
from heron.engine.stats_logger import EngineStats, StatsLogger, interval_from_env
from heron.outputs import RequestOutput
from heron.pooling.outputs import EmbeddingRequestOutput
from heron.pooling.params import PoolingParams
from heron.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine loop stopped on an error; every pending request gets this.

    ``in_flight`` tells a request that was running when the engine died (the server answers it
    with a 500 naming the failure) from one that arrived afterwards (503: come back later).
    """

    def __init__(self, message: str, *, in_flight: bool = False) -> None:
        super().__init__(message)
        self.in_flight = in_flight


class AsyncLLM:
    engine: LLMEngine | DataParallelEngine
    """Built, and only ever stepped, by the engine thread (with ``data_parallel_size`` > 1, a
    front over one engine process per replica)."""

    def __init__(self, args: EngineArgs | None = None, **kwargs: Any) -> None:
        self.engine_args = args or make_engine_args(**kwargs)
        if self.engine_args.split_prompt_bursts is None:  # streams want first tokens early
            self.engine_args = self.engine_args.model_copy(update={"split_prompt_bursts": True})
        # The lock guards only the hand-over structures below, never a whole engine step, so the
        # event loop can accept and abort requests while the engine thread computes.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._pending: list[tuple[PreparedRequest, RequestOutputKind]] = []
        self._pending_aborts: list[str] = []
        self._abort_all = False
        self._stopped = False
        self._stats_logger = (
            None if self.engine_args.disable_log_stats else StatsLogger(interval_from_env())
        )
        self.dead_error: BaseException | None = None
        # The engine is built in the thread that steps it: OpenMP thread teams belong to the
        # thread that first runs parallel work, and stepping from another thread than the one that
        # loaded the model measured ~1.7x slower per step on CPU.
        built = threading.Event()
        self._build_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(built,), name="heron-engine", daemon=True
        )
        self._thread.start()
        built.wait()
        if self._build_error is not None:
            raise self._build_error

    def _run(self, built: threading.Event) -> None:
        try:
            self.engine = build_engine(self.engine_args)
        except BaseException as exc:
            self._build_error = exc
            built.set()
            return
        self.engine.set_failure_callback(self._wake_on_failure)
        built.set()
        self._loop()

    def _wake_on_failure(self, _error: Exception) -> None:
        """A worker rank died (from the executor's monitor thread): wake the loop, which raises
        it, so requests fail and ``dead_error`` is set even while the engine is idle."""
        with self._wake:
            self._wake.notify()

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> AsyncLLM:
        return cls(args)

    # -- facts the server needs ----------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def is_running(self) -> bool:
        return self.dead_error is None and not self._stopped

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def process_prompt(self, prompt: PromptType) -> ProcessedPrompt:
        return self.engine.input_processor.process_prompt(prompt)

    def render_chat(self, messages: ChatMessages, **kwargs: Any) -> ProcessedPrompt:
        return self.engine.input_processor.render_chat(messages, **kwargs)

    # -- requests ---------------------------------------------------------------------------------
    async def generate(
        self,
        prompt: PromptType | ProcessedPrompt,
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE,
    ) -> AsyncIterator[RequestOutput]:
        """Yield outputs as tokens arrive; leaving the loop early aborts the request."""
        if self.dead_error is not None:
            raise EngineDeadError("the engine has stopped") from self.dead_error
        if not isinstance(prompt, ProcessedPrompt):
            prompt = self.process_prompt(prompt)
        queue: asyncio.Queue = asyncio.Queue()
        rid = request_id or self.engine.next_request_id()
        prepared = self.engine.prepare_request(rid, prompt, sampling_params)
        with self._wake:
            if rid in self._queues:
                raise ValueError(f"request_id {rid!r} is already in use")
            self._queues[rid] = (asyncio.get_running_loop(), queue)
            self._pending.append((prepared, output_kind))
            self._wake.notify()
        self.engine.wakeup()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise EngineDeadError(str(item), in_flight=True) from item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        with self._wake:
            if self._queues.pop(request_id, None) is not None:
                self._pending_aborts.append(request_id)
                self._wake.notify()
        self.engine.wakeup()

    def abort_all(self) -> int:
        """Abort every running request so that its caller gets a last output with
        ``finish_reason == "abort"`` (a stream can then end properly); returns how many.

        The server calls this when its shutdown timeout is reached: cancelling the streams
        instead would cut their HTTP responses mid-body, with no final chunk for the client.
        """
        with self._wake:
            count = len(self._queues)
            if count:
                self._abort_all = True
                self._wake.notify()
        self.engine.wakeup()
        return count

    def shutdown(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self.engine.wakeup()
        self._thread.join(timeout=10)
        self.engine.shutdown()

    # -- embeddings (the pooling runner) ------------------------------------------------------
    def process_pooling_prompt(
        self, prompt: PromptType, params: PoolingParams | None = None
    ) -> ProcessedPrompt:
        """Tokenize and length-check one embedding input (blocking: call it off the event loop)."""
        pooling = getattr(self.engine, "pooling", None)
        if pooling is None:
            raise ValueError(
                "this model runs the generate runner, which returns no embeddings; start it with "
                "runner='pooling' (--runner pooling)"
            )
        return pooling.process(prompt, params or PoolingParams())

    async def encode(
        self,
        prompt: PromptType | ProcessedPrompt,
        pooling_params: PoolingParams | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[EmbeddingRequestOutput]:
        """Yield the input's pooled output (one, as vLLM's ``encode``); leaving early aborts."""
        if self.dead_error is not None:
            raise EngineDeadError("the engine has stopped") from self.dead_error
        queue: asyncio.Queue = asyncio.Queue()
        rid = request_id or self.engine.next_request_id()
        prepared = self.engine.prepare_pooling(rid, prompt, pooling_params)
        with self._wake:
            if rid in self._queues:
                raise ValueError(f"request_id {rid!r} is already in use")
            self._queues[rid] = (asyncio.get_running_loop(), queue)
            self._pending.append((prepared, RequestOutputKind.FINAL_ONLY))
            self._wake.notify()
        self.engine.wakeup()
        finished = False
        try:
            item = await queue.get()
            if isinstance(item, BaseException):
                raise EngineDeadError(str(item), in_flight=True) from item
            finished = True
            yield item
        finally:
            if not finished:
                self.abort(rid)

    async def embed(
        self,
        prompt: PromptType | ProcessedPrompt,
        pooling_params: PoolingParams | None = None,
        request_id: str | None = None,
    ) -> EmbeddingRequestOutput:
        """The input's embedding (``out.outputs.embedding``); raises if it was aborted."""
        async for output in self.encode(prompt, pooling_params, request_id):
            if output.outputs is None:
                raise RuntimeError(f"embedding request {output.request_id!r} was aborted")
            return output
        raise RuntimeError("the engine returned no embedding")

    # -- the loop ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while True:
                with self._wake:
                    self._wait_for_work()
                    if self._stopped:
                        return
                    pending, self._pending = self._pending, []
                    aborts, self._pending_aborts = self._pending_aborts, []
                    abort_all, self._abort_all = self._abort_all, False
                if self.engine.failure is not None:
                    raise self.engine.failure
                for prepared, kind in pending:
                    self.engine.add_prepared(prepared, kind)
                for rid in aborts:
                    self.engine.abort_request(rid)
                if abort_all:
                    self._deliver(self.engine.abort_all())
                self._deliver(self._step())
        except BaseException as exc:  # surface to every waiter instead of hanging them
            logger.exception("The engine loop stopped")
            self.dead_error = exc
            with self._lock:
                targets, self._queues = list(self._queues.values()), {}
            for loop, queue in targets:
                loop.call_soon_threadsafe(queue.put_nowait, exc)

    def _has_work(self) -> bool:
        return bool(
            self._stopped
            or self.engine.failure is not None
            or self._pending
            or self._pending_aborts
            or self._abort_all
            or self.engine.has_unfinished_requests()
        )

    def _wait_for_work(self) -> None:
        """Sleep (holding ``_wake``) until there is work; while idle, wake up once more when the
        stats logger's open interval is due, so the line that shows the load ended is written."""
        while not self._has_work():
            timeout = self._stats_logger.seconds_until_due() if self._stats_logger else None
            if not self._wake.wait(timeout) and self._stats_logger is not None:
                self._stats_logger.maybe_log(self.engine.stats)

    def _step(self) -> list[RequestOutput]:
        if not self.engine.has_unfinished_requests():
            return []
        stats_logger = self._stats_logger
        if stats_logger is not None:
            stats_logger.begin(self.engine.stats)
        outputs = self.engine.step()
        if stats_logger is not None:
            stats_logger.maybe_log(self.engine.stats)
        return outputs

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand outputs to their callers' event loops; a finished request's queue is dropped."""
        with self._lock:
            deliveries = [(self._queues.get(o.request_id), o) for o in outputs]
            for output in outputs:
                if output.finished:
                    self._queues.pop(output.request_id, None)
        for target, output in deliveries:
            if target is not None:
                loop, queue = target
                loop.call_soon_threadsafe(queue.put_nowait, output)
