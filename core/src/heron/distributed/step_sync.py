"""What a worker process learns of each step: the scheduler's decisions, not model inputs.

Every rank runs the same runner code on the same ``SchedulerOutput``; the driver owns the real
``Request`` objects, and each worker keeps a mirror of the requests it has seen. A request's
prompt and sampling parameters cross the pipe once, when it is first scheduled; after that a step
carries, per scheduled request, only its position (computed tokens, new tokens), its block table
and the output tokens sampled since the last step it was in. Each worker then builds its own
input tensors, so no tensor is pickled and the message stays small at decode time.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from heron.request import Request, RequestStatus
from heron.sampling_params import SamplingParams
from heron.sched.output import ScheduledRequest, SchedulerOutput

if typing.TYPE_CHECKING:
    from heron.structured_outputs.manager import GrammarStep


@dataclass(slots=True, kw_only=True)
class NewRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int]


@dataclass(slots=True, kw_only=True)
class ScheduledUpdate:
    request_id: str
    num_computed_tokens: int
    num_new_tokens: int
    block_ids: list[int]
    new_output_token_ids: list[int]
    draft_token_ids: list[int] = field(default_factory=list)
    """Speculative drafts this step verifies (the last of ``num_new_tokens``)."""


@dataclass(slots=True, kw_only=True)
class StepMessage:
    new_requests: list[NewRequest] = field(default_factory=list)
    scheduled: list[ScheduledUpdate] = field(default_factory=list)
    released_ids: list[str] = field(default_factory=list)
    """Requests that finished since the last step: workers forget their mirrors and state."""
    grammar: GrammarStep | None = None
    """The step's structured-outputs token mask (only when some request follows a grammar): the
    rank that samples (the last pipeline stage) may be a worker."""


class StepEncoder:
    """Driver side: turns each ``SchedulerOutput`` into the message the workers need."""

    def __init__(self) -> None:
        self._outputs_sent: dict[str, int] = {}
        self._released: list[str] = []

    def release(self, request_ids: list[str]) -> None:
        """Remember finished requests; the next message tells the workers."""
        for rid in request_ids:
            if self._outputs_sent.pop(rid, None) is not None:
                self._released.append(rid)

    def encode(self, out: SchedulerOutput) -> StepMessage:
        message = StepMessage(released_ids=self._released, grammar=out.grammar)
        self._released = []
        for item in out.scheduled:
            request = item.request
            rid = request.request_id
            sent = self._outputs_sent.get(rid)
            if sent is None:
                message.new_requests.append(
                    NewRequest(
                        request_id=rid,
                        prompt_token_ids=request.prompt_token_ids,
                        sampling_params=request.sampling_params,
                        eos_token_ids=request.eos_token_ids,
                    )
                )
                sent = 0
            outputs = request.output_token_ids
            message.scheduled.append(
                ScheduledUpdate(
                    request_id=rid,
                    num_computed_tokens=request.num_computed_tokens,
                    num_new_tokens=item.num_new_tokens,
                    block_ids=list(request.block_ids),
                    new_output_token_ids=outputs[sent:],
                    draft_token_ids=item.draft_token_ids,
                )
            )
            self._outputs_sent[rid] = len(outputs)
        return message


class StepDecoder:
    """Worker side: applies each message to the mirrors and rebuilds the ``SchedulerOutput``."""

    def __init__(self) -> None:
        self.requests: dict[str, Request] = {}

    def decode(self, message: StepMessage) -> SchedulerOutput:
        for rid in message.released_ids:
            self.requests.pop(rid, None)
        for new in message.new_requests:
            self.requests[new.request_id] = Request(
                request_id=new.request_id,
                prompt_token_ids=new.prompt_token_ids,
                sampling_params=new.sampling_params,
                eos_token_ids=new.eos_token_ids,
                status=RequestStatus.RUNNING,
            )
        out = SchedulerOutput(grammar=message.grammar)
        for update in message.scheduled:
            request = self.requests[update.request_id]
            request.output_token_ids.extend(update.new_output_token_ids)
            request.num_computed_tokens = update.num_computed_tokens
            request.block_ids = update.block_ids
            out.scheduled.append(
                ScheduledRequest(
                    request=request,
                    num_new_tokens=update.num_new_tokens,
                    draft_token_ids=update.draft_token_ids,
                )
            )
            out.num_scheduled_tokens += update.num_new_tokens
        return out
