"""The runner's sampling step when some requests carry draft tokens.

A request with ``k`` drafts has ``k + 1`` logit rows this step: row ``j`` predicts the token after
its last token plus ``drafts[:j]``. Each row becomes a sampling row whose output so far includes
those drafts, so logit bias, min_tokens and the penalties see exactly what they would see one step
at a time without speculation; the usual ``Sampler`` stages then process all rows of the batch at
once, and ``verify`` decides per request which drafts stay.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from heron.runner.sampler import (
    _GREEDY_EPSILON,
    SamplingBatch,
    SamplingRow,
    gather_logprobs,
    logprobs_to_compute,
)
from heron.sched.output import RunnerOutput, SchedulerOutput, TokenLogprobs
from heron.spec_decode.verify import rejection_sample, verify_greedy

if TYPE_CHECKING:
    from heron.runner.model_runner import TorchModelRunner


def sample_with_drafts(
    runner: TorchModelRunner,
    out: SchedulerOutput,
    query_start_loc: np.ndarray,
    hidden: torch.Tensor,
    result: RunnerOutput,
) -> None:
    """Verify every sampling request's drafts (none is fine) and fill ``result``.

    ``result.sampled`` / ``result.logprobs`` get each request's first token, as without
    speculation; ``result.more_sampled`` / ``more_logprobs`` the rest of an accepted run.
    """
    if out.grammar is not None:
        raise RuntimeError("structured outputs cannot be combined with speculative decoding")
    rows: list[SamplingRow] = []
    positions: list[int] = []
    spans: list[tuple[int, list[int]]] = []
    """Per sampling request: its first row and its drafts."""
    for i, s in enumerate(out.scheduled):
        if not s.samples:
            continue
        drafts = s.draft_token_ids
        base = runner._sampling_row(s)
        end = int(query_start_loc[i + 1])
        spans.append((len(rows), drafts))
        for j in range(len(drafts) + 1):
            outputs = base.output_token_ids + drafts[:j] if j else base.output_token_ids
            rows.append(dataclasses.replace(base, output_token_ids=outputs))
            positions.append(end - len(drafts) - 1 + j)
    if not rows:
        return
    index = torch.tensor(positions, dtype=torch.long, device=hidden.device)
    vocab = runner.vocab_size
    logits = runner.model.compute_logits(hidden[index])[:, :vocab].float()
    batch = SamplingBatch.build(rows, vocab, runner.device)
    processed = runner.sampler.process_logits(logits, batch)
    greedy_ids = processed.max(dim=-1).indices.tolist()  # the first maximum, as the sampler
    probs = None if batch.all_greedy else runner.sampler.sampling_probs(processed, batch)

    chosen_rows: list[int] = []
    chosen_ids: list[int] = []
    chosen_ks: list[int] = []
    for first, drafts in spans:
        row = rows[first]
        n = len(drafts) + 1
        if row.params.temperature < _GREEDY_EPSILON:
            emitted = verify_greedy(greedy_ids[first : first + n], drafts)
        else:
            assert probs is not None  # a random row makes the batch not all-greedy
            emitted = rejection_sample(probs[first : first + n], drafts, row.generator)
        result.sampled[row.request_id] = emitted[0]
        if len(emitted) > 1:
            result.more_sampled[row.request_id] = emitted[1:]
        k = logprobs_to_compute(row.params)
        if k is not None:
            chosen_rows.extend(range(first, first + len(emitted)))
            chosen_ids.extend(emitted)
            chosen_ks.extend([k] * len(emitted))
    if chosen_rows:
        _fill_logprobs(logits, rows, chosen_rows, chosen_ids, chosen_ks, result)


def _fill_logprobs(
    logits: torch.Tensor,
    rows: list[SamplingRow],
    chosen_rows: list[int],
    chosen_ids: list[int],
    chosen_ks: list[int],
    result: RunnerOutput,
) -> None:
    """Raw logprobs of each emitted token at its own row: the same numbers a step without
    speculation reports, since that row saw the same context."""
    raw = torch.log_softmax(logits[chosen_rows], dim=-1)
    tokens = torch.tensor(chosen_ids, dtype=torch.long, device=logits.device)
    entries = gather_logprobs(raw, tokens, chosen_ks)
    per_request: dict[str, list[TokenLogprobs]] = {}
    for row_index, entry in zip(chosen_rows, entries):
        per_request.setdefault(rows[row_index].request_id, []).append(entry)
    for request_id, run in per_request.items():
        result.logprobs[request_id] = run[0]
        if len(run) > 1:
            result.more_logprobs[request_id] = run[1:]
