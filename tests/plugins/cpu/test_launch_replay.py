"""Recorded launches replayed by C++ programs (heron_cpu._C.ReplayProgram) equal the Python loop.

Every compiled kernel has a raw entry; at the end of recording each run of such calls becomes one
program, and everything else (``launch_torch`` ops, Python callables, arguments that do not fit a
raw signature) stays a Python call in between, in recorded order. The outputs must be the same
bits as the per-call Python loop and as the unrecorded pass, and a decode step of a tiny model
(quantized weights kept in blocks, and bfloat16) must give the same greedy ids and logprobs from a
C++ replay, from the Python loop and with ``enforce_eager``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType

from heron_cpu import _C, _quant
from heron_cpu.kernel_ops import CpuKernelOps
from heron_cpu.launch import NATIVE_REPLAY_ENV, LaunchGraph, launch, launch_torch

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from model_utils import (
    KERNEL_FRIENDLY,
    kernel_friendly_overrides,
    make_tiny_model_dir,
    tiny_config,
    tiny_hf_model,
    write_tiny_gguf,
)

EPS = 1e-6


class _Pass:
    """One forward-like pass mixing raw kernels, a Python callable and a torch op."""

    def __init__(self, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.ops = CpuKernelOps()
        self.ids = torch.tensor([3, 17, 5], dtype=torch.int64)
        self.table = torch.randn(40, 64, generator=gen).bfloat16()
        self.norm = torch.randn(64, generator=gen).bfloat16()
        self.proj = torch.randn(48, 32, generator=gen)
        self.python_calls = 0

    def run(self) -> list[torch.Tensor]:
        emb = self.ops.embedding(self.ids, self.table)  # raw
        normed = self.ops.rms_norm(emb, self.norm, EPS)  # raw
        scaled = torch.empty_like(normed)

        def scale_into() -> None:  # a Python call: reads the program before it, feeds the next
            self.python_calls += 1
            scaled.copy_(normed * 2)

        launch(scale_into)
        gated = self.ops.silu_and_mul(scaled)  # raw
        projected = launch_torch(_project, gated, self.proj)  # a torch op: Python
        again = self.ops.rms_norm(projected, self.norm[:48], EPS)  # raw
        return [emb, normed, scaled, gated, projected, again]


def _project(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), weight).bfloat16()


def _refill(p: _Pass, ids: list[int]) -> None:
    p.ids.copy_(torch.tensor(ids))


def test_mixed_segments_replay_in_recorded_order_with_the_same_bits() -> None:
    p = _Pass()
    graph = LaunchGraph(native=True)
    with graph:
        outs = p.run()
    assert len(graph) == 6
    assert graph.segments == ["native:2", "scale_into", "native:1", "_ReplayInto", "native:1"]
    for ids in ([1, 2, 3], [39, 0, 39], [7, 7, 8]):
        _refill(p, ids)
        graph.replay()
        native = [t.clone() for t in outs]
        for t in outs:
            t.fill_(float("nan"))
        graph.replay_python()
        assert all(torch.equal(a, b) for a, b in zip(native, outs)), ids
        eager = p.run()  # an unrecorded pass over the same inputs
        assert all(torch.equal(a, b) for a, b in zip(native, eager)), ids
    assert p.python_calls == 1 + 3 * 3  # recording, then per ids: native, python loop, eager


def test_python_replay_when_native_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NATIVE_REPLAY_ENV, "0")
    p = _Pass()
    graph = LaunchGraph()
    assert not graph.native
    with graph:
        outs = p.run()
    names = ["embedding", "rms_norm", "scale_into", "silu_and_mul", "_ReplayInto", "rms_norm"]
    assert graph.segments == names
    _refill(p, [9, 8, 7])
    graph.replay()
    assert all(torch.equal(a, b) for a, b in zip(outs, p.run()))


def test_a_failing_kernel_stops_the_replay_with_its_own_error() -> None:
    p = _Pass()
    graph = LaunchGraph(native=True)
    with graph:
        emb = p.ops.embedding(p.ids, p.table)
        normed = p.ops.rms_norm(emb, p.norm, EPS)
    assert graph.segments == ["native:2"]
    p.ids[1] = 40  # past the table: the embedding kernel refuses it
    messages = []
    for replay in (graph.replay, graph.replay_python):
        normed.fill_(-1.0)
        with pytest.raises(ValueError, match=r"token id 40 at position 1") as err:
            replay()
        messages.append(str(err.value))
        assert torch.all(normed == -1.0), "the call after the failing one ran"
    assert messages[0] == messages[1]


def test_arguments_outside_a_raw_signature_stay_python_calls() -> None:
    """pybind11 takes a numpy integer for an int; the packed program does not, so that one call
    stays a Python call between two programs (and computes the same)."""
    ops = CpuKernelOps()
    x = torch.randn(2, 64).bfloat16()
    weight = torch.randn(64).bfloat16()
    graph = LaunchGraph(native=True)
    with graph:
        normed = ops.rms_norm(x, weight, EPS)
        out = torch.empty(2, 32, dtype=torch.bfloat16)
        launch(_C.silu_and_mul, normed.data_ptr(), out.data_ptr(), np.int64(2), 32, 64, 1, 1)
        again = ops.rms_norm(x, weight, EPS)
    assert graph.segments == ["native:1", "silu_and_mul", "native:1"]
    x.copy_(torch.randn(2, 64))
    graph.replay()
    assert torch.equal(out, ops.silu_and_mul(ops.rms_norm(x, weight, EPS)))
    assert torch.equal(again, normed)


def test_program_append_checks_the_signature() -> None:
    program = _C.ReplayProgram()
    entry = _C.raw_entries["silu_and_mul"]  # (u x, u out, i rows, i width, i stride, n, n)
    good = (1, 2, 0, 32, 64, 1, 1)
    assert not program.append(entry, good[:-1])  # arity
    assert not program.append(entry, (1.5, *good[1:]))  # a float for an address
    assert not program.append(entry, (-1, *good[1:]))  # a negative address
    assert not program.append(entry, (*good[:5], 2**31, 1))  # past a C int
    assert not program.append(object(), good)  # not a raw entry
    assert len(program) == 0
    assert program.append(entry, good)  # rows 0: reads and writes nothing
    assert program.append(_quant.raw_entries["quant_dequantize"], (0, 0, 0, 0, 0, 32, 0, 0, 1))
    assert len(program) == 2
    program.run()


def _greedy_and_logprobs(llm, prompts: list[str]) -> tuple[list, list]:
    from heron import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=10, min_tokens=10, logprobs=2)
    outs = llm.generate(prompts, params, use_tqdm=False)
    ids = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [
        [{t: lp.logprob for t, lp in e.items()} for e in o.outputs[0].logprobs] for o in outs
    ]
    return ids, logprobs


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("replay")
    config = tiny_config("llama", tie_word_embeddings=True, **kernel_friendly_overrides("llama"))
    q4 = base / "tiny-q4_1.gguf"
    qtype = GGMLQuantizationType.Q4_1
    write_tiny_gguf(q4, tiny_hf_model(config), {"proj": qtype, "embed_tokens": qtype})
    return {"q4_1": str(q4), "bf16": str(make_tiny_model_dir(base, "llama", **KERNEL_FRIENDLY))}


@pytest.mark.parametrize("model", ["q4_1", "bf16"])
def test_engine_native_replay_equals_python_loop_and_eager(
    tiny_models: dict[str, str], model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from heron import LLM

    monkeypatch.setenv("HERON_BACKEND", "cpu")
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.25")
    prompts = ["Herons wade.", "a", "Paged attention stores keys in blocks"]
    results = {}
    for mode in ("native", "python", "eager"):
        monkeypatch.setenv(NATIVE_REPLAY_ENV, "0" if mode == "python" else "1")
        llm = LLM(
            tiny_models[model], dtype="bfloat16", block_size=16, enforce_eager=mode == "eager"
        )
        one = _greedy_and_logprobs(llm, prompts[:1])  # single stream: the 1-sequence graph
        results[mode] = (one, _greedy_and_logprobs(llm, prompts))
        graphs = llm.llm_engine.core.runner.step_graphs
        if mode != "eager":
            assert graphs is not None and graphs.replays > 0 and 1 in graphs.recorded_sizes
            segments = [r.graph.segments for r in graphs._graphs.values()]
            if mode == "python":
                assert all(not s.startswith("native:") for seg in segments for s in seg)
            elif model == "q4_1":  # every launch has a raw entry: one program per step
                assert all(len(seg) == 1 and seg[0].startswith("native:") for seg in segments)
        del llm
    assert results["native"] == results["python"] == results["eager"]
