"""The batched sampler against a plain per-row torch reference."""

from __future__ import annotations

import math
import random

import pytest
import torch

from heron.runner.sampler import (
    Sampler,
    SamplingBatch,
    SamplingRow,
    apply_top_k_top_p,
    compute_prompt_logprobs,
)
from heron.sampling_params import SamplingParams

V = 32
EOS = 3


def row(params: SamplingParams, *, prompt=(1, 2), output=(), seed: int | None = None, rid="r"):
    generator = None
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    return SamplingRow(rid, params, list(prompt), list(output), generator, frozenset({EOS}))


def sample(logits: torch.Tensor, rows: list[SamplingRow]):
    batch = SamplingBatch.build(rows, V, "cpu")
    return Sampler().sample(logits, batch), batch


# -- reference: one row at a time, written for clarity --------------------------------------------
def reference_processed(x: torch.Tensor, r: SamplingRow) -> torch.Tensor:
    p = r.params
    x = x.clone()
    for t, b in (p.logit_bias or {}).items():
        x[t] += b
    if len(r.output_token_ids) < p.min_tokens:
        for t in p.stop_token_ids or []:
            x[t] = -math.inf
        if not p.ignore_eos:
            for t in r.eos_token_ids:
                x[t] = -math.inf
    seen = set(r.prompt_token_ids) | set(r.output_token_ids)
    for t in seen:
        x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
    for t in set(r.output_token_ids):
        x[t] -= p.frequency_penalty * r.output_token_ids.count(t) + p.presence_penalty
    return x


def reference_probs(x: torch.Tensor, r: SamplingRow) -> torch.Tensor:
    p = r.params
    x = reference_processed(x, r) / p.temperature
    probs = torch.softmax(x, -1)
    keep = probs >= p.min_p * probs.max()
    if 0 < p.top_k < V:
        keep &= x >= torch.sort(x, descending=True).values[p.top_k - 1]
    x = torch.where(keep, x, -math.inf)
    probs = torch.softmax(x, -1)
    order = torch.argsort(probs, descending=True)
    mass_before = 0.0
    nucleus = torch.zeros(V, dtype=torch.bool)
    for t in order.tolist():
        if mass_before >= p.top_p or probs[t] == 0:
            break
        nucleus[t] = True
        mass_before += probs[t].item()
    return torch.softmax(torch.where(nucleus, x, -math.inf), -1)


def random_params(rng: random.Random) -> SamplingParams:
    return SamplingParams(
        temperature=rng.choice([0.5, 1.0, 1.7]),
        top_k=rng.choice([0, -1, 1, 5, 20]),
        top_p=rng.choice([1.0, 0.9, 0.5]),
        min_p=rng.choice([0.0, 0.05, 0.3]),
        repetition_penalty=rng.choice([1.0, 1.3, 0.8]),
        frequency_penalty=rng.choice([0.0, 0.5, -0.4]),
        presence_penalty=rng.choice([0.0, 1.0, -0.7]),
        logit_bias=rng.choice([None, {5: 3.0, 7: -2.0}]),
        min_tokens=rng.choice([0, 4]),
        stop_token_ids=rng.choice([[], [9]]),
        ignore_eos=rng.choice([False, True]),
        max_tokens=32,
    )


def test_probs_match_reference_for_mixed_random_batch() -> None:
    rng = random.Random(0)
    torch.manual_seed(0)
    rows = [
        row(
            random_params(rng),
            prompt=[rng.randrange(V) for _ in range(6)],
            output=[rng.randrange(V) for _ in range(rng.randrange(8))],
            rid=str(i),
        )
        for i in range(24)
    ]
    logits = torch.randn(len(rows), V) * 3
    batch = SamplingBatch.build(rows, V, "cpu")
    sampler = Sampler()
    processed = sampler.process_logits(logits, batch)
    probs = sampler.sampling_probs(processed, batch)
    for i, r in enumerate(rows):
        torch.testing.assert_close(processed[i], reference_processed(logits[i], r))
        torch.testing.assert_close(probs[i], reference_probs(logits[i], r), atol=1e-5, rtol=1e-4)
    tokens = sampler.sample(logits, batch).token_ids
    for i, t in enumerate(tokens):
        assert probs[i, t] > 0, "sampled a masked token"


