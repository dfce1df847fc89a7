"""The bundled SmolLM2-135M-Instruct Q4_1 with its weights kept quantized (``--quantization gguf``).

On heron-cpu every linear layer stays Q4_1 (and the tied output projection Q8_0); answers must be
coherent, and the first greedy tokens must equal those of the same file dequantized at load
(``--quantization none``), in bfloat16 activations, the CPU backend's default.
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


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_BACKEND", "cpu")
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.25")


def _answers(llm: LLM, max_tokens: int) -> list[tuple[list[int], str]]:
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outputs = llm.chat(messages, params, use_tqdm=False)
    return [(list(o.outputs[0].token_ids), o.outputs[0].text) for o in outputs]


def test_smollm2_kept_quantized_answers_like_dequantized() -> None:
    llm = LLM(dtype="bfloat16", max_model_len=512)
    model = llm.llm_engine.core.runner.model
    assert {m.quant_format for m in model.modules() if isinstance(m, Linear)} == {"q4_1"}
    assert model._logits_weight.format == "q8_0"
    kept = _answers(llm, 24)
    del llm, model
    plain = _answers(LLM(dtype="bfloat16", max_model_len=512, quantization="none"), FIRST_TOKENS)
    assert "Paris" in kept[0][1], kept[0][1]
    assert "4" in kept[3][1] or "four" in kept[3][1].lower(), kept[3][1]
    for (ids, text), (plain_ids, _) in zip(kept, plain):
        assert ids[:FIRST_TOKENS] == plain_ids, text
