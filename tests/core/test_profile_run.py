"""The profile run that sizes a GPU-style KV cache: the biggest step's activations come off first.

GPUs report no explicit KV budget, so core runs one step of ``max_num_batched_tokens`` tokens on a
scratch cache and subtracts the allocator's peak from the budget (vLLM's profile run). Here the
reference backend stands in for a GPU through a memory profiler that reports no KV budget.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_utils import KERNEL_FRIENDLY, make_tiny_model_dir

from heron import LLM
from heron.backends.reference import ReferencePlatform
from heron.runner.input_batch import build_profile_inputs
from heron.runner.model_runner import TorchModelRunner
from heron_interfaces import MemoryProfiler, MemorySnapshot

REAL_PROFILER = ReferencePlatform.__dict__["memory_profiler"]
GIB = 1 << 30
ACTIVATIONS = 900 << 20
"""Peak bytes above the weights that the fake profiler reports after its peak is reset."""


@pytest.mark.parametrize(
    ("num_tokens", "num_seqs", "max_model_len"), [(2048, 128, 256), (300, 1, 256), (7, 16, 64)]
)
def test_profile_inputs_cover_the_budget_without_sharing_slots(
    num_tokens: int, num_seqs: int, max_model_len: int
) -> None:
    inputs, num_blocks = build_profile_inputs(
        num_tokens, num_seqs, max_model_len, 16, torch.device("cpu")
    )
    md = inputs.metadata
    lens = md.seq_lens.numpy()
    assert lens.sum() == num_tokens == inputs.input_ids.numel()
    assert lens.max() <= max_model_len and lens.max() - lens.min() <= 1
    assert md.num_seqs <= max(num_seqs, -(-num_tokens // max_model_len))
    slots = md.slot_mapping.numpy()
    assert len(np.unique(slots)) == num_tokens and slots.max() < num_blocks * 16
    assert np.array_equal(inputs.query_start_loc[1:], np.cumsum(lens))


class _NoBudgetProfiler(MemoryProfiler):
    """A 1 GiB device with no explicit KV budget whose peak grows by ACTIVATIONS once reset."""

    resets = 0

    def snapshot(self) -> MemorySnapshot:
        peak = ACTIVATIONS if _NoBudgetProfiler.resets else 0
        return MemorySnapshot(free=GIB, total=GIB, allocated=0, peak=peak, kv_budget=None)

    def reset_peak(self) -> None:
        _NoBudgetProfiler.resets += 1


@pytest.fixture
def gpu_like_reference(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """The reference backend with a GPU-style profiler; records each profile_run's arguments."""
    monkeypatch.setenv("HERON_BACKEND", "reference")
    monkeypatch.setattr(
        ReferencePlatform, "memory_profiler", classmethod(lambda cls: _NoBudgetProfiler())
    )
    _NoBudgetProfiler.resets = 0
    calls: list[tuple[int, int, int]] = []
    real = TorchModelRunner.profile_run

    def spy(self: TorchModelRunner, num_tokens: int, num_seqs: int, max_model_len: int) -> int:
        calls.append((num_tokens, num_seqs, max_model_len))
        return real(self, num_tokens, num_seqs, max_model_len)

    monkeypatch.setattr(TorchModelRunner, "profile_run", spy)
    return calls


def test_kv_budget_leaves_room_for_the_profiled_step(tmp_path, gpu_like_reference) -> None:
    folder = make_tiny_model_dir(tmp_path, "llama", **KERNEL_FRIENDLY)
    llm = LLM(
        str(folder), dtype="float32", block_size=16, max_model_len=256, max_num_batched_tokens=512
    )
    core = llm.llm_engine.core
    assert gpu_like_reference == [(512, core.args.max_num_seqs, 256)]
    runner = core.runner
    _inputs, scratch_blocks = build_profile_inputs(512, core.args.max_num_seqs, 256, 16, "cpu")
    scratch_bytes = scratch_blocks * runner.kv_bytes_per_block()
    budget = int(GIB * core.args.gpu_memory_utilization) - runner.weights_bytes()
    expected = (budget - (ACTIVATIONS - scratch_bytes)) // runner.kv_bytes_per_block()
    assert core.kv_plan.num_blocks == expected
    # And the engine still generates with the cache it sized (the scratch one is gone).
    out = llm.generate(["Herons wade."], use_tqdm=False)[0]
    assert out.outputs[0].token_ids


def test_no_profile_run_with_an_explicit_budget_or_block_override(
    tmp_path, gpu_like_reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_tiny_model_dir(tmp_path, "llama", **KERNEL_FRIENDLY)
    LLM(str(folder), dtype="float32", block_size=16, max_model_len=256, num_gpu_blocks_override=40)
    assert gpu_like_reference == []
    # The host profiler reports an explicit budget (HERON_KVCACHE_SPACE): nothing to profile.
    monkeypatch.setattr(ReferencePlatform, "memory_profiler", REAL_PROFILER)
    monkeypatch.setenv("HERON_KVCACHE_SPACE", "0.25")
    llm = LLM(str(folder), dtype="float32", block_size=16, max_model_len=256)
    assert gpu_like_reference == []
    assert "KV cache space" in llm.llm_engine.core.kv_plan.source
