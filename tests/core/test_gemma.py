"""Native Gemma 2 and Gemma 3 (text): greedy ids equal Hugging Face ``generate()`` (float32, tiny
random weights) in every engine mode on every installed backend, and with tensor parallel 2.

The configs make each Gemma feature change the ids (checked on transformers' side): a sliding
window of 8 tokens on the local layers (shorter than the prompts), Gemma 2's attention and final
logit soft-caps small enough to bend random scores, ``query_pre_attn_scalar`` unlike the head
size, Gemma 3's q/k norms and a local rope base unlike the global (linear-scaled) one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from model_utils import (
    ENGINE_MODES,
    EOS_ID,
    EQUALITY_PROMPTS,
    PAD_ID,
    TINY_VOCAB,
    build_tokenizer,
    hf_greedy,
    tiny_hf_model,
)

from heron import LLM, SamplingParams

NEW_TOKENS = 16
WINDOW = 8
LOCAL, GLOBAL = "sliding_attention", "full_attention"

_COMMON: dict[str, Any] = {
    "vocab_size": TINY_VOCAB,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "max_position_embeddings": 512,
    "query_pre_attn_scalar": 32,
    "sliding_window": WINDOW,
    "bos_token_id": None,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "gemma2": {"attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0},
    "gemma3": {
        "layer_types": [LOCAL, LOCAL, GLOBAL, LOCAL],
        "rope_parameters": {
            LOCAL: {"rope_type": "default", "rope_theta": 10000.0},
            GLOBAL: {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        },
    },
}


def gemma_config(arch: str, **overrides: Any) -> Any:
    from transformers import Gemma2Config, Gemma3TextConfig

    cls = Gemma2Config if arch == "gemma2" else Gemma3TextConfig
    return cls(**{**_COMMON, **CONFIGS[arch], **overrides})


def gemma_hf_model(config: Any) -> Any:
    """:func:`tiny_hf_model` with the embedding table scaled by ``hidden ** -0.5``: Gemma
    multiplies embeddings by ``sqrt(hidden)``, and with the table tied to the logits, random
    embeddings of unit scale make every token predict itself over and over."""
    model = tiny_hf_model(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(config.hidden_size**-0.5)
    return model


def _greedy_of(config: Any, prompt_ids: list[list[int]]) -> list[list[int]]:
    return hf_greedy(gemma_hf_model(config), prompt_ids, NEW_TOKENS)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def gemma_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    from transformers import GenerationConfig

    arch = request.param
    folder = Path(tmp_path_factory.mktemp(arch)) / f"tiny-{arch}"
    model = gemma_hf_model(gemma_config(arch))
    model.generation_config = GenerationConfig(eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    model.save_pretrained(folder)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(folder)
    prompt_ids = [tokenizer(p)["input_ids"] for p in EQUALITY_PROMPTS]
    expected = hf_greedy(model, prompt_ids, NEW_TOKENS)
    assert all(len(set(ids)) > 4 for ids in expected), "degenerate ids would prove little"
    # Each feature matters on these weights: without it transformers' own ids change (the final
    # soft-cap is monotonic, so greedy ids cannot show it: the logprob test below does).
    assert _greedy_of(gemma_config(arch, sliding_window=4096), prompt_ids) != expected
    if arch == "gemma2":
        assert _greedy_of(gemma_config(arch, attn_logit_softcapping=None), prompt_ids) != expected
    return arch, folder, prompt_ids, expected


def greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)


def test_gemma_greedy_ids_equal_hf_in_every_mode(gemma_model, backend: str) -> None:
    arch, folder, prompt_ids, expected = gemma_model
    native = {"gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}[arch]
    for mode, kwargs in ENGINE_MODES.items():
        llm = LLM(str(folder), dtype="float32", block_size=16, **kwargs)
        core = llm.llm_engine.core
        assert type(core.runner.model).__name__ == native
        # Global layers keep every block: nothing is freed early for alternating models.
        assert core.kv_manager.sliding_window is None
        outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
        assert [o.prompt_token_ids for o in outputs] == prompt_ids
        got = [list(o.outputs[0].token_ids) for o in outputs]
        assert got == expected, f"{arch}: mode {mode} on {backend}"
        if mode == "preemption":
            assert llm.llm_engine.stats().num_preemptions > 0, "the small KV cache never preempted"


def test_gemma_through_the_fallback_equals_hf(gemma_model, backend: str) -> None:
    """--model-impl transformers: transformers' Gemma modules with Heron's attention, which
    takes their per-layer windows and (Gemma 2) soft-cap."""
    arch, folder, _prompt_ids, expected = gemma_model
    for mode, kwargs in ENGINE_MODES.items():
        llm = LLM(str(folder), dtype="float32", block_size=16, model_impl="transformers", **kwargs)
        assert type(llm.llm_engine.core.runner.model).__name__ == "TransformersForCausalLM"
        outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
        got = [list(o.outputs[0].token_ids) for o in outputs]
        assert got == expected, f"{arch} fallback: mode {mode} on {backend}"


def test_gemma_logprobs_close_to_hf(gemma_model) -> None:
    """Logprobs of the generated and prompt tokens equal transformers' (Gemma 2: after the final
    logit soft-cap, which greedy ids cannot show)."""
    from transformers import AutoModelForCausalLM

    _arch, folder, prompt_ids, _expected = gemma_model
    llm = LLM(str(folder), dtype="float32", block_size=16)
    params = SamplingParams(temperature=0.0, max_tokens=6, min_tokens=6, logprobs=2)
    out = llm.generate([{"prompt_token_ids": prompt_ids[1]}], params, use_tqdm=False)[0]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    full = prompt_ids[1] + list(out.outputs[0].token_ids)
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([full])).logits[0].float(), dim=-1)
    n_prompt = len(prompt_ids[1])
    for i, (token, entry) in enumerate(zip(out.outputs[0].token_ids, out.outputs[0].logprobs)):
        assert entry[token].logprob == pytest.approx(ref[n_prompt - 1 + i, token].item(), abs=1e-4)


def test_gemma_tensor_parallel_two_equals_hf(gemma_model) -> None:
    """Heads, MLP columns and the vocabulary split over two ranks (cpu backend when present)."""
    arch, folder, _prompt_ids, expected = gemma_model
    if arch != "gemma3":
        pytest.skip("tensor parallelism is checked on Gemma 3 (the same layers as Gemma 2)")
    llm = LLM(str(folder), dtype="float32", block_size=16, tensor_parallel_size=2)
    try:
        outputs = llm.generate(EQUALITY_PROMPTS, greedy(), use_tqdm=False)
        assert [list(o.outputs[0].token_ids) for o in outputs] == expected
    finally:
        llm.shutdown()


def test_norms_round_like_transformers() -> None:
    """(1 + weight) in float32 and one rounding: bfloat16 outputs equal transformers' bit for bit
    (the platform's Llama-style norm rounds before its weight multiply)."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    from heron.models.gemma import GemmaRMSNorm

    torch.manual_seed(0)
    hf = Gemma3RMSNorm(64, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        hf.weight.normal_(0.0, 0.5)
    ours = GemmaRMSNorm(64, 1e-6, dtype=torch.bfloat16)
    ours.weight.data.copy_(hf.weight.data)
    x, r = torch.randn(5, 64).to(torch.bfloat16), torch.randn(5, 64).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(ours(x), hf(x))
        out, residual = ours(x, r)
        assert torch.equal(residual, r + x) and torch.equal(out, hf(r + x))


def test_checkpoint_norm_weights_load_unchanged() -> None:
    from model_utils import make_context

    from heron.models.gemma import Gemma3ForCausalLM

    hf = gemma_hf_model(gemma_config("gemma3"))
    model = Gemma3ForCausalLM(hf.config, make_context(block_size=16))
    model.load_weights(hf.state_dict().items())
    layer, hf_layer = model.model.layers[0], hf.model.layers[0]
    for name in ("input_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
        assert torch.equal(getattr(layer, name).weight, getattr(hf_layer, name).weight)
    assert torch.equal(layer.self_attn.q_norm.weight, hf_layer.self_attn.q_norm.weight)
