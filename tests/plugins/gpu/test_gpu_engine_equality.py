"""The whole engine on a GPU backend against Hugging Face ``generate()`` on the same weights.

The GPU attention kernels exist for float16 and bfloat16 only, so Heron runs the tiny random
models in half precision on the GPU while the reference is Hugging Face in float32 on the host.

* float16: greedy ids must equal the float32 reference exactly, in every engine mode (prefix
  caching on and off, small prefill chunks, a KV cache small enough to preempt). On these models
  HF's own float16 run matches its float32 run for all prompts (checked on the CPU), so a
  difference here is a kernel or engine fault, not rounding.
* bfloat16 (7-bit mantissa) changes near-ties even inside HF itself, so it gets vLLM's
  ``check_logprobs_close`` rule: ids agree up to a first difference, where each side's token must
  be among the other's top logprobs; the rest of that sequence is not compared.
* Logprobs of the float16 run are close to the float32 reference's.
* Decode steps replay captured device graphs, with the same ids as eager mode.

Without a usable GPU every test skips, through the ``gpu`` fixture, with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from gpu_backends import GpuBackend

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from model_utils import ARCHS, ENGINE_MODES, EQUALITY_PROMPTS, hf_greedy, make_equality_model

NEW_TOKENS = 16
TOP_LOGPROBS = 5
FLOAT16_LOGPROB_TOLERANCE = 0.05
"""Absolute, in nats: float16 activations through two layers of a model with 0.2-std weights."""


def _hf_reference(folder: Path, prompts: list[list[int]]) -> list[dict]:
    """Greedy ids and, at each generated position, the float32 log-softmax row."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for ids, generated in zip(prompts, hf_greedy(model, prompts, NEW_TOKENS)):
        full = torch.tensor(ids + generated)
        with torch.no_grad():
            logits = model(full[None, :-1]).logits[0, len(ids) - 1 :]
        out.append({"ids": generated, "logprobs": torch.log_softmax(logits, -1)})
    return out


@pytest.fixture(scope="module", params=ARCHS)
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder, prompt_ids = make_equality_model(tmp_path_factory.mktemp(request.param), request.param)
    return folder, prompt_ids, _hf_reference(folder, prompt_ids)


@pytest.fixture
def on_gpu(gpu: GpuBackend, monkeypatch: pytest.MonkeyPatch) -> GpuBackend:
    """Force core onto the GPU backend under test, offline."""
    monkeypatch.setenv("HERON_BACKEND", gpu.name)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HERON_PLUGINS", raising=False)
    return gpu


def _run(folder: Path, prompt_ids: list[list[int]], dtype: str, logprobs: int | None, **kwargs):
    from heron import LLM, SamplingParams

    llm = LLM(str(folder), dtype=dtype, block_size=16, **kwargs)
    assert llm.llm_engine.core.platform.name in ("cuda", "rocm")
    params = SamplingParams(
        temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, logprobs=logprobs
    )
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
    return llm, llm.generate(prompts, params, use_tqdm=False)


def _describe_divergence(got: list[int], ref: dict, position: int) -> str:
    row = ref["logprobs"][position]
    top = torch.topk(row, 3)
    ranked = ", ".join(f"{t}: {v:.4f}" for t, v in zip(top.indices.tolist(), top.values.tolist()))
    return (
        f"first difference at generated position {position}: heron {got[position]} "
        f"(HF logprob {row[got[position]].item():.4f}), HF {ref['ids'][position]}; "
        f"HF's top-3 there: {ranked}"
    )


def test_float16_greedy_ids_equal_hf_in_every_mode(tiny_model, on_gpu: GpuBackend) -> None:
    folder, prompt_ids, reference = tiny_model
    for mode, kwargs in ENGINE_MODES.items():
        llm, outputs = _run(folder, prompt_ids, "float16", None, **kwargs)
        for prompt, out, ref in zip(EQUALITY_PROMPTS, outputs, reference):
            got = list(out.outputs[0].token_ids)
            if got != ref["ids"]:
                position = next(i for i, (a, b) in enumerate(zip(got, ref["ids"])) if a != b)
                pytest.fail(
                    f"{on_gpu.name} float16, mode {mode}, prompt {prompt!r}: "
                    + _describe_divergence(got, ref, position)
                )
        if mode == "preemption":
            assert llm.llm_engine.stats().num_preemptions > 0, "the small KV cache never preempted"


def test_float16_logprobs_close_to_hf(tiny_model, on_gpu: GpuBackend) -> None:
    folder, prompt_ids, reference = tiny_model
    _llm, outputs = _run(folder, prompt_ids, "float16", TOP_LOGPROBS)
    for out, ref in zip(outputs, reference):
        completion = out.outputs[0]
        assert list(completion.token_ids) == ref["ids"]
        for position, (token, entry) in enumerate(zip(completion.token_ids, completion.logprobs)):
            row = ref["logprobs"][position]
            assert entry[token].logprob == pytest.approx(
                row[token].item(), abs=FLOAT16_LOGPROB_TOLERANCE
            )
            assert set(torch.topk(row, 3).indices.tolist()) <= set(entry)


def test_bfloat16_ids_follow_hf_until_a_near_tie(tiny_model, on_gpu: GpuBackend) -> None:
    folder, prompt_ids, reference = tiny_model
    _llm, outputs = _run(folder, prompt_ids, "bfloat16", TOP_LOGPROBS)
    for prompt, out, ref in zip(EQUALITY_PROMPTS, outputs, reference):
        completion = out.outputs[0]
        for position, token in enumerate(completion.token_ids):
            expected = ref["ids"][position]
            if token == expected:
                continue
            hf_top = set(torch.topk(ref["logprobs"][position], TOP_LOGPROBS).indices.tolist())
            assert token in hf_top and expected in completion.logprobs[position], (
                f"{on_gpu.name} bfloat16, prompt {prompt!r}: "
                + _describe_divergence(list(completion.token_ids), ref, position)
            )
            break


def test_decode_steps_replay_device_graphs(tiny_model, on_gpu: GpuBackend) -> None:
    """Decode steps run from captured graphs, and give what eager mode gives."""
    folder, prompt_ids, reference = tiny_model
    llm, outputs = _run(folder, prompt_ids[:3], "float16", None)
    graphs = llm.llm_engine.core.runner.step_graphs
    assert graphs is not None and graphs.replays > 0, "no decode step was replayed from a graph"
    eager, eager_outputs = _run(folder, prompt_ids[:3], "float16", None, enforce_eager=True)
    assert eager.llm_engine.core.runner.step_graphs is None
    got = [list(o.outputs[0].token_ids) for o in outputs]
    assert got == [list(o.outputs[0].token_ids) for o in eager_outputs]
    assert got == [ref["ids"] for ref in reference[:3]]