def test_nucleus_within_small_top_k_matches_reference() -> None:
    """The fast path (top-p searched among the top-k only) against the same reference."""
    rng = random.Random(6)
    torch.manual_seed(6)
    rows = []
    for i in range(16):
        if i % 4 == 0:
            params = SamplingParams(temperature=0.8)  # neither: keeps the whole vocabulary
        else:
            params = SamplingParams(
                temperature=rng.choice([0.5, 1.2]),
                top_k=rng.choice([2, 3, 4]),
                top_p=rng.choice([0.3, 0.8, 1.0]),
            )
        rows.append(row(params, rid=str(i)))
    logits = torch.randn(len(rows), V) * 2
    batch = SamplingBatch.build(rows, V, "cpu")
    assert batch.top_p_within_top_k and batch.max_top_k == 4
    probs = Sampler().sampling_probs(logits, batch)
    for i, r in enumerate(rows):
        torch.testing.assert_close(probs[i], reference_probs(logits[i], r), atol=1e-5, rtol=1e-4)


def test_each_parameter_changes_the_logits_as_documented() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5] + [0.0] * (V - 4)])
    sampler = Sampler()

    def processed(params: SamplingParams, **kw) -> torch.Tensor:
        return sampler.process_logits(logits, SamplingBatch.build([row(params, **kw)], V, "cpu"))[0]

    out = processed(SamplingParams(repetition_penalty=2.0), prompt=[0], output=[1])
    assert out[0] == 1.0 and out[1] == -4.0 and out[2] == 1.0  # positive /2, negative *2, unseen
    out = processed(SamplingParams(frequency_penalty=0.5), prompt=[2], output=[0, 0, 1])
    assert out[0] == 1.0 and out[1] == -2.5 and out[2] == 1.0  # prompt tokens are not counted
    out = processed(SamplingParams(presence_penalty=0.5), output=[0, 0])
    assert out[0] == 1.5 and out[1] == -2.0
    out = processed(SamplingParams(repetition_penalty=2.0, presence_penalty=1.0), prompt=[])
    assert torch.equal(out, logits[0])  # nothing seen yet: nothing penalized
    out = processed(SamplingParams(logit_bias={1: 10.0}))
    assert out[1] == 8.0 and out.argmax() == 1
    out = processed(SamplingParams(min_tokens=2, stop_token_ids=[2]), output=[0])
    assert out[EOS] == -math.inf and out[2] == -math.inf
    out = processed(SamplingParams(min_tokens=2, stop_token_ids=[2], ignore_eos=True), output=[0])
    assert out[EOS] == 0.5 and out[2] == -math.inf
    out = processed(SamplingParams(min_tokens=2, stop_token_ids=[2]), output=[0, 0])
    assert out[EOS] == 0.5 and out[2] == 1.0


