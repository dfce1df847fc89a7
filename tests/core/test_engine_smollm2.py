"""The bundled SmolLM2-135M-Instruct (Q4_1 GGUF): greedy ids equal to HF ``generate()`` in every mode.

The HF model gets the same dequantized weights (Heron's GGUF reader is itself checked against
transformers' GGUF loader in test_loader_gguf.py), so any difference is the engine's.
"""

from __future__ import annotations

import pytest
from model_utils import hf_greedy

from heron import LLM, SamplingParams
from heron.loader import load_model_source

QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about herons, the long-legged birds that wade in shallow water.",
    "2+2=",
    "List three primary colours and explain, briefly, why they are called primary.",
]
NEW_TOKENS = 16
MODES = {
    "default": {},
    "no-prefix-caching": {"enable_prefix_caching": False},
    "small-chunks": {"max_num_batched_tokens": 32},
    # Every prompt admitted in the first step, so that their decodes outgrow the 12 blocks.
    "preemption": {
        "num_gpu_blocks_override": 12,
        "max_model_len": 160,
        "split_prompt_bursts": False,
    },
}


@pytest.fixture(scope="module")
def reference():
    from transformers import LlamaForCausalLM

    source = load_model_source(None)
    hf = LlamaForCausalLM(source.hf_config).eval()
    missing, unexpected = hf.load_state_dict(dict(source.weights()), strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected
    hf.tie_weights()
    tokenizer = source.tokenizer
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in QUESTIONS
    ]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    expected = hf_greedy(hf, prompt_ids, NEW_TOKENS)
    return prompt_ids, expected


@pytest.mark.slow
def test_smollm2_greedy_equals_hf(reference, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.5")
    prompt_ids, expected = reference
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    for mode, kwargs in MODES.items():
        llm = LLM(dtype="float32", **kwargs)
        outputs = llm.chat(conversations, params, use_tqdm=False)
        assert [o.prompt_token_ids for o in outputs] == prompt_ids
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected, mode
        if mode == "preemption":
            assert llm.llm_engine.stats().num_preemptions > 0
    assert "Paris" in llm.get_tokenizer().decode(expected[0])


@pytest.mark.slow
def test_smollm2_on_three_tensor_parallel_ranks(reference, monkeypatch: pytest.MonkeyPatch) -> None:
    """9 query heads and 3 KV heads: three ranks of 3 and 1, each loading its shard of the GGUF."""
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.25")
    _prompt_ids, expected = reference
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    llm = LLM(dtype="float32", tensor_parallel_size=3)
    try:
        assert llm.llm_engine.core.runner.model.num_heads == 3
        outputs = llm.chat(conversations, params, use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected
    finally:
        llm.shutdown()
