"""How a data-parallel front and its replicas exchange embedding requests: each replica's share of
a chunk in one message of plain values, each finished vector back as float32 bytes that the front
turns into exactly the floats one engine returns (``out.outputs.embedding`` stays a list of
Python floats); placement, aborts and duplicate ids behave as with one message per request."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from test_embed_data_parallel import (  # noqa: F401 (_small_kv_cache: autouse)
    _small_kv_cache,
    bert_replicas,
    mean_pooling_llm,
)
from test_embed_encoders import INPUTS, _encoder_dir

import heron.engine.llm
from heron import PoolingParams
from heron.pooling.config import PoolerConfig
from heron.pooling.frontend import PoolingFrontend, to_wire, unpack_embedding
from heron.sched.output import RequestUpdate


class _Tokenizer:
    """Enough of a tokenizer for a frontend fed token ids."""

    truncation_side = "right"


def _frontend(pooler: PoolerConfig) -> PoolingFrontend:
    return PoolingFrontend(
        _Tokenizer(), pooler=pooler, max_model_len=64, vocab_size=300, hidden_size=16
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_packed_vectors_are_the_floats_of_the_outputs(normalize: bool) -> None:
    pooler = PoolerConfig(pooling_type="MEAN", normalize=normalize, matryoshka=True)
    sender, receiver = _frontend(pooler), _frontend(pooler)
    params = [PoolingParams(), PoolingParams(dimensions=5), PoolingParams(normalize=not normalize)]
    prompts = [[5, 6, 7], list(range(1, 40)), [9]]
    prepared = [
        sender.prepare(f"r{i}", ids, p, lambda request: None)
        for i, (ids, p) in enumerate(zip(prompts, params, strict=True))
    ]
    # The wire form rebuilds the same request on the replica's side (after pickling).
    wires = pickle.loads(pickle.dumps([to_wire(p) for p in prepared]))
    rebuilt = [receiver.from_wire(w) for w in wires]
    for a, b in zip(prepared, rebuilt, strict=True):
        assert (a.request_id, a.prompt, a.params) == (b.request_id, b.prompt, b.params)
        assert b.request.prompt_token_ids == a.request.prompt_token_ids
        assert b.request.arrival_time == a.request.arrival_time
        assert b.request.sampling_params.max_tokens == 1
    torch.manual_seed(0)
    vectors = [torch.randn(16) * 3 for _ in prompts]
    for item in rebuilt:
        receiver.add(item)
    for item in prepared:
        sender.add(item)
    aborted = RequestUpdate(request=prepared[2].request, finished=True)  # no vector: an abort
    updates = [
        RequestUpdate(request=p.request, finished=True, pooled=v)
        for p, v in zip(prepared[:2], vectors[:2], strict=True)
    ] + [aborted]
    want = sender.outputs(updates)
    rebuilt_updates = [
        RequestUpdate(request=r.request, finished=True, pooled=u.pooled)
        for r, u in zip(rebuilt, updates, strict=True)
    ]
    packed = pickle.loads(pickle.dumps(receiver.packed_outputs(rebuilt_updates)))
    got = [unpack_embedding(rid, p.prompt, data) for (rid, data), p in zip(packed, prepared)]
    assert got == want  # the same floats, bit for bit, and the same prompt fields
    assert got[2].outputs is None
    for out in got[:2]:
        assert type(out.outputs.embedding) is list
        assert all(type(x) is float for x in out.outputs.embedding)
    assert len(got[1].outputs.embedding) == 5


def test_replicas_get_one_message_per_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with bert_replicas(tmp_path) as (llm, engine, hf):
        sent: list[tuple[int, str, int]] = []
        send = engine._send

        def counting_send(index: int, message: tuple) -> None:  # type: ignore[type-arg]
            kind, payload = message
            sent.append((index, kind, len(payload) if kind == "add_pooling" else 1))
            send(index, message)

        monkeypatch.setattr(engine, "_send", counting_send)
        monkeypatch.setattr(heron.engine.llm, "EMBED_CHUNK", 6)
        inputs = INPUTS * 4  # 16 inputs: chunks of 6, 6 and 4
        # No outputs read between chunks here, so that the loads (and the placement) do not
        # depend on how fast the replicas are; reading them is checked below.
        real_poll = engine.poll
        monkeypatch.setattr(engine, "poll", lambda: [])
        outs = llm.embed(inputs, use_tqdm=False)
        monkeypatch.setattr(engine, "poll", real_poll)
        # Per chunk, one message per replica, each with half of the chunk (placement alternates
        # over the sorted chunk as it did request by request).
        assert [kind for _, kind, _ in sent] == ["add_pooling"] * 6
        assert [(i, n) for i, _, n in sent] == [(0, 3), (1, 3)] * 2 + [(0, 2), (1, 2)]
        for ids, out in zip(inputs, outs, strict=True):
            assert out.prompt_token_ids == ids
            assert type(out.outputs.embedding) is list
            with torch.no_grad():
                want = hf(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0)
            torch.testing.assert_close(
                torch.tensor(out.outputs.embedding), want, atol=2e-5, rtol=1e-4
            )
        assert engine.replica_loads() == [0, 0] and not engine.has_unfinished_requests()
        # Between chunks LLM.embed collects what the replicas have sent, without waiting.
        polled: list[int] = []
        poll = engine.poll

        def counting_poll() -> list:  # type: ignore[type-arg]
            got = poll()
            polled.append(len(got))
            return got

        monkeypatch.setattr(engine, "poll", counting_poll)
        again_outs = llm.embed(inputs, use_tqdm=False)
        assert len(polled) == 3  # once per chunk
        for a, b in zip(again_outs, outs, strict=True):
            assert a.prompt_token_ids == b.prompt_token_ids
            torch.testing.assert_close(
                torch.tensor(a.outputs.embedding), torch.tensor(b.outputs.embedding)
            )
        assert engine.poll() == [] and not engine.has_unfinished_requests()  # returns at once
        # With a backlog limit, the next chunk waits until fewer inputs are in flight.
        in_flight: list[int] = []
        add_many = engine.add_prepared_many

        def recording_add_many(items: list) -> None:  # type: ignore[type-arg]
            in_flight.append(sum(engine.replica_loads()))
            add_many(items)

        monkeypatch.setattr(engine, "add_prepared_many", recording_add_many)
        monkeypatch.setattr(heron.engine.llm, "EMBED_CHUNK", 2)
        monkeypatch.setattr(heron.engine.llm, "EMBED_BACKLOG", 3)
        backlogged = llm.embed(inputs, use_tqdm=False)
        assert len(in_flight) == 8 and max(in_flight) <= 3, in_flight
        for a, b in zip(backlogged, outs, strict=True):
            assert a.prompt_token_ids == b.prompt_token_ids
            torch.testing.assert_close(
                torch.tensor(a.outputs.embedding), torch.tensor(b.outputs.embedding)
            )
        monkeypatch.setattr(engine, "add_prepared_many", add_many)
        # An id already in use refuses the whole batch before anything is sent.
        sent.clear()
        first = engine.prepare_pooling("dup", INPUTS[0], None)
        engine.add_prepared(first)
        again = [engine.prepare_pooling("x", INPUTS[1], None), first]
        with pytest.raises(ValueError, match="'dup' is already in use"):
            engine.add_prepared_many(again)
        with pytest.raises(ValueError, match="unique"):
            engine.add_prepared_many([again[0], again[0]])
        assert len(sent) == 1 and engine.replica_loads() == [1, 0]
        # An abort before the vector arrives: its late output is dropped, the load settles.
        engine.abort_request("dup")
        engine.add_prepared_many([again[0]])
        done = []
        while engine.has_unfinished_requests():
            done.extend(engine.step())
        assert [o.request_id for o in done] == ["x"] and engine.replica_loads() == [0, 0]


def test_one_engine_steps_between_chunks_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One engine in the front steps itself while the backlog is full: the same vectors."""
    folder, _ = _encoder_dir(tmp_path, "bert")
    llm = mean_pooling_llm(folder, replicas=1)
    inputs = INPUTS * 4
    whole = llm.embed(inputs, use_tqdm=False)
    monkeypatch.setattr(heron.engine.llm, "EMBED_CHUNK", 2)
    monkeypatch.setattr(heron.engine.llm, "EMBED_BACKLOG", 3)
    events: list[str] = []
    engine = llm.llm_engine
    step, add_many = engine.step, engine.add_prepared_many
    monkeypatch.setattr(engine, "step", lambda: events.append("step") or step())
    monkeypatch.setattr(engine, "add_prepared_many", lambda x: events.append("add") or add_many(x))
    chunked = llm.embed(inputs, use_tqdm=False)
    assert [o.prompt_token_ids for o in chunked] == inputs
    for a, b in zip(chunked, whole, strict=True):
        torch.testing.assert_close(
            torch.tensor(a.outputs.embedding), torch.tensor(b.outputs.embedding)
        )
    assert events.index("step") < len(events) - 1 - events[::-1].index("add")  # steps between
    assert events.count("add") == 8 and not engine.has_unfinished_requests()
