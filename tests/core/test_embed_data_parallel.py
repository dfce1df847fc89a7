"""Embeddings with data parallelism: ``data_parallel_size=2`` with the pooling runner. The front
tokenizes and checks each input, places it on the least-loaded replica, and the replicas' pooled
vectors equal Hugging Face's; bad input is refused in the front."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_embed_encoders import INPUTS, _encoder_dir

import heron.engine.llm
from heron import LLM, PoolingParams
from heron.engine.data_parallel import DataParallelEngine


@pytest.fixture(autouse=True)
def _small_kv_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_BACKEND", "cpu" if _has_cpu() else "reference")
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.1")
    monkeypatch.setenv("HERON_KVCACHE_SPACE", "0.1")


def _has_cpu() -> bool:
    import importlib.util

    return importlib.util.find_spec("heron_cpu") is not None


def mean_pooling_llm(folder: Path, replicas: int = 2) -> LLM:
    """The tiny encoder at ``folder`` in float32, mean pooling without normalising, on
    ``replicas`` data-parallel replicas (1: one engine in this process)."""
    return LLM(
        str(folder),
        dtype="float32",
        data_parallel_size=replicas,
        max_model_len=128,
        pooler_config={"pooling_type": "MEAN", "normalize": False},
    )


@contextlib.contextmanager
def bert_replicas(tmp_path: Path) -> Iterator[tuple[LLM, DataParallelEngine, Any]]:
    """The tiny BERT on two mean-pooling replicas and its Hugging Face model; shut down after."""
    folder, hf = _encoder_dir(tmp_path, "bert")
    llm = mean_pooling_llm(folder)
    try:
        engine = llm.llm_engine
        assert isinstance(engine, DataParallelEngine)
        yield llm, engine, hf
    finally:
        llm.shutdown()


def test_pooling_replicas_share_the_work_and_equal_hf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with bert_replicas(tmp_path) as (llm, engine, hf):
        # Placement: each input goes to the replica with fewer unfinished inputs.
        for i, ids in enumerate(INPUTS):
            engine.add_prepared(engine.prepare_pooling(f"p{i}", ids, None))
        assert engine.replica_loads() == [2, 2]
        done = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                done[out.request_id] = out
        assert sorted(done) == [f"p{i}" for i in range(len(INPUTS))]
        assert engine.replica_loads() == [0, 0]
        # LLM.embed through the front: HF's vectors, in the caller's order.
        inputs = INPUTS * 3
        outs = llm.embed(inputs, use_tqdm=False)
        for ids, out in zip(inputs, outs):
            with torch.no_grad():
                want = hf(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0)
            got = torch.tensor(out.outputs.embedding)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
            assert out.prompt_token_ids == ids
        per_replica = [s.prompt_tokens for s in engine.replica_stats()]
        assert all(n > 0 for n in per_replica), per_replica
        # Refused in the front, as one engine refuses: too long, bad ids, bad dimensions.
        with pytest.raises(
            ValueError, match="maximum context length is 128 tokens, but the input has 138"
        ):
            llm.embed([list(range(2, 140))], use_tqdm=False)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            llm.embed([[5, 10_000]], use_tqdm=False)
        with pytest.raises(ValueError, match="dimensions"):
            llm.embed(["x"], PoolingParams(dimensions=8), use_tqdm=False)
        assert engine.replica_loads() == [0, 0] and not engine.has_unfinished_requests()
        # Submitted in chunks (replicas start on the first while the front tokenizes the next):
        # the same vectors in the caller's order; a bad input in a later chunk raises and the
        # chunks already submitted are aborted.
        monkeypatch.setattr(heron.engine.llm, "EMBED_CHUNK", 5)
        chunked = llm.embed(inputs, use_tqdm=False)
        assert [o.prompt_token_ids for o in chunked] == inputs
        for a, b in zip(chunked, outs):
            torch.testing.assert_close(
                torch.tensor(a.outputs.embedding), torch.tensor(b.outputs.embedding)
            )
        with pytest.raises(ValueError, match="outside the vocabulary"):
            llm.embed([*inputs, [5, 10_000]], use_tqdm=False)
        assert engine.replica_loads() == [0, 0] and not engine.has_unfinished_requests()
