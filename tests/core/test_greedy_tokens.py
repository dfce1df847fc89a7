"""Greedy steps pick tokens without float32 logits: ``DecoderForCausalLM.greedy_tokens`` equals the
argmax of ``compute_logits`` on one rank and across a tensor-parallel group (vocabulary columns
split with padding, ties across ranks, NaN, a rank with no real column), and the runner takes
that path only when nothing changes the logits."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from heron.distributed.tensor_parallel import TensorParallel
from heron.models.causal_lm import DecoderForCausalLM
from heron.runner.sampler import SamplingBatch, SamplingRow
from heron.sampling_params import SamplingParams


class _ThreadGroup:
    """An all-gather between threads standing for the ranks of one group."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: list[torch.Tensor | None] = [None] * size
        self.barrier = threading.Barrier(size)

    def comm(self, rank: int) -> SimpleNamespace:
        def all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
            self.parts[rank] = x.clone()
            self.barrier.wait()
            gathered = torch.cat([p for p in self.parts if p is not None], dim=dim)
            self.barrier.wait()
            return gathered

        return SimpleNamespace(all_gather=all_gather)


class _Shard(DecoderForCausalLM):
    """A model reduced to its logits: ``_local_logits`` returns this rank's columns."""

    def __init__(self, columns: torch.Tensor, vocab_size: int, tp: TensorParallel) -> None:
        torch.nn.Module.__init__(self)
        self.columns = columns
        self.vocab_size = vocab_size
        self.ctx = SimpleNamespace(tp=tp)

    def _local_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.columns


def _on_ranks(full: torch.Tensor, vocab_size: int, size: int) -> list[torch.Tensor]:
    """Each rank's greedy tokens for the padded ``full`` logits split over ``size`` ranks."""
    group = _ThreadGroup(size)
    per_rank = -(-vocab_size // size)
    padded = torch.full((full.shape[0], per_rank * size), 1e4, dtype=full.dtype)
    padded[:, : full.shape[1]] = full  # padding columns: large values that must never win
    results: list[torch.Tensor | None] = [None] * size

    def run(rank: int) -> None:
        tp = TensorParallel(rank=rank, size=size, comm=group.comm(rank))  # type: ignore[arg-type]
        shard = _Shard(padded[:, rank * per_rank : (rank + 1) * per_rank], vocab_size, tp)
        results[rank] = shard.greedy_tokens(torch.zeros(full.shape[0], 4))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("vocab_size", "size"), [(10, 1), (10, 2), (10, 3), (4, 3), (257, 4)])
def test_greedy_tokens_equal_the_argmax_of_the_logits(
    dtype: torch.dtype, vocab_size: int, size: int
) -> None:
    gen = torch.Generator().manual_seed(vocab_size * 10 + size)
    full = torch.randn(6, vocab_size, generator=gen).to(dtype)
    full[1, :] = 0.5  # every column ties: the first one wins
    full[2, vocab_size - 1] = full[2, 0] = 9.0  # a tie between the first and the last rank
    full[3, vocab_size // 2] = float("nan")  # NaN is the maximum, as in torch's max
    expected = full.float().max(dim=-1).indices
    for tokens in _on_ranks(full, vocab_size, size):
        assert tokens.dtype == torch.long
        assert torch.equal(tokens, expected)


def test_transformed_logits_are_computed_in_full() -> None:
    class Capped(_Shard):
        def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
            return -self.columns.float()  # a transform the raw argmax would not see

    logits = torch.tensor([[1.0, 3.0, 2.0]])
    model = Capped(logits, 3, TensorParallel())
    assert model.greedy_tokens(torch.zeros(1, 4)).tolist() == [0]


def _row(**params: object) -> SamplingRow:
    return SamplingRow(
        request_id="r",
        params=SamplingParams(**params),  # type: ignore[arg-type]
        prompt_token_ids=[1, 2],
        output_token_ids=[3],
        eos_token_ids=frozenset({0}),
        generator=None,
    )


@pytest.mark.parametrize(
    ("params", "plain"),
    [
        ({"temperature": 0.0}, True),
        ({"temperature": 0.0, "max_tokens": 5, "ignore_eos": True}, True),
        ({"temperature": 0.7}, False),
        ({"temperature": 0.0, "logprobs": 2}, False),
        ({"temperature": 0.0, "logit_bias": {5: 1.0}}, False),
        ({"temperature": 0.0, "repetition_penalty": 1.2}, False),
        ({"temperature": 0.0, "presence_penalty": 0.5}, False),
        ({"temperature": 0.0, "min_tokens": 4}, False),
    ],
)
def test_only_untouched_greedy_rows_skip_the_logits(params: dict, plain: bool) -> None:
    batch = SamplingBatch.build([_row(**params)], 16, "cpu")
    assert batch.plain_greedy is plain
