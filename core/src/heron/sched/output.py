"""What the scheduler hands the runner each step, and what the runner hands back.

Uniprocess execution passes the ``Request`` objects themselves (as nano-vllm does); the runner only
reads them. A multi-process executor would send ``ScheduledRequest`` snapshots instead.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from heron.request import Request

if typing.TYPE_CHECKING:
    from heron.structured_outputs.manager import GrammarStep


@dataclass(slots=True, kw_only=True)
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    """Tokens computed this step, starting at ``request.num_computed_tokens`` (drafts included)."""
    draft_token_ids: list[int] = field(default_factory=list)
    """Speculative decoding: proposed tokens computed after the request's last token this step
    (the last ``len(draft_token_ids)`` of ``num_new_tokens``); not yet the request's tokens."""

    @property
    def start(self) -> int:
        return self.request.num_computed_tokens

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the known tokens, so a new token is sampled."""
        return self.start + self.num_new_tokens >= self.request.num_tokens


@dataclass(slots=True, kw_only=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    """Decodes first, then prefills (in scheduling order)."""
    preempted_ids: list[str] = field(default_factory=list)
    num_scheduled_tokens: int = 0
    grammar: GrammarStep | None = None
    """The token mask of the rows that sample this step, when some follow a grammar (set by the
    engine core beside the scheduler, which knows nothing of grammars)."""

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass(slots=True, kw_only=True)
class TokenLogprobs:
    """Logprob of the chosen token plus the top-k alternatives (token id -> logprob, rank)."""

    token_id: int
    logprob: float
    rank: int
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class RunnerOutput:
    sampled: dict[str, int] = field(default_factory=dict)
    """request_id -> new token, for requests whose step ended in a sample."""
    more_sampled: dict[str, list[int]] = field(default_factory=dict)
    """Speculative decoding: request_id -> the tokens after ``sampled``'s in an accepted run
    (accepted drafts, then the target's own token); absent when no draft was accepted."""
    more_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
    """Parallel to ``more_sampled``, for requests that asked for logprobs."""
    logprobs: dict[str, TokenLogprobs] = field(default_factory=dict)
    prompt_logprobs: dict[str, list[TokenLogprobs | None]] = field(default_factory=dict)
    """request_id -> logprobs of the prompt tokens covered this step (None for the first token)."""
    pooled: dict[str, Any] = field(default_factory=dict)
    """request_id -> pooled hidden state (a float32 tensor), from the pooling runner."""


@dataclass(slots=True, kw_only=True)
class RequestUpdate:
    """What one step changed for one request, as the scheduler reports it to the engine."""

    request: Request
    new_token_ids: list[int] = field(default_factory=list)
    new_logprobs: list[TokenLogprobs] = field(default_factory=list)
    """Parallel to ``new_token_ids`` when the request asked for logprobs, else empty."""
    prompt_logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    finished: bool = False
    pooled: Any = None
    """The pooled vector of a pooling request (a float32 tensor), with ``finished``."""
