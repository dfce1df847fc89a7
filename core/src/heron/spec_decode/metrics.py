"""Acceptance counters, named as vLLM names them (``spec_decode_num_drafts`` and so on).

Counted from what the verification step returned, before stop conditions cut a run short, as
vLLM counts: they measure the proposer, not the requests' lengths.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heron.sched.output import RunnerOutput, SchedulerOutput


@dataclass(slots=True)
class SpecDecodeCounters:
    num_speculative_tokens: int
    num_drafts: int = 0
    """Verification steps of a request that had at least one draft token."""
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)
    """[k]: how often the draft token at position i was accepted."""

    def __post_init__(self) -> None:
        if not self.accepted_per_pos:
            self.accepted_per_pos = [0] * self.num_speculative_tokens

    def observe(self, out: SchedulerOutput, runner_out: RunnerOutput) -> None:
        for item in out.scheduled:
            drafts = item.draft_token_ids
            if not drafts:
                continue
            rid = item.request.request_id
            if rid not in runner_out.sampled:
                continue  # finished while the step ran
            accepted = len(runner_out.more_sampled.get(rid, ()))
            self.num_drafts += 1
            self.num_draft_tokens += len(drafts)
            self.num_accepted_tokens += accepted
            for pos in range(accepted):
                self.accepted_per_pos[pos] += 1

    def snapshot(self) -> SpecDecodeCounters:
        return SpecDecodeCounters(
            num_speculative_tokens=self.num_speculative_tokens,
            num_drafts=self.num_drafts,
            num_draft_tokens=self.num_draft_tokens,
            num_accepted_tokens=self.num_accepted_tokens,
            accepted_per_pos=list(self.accepted_per_pos),
        )


def sum_counters(counters: list[SpecDecodeCounters | None]) -> SpecDecodeCounters | None:
    """Several engines' counters added up (data-parallel replicas); None when none speculates."""
    known = [c for c in counters if c is not None]
    if not known:
        return None
    width = max(c.num_speculative_tokens for c in known)
    per_pos = [0] * width
    for c in known:
        for pos, count in enumerate(c.accepted_per_pos):
            per_pos[pos] += count
    return SpecDecodeCounters(
        num_speculative_tokens=width,
        num_drafts=sum(c.num_drafts for c in known),
        num_draft_tokens=sum(c.num_draft_tokens for c in known),
        num_accepted_tokens=sum(c.num_accepted_tokens for c in known),
        accepted_per_pos=per_pos,
    )
