"""Long prefill chunks take torch's flash attention inside the cpu backend; the result must be the
reference's, whether the chunk starts a prompt or continues one over cached blocks, and mixed with
decodes and short chunks that stay on the kernel."""

from __future__ import annotations

import pytest
import torch

from heron_cpu import long_prefill
from heron_cpu.attention import CpuAttentionBackend
from heron_interfaces.testing.attention_suite import check_forward
from heron_interfaces.testing.batches import Scenario, make_batch

MIXED = (
    (500, 1),  # decode
    (40, 40),  # short fresh prefill: stays on the kernel
    (700, 300),  # long chunk over a cached prefix
    (333, 1),  # decode between long ones: two kernel launches
    (290, 290),  # long fresh prefill
)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("block_size", "heads"), [(16, (8, 2)), (32, (6, 6)), (128, (9, 3))])
def test_mixed_batch_matches_reference(
    monkeypatch: pytest.MonkeyPatch, dtype: str, block_size: int, heads: tuple[int, int]
) -> None:
    monkeypatch.setenv(long_prefill.MIN_QUERY_TOKENS_ENV, "256")
    scenario = Scenario(
        seqs=MIXED,
        num_heads=heads[0],
        num_kv_heads=heads[1],
        head_size=64,
        block_size=block_size,
        dtype=dtype,
        seed=block_size,
    )
    check_forward(CpuAttentionBackend, make_batch(scenario))


@pytest.mark.parametrize("threshold", ["1", "2", "0"])
def test_every_threshold_matches_reference(monkeypatch: pytest.MonkeyPatch, threshold: str) -> None:
    """1 sends decodes down the path too; 0 turns it off: the same numbers either way."""
    monkeypatch.setenv(long_prefill.MIN_QUERY_TOKENS_ENV, threshold)
    scenario = Scenario(
        seqs=((17, 1), (64, 5), (33, 33), (100, 2)),
        num_heads=4,
        num_kv_heads=2,
        head_size=128,
        block_size=16,
        dtype="float32",
        seed=3,
    )
    check_forward(CpuAttentionBackend, make_batch(scenario))


@pytest.mark.parametrize("window", [1, 37, 64, 1000])
@pytest.mark.parametrize("soft_cap", [None, 5.0])
def test_sliding_window_and_soft_cap_match_reference(
    monkeypatch: pytest.MonkeyPatch, window: int, soft_cap: float | None
) -> None:
    """Windowed long chunks take the masked SDPA call over the window's blocks only (freed ones
    hold NaN); soft-capped layers stay on the kernel, which caps them."""
    monkeypatch.setenv(long_prefill.MIN_QUERY_TOKENS_ENV, "8")
    scenario = Scenario(
        seqs=((300, 1), (200, 40), (90, 90), (70, 9)),
        num_heads=4,
        num_kv_heads=2,
        head_size=64,
        block_size=16,
        dtype="float32",
        seed=window,
        sliding_window=window,
        logits_soft_cap=soft_cap,
    )
    check_forward(CpuAttentionBackend, make_batch(scenario))


def test_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the tests above: they prove nothing if the long sequences never leave the kernel."""
    calls: list[tuple[int, int]] = []
    real = long_prefill.attend_sequence

    def spy(out, query, kv_cache, table, start, q_len, seq_len, scale, **kw):
        calls.append((q_len, seq_len))
        return real(out, query, kv_cache, table, start, q_len, seq_len, scale, **kw)

    monkeypatch.setattr(long_prefill, "attend_sequence", spy)
    monkeypatch.delenv(long_prefill.MIN_QUERY_TOKENS_ENV, raising=False)
    scenario = Scenario(
        seqs=MIXED, num_heads=4, num_kv_heads=2, head_size=64, block_size=16, dtype="float32"
    )
    check_forward(CpuAttentionBackend, make_batch(scenario))
    assert calls == [(300, 700), (290, 290)]


def test_without_torch_flash_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch without the private flash op still gets the right answer from plain matmuls."""
    monkeypatch.setattr(long_prefill, "_flash_with_lse", None)
    monkeypatch.setenv(long_prefill.MIN_QUERY_TOKENS_ENV, "8")
    scenario = Scenario(
        seqs=((100, 30), (20, 1), (50, 50)),
        num_heads=4,
        num_kv_heads=1,
        head_size=64,
        block_size=16,
        dtype="float32",
    )
    check_forward(CpuAttentionBackend, make_batch(scenario))


def test_split_long_sequences() -> None:
    # query lengths 1, 300, 2, 5, 400
    starts = [0, 1, 301, 303, 308, 708]
    assert long_prefill.split_long_sequences(starts, 256) == ([1, 4], [(0, 1), (2, 4)])
    assert long_prefill.split_long_sequences(starts, 1000) == ([], [(0, 5)])
    assert long_prefill.split_long_sequences([0], 1) == ([], [])


@pytest.mark.parametrize("bad", ["-1", "many"])
def test_bad_threshold_names_the_variable(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(long_prefill.MIN_QUERY_TOKENS_ENV, bad)
    with pytest.raises(ValueError, match=long_prefill.MIN_QUERY_TOKENS_ENV):
        long_prefill.min_query_tokens()


def test_default_threshold() -> None:
    assert long_prefill.DEFAULT_MIN_QUERY_TOKENS > 1
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu is not None
