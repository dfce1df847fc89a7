"""The whole engine on the xpu backend against Hugging Face ``generate()`` on the same weights.

Every engine mode (prefix caching on and off, small prefill chunks, a KV cache so small that
requests are preempted and recomputed) must give HF's greedy ids on the tiny random models.

On this CPU host the backend runs in interpreter mode (``HERON_XPU_INTERPRET=1``): every kernel of
the model's forward pass (attention, KV writes, norms, rotary, SiLU) is a Triton kernel run by
Triton's interpreter. In float32 the ids must equal HF's float32 ids; float16 follows them up to a
near-tie. With ``HERON_XPU_DEVICE=xpu`` the same tests run the engine on an Intel GPU. Other GPUs
cannot run the engine (its platform drives ``torch.xpu``); their kernel tests are in
test_xpu_kernels.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from xpu_device import DEVICE

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from model_utils import ARCHS, ENGINE_MODES, EQUALITY_PROMPTS, hf_greedy, make_equality_model

pytest.importorskip("heron_xpu", reason="heron-xpu is not installed")
pytest.importorskip("triton", reason="triton is not installed")

NEW_TOKENS = 8
"""Fewer than core's engine test: every step runs interpreted kernels. Eight tokens still take
every prompt past a block boundary (block size 16) and, in the preemption mode, through a
preemption and its recomputation."""
TOP_LOGPROBS = 5


@pytest.fixture(scope="module", params=ARCHS)
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder, prompt_ids = make_equality_model(tmp_path_factory.mktemp(request.param), request.param)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, prompt_ids, hf_greedy(hf, prompt_ids, NEW_TOKENS)


@pytest.fixture
def on_xpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force core onto the xpu backend: interpreted here, the Intel GPU with HERON_XPU_DEVICE=xpu."""
    if DEVICE not in ("cpu", "xpu"):
        pytest.skip(f"HERON_XPU_DEVICE={DEVICE}: the engine's xpu platform drives torch.xpu")
    monkeypatch.setenv("HERON_BACKEND", "xpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HERON_PLUGINS", raising=False)
    if DEVICE == "cpu":
        monkeypatch.setenv("HERON_XPU_INTERPRET", "1")
        monkeypatch.setenv("HERON_XPU_KVCACHE_SPACE", "0.25")
    else:
        monkeypatch.delenv("HERON_XPU_INTERPRET", raising=False)


def test_greedy_ids_equal_hf_in_every_mode(tiny_model, on_xpu: None) -> None:
    from heron import LLM, SamplingParams

    folder, prompt_ids, expected = tiny_model
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    for mode, kwargs in ENGINE_MODES.items():
        llm = LLM(str(folder), dtype="float32", block_size=16, **kwargs)
        core = llm.llm_engine.core
        assert core.platform.name == "xpu"
        assert type(core.runner.kernel_ops).__name__ == "XpuKernelOps"
        assert core.runner.attention_cls.__name__ == "XpuAttentionBackend"
        outputs = llm.generate(EQUALITY_PROMPTS, params, use_tqdm=False)
        got = [list(o.outputs[0].token_ids) for o in outputs]
        assert [o.prompt_token_ids for o in outputs] == prompt_ids
        assert got == expected, f"mode {mode}"
        if mode == "preemption":
            assert llm.llm_engine.stats().num_preemptions > 0, "the small KV cache never preempted"


def test_float16_ids_follow_hf_until_a_near_tie(tiny_model, on_xpu: None) -> None:
    """The half-precision paths of every kernel through the engine (float16 activations, weights
    and KV cache), default engine mode.

    float16 moves near-ties: on the tiny llama, at the one position where these kernels' float16
    ids leave HF's, the two candidate tokens have logprobs equal to four decimals even on core's
    pure-torch reference backend in float16. So this uses vLLM's ``check_logprobs_close`` rule: ids equal HF's float32 ids up to a first
    difference, where each side's token must be among the other's top logprobs; the rest of that
    sequence is not compared. A near-tie is rare: more than one of the four sequences leaving
    HF's ids would be a systematic error, not rounding.
    """
    from transformers import AutoModelForCausalLM

    from heron import LLM, SamplingParams

    folder, prompt_ids, expected = tiny_model
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    llm = LLM(str(folder), dtype="float16", block_size=16)
    params = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, logprobs=TOP_LOGPROBS
    )
    outputs = llm.generate(
        [{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False
    )
    diverged = 0
    for ids, out, want in zip(prompt_ids, outputs, expected):
        completion = out.outputs[0]
        got = list(completion.token_ids)
        if got == want:
            continue
        position = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        with torch.no_grad():
            logits = hf(torch.tensor([ids + want[:position]])).logits[0, -1]
        hf_top = set(torch.topk(logits, TOP_LOGPROBS).indices.tolist())
        assert got[position] in hf_top and want[position] in completion.logprobs[position], (
            f"prompt {ids}: heron {got[position]} vs HF {want[position]} at {position}; "
            f"HF's top-{TOP_LOGPROBS}: {sorted(hf_top)}"
        )
        diverged += 1
    assert diverged <= 1, f"{diverged} of {len(prompt_ids)} float16 sequences left HF's ids"
