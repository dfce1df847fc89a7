"""Turns per-sequence engine updates into user-level ``RequestOutput``s.

A user request with ``n > 1`` or ``best_of`` runs as several engine requests ("children", one per
sequence, ids chosen by the caller). This module owns what only text knows about: incremental
detokenization and stop strings (a child that hit one is reported back in ``to_abort`` so the
scheduler frees it), decoded logprob entries, the cumulative logprob, and when and how much to
emit for each ``RequestOutputKind``.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from dataclasses import dataclass, field
from typing import Any

from heron.engine.detokenizer import IncrementalDetokenizer, decode_token
from heron.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from heron.request import RequestStatus
from heron.runner.sampler import logprobs_to_compute
from heron.sampling_params import SamplingParams
from heron.sched.output import RequestUpdate, TokenLogprobs


class RequestOutputKind(enum.Enum):
    """How much each emitted ``RequestOutput`` carries (as vLLM's enum of the same name).

    CUMULATIVE: everything so far, for every sequence, whenever one of them changed.
    DELTA: only what is new since the last output, only for the sequences that changed (streaming
    servers). FINAL_ONLY: one output when all sequences finished (``LLM.generate``).
    """

    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass(slots=True)
class ProcessedOutputs:
    request_outputs: list[RequestOutput] = field(default_factory=list)
    to_abort: list[str] = field(default_factory=list)
    """Child ids that finished on a stop string: the scheduler must finish them (as "stop")."""


@dataclass(slots=True, eq=False)
class _Sequence:
    child_id: str
    index: int
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] | None = None
    cumulative_logprob: float | None = None
    """None when not computed (vLLM: only with logprobs or best_of), or once a token arrived
    without its logprob."""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    changed: bool = False
    num_sent_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True, eq=False)
class _UserRequest:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    kind: RequestOutputKind
    sequences: dict[str, _Sequence]
    metrics: RequestMetrics
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    prompt_logprobs_source: str | None = None
    num_sent_prompt_logprobs: int = 0
    num_cached_tokens: int | None = None
    num_unfinished: int = 0

    @property
    def selects_best(self) -> bool:
        return self.params.best_of is not None and self.params.best_of > self.params.n


class OutputProcessor:
    """Tracks user requests between ``add_request`` and their final output (or ``abort``)."""

    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer
        """None when the engine runs without a tokenizer: texts stay empty."""
        self._requests: dict[str, _UserRequest] = {}
        self._parent_of: dict[str, str] = {}
        self._token_text: dict[int, str] = {}
        """Decoded text of single tokens for logprob entries (bounded by the vocabulary)."""

    # -- bookkeeping ------------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        child_ids: list[str],
        output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY,
    ) -> None:
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if len(child_ids) != params.num_sequences or len(set(child_ids)) != len(child_ids):
            raise ValueError(
                f"request {request_id!r} needs {params.num_sequences} distinct child ids, "
                f"got {child_ids}"
            )
        clash = [c for c in child_ids if c in self._parent_of]
        if clash:
            raise ValueError(f"child request id {clash[0]!r} is already in use")
        sequences = {
            cid: _Sequence(
                child_id=cid,
                index=i,
                detokenizer=self._detokenizer(prompt_token_ids, params),
                logprobs=[] if params.logprobs is not None else None,
                cumulative_logprob=None if logprobs_to_compute(params) is None else 0.0,
            )
            for i, cid in enumerate(child_ids)
        }
        self._requests[request_id] = _UserRequest(
            request_id=request_id,
            prompt=prompt,
            prompt_token_ids=prompt_token_ids,
            params=params,
            kind=output_kind,
            sequences=sequences,
            metrics=RequestMetrics(arrival_time=time.monotonic()),
            prompt_logprobs=[] if params.prompt_logprobs is not None else None,
            num_unfinished=len(child_ids),
        )
        for cid in child_ids:
            self._parent_of[cid] = request_id

    def _detokenizer(
        self, prompt_token_ids: list[int], params: SamplingParams
    ) -> IncrementalDetokenizer | None:
        if self.tokenizer is None or not params.detokenize:
            return None  # no text, so no stop strings either (as in vLLM)
        return IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params)

    def abort(self, request_id: str) -> list[str]:
        """Forget a user request; returns its unfinished child ids for the scheduler to abort."""
        req = self._requests.pop(request_id, None)
        if req is None:
            return []
        for cid in req.sequences:
            self._parent_of.pop(cid, None)
        return [cid for cid, seq in req.sequences.items() if not seq.finished]

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    @property
    def num_unfinished(self) -> int:
        return len(self._requests)

    # -- per step ---------------------------------------------------------------------------------
    def process(self, updates: list[RequestUpdate]) -> ProcessedOutputs:
        """Apply one step's updates; at most one ``RequestOutput`` per user request."""
        result = ProcessedOutputs()
        touched: dict[str, _UserRequest] = {}
        now = time.monotonic()
        for update in updates:
            child_id = update.request.request_id
            parent = self._parent_of.get(child_id)
            if parent is None:
                continue  # aborted, or an update racing the stop string we already reported
            req = self._requests[parent]
            seq = req.sequences[child_id]
            if seq.finished:
                continue
            self._apply(req, seq, update, result.to_abort)
            if seq.changed:
                if req.metrics.first_token_time is None and seq.token_ids:
                    req.metrics.first_token_time = now
                req.metrics.last_token_time = now
            touched[parent] = req
        for req in touched.values():
            finished = req.num_unfinished == 0
            if finished:
                req.metrics.finished_time = now
            output = self._make_output(req, finished)
            if output is not None:
                result.request_outputs.append(output)
            if finished:
                self.abort(req.request_id)
        return result

    def _apply(
        self, req: _UserRequest, seq: _Sequence, update: RequestUpdate, to_abort: list[str]
    ) -> None:
        engine_request = update.request
        if req.num_cached_tokens is None and engine_request.num_cached_tokens >= 0:
            req.num_cached_tokens = engine_request.num_cached_tokens
        # Every child computes the same prompt; report one child's entries, in order.
        if (
            update.prompt_logprobs
            and req.prompt_logprobs is not None
            and req.prompt_logprobs_source in (None, seq.child_id)
        ):
            req.prompt_logprobs_source = seq.child_id
            req.prompt_logprobs.extend(
                None if lp is None else self._logprob_entry(lp) for lp in update.prompt_logprobs
            )

        status = engine_request.status
        new_ids = update.new_token_ids
        stop_string = None
        if seq.detokenizer is not None:
            stop_string = seq.detokenizer.update(
                new_ids,
                finished=update.finished,
                stop_terminated=update.finished and status is RequestStatus.FINISHED_STOPPED,
            )
            # Tokens after the one that completed a stop string are dropped.
            new_ids = new_ids[: len(seq.detokenizer.output_token_ids) - len(seq.token_ids)]
        seq.token_ids.extend(new_ids)
        self._add_logprobs(seq, update.new_logprobs, len(new_ids))
        seq.changed = seq.changed or bool(new_ids)

        if stop_string is not None:
            seq.finish_reason, seq.stop_reason = "stop", stop_string
            if not update.finished:
                to_abort.append(seq.child_id)
        elif update.finished:
            seq.finish_reason = status.value if status.is_finished else "abort"
            if status is RequestStatus.FINISHED_STOPPED:
                seq.stop_reason = engine_request.stop_reason
        if seq.finished:
            seq.changed = True
            req.num_unfinished -= 1

    def _add_logprobs(self, seq: _Sequence, logprobs: list[TokenLogprobs], count: int) -> None:
        if count == 0:
            return
        if len(logprobs) < count:
            # Missing logprobs make the sum meaningless: report None rather than a partial sum.
            seq.cumulative_logprob = None
            seq.logprobs = None
            return
        for lp in logprobs[:count]:
            if seq.cumulative_logprob is not None:
                seq.cumulative_logprob += lp.logprob
            if seq.logprobs is not None:
                seq.logprobs.append(self._logprob_entry(lp))

    def _logprob_entry(self, lp: TokenLogprobs) -> dict[int, Logprob]:
        """vLLM's layout: the chosen token first, then the top-k not already present."""
        entry = {lp.token_id: Logprob(lp.logprob, lp.rank, self._decoded(lp.token_id))}
        for rank, (token_id, value) in enumerate(lp.top, start=1):
            if token_id not in entry:
                entry[token_id] = Logprob(value, rank, self._decoded(token_id))
        return entry

    def _decoded(self, token_id: int) -> str | None:
        if self.tokenizer is None:
            return None
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = decode_token(self.tokenizer, token_id)
        return text

    # -- emitting ---------------------------------------------------------------------------------
    def _make_output(self, req: _UserRequest, finished: bool) -> RequestOutput | None:
        kind = req.kind
        if req.selects_best:
            # Which n sequences are returned is only known at the end, so nothing streams.
            kind = RequestOutputKind.FINAL_ONLY
        if kind is RequestOutputKind.FINAL_ONLY:
            if not finished:
                return None
            chosen = self._final_sequences(req)
            outputs = [self._completion(s, i, delta=False) for i, s in enumerate(chosen)]
        elif kind is RequestOutputKind.CUMULATIVE:
            if not any(s.changed for s in req.sequences.values()):
                return None
            outputs = [self._completion(s, s.index, False) for s in req.sequences.values()]
        else:
            changed = [s for s in req.sequences.values() if s.changed]
            if not changed:
                return None
            outputs = [self._completion(s, s.index, delta=True) for s in changed]
        for seq in req.sequences.values():
            seq.changed = False
        return RequestOutput(
            request_id=req.request_id,
            prompt=req.prompt,
            prompt_token_ids=req.prompt_token_ids,
            prompt_logprobs=self._prompt_logprobs(req, delta=kind is RequestOutputKind.DELTA),
            outputs=outputs,
            finished=finished,
            num_cached_tokens=max(req.num_cached_tokens or 0, 0),
            metrics=dataclasses.replace(req.metrics),  # a snapshot: later steps update ours
        )

    @staticmethod
    def _final_sequences(req: _UserRequest) -> list[_Sequence]:
        """All sequences in index order; with best_of > n, the n with the highest cumulative
        logprob (vLLM's rule; ties keep index order, a missing logprob ranks last)."""
        sequences = list(req.sequences.values())
        if not req.selects_best:
            return sequences
        ranked = sorted(
            sequences,
            key=lambda s: -math.inf if s.cumulative_logprob is None else s.cumulative_logprob,
            reverse=True,
        )
        return ranked[: req.params.n]

    @staticmethod
    def _completion(seq: _Sequence, index: int, delta: bool) -> CompletionOutput:
        detok = seq.detokenizer
        if delta:
            text = detok.get_delta_text() if detok is not None else ""
            start = seq.num_sent_tokens
            seq.num_sent_tokens = len(seq.token_ids)
        else:
            text = (
                "" if detok is None else detok.output_text if seq.finished else detok.visible_text
            )
            start = 0
        return CompletionOutput(
            index=index,
            text=text,
            token_ids=seq.token_ids[start:],
            cumulative_logprob=seq.cumulative_logprob,
            logprobs=None if seq.logprobs is None else seq.logprobs[start:],
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
        )

    @staticmethod
    def _prompt_logprobs(req: _UserRequest, delta: bool) -> list[dict[int, Logprob] | None] | None:
        if req.prompt_logprobs is None:
            return None
        if not delta:
            return list(req.prompt_logprobs)
        new = req.prompt_logprobs[req.num_sent_prompt_logprobs :]
        req.num_sent_prompt_logprobs = len(req.prompt_logprobs)
        return new
