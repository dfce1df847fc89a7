"""Greedy token ids equal to Hugging Face ``generate()`` on the same weights, in every engine mode.

Prompts of different lengths go in one batch; the modes (prefix caching on/off, small chunked
prefill, a KV cache so small that requests are preempted and recomputed) must all give HF's ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_utils import ARCHS, KERNEL_FRIENDLY, make_tiny_model_dir

from heron import LLM, SamplingParams

NEW_TOKENS = 12
PROMPTS = [
    "Herons wade.",
    "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun",
    "a",
    "Paged attention stores keys and values in fixed-size blocks; a block table maps them.",
]

MODES = {
    "default": {},
    "no-prefix-caching": {"enable_prefix_caching": False},
    "small-chunks": {"max_num_batched_tokens": 16, "max_num_seqs": 3},
    "preemption": {"num_gpu_blocks_override": 8, "max_model_len": 112},
}


def hf_greedy(folder: Path, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    outputs = []
    for ids in prompts:
        generated = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
        )
        outputs.append(generated[0, len(ids) :].tolist())
    return outputs


@pytest.fixture(scope="module", params=ARCHS)
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    overrides = dict(KERNEL_FRIENDLY)
    if request.param == "qwen3":
        overrides["head_dim"] = 64
    folder = make_tiny_model_dir(tmp_path_factory.mktemp(request.param), request.param, **overrides)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    return folder, prompt_ids, hf_greedy(folder, prompt_ids, NEW_TOKENS)


def greedy(n: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, min_tokens=n)


def test_greedy_ids_equal_hf_in_every_mode(tiny_model, backend: str) -> None:
    folder, prompt_ids, expected = tiny_model
    for mode, kwargs in MODES.items():
        llm = LLM(str(folder), dtype="float32", block_size=16, **kwargs)
        outputs = llm.generate(PROMPTS, greedy(), use_tqdm=False)
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
