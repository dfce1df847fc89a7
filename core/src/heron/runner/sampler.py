"""Batched token sampling on the device: one set of tensor ops per step for the whole batch.

The order of the stages follows vLLM V1's ``Sampler`` so that the same ``SamplingParams`` give the
same distributions:

1. logprobs of the **raw** model logits (vLLM V1's default ``logprobs_mode="raw_logprobs"``: what
   the model thinks, before bias, penalties, temperature or truncation) for rows that asked;
2. logit bias, then min_tokens (EOS — unless ``ignore_eos`` — and ``stop_token_ids`` get -inf while
   the output is shorter than ``min_tokens``); both change the argmax, so they apply to greedy rows;
3. penalties: repetition (over prompt + output; positive logits divided, negative multiplied),
   frequency and presence (over output tokens only);
4. greedy rows (temperature < 1e-5) take the argmax of these processed logits;
5. random rows: temperature, min_p (relative to the most likely token), top-k, top-p, softmax, then
   the exponential race ``argmax(p / q), q ~ Exp(1)`` — an exact sample of ``p`` that needs no
   cumulative sum and lets each row use its own random stream.

Each stage is skipped when no row of the batch needs it, so a plain greedy batch costs one argmax.
Rows with a ``torch.Generator`` draw their noise from it alone, which makes seeded sampling
independent of the other requests in the batch; all other rows share one batched draw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from heron.sampling_params import SamplingParams
from heron.sched.output import TokenLogprobs

_GREEDY_EPSILON = 1e-5

_ToTensor = Callable[[list[Any], torch.dtype], torch.Tensor]


def logprobs_to_compute(params: SamplingParams) -> int | None:
    """How many top alternatives a row needs, or None when it needs no logprobs at all.

    ``best_of > n`` needs the chosen token's logprob even if the user asked for none: the output
    processor ranks the candidate sequences by their cumulative logprob (vLLM's semantics).
    """
    if params.logprobs is not None:
        return params.logprobs
    if params.best_of is not None and params.best_of > params.n:
        return 0
    return None


@dataclass(slots=True)
class SamplingRow:
    """One request's view for one sampling step (a row of the logits)."""

    request_id: str
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    generator: torch.Generator | None = None
    eos_token_ids: frozenset[int] = frozenset()


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprobs | None]
    """Per row: the chosen token's raw logprob, rank and top-k, or None when not requested."""


