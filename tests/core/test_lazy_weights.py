"""Ranks read only what they keep (issue 17): lazy checkpoint tensors equal the eager ones for
every slice a layer takes, from safetensors and GGUF (quantized rows, per-head rotary permutation),
and the tensor-parallel layers load their shard without ever reading a whole tensor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from gguf import GGMLQuantizationType as Q
from model_utils import tiny_config, tiny_hf_model, write_tiny_gguf

from heron.distributed.tensor_parallel import TensorParallel
from heron.layers.embedding import VocabParallelEmbedding
from heron.layers.linear import ColumnParallelLinear, FusedLinear, RowParallelLinear
from heron.loader.checkpoint import iter_checkpoint
from heron.loader.gguf_source import iter_gguf_weights
from heron.loader.lazy import LazyTensor

QTYPES = {"q_proj": Q.Q4_0, "k_proj": Q.Q4_1, "v_proj": Q.Q8_0, "o_proj": Q.F16, "up_proj": Q.BF16}


def _slices(shape: torch.Size) -> list[Any]:
    rows = shape[0]
    cases: list[Any] = [slice(None), slice(0, rows // 2), slice(rows // 2, rows), 0, rows - 1]
    if len(shape) == 2:
        cols = shape[1]
        cases += [(slice(None), slice(0, cols // 2)), (slice(rows // 4, rows // 2), slice(None))]
    return cases


def _assert_lazy_equals_eager(eager: dict[str, torch.Tensor], lazy: list[tuple[str, Any]]):
    assert [name for name, _ in lazy] == list(eager)
    for name, tensor in lazy:
        assert isinstance(tensor, LazyTensor)
        full = eager[name]
        assert tensor.shape == full.shape and tensor.dtype == full.dtype, name
        for index in _slices(full.shape):
            assert torch.equal(tensor[index], full[index]), (name, index)
        assert torch.equal(tensor.materialize(), full)


def test_safetensors_slices_equal_the_whole_tensor(tmp_path: Path) -> None:
    model = tiny_hf_model(tiny_config("llama"))
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    eager = dict(iter_checkpoint(tmp_path))
    _assert_lazy_equals_eager(eager, list(iter_checkpoint(tmp_path, lazy=True)))


def test_gguf_rows_equal_the_dequantized_tensor(tmp_path: Path) -> None:
    hf = tiny_hf_model(tiny_config("llama"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, hf, QTYPES)
    eager = dict(iter_gguf_weights(str(path), hf.config))
    lazy = list(iter_gguf_weights(str(path), hf.config, lazy=True))
    _assert_lazy_equals_eager(eager, lazy)
    # Whole heads of a permuted projection: decoded alone, un-permuted alone.
    head = hf.config.hidden_size // hf.config.num_attention_heads
    q_name = "model.layers.0.self_attn.q_proj.weight"
    q = dict(lazy)[q_name]
    assert torch.equal(q[head : 3 * head], eager[q_name][head : 3 * head])


class _Spy:
    """A LazyTensor over ``full`` that records what is read and refuses to read it whole."""

    def __init__(self, full: torch.Tensor) -> None:
        self.full = full
        self.reads: list[Any] = []
        self.lazy = LazyTensor("w", tuple(full.shape), full.dtype, self._read)

    def _read(self, index: Any) -> torch.Tensor:
        if index == slice(None):
            raise AssertionError("the whole tensor was read")
        self.reads.append(index)
        return self.full[index]


class _NoComm:
    """Loading runs no collective; a group of two only needs a communicator to exist."""


TP = TensorParallel(rank=1, size=2, comm=_NoComm())  # type: ignore[arg-type]


def test_parallel_layers_read_only_their_shard() -> None:
    torch.manual_seed(0)
    full = torch.randn(10, 8)
    column = ColumnParallelLinear(8, 10, bias=False, dtype=torch.float32, tp=TP)
    spy = _Spy(full)
    column.load_tensor("weight", spy.lazy, "w")
    assert torch.equal(column.weight, full[5:10])
    assert spy.reads == [slice(5, 10)]

    row = RowParallelLinear(8, 10, bias=False, dtype=torch.float32, tp=TP)
    spy = _Spy(full)
    row.load_tensor("weight", spy.lazy, "w")
    assert torch.equal(row.weight, full[:, 4:8])
    assert spy.reads == [(slice(None), slice(4, 8))]

    vocab = VocabParallelEmbedding(10, 8, dtype=torch.float32, tp=TP)
    spy = _Spy(full)
    vocab.load_tensor("weight", spy.lazy, "w")
    assert torch.equal(vocab.weight, full[5:10])

    fused = FusedLinear(8, [2, 3], bias=False, dtype=torch.float32, shard_offsets=[2, 3])
    spy = _Spy(full)
    fused.load_part(1, "weight", spy.lazy, "w")
    assert torch.equal(fused.weight[2:5], full[3:6])
    assert spy.reads == [slice(3, 6)]


def test_a_lazy_tensor_works_where_a_tensor_is_expected() -> None:
    full = torch.arange(12.0).reshape(3, 4)
    lazy = LazyTensor("t", (3, 4), torch.float32, full.__getitem__)
    target = torch.empty(3, 4)
    target.copy_(lazy)  # a tensor method given a LazyTensor
    assert torch.equal(target, full)
    assert torch.equal(torch.cat([lazy, lazy]), torch.cat([full, full]))
    assert [p.shape[0] for p in lazy.split([1, 2])] == [1, 2]  # other methods: on the whole
    assert lazy.size(1) == 4 and lazy.ndim == 2 and lazy.numel() == 12


@pytest.mark.parametrize("rows", [slice(0, 0), slice(2, 1)])
def test_empty_row_slices(rows: slice) -> None:
    full = torch.arange(12.0).reshape(3, 4)
    lazy = LazyTensor("t", (3, 4), torch.float32, full.__getitem__)
    assert lazy[rows].shape == full[rows].shape
