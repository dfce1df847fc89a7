"""Step graphs: decode steps replayed from recorded kernel launches give the eager results.

The mechanics are checked with a fake backend whose "kernel" writes through numpy (not a torch
op, so the capture guard does not see it, as it does not see compiled kernels); the engine test
runs a bfloat16 model with graphs and with ``enforce_eager`` and needs identical ids and
logprobs, with batch sizes changing as requests join and finish.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from model_utils import KERNEL_FRIENDLY, make_tiny_model_dir

from heron import LLM, SamplingParams
from heron.runner.input_batch import StepInputs
from heron.runner.step_graphs import StepGraphs
from heron_interfaces import AttentionMetadata
from heron_interfaces.kernel_ops import KernelOps

BLOCK = 16


class _Tape:
    """A StepGraph for plain Python callables, recorded through the module-global below."""

    active: list | None = None

    def __init__(self) -> None:
        self.calls: list = []

    def __enter__(self) -> _Tape:
        _Tape.active = self.calls
        return self

    def __exit__(self, *exc_info: object) -> None:
        _Tape.active = None

    def replay(self) -> None:
        for fn, args in self.calls:
            fn(*args)


def _launch(fn, *args) -> None:
    fn(*args)
    if _Tape.active is not None:
        _Tape.active.append((fn, args))


def _kernel(ids: np.ndarray, positions: np.ndarray, seq_lens: np.ndarray, out: np.ndarray) -> None:
    """What a compiled kernel does: read inputs from memory, write the output in place."""
    out[:] = ids * 1000 + positions * 10 + seq_lens


class _RecordingOps(KernelOps):
    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.offered: list[int] = []

    def capture_graph(self, num_tokens: int) -> _Tape | None:
        self.offered.append(num_tokens)
        return _Tape() if num_tokens <= self.max_tokens else None


def _kernel_forward(ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata):
    out = ids.new_empty(ids.shape[0])  # an allocation: kept alive by the guard
    view = out.view(-1, 1)[:, 0]  # views are free
    _launch(_kernel, ids.numpy(), positions.numpy(), md.seq_lens.numpy(), view.numpy())
    return out


def _torch_forward(ids: torch.Tensor, positions: torch.Tensor, md: AttentionMetadata):
    return ids * 1000 + positions * 10 + md.seq_lens  # torch arithmetic: lost on replay


def _decode_inputs(ids: list[int], positions: list[int]) -> StepInputs:
    n = len(ids)
    seq_lens = torch.tensor([p + 1 for p in positions], dtype=torch.int32)
    blocks = max(-(-int(s) // BLOCK) for s in seq_lens)
    table = torch.arange(n * blocks, dtype=torch.int32).view(n, blocks)
    qsl = torch.arange(n + 1, dtype=torch.int32)
    pos = torch.tensor(positions)
    md = AttentionMetadata(
        query_start_loc=qsl,
        seq_lens=seq_lens,
        block_tables=table,
        slot_mapping=(table[:, 0].long() * BLOCK + pos % BLOCK),
        max_query_len=1,
        max_seq_len=int(seq_lens.max()),
        num_prefill_tokens=0,
        num_decode_tokens=n,
        num_seqs=n,
        query_start_loc_cpu=qsl,
        seq_lens_cpu=seq_lens,
    )
    return StepInputs(torch.tensor(ids), pos, md, qsl.numpy().astype(np.int64))


def _graphs(forward, ops: KernelOps) -> StepGraphs:
    return StepGraphs(
        forward=forward,
        kernel_ops=ops,
        device=torch.device("cpu"),
        block_size=BLOCK,
        max_model_len=128,
    )


def _expected(inputs: StepInputs) -> list[int]:
    return _torch_forward(inputs.input_ids, inputs.positions, inputs.metadata).tolist()


def test_recorded_step_replays_with_new_inputs() -> None:
    graphs = _graphs(_kernel_forward, _RecordingOps(max_tokens=4))
    first = _decode_inputs([3, 4], [20, 40])
    assert graphs.run(first).tolist() == _expected(first)  # the recording pass computes
    assert graphs.recorded_sizes == [2] and graphs.replays == 0
    for step in range(1, 4):
        later = _decode_inputs([5 + step, 7], [20 + step, 40 + step])
        assert graphs.run(later).tolist() == _expected(later)
    assert graphs.replays == 3
    other_size = _decode_inputs([1, 2, 3], [5, 6, 70])  # a wider block table, a new size
    assert graphs.run(other_size).tolist() == _expected(other_size)
    assert graphs.recorded_sizes == [2, 3]


def test_steps_padded_to_the_capture_sizes() -> None:
    graphs = _graphs(_kernel_forward, _RecordingOps(max_tokens=64))
    ten = _decode_inputs(list(range(10)), list(range(30, 40)))
    assert graphs.run(ten).tolist() == _expected(ten)  # 10 rows of the 12-row graph
    nine = _decode_inputs(list(range(5, 14)), list(range(50, 59)))
    assert graphs.run(nine).tolist() == _expected(nine)
    assert graphs.recorded_sizes == [12] and graphs.replays == 1
    fixed = graphs._graphs[(12, torch.get_num_threads())].metadata
    # Padding rows (9 now, 10 and 11 since the start) write no KV and attend to one token.
    assert fixed.slot_mapping[9:].tolist() == [-1, -1, -1]
    assert fixed.seq_lens[9:].tolist() == [1, 1, 1]
    assert fixed.num_seqs == 12


def test_torch_ops_in_the_pass_refuse_the_graph(caplog: pytest.LogCaptureFixture) -> None:
    ops = _RecordingOps(max_tokens=4)
    graphs = _graphs(_torch_forward, ops)
    first = _decode_inputs([3, 4], [20, 40])
    with caplog.at_level(logging.INFO, logger="heron.runner.step_graphs"):
        assert graphs.run(first).tolist() == _expected(first)  # still the right answer
    assert "aten.mul" in caplog.text and "run eagerly" in caplog.text
    assert graphs.recorded_sizes == []
    assert graphs.run(_decode_inputs([5, 6], [21, 41])) is None  # the caller runs it eagerly
    assert ops.offered == [2]  # refused once, not offered again


class _DeviceTape(_Tape):
    """A recorder that, like a CUDA graph, takes every operation: core applies no guard."""

    records_torch_ops = True


class _RefusedDeviceTape(_DeviceTape):
    """A capture the device refuses when it ends, as CUDA does after a host sync inside it."""

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        raise RuntimeError("operation not permitted when stream is capturing")


class _DeviceOps(_RecordingOps):
    def __init__(self, fail_capture: bool = False) -> None:
        super().__init__(max_tokens=64)
        self.tape_cls = _RefusedDeviceTape if fail_capture else _DeviceTape

    def capture_graph(self, num_tokens: int) -> _Tape | None:
        self.offered.append(num_tokens)
        return self.tape_cls()


def test_a_device_graph_keeps_torch_ops() -> None:
    """With ``records_torch_ops`` the graph holds torch's work too, so nothing is refused."""
    graphs = _graphs(_torch_forward, _DeviceOps())
    first = _decode_inputs([3, 4], [20, 40])
    assert graphs.run(first).tolist() == _expected(first)
    assert graphs.recorded_sizes == [2]


