"""The whole engine on ``HERON_BACKEND=tpu HERON_TPU_INTERPRET=1`` against Hugging Face ``generate()``.

The TPU backend's Pallas kernels (KV write, ragged paged attention, RMSNorm) run in Pallas's TPU
interpreter on CPU tensors, and every step is padded to a bucket compiled at start-up (API 1.6).
In float32, greedy ids must equal HF's float32 ids exactly.

By default (CI) the tiny Llama runs once with prefix caching, prefill chunks of 16 tokens and a KV
cache small enough to preempt, all in one engine, and the test checks that each of them happened
and that serving compiled nothing after start-up; a second test serves prompts of many lengths and
counts XLA compiles. ``HERON_TPU_FULL=1`` adds every tiny architecture in every engine mode of
the cpu/reference equality tests (several minutes)::

    HERON_TPU_FULL=1 pytest tests/plugins/tpu/test_engine_tpu.py -q

Race detection is off here (HERON_TPU_DETECT_RACES=0) only to keep the run short: the kernel tests
and the conformance suite run these kernels with it on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from model_utils import ARCHS, ENGINE_MODES, hf_greedy, make_equality_model

NEW_TOKENS = 12
FULL = os.environ.get("HERON_TPU_FULL", "") == "1"
"""Every architecture in every engine mode, not only the tiny Llama (interpreter time)."""
ALL_FEATURES = {
    "max_num_batched_tokens": 16,
    "max_num_seqs": 3,
    "num_gpu_blocks_override": 8,
    "max_model_len": 112,
}
"""Prefix caching (on by default), 16-token prefill chunks and 8 KV blocks of 16 (preemption)."""
SERVE_FEATURES = {**ALL_FEATURES, "max_num_batched_tokens": 32, "max_num_seqs": 8}
"""Same KV cache shape as ALL_FEATURES (so the compiled programs are shared), larger steps."""
BUCKETS = {"HERON_TPU_TOKEN_BUCKETS": "8,32", "HERON_TPU_SEQ_BUCKETS": "2,8"}


@pytest.fixture
def on_tpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_BACKEND", "tpu")
    monkeypatch.setenv("HERON_TPU_DETECT_RACES", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HERON_PLUGINS", raising=False)
    for name, value in BUCKETS.items():
        monkeypatch.setenv(name, value)


def _archs() -> list:
    skip = pytest.mark.skip(reason="interpreter time: HERON_TPU_FULL=1 runs every architecture")
    return [a if FULL or a == "llama" else pytest.param(a, marks=skip) for a in ARCHS]


@pytest.fixture(scope="module", params=_archs())
def tiny_model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[list[int]], list[list[int]]]:
    import torch
    from transformers import AutoModelForCausalLM

    folder, prompt_ids = make_equality_model(tmp_path_factory.mktemp(request.param), request.param)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, prompt_ids, hf_greedy(model, prompt_ids, NEW_TOKENS)


def _generate(folder: Path, prompt_ids: list[list[int]], **kwargs: object) -> tuple:
    from heron import LLM, SamplingParams

    llm = LLM(str(folder), dtype="float32", block_size=16, **kwargs)
    assert llm.llm_engine.core.platform.name == "tpu"
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
    return llm, llm.generate(prompts, params, use_tqdm=False)


@pytest.mark.parametrize("mode", sorted(ENGINE_MODES))
def test_greedy_ids_equal_hf(on_tpu: None, tiny_model: tuple, mode: str) -> None:
    if not FULL:
        pytest.skip("interpreter time: HERON_TPU_FULL=1 runs each engine mode on its own")
    folder, prompt_ids, expected = tiny_model
    _, outputs = _generate(folder, prompt_ids, **ENGINE_MODES[mode])
    got = [list(o.outputs[0].token_ids) for o in outputs]
    assert got == expected


def test_prefix_caching_chunks_and_preemption_equal_hf(
    on_tpu: None, tiny_model: tuple, compile_events: list[str]
) -> None:
    """One engine with all three at once: the repeated prompt hits the prefix cache, prompts
    longer than 16 tokens are prefilled in chunks, and 8 blocks cannot hold every sequence."""
    from heron import SamplingParams

    folder, prompt_ids, expected = tiny_model
    llm, _ = _generate(folder, prompt_ids[:1], **ALL_FEATURES)
    compiles = len(compile_events)
    prompts = [*prompt_ids, prompt_ids[1]]
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outputs] == [*expected, expected[1]]
    stats = llm.llm_engine.core.stats()
    assert stats.num_preemptions > 0, "the small KV cache never preempted"
    assert stats.prefix_cache_hits > 0, "the repeated prompt never hit the prefix cache"
    assert max(map(len, prompts)) > ALL_FEATURES["max_num_batched_tokens"]
    assert len(compile_events) == compiles, "a step compiled after start-up"


@pytest.fixture
def compile_events() -> Iterator[list[str]]:
    """Every XLA backend compile in this process while the test runs."""
    import jax.monitoring

    events: list[str] = []

    def listen(event: str, duration: float, **kwargs: object) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield events
    jax.monitoring.unregister_event_duration_listener(listen)


def test_no_step_compiles_after_start_up(
    on_tpu: None, tiny_model: tuple, compile_events: list[str]
) -> None:
    """Start-up warms every bucket; then prompts of many lengths, chunked and batched, compile
    nothing (neither a kernel program nor any other XLA computation)."""
    from heron_tpu import runtime

    from heron import SamplingParams

    folder, prompt_ids, expected = tiny_model
    llm, outputs = _generate(folder, prompt_ids[:1], **SERVE_FEATURES)
    runner = llm.llm_engine.core.runner
    assert runner.static_shapes and runner.warmed == set(runner.bucket_shapes())
    programs, compiles = runtime.compiled_programs(), len(compile_events)
    assert programs > 0
    lengths = (1, 3, 7, 9, 17, 31, 33, 50)
    prompts = [{"prompt_token_ids": (prompt_ids[1] * 4)[:n]} for n in lengths]
    params = SamplingParams(temperature=0.0, max_tokens=5)
    llm.generate(prompts, params, use_tqdm=False)
    assert runtime.compiled_programs() == programs
    assert len(compile_events) == compiles, "a step compiled after start-up"
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected[:1]
    # The listener does see compiles: a new computation after serving is counted.
    import jax
    import jax.numpy as jnp

    jax.jit(lambda x: x * 3)(jnp.ones(len(lengths) + 1017)).block_until_ready()
    assert len(compile_events) > compiles
