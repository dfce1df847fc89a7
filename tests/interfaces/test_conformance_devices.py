"""How the conformance suite places a backend's work on its device, checked without an accelerator.

The ``meta`` device stands in for a GPU where only placement matters (which tensors move, which stay
on the CPU); nothing here computes on it. The numbers the suite compares are covered by the
self-test on the CPU, where the same code runs with ``backend_device`` = ``cpu:0``.
"""

from __future__ import annotations

import pytest
import torch

from heron_interfaces.memory import MemorySnapshot
from heron_interfaces.testing.attention_suite import _new_cache
from heron_interfaces.testing.batches import Scenario, batch_to, make_batch
from heron_interfaces.testing.comm_suite import WORLD_SIZE, multi_process_skip_reason
from heron_interfaces.testing.memory_suite import _check

SCENARIO = Scenario(
    seqs=((20, 1), (9, 9), (40, 5)),
    num_heads=4,
    num_kv_heads=2,
    head_size=64,
    block_size=16,
    dtype="bfloat16",
    seed=1,
)

META = torch.device("meta")


def test_batch_to_moves_inputs_and_metadata_but_not_the_cpu_twins() -> None:
    batch = make_batch(SCENARIO)
    moved = batch_to(batch, META)
    md = moved.metadata
    for t in (moved.query, moved.key, moved.value):
        assert t.device == META
    for t in (md.query_start_loc, md.seq_lens, md.block_tables, md.slot_mapping):
        assert t.device == META
    assert md.query_start_loc_cpu is not None and md.seq_lens_cpu is not None
    assert md.query_start_loc_cpu.device.type == "cpu" and md.seq_lens_cpu.device.type == "cpu"
    torch.testing.assert_close(md.query_start_loc_cpu, batch.metadata.query_start_loc)
    torch.testing.assert_close(md.seq_lens_cpu, batch.metadata.seq_lens)
    assert (md.max_query_len, md.max_seq_len, md.num_seqs) == (
        batch.metadata.max_query_len,
        batch.metadata.max_seq_len,
        batch.metadata.num_seqs,
    )
    # The reference keeps working on the untouched CPU batch.
    assert batch.query.device.type == "cpu" and batch.metadata.seq_lens.device.type == "cpu"
    assert md is not batch.metadata


def test_batch_to_cpu_copies_nothing() -> None:
    """On the CPU the backend sees the very tensors the reference sees, as before devices."""
    batch = make_batch(SCENARIO)
    moved = batch_to(batch, torch.device("cpu", 0))
    assert moved.query is batch.query and moved.value is batch.value
    assert moved.metadata.slot_mapping is batch.metadata.slot_mapping
    assert moved.metadata.query_start_loc_cpu is batch.metadata.query_start_loc


def test_batch_to_fills_missing_cpu_twins() -> None:
    batch = make_batch(SCENARIO)
    batch.metadata.query_start_loc_cpu = None
    batch.metadata.seq_lens_cpu = None
    md = batch_to(batch, META).metadata
    assert md.query_start_loc_cpu is not None and md.query_start_loc_cpu.device.type == "cpu"
    assert md.seq_lens_cpu is not None and md.seq_lens_cpu.device.type == "cpu"


def test_new_cache_lives_on_the_device_in_the_backend_layout() -> None:
    from test_conformance_selftest import ToyAttention

    batch = make_batch(SCENARIO)
    kv_cache, key_view, value_view = _new_cache(ToyAttention, batch, META)
    s = SCENARIO
    assert kv_cache.device == META and kv_cache.dtype == torch.bfloat16
    assert tuple(kv_cache.shape) == tuple(
        ToyAttention.kv_cache_shape(batch.num_blocks, s.block_size, s.num_kv_heads, s.head_size)
    )
    assert key_view.device == META and value_view.device == META


def test_new_cache_on_cpu_holds_the_nan_filled_initial_contents() -> None:
    from test_conformance_selftest import ToyAttention

    batch = make_batch(SCENARIO)
    _, key_view, value_view = _new_cache(ToyAttention, batch, torch.device("cpu", 0))
    assert key_view.isnan().any() and not key_view.isnan().all()
    torch.testing.assert_close(key_view, batch.key_cache, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(value_view, batch.value_cache, atol=0, rtol=0, equal_nan=True)


def _snapshot(allocated: int, peak: int) -> MemorySnapshot:
    return MemorySnapshot(free=1 << 30, total=2 << 30, allocated=allocated, peak=peak)


def test_memory_check_accepts_a_fresh_accelerator() -> None:
    """``torch.cuda.memory_allocated()`` is 0 before the first tensor: that is honest."""
    _check(_snapshot(0, 0), torch.device("cuda", 0))


def test_memory_check_keeps_the_cpu_strict() -> None:
    """A running process always holds host memory, so 0 on the CPU is a broken profiler."""
    _check(_snapshot(1, 1), torch.device("cpu", 0))
    with pytest.raises(AssertionError):
        _check(_snapshot(0, 0), torch.device("cpu", 0))


@pytest.mark.parametrize(
    "bad",
    [
        MemorySnapshot(free=0, total=1 << 30, allocated=0, peak=0),
        MemorySnapshot(free=1 << 30, total=0, allocated=0, peak=0),
        MemorySnapshot(free=1 << 30, total=2 << 30, allocated=-1, peak=0),
        MemorySnapshot(free=1 << 30, total=2 << 30, allocated=5, peak=4),
        MemorySnapshot(free=3 << 30, total=2 << 30, allocated=0, peak=0),
    ],
)
def test_memory_check_still_rejects_nonsense_on_an_accelerator(bad: MemorySnapshot) -> None:
    with pytest.raises(AssertionError):
        _check(bad, torch.device("cuda", 0))


def _fake_platform(device_type: str, count: int) -> type:
    class Fake:
        name = "fake"

        @classmethod
        def device_count(cls) -> int:
            return count

    Fake.device_type = device_type  # type: ignore[attr-defined]
    return Fake


def test_collectives_skip_only_accelerators_without_a_device_per_rank() -> None:
    assert multi_process_skip_reason(_fake_platform("cpu", 1)) is None  # type: ignore[arg-type]
    assert multi_process_skip_reason(_fake_platform("cuda", WORLD_SIZE)) is None  # type: ignore[arg-type]
    reason = multi_process_skip_reason(_fake_platform("cuda", 1))  # type: ignore[arg-type]
    assert reason is not None and "cuda" in reason and "sees 1" in reason