def test_a_failed_device_capture_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    ops = _DeviceOps(fail_capture=True)
    graphs = _graphs(_torch_forward, ops)
    with caplog.at_level(logging.WARNING, logger="heron.runner.step_graphs"):
        assert graphs.run(_decode_inputs([3, 4], [20, 40])) is None  # the caller runs it eagerly
    assert "capturing them failed" in caplog.text and "stream is capturing" in caplog.text
    assert graphs.recorded_sizes == []
    assert graphs.run(_decode_inputs([5, 6], [21, 41])) is None
    assert ops.offered == [2]  # refused once, not offered again


def test_only_pure_decode_steps_within_the_backend_sizes() -> None:
    ops = _RecordingOps(max_tokens=2)
    graphs = _graphs(_kernel_forward, ops)
    assert graphs.run(_decode_inputs([1, 2, 3], [4, 5, 6])) is None  # capture_graph said None
    mixed = _decode_inputs([1, 2], [4, 5])
    mixed.metadata = AttentionMetadata(
        **{
            **{f: getattr(mixed.metadata, f) for f in mixed.metadata.__dataclass_fields__},
            "num_prefill_tokens": 1,
            "num_decode_tokens": 1,
        }
    )
    assert graphs.run(mixed) is None
    too_long = _decode_inputs([1], [200])  # past max_model_len: wider than the fixed table
    assert graphs.run(too_long) is None
    assert graphs.recorded_sizes == []


@pytest.fixture(scope="module")
def tiny_bf16_model(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("graphs"), "llama", **KERNEL_FRIENDLY)


def test_engine_with_graphs_equals_enforce_eager(tiny_bf16_model, backend: str) -> None:
    """Batch sizes 1-12 as requests join and finish: mixed steps eager, pure decodes replayed."""
    prompts = ["Herons wade.", "a", "Paged attention stores keys in blocks", "The fox"]
    prompts += [f"Request number {i} asks for {i * 7} tokens" for i in range(8)]
    params = [
        SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n, logprobs=2)
        for n in (20, 9, 14, 5, 12, 6, 15, 7, 11, 13, 8, 10)
    ]
    results = {}
    for eager in (True, False):
        llm = LLM(str(tiny_bf16_model), dtype="bfloat16", block_size=BLOCK, enforce_eager=eager)
        engine = llm.llm_engine
        for i, (prompt, p) in enumerate(zip(prompts[:2], params[:2])):
            engine.add_request(str(i), prompt, p)
        finished, steps = {}, 0
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = out.outputs[0]
            steps += 1
            if steps == 4:  # join while the first two decode: up to 12 sequences
                for i in range(2, len(prompts)):
                    engine.add_request(str(i), prompts[i], params[i])
        results[eager] = {
            rid: (list(c.token_ids), [{t: lp.logprob for t, lp in e.items()} for e in c.logprobs])
            for rid, c in finished.items()
        }
        graphs = engine.core.runner.step_graphs
        if eager or backend != "cpu":
            assert graphs is None
        else:
            assert graphs is not None and graphs.replays > 0
            # 12: padded, and past the GEMV's rows (oneDNN's matmuls, recorded as torch launches)
            assert {1, 2, 12} <= set(graphs.recorded_sizes)
    assert results[False] == results[True]


def test_recording_does_not_import_dynamo() -> None:
    """torch imports torch._dynamo (~1 s) the first time a dispatch mode that keeps dynamo out
    runs; the guard opts out, so the server's first request does not pay for it."""
    code = (
        "import sys, torch\n"
        "from heron.runner.step_graphs import _CaptureGuard\n"
        "with _CaptureGuard() as guard:\n"
        "    torch.empty(4).add_(1)\n"
        "assert guard.unrecorded, 'the guard saw nothing'\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
