"""Rejection sampling keeps the target's distribution: chi-square tests on an 8-token vocabulary.

Significance 0.001 per test, and every draw comes from a seeded generator, so a run is
deterministic: the tests cannot flake, and a sampler that is off by a few percent on any token
fails them (20k samples put the standard error of a 0.2 probability near 0.003).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from heron.request import Request
from heron.runner.model_runner import TorchModelRunner
from heron.runner.sampler import Sampler, SamplingBatch, SamplingRow
from heron.sampling_params import SamplingParams
from heron.sched.output import RunnerOutput, ScheduledRequest, SchedulerOutput
from heron.spec_decode.sampling import sample_with_drafts
from heron.spec_decode.verify import rejection_sample, verify_greedy

VOCAB = 8
SAMPLES = 20_000
# Upper 0.001 quantiles of the chi-square distribution, by degrees of freedom.
CHI2_CRITICAL_0_001 = {4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322}


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson's statistic over the support of ``probs``; tokens outside it must never occur."""
    support = probs > 0
    assert counts[~support].sum() == 0, "a token with probability 0 was sampled"
    expected = probs[support] * counts.sum()
    return float(((counts[support] - expected) ** 2 / expected).sum())


def assert_distributed_as(tokens: list[int], probs: torch.Tensor) -> None:
    p = probs.double().numpy()
    p = p / p.sum()
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=VOCAB)
    df = int((p > 0).sum()) - 1
    stat = chi_square(counts, p)
    assert stat < CHI2_CRITICAL_0_001[df], f"chi2 {stat:.1f} (df {df}): {counts} vs {p}"


TARGET = torch.tensor(
    [
        [0.30, 0.05, 0.20, 0.10, 0.15, 0.05, 0.10, 0.05],
        [0.10, 0.10, 0.40, 0.05, 0.05, 0.10, 0.10, 0.10],
        [0.05, 0.05, 0.05, 0.05, 0.50, 0.10, 0.10, 0.10],
    ]
)


def test_rejection_sampling_keeps_the_target_distribution() -> None:
    """Drafts (0, 2): the first emitted token ~ p0, and after an accepted first draft the second
    ~ p1; after both, the bonus ~ p2. Whatever the drafts, the law is the target's."""
    generator = torch.Generator().manual_seed(7)
    drafts = [0, 2]
    runs = [rejection_sample(TARGET, drafts, generator) for _ in range(SAMPLES)]
    assert_distributed_as([r[0] for r in runs], TARGET[0])
    second = [r[1] for r in runs if r[0] == drafts[0] and len(r) > 1]
    assert len(second) > SAMPLES * 0.25
    assert_distributed_as(second, TARGET[1])
    third = [r[2] for r in runs if len(r) == 3]
    assert_distributed_as(third, TARGET[2])
    # Acceptance rate of the first draft is p0(draft).
    accepted = sum(len(r) > 1 for r in runs) / SAMPLES
    assert accepted == pytest.approx(TARGET[0, 0].item(), abs=0.015)


def test_rejection_sampling_with_an_unlikely_draft() -> None:
    """A draft of probability 0.05 is mostly rejected; the correction still keeps p0."""
    generator = torch.Generator().manual_seed(8)
    runs = [rejection_sample(TARGET[:2], [5], generator) for _ in range(SAMPLES)]
    assert_distributed_as([r[0] for r in runs], TARGET[0])


def test_verify_greedy() -> None:
    assert verify_greedy([4, 5, 6], [4, 5]) == [4, 5, 6]
    assert verify_greedy([4, 7, 6], [4, 5]) == [4, 7]
    assert verify_greedy([1, 2, 3], [9, 2]) == [1]
    assert verify_greedy([3], []) == [3]
    with pytest.raises(ValueError, match="target tokens"):
        verify_greedy([1], [1])


def _fake_runner() -> SimpleNamespace:
    """What ``sample_with_drafts`` reads of a runner: the hidden rows are the logits."""
    runner = SimpleNamespace(
        vocab_size=VOCAB,
        device=torch.device("cpu"),
        sampler=Sampler(),
        model=SimpleNamespace(compute_logits=lambda hidden: hidden),
        _generators={},
    )
    runner._sampling_row = lambda s: TorchModelRunner._sampling_row(runner, s)
    return runner


def test_runner_step_samples_each_position_with_its_own_context() -> None:
    """Through the runner's step, with temperature, top-k and a frequency penalty: row j's
    penalty sees the drafts before it, exactly as a step without speculation would."""
    params = SamplingParams(temperature=0.8, top_k=6, frequency_penalty=0.7, max_tokens=50)
    logits = torch.log(TARGET[:2])
    drafts = [2]
    requests = []
    for i in range(SAMPLES):
        request = Request(request_id=f"r{i}", prompt_token_ids=[1, 3], sampling_params=params)
        request.output_token_ids = [3]
        request.num_computed_tokens = 2
        requests.append(request)
    out = SchedulerOutput(
        scheduled=[
            ScheduledRequest(request=r, num_new_tokens=2, draft_token_ids=drafts) for r in requests
        ]
    )
    cu = np.arange(0, 2 * SAMPLES + 1, 2)
    hidden = logits.repeat(SAMPLES, 1)
    result = RunnerOutput()
    torch.manual_seed(11)
    sample_with_drafts(_fake_runner(), out, cu, hidden, result)

    def expected(outputs: list[int], row: int) -> torch.Tensor:
        rows = [
            SamplingRow(
                request_id="x", params=params, prompt_token_ids=[1, 3], output_token_ids=outputs
            )
        ]
        batch = SamplingBatch.build(rows, VOCAB, "cpu")
        sampler = Sampler()
        return sampler.sampling_probs(sampler.process_logits(logits[row : row + 1], batch), batch)[
            0
        ]

    first = [result.sampled[r.request_id] for r in requests]
    assert_distributed_as(first, expected([3], 0))
    second = [
        result.more_sampled[r.request_id][0]
        for r in requests
        if r.request_id in result.more_sampled
    ]
    assert len(second) > SAMPLES * 0.2
    with_draft = expected([3, 2], 1)
    assert not torch.allclose(with_draft, expected([3], 1))  # the penalty saw the draft
    assert_distributed_as(second, with_draft)
