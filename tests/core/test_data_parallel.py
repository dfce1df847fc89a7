"""Data parallelism (``data_parallel_size`` > 1): replicas in their own processes answer like one
engine and like Hugging Face ``generate()``; requests are spread by load and checked in the
front; aborts and ``abort_all`` reach the replica that holds the request; a dead replica fails
every waiter with its name instead of hanging them."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import torch
from model_utils import EQUALITY_PROMPTS, hf_greedy, kernel_friendly_overrides, make_tiny_model_dir

from heron import LLM, SamplingParams
from heron.distributed.cpu_binding import BIND_ENV, CoreBindingError
from heron.distributed.executor import WorkerFailedError
from heron.engine.async_llm import AsyncLLM, EngineDeadError
from heron.engine.data_parallel import DataParallelEngine
from heron.engine.output_processor import RequestOutputKind

NEW_TOKENS = 10
TP_SHAPE = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}


@pytest.fixture(autouse=True)
def _small_kv_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.1")
    monkeypatch.setenv("HERON_KVCACHE_SPACE", "0.1")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[int]]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny_model_dir(
        tmp_path_factory.mktemp("dp"), "llama", **{**kernel_friendly_overrides("llama"), **TP_SHAPE}
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = [tokenizer(p)["input_ids"] for p in EQUALITY_PROMPTS]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, hf_greedy(hf, prompt_ids, NEW_TOKENS)


GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)


@pytest.mark.parametrize("tp", [1, 2])
def test_replicas_equal_hf_and_share_the_work(llama, backend: str, tp: int) -> None:
    if tp == 2 and backend == "reference":
        pytest.skip("replicas of two ranks run on cpu; test_parallel covers TP on reference")
    folder, expected = llama
    llm = LLM(
        str(folder), dtype="float32", block_size=16, data_parallel_size=2, tensor_parallel_size=tp
    )
    try:
        engine = llm.llm_engine
        assert isinstance(engine, DataParallelEngine)
        outputs = llm.generate(EQUALITY_PROMPTS, GREEDY, use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected
        per_replica = [s.generation_tokens for s in engine.replica_stats()]
        assert all(tokens > 0 for tokens in per_replica), per_replica
        assert sum(per_replica) == NEW_TOKENS * len(EQUALITY_PROMPTS)
        assert engine.stats().generation_tokens == sum(per_replica)
        assert engine.replica_loads() == [0, 0]
    finally:
        llm.shutdown()


def test_placement_goes_to_the_least_loaded_replica(llama) -> None:
    folder, _ = llama
    llm = LLM(str(folder), dtype="float32", data_parallel_size=2)
    engine = llm.llm_engine
    try:
        long = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
        engine.add_request("a", "one", SamplingParams(temperature=1.0, seed=1, max_tokens=200, n=3))
        engine.add_request("b", "two", long)
        engine.add_request("c", "three", long)
        # a's three sequences on replica 0, then b and c on replica 1 (1, then 2 < 3 sequences).
        assert engine.replica_loads() == [3, 2]
        engine.add_request("d", "four", long)
        assert engine.replica_loads() == [3, 3]
        engine.abort_request("a")
        assert engine.replica_loads() == [0, 3]
        engine.add_request("e", "five", long)
        assert engine.replica_loads() == [1, 3]
        finals = engine.abort_all()
        assert sorted(o.request_id for o in finals) == ["b", "c", "d", "e"]
        assert all(o.finished for o in finals)
        assert engine.replica_loads() == [0, 0]
        assert not engine.has_unfinished_requests()
    finally:
        llm.shutdown()


def test_bad_input_is_refused_in_the_front(llama) -> None:
    folder, _ = llama
    llm = LLM(str(folder), dtype="float32", data_parallel_size=2, max_model_len=64)
    try:
        with pytest.raises(ValueError, match="maximum context length is 64 tokens"):
            llm.generate([list(range(3, 80))], GREEDY, use_tqdm=False)
        with pytest.raises(ValueError, match="already in use"):
            llm.llm_engine.add_request("x", "hi", GREEDY)
            llm.llm_engine.add_request("x", "hi", GREEDY)
        llm.llm_engine.abort_request("x")
        assert llm.llm_engine.replica_loads() == [0, 0]
        # the engine serves on after refusing
        assert len(llm.generate(["hi"], GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 10
    finally:
        llm.shutdown()


def test_a_replica_that_cannot_start_raises_its_own_error(llama) -> None:
    from heron.engine.kv_sizing import KVCacheTooSmallError

    folder, _ = llama
    with pytest.raises(KVCacheTooSmallError, match="room for 128 tokens") as caught:
        LLM(str(folder), dtype="float32", data_parallel_size=2, num_gpu_blocks_override=8)
    assert "data-parallel replica" in "".join(caught.value.__notes__)


def test_core_binding_names_every_replica_rank(llama, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, _ = llama
    monkeypatch.setenv(BIND_ENV, "0|1")
    with pytest.raises(CoreBindingError, match="2 data-parallel replicas of 2 rank"):
        LLM(str(folder), dtype="float32", data_parallel_size=2, tensor_parallel_size=2)


def test_async_streams_aborts_and_a_dead_replica(llama) -> None:
    folder, expected = llama
    engine = AsyncLLM(model=str(folder), dtype="float32", block_size=16, data_parallel_size=2)

    async def ids(prompt: str) -> list[int]:
        tokens: list[int] = []
        async for out in engine.generate(prompt, GREEDY, output_kind=RequestOutputKind.DELTA):
            tokens.extend(out.outputs[0].token_ids)
        return tokens

    async def first_then_leave(prompt: str) -> None:
        long = SamplingParams(temperature=0.0, max_tokens=300, ignore_eos=True)
        async for _ in engine.generate(prompt, long):
            break  # leaving the loop aborts the request in its replica

    async def main() -> list[list[int]]:
        results = await asyncio.gather(*(ids(p) for p in EQUALITY_PROMPTS))
        await asyncio.gather(*(first_then_leave(f"p{i}") for i in range(4)))
        return list(results)

    try:
        assert asyncio.run(main()) == expected
        for _ in range(100):  # the aborts reach the engine thread asynchronously
            if engine.engine.replica_loads() == [0, 0]:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert engine.engine.replica_loads() == [0, 0]

        async def streams_while_a_replica_dies() -> list[str]:
            long = SamplingParams(temperature=0.0, max_tokens=2000, ignore_eos=True)
            started = asyncio.Event()

            async def one(i: int) -> str:
                try:
                    async for _ in engine.generate(f"stream {i}", long):
                        started.set()
                    return "finished"
                except EngineDeadError as exc:
                    return f"error: {exc.__cause__}"

            tasks = [asyncio.create_task(one(i)) for i in range(4)]
            await asyncio.wait_for(started.wait(), 60)
            victim = engine.engine._replicas[1].process.pid
            os.kill(victim, signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*tasks), 30)

        outcomes = asyncio.run(streams_while_a_replica_dies())
        assert all(o.startswith("error") for o in outcomes), outcomes
        assert any("data-parallel replica 1" in o for o in outcomes), outcomes
        assert isinstance(engine.dead_error, WorkerFailedError)
        assert not engine.is_running
    finally:
        engine.shutdown()
    assert all(r.process.exitcode is not None for r in engine.engine._replicas)
