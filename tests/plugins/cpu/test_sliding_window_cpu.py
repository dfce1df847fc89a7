"""heron-cpu's paged-attention kernel under a sliding window where the conformance suite's short
contexts do not reach: long decodes whose window is split into parts over several threads (the
flash-decoding combine), and long chunks kept on the kernel (long-prefill path off)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from heron_cpu import long_prefill
from heron_cpu.attention import CpuAttentionBackend
from heron_interfaces.testing.attention_suite import check_forward
from heron_interfaces.testing.batches import Scenario, make_batch


@pytest.fixture
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("window", [700, 4096])
@pytest.mark.parametrize("soft_cap", [None, 20.0])
@pytest.mark.parametrize(
    "seqs",
    [((3000, 1),), ((2100, 300), (1500, 1))],
    ids=["one decode: its window split into parts", "a long chunk and a decode"],
)
def test_long_windowed_contexts_match_reference(
    monkeypatch: pytest.MonkeyPatch,
    two_threads: None,
    dtype: str,
    window: int,
    soft_cap: float | None,
    seqs: tuple[tuple[int, int], ...],
) -> None:
    monkeypatch.setenv(long_prefill.MIN_QUERY_TOKENS_ENV, "0")  # everything on the kernel
    scenario = Scenario(
        seqs=seqs,
        num_heads=8,
        num_kv_heads=2,
        head_size=64,
        block_size=16,
        dtype=dtype,
        seed=window,
        sliding_window=window,
        logits_soft_cap=soft_cap,
    )
    check_forward(CpuAttentionBackend, make_batch(scenario))
