"""Greedy token ids equal to Hugging Face ``generate()`` on the same weights, in every engine mode.

Prompts of different lengths go in one batch; the modes (prefix caching on/off, small chunked
prefill, a KV cache so small that requests are preempted and recomputed) must all give HF's ids.
"""

from __future__ import annotations

import pytest
import torch
from model_utils import ARCHS, ENGINE_MODES, EQUALITY_PROMPTS, hf_greedy, make_equality_model

from heron import LLM, SamplingParams

NEW_TOKENS = 12


@pytest.fixture(scope="module", params=ARCHS)
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder, prompt_ids = make_equality_model(tmp_path_factory.mktemp(request.param), request.param)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return folder, prompt_ids, hf_greedy(hf, prompt_ids, NEW_TOKENS)


def greedy(n: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n)


def test_greedy_ids_equal_hf_in_every_mode(tiny_model, backend: str) -> None:
    folder, prompt_ids, expected = tiny_model
    for mode, kwargs in ENGINE_MODES.items():
        llm = LLM(str(folder), dtype="float32", block_size=16, **kwargs)
        outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
        got = [list(o.outputs[0].token_ids) for o in outputs]
        assert [o.prompt_token_ids for o in outputs] == prompt_ids
        assert got == expected, f"mode {mode} on {backend}"
        if mode == "preemption":
            assert llm.llm_engine.stats().num_preemptions > 0, "the small KV cache never preempted"


def test_logprobs_close_to_hf(tiny_model, backend: str) -> None:
    from transformers import AutoModelForCausalLM

    folder, prompt_ids, _expected = tiny_model
    llm = LLM(str(folder), dtype="float32", block_size=16)
    params = SamplingParams(
        temperature=0.0, max_tokens=4, min_tokens=4, logprobs=3, prompt_logprobs=2
    )
    out = llm.generate([{"prompt_token_ids": prompt_ids[1]}], params, use_tqdm=False)[0]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    full = prompt_ids[1] + list(out.outputs[0].token_ids)
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([full])).logits[0].float(), dim=-1)
    n_prompt = len(prompt_ids[1])
    for i, (token, entry) in enumerate(zip(out.outputs[0].token_ids, out.outputs[0].logprobs)):
        row = ref[n_prompt - 1 + i]
        assert entry[token].logprob == pytest.approx(row[token].item(), abs=1e-4)
        top = torch.topk(row, 3).indices.tolist()
        assert set(top) <= set(entry)
    assert out.prompt_logprobs[0] is None
    for pos in range(1, n_prompt):
        token = prompt_ids[1][pos]
        got = out.prompt_logprobs[pos][token].logprob
        assert got == pytest.approx(ref[pos - 1, token].item(), abs=1e-4)
    cumulative = sum(
        e[t].logprob for t, e in zip(out.outputs[0].token_ids, out.outputs[0].logprobs)
    )
    assert out.outputs[0].cumulative_logprob == pytest.approx(cumulative, abs=1e-4)
