"""Tensor and pipeline parallelism through the multiprocess executor: the same greedy ids as one
process and as Hugging Face ``generate()``, on the CPU and reference backends, in every scheduling
mode, for tensor parallel 2, pipeline parallel 2 and both (2 x 2).

Tiny models get four query heads over two KV heads (head size 64, which every backend's kernels
take): with two ranks the KV heads split, with four they are replicated. The vocabulary (259) does
not divide by 2 or 4, so the padded vocabulary shards are exercised too. Two layers make two
pipeline stages of one layer each.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch
from model_utils import (
    ARCHS,
    ENGINE_MODES,
    EQUALITY_PROMPTS,
    hf_greedy,
    kernel_friendly_overrides,
    make_tiny_model_dir,
)

from heron import LLM, SamplingParams
from heron.distributed.executor import WorkerFailedError
from heron.engine.engine_core import EngineConfigError

NEW_TOKENS = 10
TP_SHAPE = {"hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2}


def _model(tmp_path_factory: pytest.TempPathFactory, arch: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny_model_dir(
        tmp_path_factory.mktemp(f"tp-{arch}"),
        arch,
        **{**kernel_friendly_overrides(arch), **TP_SHAPE},
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = [tokenizer(p)["input_ids"] for p in EQUALITY_PROMPTS]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, prompt_ids, hf_greedy(hf, prompt_ids, NEW_TOKENS)


@pytest.fixture(scope="module", params=ARCHS)
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return _model(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory):
    return _model(tmp_path_factory, "llama")


def greedy_ids(llm: LLM, prompts: list[str] | None = None) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    outputs = llm.generate(prompts or EQUALITY_PROMPTS, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2)}


def layout_llm(folder, layout: str, **kwargs) -> LLM:
    """The tiny model in float32 on the ranks of ``layout`` (``"2x2"``: tensor x pipeline 2)."""
    tp, pp = LAYOUTS.get(layout, (2, 2))
    return LLM(
        str(folder),
        dtype="float32",
        block_size=16,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        **kwargs,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_architecture_equals_hf(tiny_model, backend: str, layout: str) -> None:
    folder, _prompt_ids, expected = tiny_model
    llm = layout_llm(folder, layout)
    try:
        assert llm.llm_engine.core.executor.world_size == 2
        assert llm.llm_engine.core.runner.model.num_layers == 2 // LAYOUTS[layout][1]
        assert greedy_ids(llm) == expected
    finally:
        llm.shutdown()


@pytest.mark.parametrize("layout", [*LAYOUTS, "2x2"])
@pytest.mark.parametrize("mode", [m for m in ENGINE_MODES if m != "default"])
def test_scheduling_modes(llama, mode: str, backend: str, layout: str) -> None:
    folder, _prompt_ids, expected = llama
    llm = layout_llm(folder, layout, **ENGINE_MODES[mode])
    try:
        assert greedy_ids(llm) == expected, mode
        if mode == "preemption":
            assert llm.llm_engine.stats().num_preemptions > 0
    finally:
        llm.shutdown()


def test_pipeline_keeps_a_batch_per_stage_in_flight(llama) -> None:
    """With two stages the engine submits a second batch before the first one's results are in
    (so both stages work at once), and the results still equal Hugging Face's."""
    folder, _prompt_ids, expected = llama
    llm = LLM(str(folder), dtype="float32", block_size=16, pipeline_parallel_size=2)
    core = llm.llm_engine.core
    depths: list[int] = []
    submit = core.executor.submit

    def counting_submit(out):
        submit(out)
        depths.append(len(core._batches_in_flight) + 1)

    core.executor.submit = counting_submit
    try:
        assert core.scheduler.config.max_batches_in_flight == 2
        assert greedy_ids(llm) == expected
        assert max(depths) == 2
        assert not core._batches_in_flight and not core.scheduler.in_flight
    finally:
        llm.shutdown()


def test_tensor_parallel_decode_steps_replay_from_step_graphs(
    llama, monkeypatch: pytest.MonkeyPatch
) -> None:
    """heron-cpu's all-reduce and vocabulary-parallel lookup are recordable (API 1.12), so each
    rank replays its decode steps from graphs (in bfloat16: heron-cpu's float32 matmuls are torch
    ops, which no graph records), giving the ids of eager steps."""
    monkeypatch.setenv("HERON_BACKEND", "cpu")
    folder, _prompt_ids, _expected = llama

    def tp2(**kwargs) -> LLM:
        return LLM(str(folder), dtype="bfloat16", block_size=16, tensor_parallel_size=2, **kwargs)

    llm = tp2()
    try:
        graphs = llm.llm_engine.core.runner.step_graphs
        assert graphs is not None
        replayed = greedy_ids(llm)
        assert graphs.replays > 0 and graphs.recorded_sizes
    finally:
        llm.shutdown()
    eager = tp2(enforce_eager=True)
    try:
        assert eager.llm_engine.core.runner.step_graphs is None
        assert greedy_ids(eager) == replayed
    finally:
        eager.shutdown()


@pytest.mark.parametrize("layout", [*LAYOUTS, "2x2"])
def test_speculative_decoding_over_ranks(llama, layout: str) -> None:
    """The step message carries each request's drafts, so every rank verifies the same 1 + k
    positions (with pipeline stages too: a request in flight is not scheduled, so its drafts are
    made once its last token is known): greedy ids equal Hugging Face's with drafts both accepted
    and rolled back."""
    from test_spec_decode import NGRAM, OraclePlanner

    folder, prompt_ids, expected = llama
    llm = layout_llm(folder, layout, speculative_config=NGRAM)
    try:
        core = llm.llm_engine.core
        reference = {tuple(p): ids + [0] * 8 for p, ids in zip(prompt_ids, expected)}
        core.scheduler.proposer = OraclePlanner(reference, core.max_model_len)
        assert greedy_ids(llm) == expected
        counters = core.spec_decode
        assert 0 < counters.num_accepted_tokens < counters.num_draft_tokens
    finally:
        llm.shutdown()


