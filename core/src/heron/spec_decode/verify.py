"""Which draft tokens a request keeps: greedy verification and rejection sampling.

Both return the accepted prefix of the draft followed by one token of the target's own (the
correction at the first rejected position, or the bonus token after a fully accepted draft), so a
verification step always yields at least the token a step without speculation would have.
"""

from __future__ import annotations

import torch


def verify_greedy(target_ids: list[int], draft_ids: list[int]) -> list[int]:
    """Greedy: keep drafts while they equal the target's argmax at their position.

    ``target_ids[j]`` is the target's choice after the context plus ``draft_ids[:j]``
    (``len(draft_ids) + 1`` entries), so the result is exactly what greedy decoding without
    speculation would emit, one token per step.
    """
    if len(target_ids) != len(draft_ids) + 1:
        raise ValueError(f"{len(target_ids)} target tokens for {len(draft_ids)} drafts")
    emitted: list[int] = []
    for target, draft in zip(target_ids, draft_ids):
        emitted.append(target)
        if target != draft:
            return emitted
    emitted.append(target_ids[-1])
    return emitted


def rejection_sample(
    probs: torch.Tensor, draft_ids: list[int], generator: torch.Generator | None = None
) -> list[int]:
    """Sample from the target's distributions while reusing as many drafts as the law allows.

    ``probs[j]`` ([len(draft_ids) + 1, V]) is the target's sampling distribution after the context
    plus ``draft_ids[:j]``. A draft proposed with probability q(x) is accepted with probability
    min(1, p(x) / q(x)); on rejection a token is drawn from max(0, p - q), renormalised. Prompt
    lookup and greedy draft models propose deterministically, q is a point mass on the draft, so
    the draft is accepted with probability p(x) and a rejection draws from p with x removed:
    every emitted token is then distributed exactly as the target's own sample (the standard
    speculative sampling argument), whatever the drafts were.
    """
    k = len(draft_ids)
    if probs.dim() != 2 or probs.shape[0] != k + 1:
        raise ValueError(f"probs {tuple(probs.shape)} do not match {k} drafts")
    accepted = k
    if k:
        drafts = torch.tensor(draft_ids, dtype=torch.long, device=probs.device)
        p_draft = probs[torch.arange(k, device=probs.device), drafts]
        uniform = torch.rand(k, generator=generator, device=probs.device)
        rejected = (uniform >= p_draft).tolist()
        accepted = rejected.index(True) if True in rejected else k
    if accepted < k:
        final = probs[accepted].clone()
        final[draft_ids[accepted]] = 0.0  # max(0, p - q) for a point mass q on the draft
    else:
        final = probs[k]
    return [*draft_ids[:accepted], sample_one(final, generator)]


def sample_one(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One draw from unnormalised ``probs`` ([V]): argmax(p / e) with e ~ Exp(1), the sampler's
    exponential race (no normalisation or cumulative sum needed)."""
    noise = torch.empty_like(probs, dtype=torch.float32).uniform_(generator=generator)
    noise.log_().neg_()
    return int((probs.float() / noise).argmax())