def test_top_k_top_p_min_p_masks() -> None:
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    x = probs.log()
    kept = lambda y: torch.isfinite(y[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(apply_top_k_top_p(x, torch.tensor([2]), None, 2)) == [0, 1]
    assert kept(apply_top_k_top_p(x, None, torch.tensor([0.6]))) == [0, 1]
    assert kept(apply_top_k_top_p(x, None, torch.tensor([0.5]))) == [0]
    assert kept(apply_top_k_top_p(x, torch.tensor([3]), torch.tensor([0.99]), 3)) == [0, 1, 2]
    assert kept(apply_top_k_top_p(x, torch.tensor([5]), torch.tensor([1.0]), 0)) == [0, 1, 2, 3, 4]
    five = torch.cat([x, torch.full((1, V - 5), -30.0)], dim=1)
    batch = SamplingBatch.build([row(SamplingParams(min_p=0.3))], V, "cpu")
    out = Sampler().sampling_probs(five, batch)
    assert (out[0] > 0).nonzero().flatten().tolist() == [0, 1, 2]  # p >= 0.3 * 0.5


def test_greedy_is_argmax_of_processed_logits_and_mixes_with_random_rows() -> None:
    torch.manual_seed(1)
    logits = torch.randn(6, V)
    rows = [row(SamplingParams(temperature=0.0)) for _ in range(6)]
    out, batch = sample(logits, rows)
    assert out.token_ids == logits.argmax(-1).tolist() and out.logprobs == [None] * 6
    assert batch.temperature is None and batch.seen_ids is None and batch.bias is None
    rows[2] = row(SamplingParams(temperature=1.0, top_k=1))
    rows[4] = row(SamplingParams(temperature=0.0, logit_bias={7: 100.0}))
    out, _ = sample(logits, rows)
    assert out.token_ids[2] == logits[2].argmax()
    assert out.token_ids[4] == 7
    assert out.token_ids[0] == logits[0].argmax()


def test_logprobs_are_raw_log_softmax_with_rank_and_top_k() -> None:
    torch.manual_seed(2)
    logits = torch.randn(3, V)
    rows = [
        row(SamplingParams(temperature=0.7, logprobs=3, presence_penalty=2.0), output=[0, 1]),
        row(SamplingParams(temperature=0.0)),
        row(SamplingParams(temperature=0.0, logprobs=0, logit_bias={4: 50.0})),
    ]
    out, _ = sample(logits, rows)
    ref = torch.log_softmax(logits, -1)
    for i in (0, 2):
        entry = out.logprobs[i]
        assert entry is not None and entry.token_id == out.token_ids[i]
        assert entry.logprob == pytest.approx(ref[i, entry.token_id].item(), abs=1e-6)
        assert entry.rank == int((ref[i] > ref[i, entry.token_id]).sum()) + 1
    assert out.logprobs[1] is None
    top = out.logprobs[0].top
    values, ids = ref[0].topk(3)
    assert [t for t, _ in top] == ids.tolist()
    assert [v for _, v in top] == pytest.approx(values.tolist(), abs=1e-6)
    assert out.token_ids[2] == 4 and out.logprobs[2].top == []


def test_best_of_rows_get_chosen_token_logprobs() -> None:
    out, _ = sample(torch.randn(1, V), [row(SamplingParams(n=1, best_of=3))])
    assert out.logprobs[0] is not None and out.logprobs[0].top == []


def test_seeded_rows_are_independent_of_batch_composition_and_runs() -> None:
    params = SamplingParams(temperature=1.0, seed=123)
    torch.manual_seed(3)
    steps = [torch.randn(V) for _ in range(8)]

    def run(layout: list[int | None]) -> list[int]:
        """``None`` marks the seeded request; ints are other seeded rows; one unseeded row last."""
        gen = torch.Generator().manual_seed(123)
        take = layout.index(None)
        tokens = []
        for own in steps:
            rows = [
                SamplingRow("s", params, [1], [], gen)
                if kind is None
                else row(SamplingParams(temperature=1.3), seed=kind)
                for kind in layout
            ]
            rows.append(row(SamplingParams(temperature=0.9)))  # draws from torch's global RNG
            logits = torch.randn(len(rows), V)
            logits[take] = own
            tokens.append(sample(logits, rows)[0].token_ids[take])
        return tokens

    alone = run([None])
    assert alone == run([None])
    assert alone == run([7, None, 8])
    assert alone == run([9, 10, 11, None])
    assert len(set(alone)) > 1


def test_temperature_sampling_frequencies_match_softmax() -> None:
    vocab = 5
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -3.0])
    draws = 40000
    torch.manual_seed(4)
    for params, expected in [
        (SamplingParams(temperature=0.7), torch.softmax(logits / 0.7, -1)),
        (SamplingParams(temperature=1.5, top_k=3), torch.softmax(logits[:3] / 1.5, -1)),
    ]:
        rows = [SamplingRow("d", params, [], [], None, frozenset()) for _ in range(draws)]
        batch = SamplingBatch.build(rows, vocab, "cpu")
        tokens = torch.tensor(Sampler().sample(logits.expand(draws, vocab), batch).token_ids)
        freq = torch.bincount(tokens, minlength=vocab).float() / draws
        torch.testing.assert_close(freq[: len(expected)], expected, atol=0.01, rtol=0)
        assert freq[len(expected) :].sum() == 0


def test_padded_vocab_columns_are_never_sampled() -> None:
    logits = torch.zeros(2, V + 8)
    logits[:, V:] = 100.0
    out, _ = sample(logits, [row(SamplingParams(temperature=0.0)), row(SamplingParams())])
    assert all(t < V for t in out.token_ids)


def test_prompt_logprobs() -> None:
    torch.manual_seed(5)
    logits = torch.randn(4, V)
    targets = [3, 1, 4, 1]
    entries = compute_prompt_logprobs(logits, targets, 2)
    ref = torch.log_softmax(logits, -1)
    for i, e in enumerate(entries):
        assert e.token_id == targets[i]
        assert e.logprob == pytest.approx(ref[i, targets[i]].item(), abs=1e-6)
        assert e.rank == int((ref[i] > ref[i, targets[i]]).sum()) + 1
        assert [t for t, _ in e.top] == ref[i].topk(2).indices.tolist()
    assert compute_prompt_logprobs(torch.empty(0, V), [], 1) == []