def test_kv_heads_replicated_on_four_ranks(llama, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four ranks over two KV heads: each rank keeps the KV head its two query heads read."""
    monkeypatch.setenv("HERON_BACKEND", "reference")
    folder, _prompt_ids, expected = llama
    llm = LLM(str(folder), dtype="float32", block_size=16, tensor_parallel_size=4)
    try:
        assert llm.llm_engine.core.runner.model.num_kv_heads == 1
        assert greedy_ids(llm) == expected
    finally:
        llm.shutdown()


def test_tied_embeddings_on_two_by_two(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tied logits on the last stage come from its own copy of the embedding shard."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    overrides = {**kernel_friendly_overrides("llama"), **TP_SHAPE, "tie_word_embeddings": True}
    folder = make_tiny_model_dir(tmp_path_factory.mktemp("tied"), "llama", **overrides)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = [tokenizer(p)["input_ids"] for p in EQUALITY_PROMPTS]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = hf_greedy(hf, prompt_ids, NEW_TOKENS)
    llm = LLM(
        str(folder),
        dtype="float32",
        block_size=16,
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
    )
    try:
        assert llm.llm_engine.core.runner.model.model.embed_tokens is not None  # first stage
        assert greedy_ids(llm) == expected
    finally:
        llm.shutdown()


def test_sampling_and_logprobs_match_one_process(llama) -> None:
    """Seeded sampling, penalties and logprobs see the same gathered logits as one process."""
    folder, _prompt_ids, _expected = llama
    params = SamplingParams(
        temperature=0.8, top_p=0.9, seed=7, max_tokens=8, logprobs=2, presence_penalty=0.5
    )
    one = LLM(str(folder), dtype="float32", block_size=16)
    two = LLM(
        str(folder),
        dtype="float32",
        block_size=16,
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
    )
    try:
        a = one.generate(EQUALITY_PROMPTS[:2], params, use_tqdm=False)
        b = two.generate(EQUALITY_PROMPTS[:2], params, use_tqdm=False)
        for x, y in zip(a, b):
            assert x.outputs[0].token_ids == y.outputs[0].token_ids
            for lx, ly in zip(x.outputs[0].logprobs, y.outputs[0].logprobs):
                for token, entry in lx.items():
                    assert ly[token].logprob == pytest.approx(entry.logprob, abs=1e-4)
    finally:
        two.shutdown()


def test_unsplittable_sizes_are_refused_with_the_reason(llama) -> None:
    folder, _prompt_ids, _expected = llama
    with pytest.raises(EngineConfigError, match=r"number of attention heads \(4\).*3"):
        LLM(str(folder), dtype="float32", tensor_parallel_size=3)
    with pytest.raises(EngineConfigError, match="'uni' runs one rank"):
        LLM(str(folder), tensor_parallel_size=2, distributed_executor_backend="uni")
    with pytest.raises(EngineConfigError, match=r"pipeline_parallel_size \(3\) is larger"):
        LLM(str(folder), dtype="float32", pipeline_parallel_size=3)


def test_bad_core_binding_is_refused(llama, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_CPU_OMP_THREADS_BIND", "0")
    folder, _prompt_ids, _expected = llama
    with pytest.raises(EngineConfigError, match="HERON_CPU_OMP_THREADS_BIND"):
        LLM(str(folder), dtype="float32", tensor_parallel_size=2)


def test_a_killed_worker_fails_the_next_step_and_leaves_no_process(llama) -> None:
    folder, _prompt_ids, _expected = llama
    llm = LLM(str(folder), dtype="float32", block_size=16, tensor_parallel_size=2)
    executor = llm.llm_engine.core.executor
    (worker,) = executor._procs
    assert greedy_ids(llm, ["before"])
    os.kill(worker.pid, signal.SIGKILL)
    worker.popen.wait(timeout=10)
    with pytest.raises(WorkerFailedError, match="worker rank 1 exited with status -9"):
        greedy_ids(llm, ["after"])
    llm.shutdown()
    assert worker.exitcode is not None


def test_workers_stop_when_the_engine_is_dropped(llama) -> None:
    import gc

    folder, _prompt_ids, _expected = llama
    llm = LLM(str(folder), dtype="float32", block_size=16, tensor_parallel_size=2)
    (worker,) = llm.llm_engine.core.executor._procs
    del llm
    gc.collect()
    worker.popen.wait(timeout=10)
    assert worker.exitcode is not None


def test_exiting_with_a_live_engine_stops_workers_quietly(llama) -> None:
    """The interpreter's exit finalizes a tensor-parallel engine nobody shut down: its workers
    stop, and their expected exits are not reported as failures (no ERROR line)."""
    import subprocess
    import sys
    import textwrap

    folder, _prompt_ids, _expected = llama
    script = textwrap.dedent(
        f"""
        from heron import LLM, SamplingParams
        llm = LLM({str(folder)!r}, dtype="float32", block_size=16, tensor_parallel_size=2)
        llm.generate(["hello"], SamplingParams(max_tokens=2), use_tqdm=False)
        print(llm.llm_engine.core.executor._procs[0].pid, flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "exited" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    pid = int(done.stdout.split()[-1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