@dataclass(slots=True, kw_only=True)
class SamplingBatch:
    """Device tensors for one step; a field is None when no row of the batch needs that stage."""

    num_rows: int
    vocab_size: int
    all_greedy: bool
    greedy_mask: torch.Tensor | None = None
    """[N] bool, only when greedy and random rows are mixed."""
    temperature: torch.Tensor | None = None
    """[N, 1] float; 1.0 on greedy rows (their random result is discarded)."""
    min_p: torch.Tensor | None = None
    top_k: torch.Tensor | None = None
    """[N] long in [1, V]; V where top-k is off."""
    max_top_k: int = 0
    top_p: torch.Tensor | None = None
    top_p_within_top_k: bool = False
    """Every row with top-p also has top-k: the nucleus can be searched among max_top_k tokens."""
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """(rows, token ids, values) of every row's logit_bias."""
    min_tokens_mask: tuple[torch.Tensor, torch.Tensor] | None = None
    """(rows, token ids) set to -inf because the row has not reached min_tokens yet."""
    repetition_penalty: torch.Tensor | None = None
    """[N, 1]; applied once to each token of ``seen_ids``."""
    seen_ids: torch.Tensor | None = None
    """[N, L] prompt + output tokens of each row, padded with the row's own first token."""
    frequency_penalty: torch.Tensor | None = None
    presence_penalty: torch.Tensor | None = None
    output_ids: torch.Tensor | None = None
    """[N, L] output tokens, padded with the row's own first output token."""
    output_valid: torch.Tensor | None = None
    """[N, L] float: 1 for real entries of ``output_ids``, 0 for padding."""
    generators: dict[int, torch.Generator] = field(default_factory=dict)
    """Row -> its own generator, for random rows with a seed."""
    has_unseeded_random: bool = False
    logprob_rows: list[int] = field(default_factory=list)
    logprob_ks: list[int] = field(default_factory=list)
    """Parallel to ``logprob_rows``: how many top alternatives each wants."""

    @property
    def plain_greedy(self) -> bool:
        """Every row takes the argmax of the raw logits: nothing changes them, no logprobs."""
        return (
            self.all_greedy
            and not self.logprob_rows
            and self.bias is None
            and self.min_tokens_mask is None
            and self.seen_ids is None
            and self.output_ids is None
        )

    @classmethod
    def build(
        cls, rows: list[SamplingRow], vocab_size: int, device: torch.device | str
    ) -> SamplingBatch:
        """Gather the rows' parameters into tensors: once per step, one host-to-device copy each."""
        n = len(rows)
        params = [r.params for r in rows]
        greedy = [p.temperature < _GREEDY_EPSILON for p in params]
        random_rows = [i for i, g in enumerate(greedy) if not g]
        batch = cls(num_rows=n, vocab_size=vocab_size, all_greedy=not random_rows)

        def tensor(values: list[Any], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        if random_rows:
            if len(random_rows) < n:
                batch.greedy_mask = tensor(greedy, torch.bool)
            temps = [1.0 if g else p.temperature for g, p in zip(greedy, params)]
            batch.temperature = tensor(temps, torch.float32).unsqueeze(1)
            rand = list(zip(greedy, params))
            if any(not g and p.min_p > 0.0 for g, p in rand):
                batch.min_p = tensor([0.0 if g else p.min_p for g, p in rand], torch.float32)
            ks = [vocab_size if g or p.top_k <= 0 else min(p.top_k, vocab_size) for g, p in rand]
            if any(k < vocab_size for k in ks):
                batch.top_k = tensor(ks, torch.long)
                batch.max_top_k = max(k for k in ks if k < vocab_size)
            if any(not g and p.top_p < 1.0 for g, p in rand):
                batch.top_p = tensor([1.0 if g else p.top_p for g, p in rand], torch.float32)
                batch.top_p_within_top_k = all(
                    k < vocab_size for k, (g, p) in zip(ks, rand) if not g and p.top_p < 1.0
                )
            for i in random_rows:
                gen = rows[i].generator
                if gen is None:
                    batch.has_unseeded_random = True
                else:
                    batch.generators[i] = gen

        _build_bias_and_min_tokens(batch, rows, tensor)
        _build_penalties(batch, rows, tensor)

        for i, p in enumerate(params):
            k = logprobs_to_compute(p)
            if k is not None:
                batch.logprob_rows.append(i)
                batch.logprob_ks.append(k)
        return batch


def _build_bias_and_min_tokens(
    batch: SamplingBatch, rows: list[SamplingRow], tensor: _ToTensor
) -> None:
    b_rows: list[int] = []
    b_ids: list[int] = []
    b_vals: list[float] = []
    m_rows: list[int] = []
    m_ids: list[int] = []
    for i, r in enumerate(rows):
        p = r.params
        for token, value in (p.logit_bias or {}).items():
            if token < batch.vocab_size:
                b_rows.append(i)
                b_ids.append(token)
                b_vals.append(value)
        if len(r.output_token_ids) < p.min_tokens:
            banned = set(p.stop_token_ids or ())
            if not p.ignore_eos:
                banned |= r.eos_token_ids
            banned = {t for t in banned if t < batch.vocab_size}
            m_rows.extend([i] * len(banned))
            m_ids.extend(sorted(banned))
    if b_rows:
        batch.bias = (
            tensor(b_rows, torch.long),
            tensor(b_ids, torch.long),
            tensor(b_vals, torch.float32),
        )
    if m_rows:
        batch.min_tokens_mask = (tensor(m_rows, torch.long), tensor(m_ids, torch.long))


def _build_penalties(batch: SamplingBatch, rows: list[SamplingRow], tensor: _ToTensor) -> None:
    """Token lists for sparse penalties: gathers and scatters over the tokens a row has seen
    instead of several passes over [N, V] (the vocabulary is far larger than a context)."""
    rep: list[float] = []
    seen: list[list[int]] = []
    freq: list[float] = []
    pres: list[float] = []
    outputs: list[list[int]] = []
    for r in rows:
        p = r.params
        tokens = r.prompt_token_ids + r.output_token_ids if p.repetition_penalty != 1.0 else []
        # A row with no tokens gets a no-op penalty on a dummy token 0.
        rep.append(p.repetition_penalty if tokens else 1.0)
        seen.append(tokens or [0])
        penalized = p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
        out = r.output_token_ids if penalized else []
        freq.append(p.frequency_penalty if out else 0.0)
        pres.append(p.presence_penalty if out else 0.0)
        outputs.append(out or [0])
    if any(v != 1.0 for v in rep):
        batch.repetition_penalty = tensor(rep, torch.float32).unsqueeze(1)
        batch.seen_ids = tensor(_pad_with_first(seen), torch.long)
    if any(freq) or any(pres):
        batch.frequency_penalty = tensor(freq, torch.float32).unsqueeze(1)
        batch.presence_penalty = tensor(pres, torch.float32).unsqueeze(1)
        batch.output_ids = tensor(_pad_with_first(outputs), torch.long)
        lengths = tensor([len(o) for o in outputs], torch.long)
        width = batch.output_ids.shape[1]
        positions = torch.arange(width, device=lengths.device)
        batch.output_valid = (positions < lengths.unsqueeze(1)).float()


def _pad_with_first(lists: list[list[int]]) -> list[list[int]]:
    """Pad to a rectangle with each row's first token: a repeated index is harmless where the
    same value is scattered twice, and weighted 0 where values are added."""
    width = max(len(t) for t in lists)
    return [t + [t[0]] * (width - len(t)) for t in lists]


class Sampler:
    """Stateless: everything per request lives in the ``SamplingBatch`` (and its generators)."""

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        if logits.dim() != 2 or logits.shape[0] != batch.num_rows:
            raise ValueError(f"logits {tuple(logits.shape)} do not match {batch.num_rows} rows")
        if logits.shape[1] < batch.vocab_size:
            raise ValueError(f"logits have {logits.shape[1]} columns, vocab is {batch.vocab_size}")
        # Padded vocab columns (tensor-parallel rounding) are never sampled.
        logits = logits[:, : batch.vocab_size].float()
        raw_logprobs = None
        every_row = len(batch.logprob_rows) == batch.num_rows
        if batch.logprob_rows:
            wanted = logits if every_row else logits[batch.logprob_rows]
            raw_logprobs = torch.log_softmax(wanted, dim=-1)
        processed = self.process_logits(logits, batch)
        if batch.all_greedy:
            tokens = _argmax(processed)
        else:
            probs = self.sampling_probs(processed, batch)
            tokens = self._exponential_race(probs, batch)
            if batch.greedy_mask is not None:
                tokens = torch.where(batch.greedy_mask, _argmax(processed), tokens)
        token_ids = tokens.tolist()
        logprobs: list[TokenLogprobs | None] = [None] * batch.num_rows
        if raw_logprobs is not None:
            chosen = tokens if every_row else tokens[batch.logprob_rows]
            gathered = gather_logprobs(raw_logprobs, chosen, batch.logprob_ks)
            for row, entry in zip(batch.logprob_rows, gathered):
                logprobs[row] = entry
        return SamplerOutput(token_ids=token_ids, logprobs=logprobs)

    def process_logits(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Bias, min_tokens and penalties: everything that may change the argmax. Never in place
        on the caller's tensor."""
        stages = (batch.bias, batch.min_tokens_mask, batch.seen_ids, batch.output_ids)
        if all(stage is None for stage in stages):
            return logits
        logits = logits.clone()  # every stage below works in place on this copy
        if batch.bias is not None:
            rows, ids, values = batch.bias
            logits.index_put_((rows, ids), values, accumulate=True)
        if batch.min_tokens_mask is not None:
            logits[batch.min_tokens_mask] = float("-inf")
        if batch.seen_ids is not None and batch.repetition_penalty is not None:
            seen = logits.gather(1, batch.seen_ids)
            rp = batch.repetition_penalty
            logits.scatter_(1, batch.seen_ids, torch.where(seen > 0, seen / rp, seen * rp))
        if batch.output_ids is not None:
            assert batch.frequency_penalty is not None and batch.presence_penalty is not None
            assert batch.output_valid is not None
            # Presence: overwrite each seen token once (repeats write the same value).
            present = logits.gather(1, batch.output_ids) - batch.presence_penalty
            logits.scatter_(1, batch.output_ids, present)
            # Frequency: one subtraction per occurrence; padding adds 0.
            step = -batch.frequency_penalty * batch.output_valid
            logits.scatter_add_(1, batch.output_ids, step)
        return logits

    def sampling_probs(self, processed: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """The distribution random rows are drawn from: temperature, min_p, top-k, top-p, softmax.

        Greedy rows get their temperature-1 distribution (unused: they take the argmax).
        """
        x = processed if batch.temperature is None else processed / batch.temperature
        if batch.min_p is not None:
            probs = torch.softmax(x, dim=-1)
            threshold = probs.amax(dim=-1, keepdim=True) * batch.min_p.unsqueeze(1)
            x = x.masked_fill(probs < threshold, float("-inf"))
        if batch.top_k is not None or batch.top_p is not None:
            x = apply_top_k_top_p(
                x, batch.top_k, batch.top_p, batch.max_top_k, batch.top_p_within_top_k
            )
        return torch.softmax(x, dim=-1)

    @staticmethod
    def _exponential_race(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """argmax(p / q) with q ~ Exp(1) samples exactly from p (Gumbel-max in another guise).

        q = -log(U) with U ~ Uniform[0, 1): the same law as ``exponential_``, several times faster
        on CPU. U = 0 gives q = inf, which only makes that token lose (p / inf = 0, never NaN).
        """
        q = torch.empty_like(probs)
        if batch.has_unseeded_random:
            q.uniform_()
        elif len(batch.generators) < batch.num_rows:
            q.fill_(0.5)  # greedy rows: any finite noise, their token is replaced by the argmax
        for row, generator in batch.generators.items():
            q[row].uniform_(generator=generator)
        q.log_().neg_()
        return _argmax(probs / q)


def apply_top_k_top_p(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    top_p: torch.Tensor | None,
    max_top_k: int = 0,
    top_p_within_top_k: bool = False,
) -> torch.Tensor:
    """Mask (-inf) tokens outside each row's top-k and nucleus.

    Top-p keeps the smallest set of most likely tokens whose mass reaches p, computed after top-k
    (vLLM's order). A full sort of the vocabulary is the slow part, so it is avoided when possible:
    top-k alone needs one ``topk`` of the batch's largest k, and when every top-p row also has a
    small top-k (``top_p_within_top_k``, the common "top_k=50, top_p=0.9") the nucleus is found
    among those k. Which of several tokens tied with the k-th value survive is unspecified.
    """
    neg_inf = float("-inf")
    vocab = logits.shape[-1]
    if top_p is None:
        if top_k is None:
            return logits
        values = logits.topk(max(1, min(max_top_k, vocab)), dim=-1).values
        kth = values.gather(1, (top_k.clamp(max=values.shape[1]) - 1).unsqueeze(1))
        kth = kth.masked_fill((top_k >= vocab).unsqueeze(1), neg_inf)
        return logits.masked_fill(logits < kth, neg_inf)
    if top_k is not None and top_p_within_top_k and 0 < max_top_k * 8 <= vocab:
        values, index = logits.topk(max_top_k, dim=-1)  # descending
        position = torch.arange(max_top_k, device=logits.device)
        values = values.masked_fill(position >= top_k.unsqueeze(1), neg_inf)
        probs = values.softmax(dim=-1)
        mass_above = probs.cumsum(dim=-1) - probs
        values = values.masked_fill(mass_above >= top_p.unsqueeze(1), neg_inf)
        restricted = torch.full_like(logits, neg_inf).scatter_(1, index, values)
        # Rows without top-k have no top-p either (the flag says so): they keep every token.
        return torch.where((top_k < vocab).unsqueeze(1), restricted, logits)
    ordered, index = logits.sort(dim=-1, descending=False)
    if top_k is not None:
        kth = ordered.gather(1, (vocab - top_k).unsqueeze(1))
        ordered = ordered.masked_fill(ordered < kth, neg_inf)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    # Drop the low tail whose total mass is at most 1 - p; the top token always stays.
    drop = cumulative <= (1.0 - top_p).unsqueeze(1)
    drop[:, -1] = False
    ordered = ordered.masked_fill(drop, neg_inf)
    return torch.empty_like(logits).scatter_(1, index, ordered)


def gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, ks: list[int]
) -> list[TokenLogprobs]:
    """Chosen-token logprob, its 1-based rank (1 + tokens strictly more likely) and the top-k.

    One device-to-host copy per quantity for all rows instead of one per row.
    """
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))
    ranks = ((logprobs > chosen).sum(dim=-1) + 1).tolist()
    chosen_list = chosen.squeeze(1).tolist()
    ids_list = token_ids.tolist()
    max_k = max(ks, default=0)
    top_vals: list[list[float]] = [[] for _ in ks]
    top_ids: list[list[int]] = [[] for _ in ks]
    if max_k > 0:
        top = logprobs.topk(min(max_k, logprobs.shape[-1]), dim=-1)
        top_vals, top_ids = top.values.tolist(), top.indices.tolist()
    return [
        TokenLogprobs(
            token_id=ids_list[i],
            logprob=chosen_list[i],
            rank=ranks[i],
            top=list(zip(top_ids[i][:k], top_vals[i][:k])),
        )
        for i, k in enumerate(ks)
    ]


def compute_prompt_logprobs(
    logits: torch.Tensor, target_ids: torch.Tensor | list[int], k: int
) -> list[TokenLogprobs]:
    """Logprobs of prompt tokens: row t of ``logits`` predicts ``target_ids[t]`` (the next token).

    Raw model logprobs, like sample logprobs; the caller adds the leading None for token 0.
    """
    if not isinstance(target_ids, torch.Tensor):
        target_ids = torch.tensor(target_ids, dtype=torch.long, device=logits.device)
    if logits.shape[0] != target_ids.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows for {target_ids.shape[0]} target tokens")
    if logits.shape[0] == 0:
        return []
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return gather_logprobs(logprobs, target_ids.to(logits.device), [k] * logits.shape[0])


def _argmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax; ``max(dim)`` returns the same (first) index and is ~2.5x faster on CPU."""
    return x.max(dim=-1).indices
