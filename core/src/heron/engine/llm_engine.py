"""A synchronous engine: input processing, the engine core, and output processing in one object.

``LLM`` drives it to completion; ``AsyncLLM`` drives it from a background thread.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from heron.config import EngineArgs
from heron.engine.engine_core import EngineCore
from heron.engine.input_processor import InputProcessor, ProcessedPrompt, PromptType
from heron.engine.output_processor import OutputProcessor, RequestOutputKind
from heron.engine.stats_logger import EngineStats
from heron.outputs import RequestOutput
from heron.plugins import PluginHost
from heron.pooling.frontend import PackedEmbedding, PoolingFrontend, PreparedPooling
from heron.pooling.params import PoolingParams
from heron.request import Request, RequestStatus
from heron.sampling_params import SamplingParams
from heron.sched.output import RequestUpdate

logger = logging.getLogger(__name__)


@dataclass(slots=True, kw_only=True)
class PreparedRequest:
    """A validated request, ready to join the engine (possibly from another thread)."""

    request_id: str
    prompt: ProcessedPrompt
    params: SamplingParams
    requests: list[Request]


def prepare_request(
    input_processor: InputProcessor,
    check_request: Callable[[Request], None],
    request_id: str,
    prompt: PromptType | ProcessedPrompt,
    params: SamplingParams | None,
) -> PreparedRequest:
    """Tokenize, apply defaults, split ``n > 1`` into sequences and check each one; raises
    ValueError on bad input. Shared by the engine and the data-parallel front, which checks
    requests for its replicas before placing them."""
    processed = (
        prompt if isinstance(prompt, ProcessedPrompt) else input_processor.process_prompt(prompt)
    )
    params = input_processor.sampling_params(params)
    requests = input_processor.make_requests(request_id, processed, params)
    for request in requests:
        check_request(request)
    return PreparedRequest(
        request_id=request_id, prompt=processed, params=params, requests=requests
    )


class LLMEngine:
    def __init__(self, args: EngineArgs, *, host: PluginHost | None = None) -> None:
        self.args = args
        self.core = EngineCore(args, host=host)
        self.tokenizer = self.core.source.tokenizer
        self.max_model_len = self.core.max_model_len
        self.input_processor = InputProcessor(
            self.tokenizer,
            max_model_len=self.max_model_len,
            vocab_size=self.core.runner.vocab_size,
            generation_config=self.core.source.generation_config,
            use_generation_defaults=args.generation_config == "auto",
        )
        self.output_processor = OutputProcessor(self.tokenizer)
        self._ids = itertools.count()
        self.pooling = PoolingFrontend.for_core(self.core)
        """Input and output processing of embedding requests, when the engine pools; else None."""

    @property
    def model_name(self) -> str:
        return self.core.source.name

    @property
    def failure(self) -> Exception | None:
        """A worker rank's failure, once noticed; the engine cannot step after it."""
        return self.core.failure

    def set_failure_callback(self, callback: Callable[[Exception], None]) -> None:
        """``callback`` hears of a rank's failure as it is noticed, from another thread."""
        self.core.on_failure = callback

    def wakeup(self) -> None:
        """Return early from a :meth:`step` that waits for other processes; a step here never
        waits for anything but its own work, so there is nothing to interrupt."""

    def next_request_id(self) -> str:
        return str(next(self._ids))

    def prepare_request(
        self,
        request_id: str,
        prompt: PromptType | ProcessedPrompt,
        params: SamplingParams | None = None,
    ) -> PreparedRequest:
        """Every check a request must pass, without touching engine state (safe off-thread)."""
        return prepare_request(
            self.input_processor, self.core.scheduler.check_request, request_id, prompt, params
        )

    def add_prepared(
        self,
        prepared: PreparedRequest,
        output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY,
    ) -> None:
        if isinstance(prepared, PreparedPooling):
            self._add_pooling(prepared)
            return
        self.output_processor.add_request(
            prepared.request_id,
            prepared.prompt.prompt,
            prepared.prompt.prompt_token_ids,
            prepared.params,
            [r.request_id for r in prepared.requests],
            output_kind,
        )
        for request in prepared.requests:
            self.core.add_request(request)

    def add_prepared_many(
        self,
        items: list[PreparedRequest] | list[PreparedPooling],
        output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY,
    ) -> None:
        """:meth:`add_prepared` of each, in order (a data-parallel front sends them together)."""
        for prepared in items:
            self.add_prepared(prepared, output_kind)

    def add_request(
        self,
        request_id: str,
        prompt: PromptType | ProcessedPrompt,
        params: SamplingParams | None = None,
        output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY,
    ) -> None:
        """Validate and queue one request; raises (and queues nothing) on bad input."""
        self.add_prepared(self.prepare_request(request_id, prompt, params), output_kind)

    def prepare_pooling(
        self, request_id: str, prompt: PromptType | ProcessedPrompt, params: PoolingParams | None
    ) -> PreparedPooling:
        """An embedding request's checks (safe off-thread); the engine must run the pooling
        runner."""
        if self.pooling is None:
            raise ValueError(
                "this model runs the generate runner, which returns no embeddings; start it with "
                "runner='pooling' (--runner pooling)"
            )
        check = self.core.scheduler.check_pooling_request  # type: ignore[attr-defined]
        return self.pooling.prepare(request_id, prompt, params, check)

    def _add_pooling(self, prepared: PreparedPooling) -> None:
        if self.pooling is None:
            raise RuntimeError("a pooling request reached an engine that does not pool")
        self.pooling.add(prepared)
        self.core.add_request(prepared.request)

    def abort_request(self, request_id: str) -> None:
        if self.pooling is not None and self.pooling.forget(request_id):
            self.core.abort_requests([request_id])
            return
        child_ids = self.output_processor.abort(request_id)
        self.core.abort_requests(child_ids)

    def abort_all(self) -> list[RequestOutput]:
        """Abort every unfinished request and return each one's final output
        (``finish_reason == "abort"``, with any text not yet reported).

        Unlike :meth:`abort_request`, whose caller has already gone, this is for callers that are
        still listening, such as streams cut by a server shutdown: they get a last output to end
        on instead of silence.
        """
        children = self.core.unfinished_requests()  # grammar-compiling ones too
        self.core.abort_requests([r.request_id for r in children])
        updates = [RequestUpdate(request=r, finished=True) for r in children]
        if self.pooling is not None:  # embeddings without a vector: aborted
            return self.pooling.outputs(updates)
        return self.output_processor.process(updates).request_outputs

    def shutdown(self) -> None:
        """Stop the worker processes of a tensor-parallel engine; nothing to do for one rank."""
        self.core.shutdown()

    def step(self) -> list[RequestOutput]:
        updates = self.core.step()
        if not updates:
            return []
        if self.pooling is not None:  # a pooling engine runs only embedding requests
            return self.pooling.outputs(updates)
        processed = self.output_processor.process(updates)
        if processed.to_abort:
            self.core.finish_requests(processed.to_abort, RequestStatus.FINISHED_STOPPED)
        return processed.request_outputs

    def poll(self) -> list[RequestOutput]:
        """Outputs ready without waiting: none, since this engine computes only in
        :meth:`step` (a data-parallel front returns what its replicas have sent)."""
        return []

    def step_packed(self) -> list[PackedEmbedding]:
        """A pooling engine's :meth:`step` in the form a data-parallel replica sends its front:
        (request id, float32 bytes) per finished embedding, no output objects built."""
        if self.pooling is None:
            raise RuntimeError("step_packed is for an engine that pools")
        updates = self.core.step()
        return self.pooling.packed_outputs(updates) if updates else []

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def stats(self) -> EngineStats:
        return self.core.stats()
