"""The bundled SmolLM2-135M-Instruct Q4_1 with its weights kept quantized (``--quantization gguf``).

On heron-cpu every linear layer stays Q4_1 (and the tied output projection Q8_0); answers must be
coherent, and the first greedy tokens must equal those of the same file dequantized at load
(``--quantization none``), in bfloat16 activations, the CPU backend's default, up to near ties:
with bfloat16 activations heron-cpu's VNNI loops quantize them to int8 per 32-block (llama.cpp's
Q8 activations), which may flip a token whose two best logprobs lie within ``NEAR_TIE`` nats; a
divergence is accepted only there (two of the four answers here, both at 0.125 nats: one bfloat16
step of the logits), and in at most half of them. benchmarks/RESULTS.md has the W64 figure.
"""

from __future__ import annotations

import pytest

from heron import LLM, SamplingParams
from heron.layers.linear import Linear

pytest.importorskip("heron_cpu.quant", reason="heron-cpu is not installed")

QUESTIONS = [
    "What is the capital of France?",
    "Write one sentence about herons, the long-legged birds that wade in shallow water.",
    "List three primary colours.",
    "What is 2 + 2?",
]
FIRST_TOKENS = 6
NEAR_TIE = 0.5


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_BACKEND", "cpu")
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.25")


def _answers(llm: LLM, max_tokens: int, logprobs: int | None = None) -> list:
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs)
    outputs = llm.chat(messages, params, use_tqdm=False)
    return [o.outputs[0] for o in outputs]


def test_smollm2_kept_quantized_answers_like_dequantized() -> None:
    llm = LLM(dtype="bfloat16", max_model_len=512)
    model = llm.llm_engine.core.runner.model
    assert {m.quant_format for m in model.modules() if isinstance(m, Linear)} == {"q4_1"}
    assert model._logits_weight.format == "q8_0"
    kept = _answers(llm, 24)
    del llm, model
    plain_llm = LLM(dtype="bfloat16", max_model_len=512, quantization="none")
    plain = _answers(plain_llm, FIRST_TOKENS, logprobs=5)
    assert "Paris" in kept[0].text, kept[0].text
    assert "4" in kept[3].text or "four" in kept[3].text.lower(), kept[3].text
    diverged = 0
    for answer, reference in zip(kept, plain):
        ids, plain_ids = list(answer.token_ids[:FIRST_TOKENS]), list(reference.token_ids)
        if ids == plain_ids:
            continue
        diverged += 1
        at = next(i for i, (a, b) in enumerate(zip(ids, plain_ids)) if a != b)
        choices = reference.logprobs[at]
        assert ids[at] in choices, (answer.text, at, choices)
        gap = choices[plain_ids[at]].logprob - choices[ids[at]].logprob
        assert gap < NEAR_TIE, (answer.text, at, gap)
    assert diverged <= len(QUESTIONS) // 2, diverged
