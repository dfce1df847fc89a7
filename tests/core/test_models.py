"""Heron's models against transformers on tiny random checkpoints (float32, CPU)."""

from __future__ import annotations

import pytest
import torch
from model_utils import (
    ARCHS,
    Harness,
    hf_logits,
    make_context,
    make_tiny_model_dir,
    tiny_config,
    tiny_hf_model,
)

from heron.loader import build_model, load_model_source
from heron.models import CheckpointMismatchError

ATOL = 1e-4
PROMPTS = ["Hello there, how are you today?", "Paged attention!"]


def _load(folder, **ctx_kwargs):
    from transformers import AutoModelForCausalLM

    source = load_model_source(str(folder))
    ctx = make_context(**ctx_kwargs)
    model = build_model(source, ctx)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return source, ctx, model, hf


def _assert_prefill_matches(source, ctx, model, hf, prompts=PROMPTS) -> None:
    """Two sequences in one flattened step; every token's logits equal the HF forward."""
    harness = Harness(model, ctx)
    token_ids = [source.tokenizer(p)["input_ids"] for p in prompts]
    seqs = [harness.add(len(ids)) for ids in token_ids]
    out = harness.step(dict(zip(seqs, token_ids)))
    for seq, ids in zip(seqs, token_ids):
        expected = hf_logits(hf, ids)
        assert expected.std() > 0.5  # random weights that actually move the logits
        torch.testing.assert_close(out[seq], expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_matches_transformers(tmp_path, arch, tie):
    folder = make_tiny_model_dir(tmp_path, arch, tie_word_embeddings=tie)
    source, ctx, model, hf = _load(folder)
    assert (model.lm_head is None) == tie
    assert model.num_layers == 2 and model.num_kv_heads == 2
    assert model.head_size == (32 if arch == "qwen3" else 16)
    _assert_prefill_matches(source, ctx, model, hf)


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
        {
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
            "rope_theta": 10000.0,
        },
    ],
    ids=lambda r: r["rope_type"],
)
def test_rope_scaling(tmp_path, rope):
    folder = make_tiny_model_dir(tmp_path, "llama", rope_parameters=rope)
    source, ctx, model, hf = _load(folder)
    long_prompt = "A longer prompt so that scaled rotary frequencies really matter here."
    _assert_prefill_matches(source, ctx, model, hf, [long_prompt, PROMPTS[0]])


def test_head_dim_override_and_biases(tmp_path):
    """Llama with head_dim != hidden/heads and attention/MLP biases."""
    folder = make_tiny_model_dir(tmp_path, "llama", head_dim=24, attention_bias=True, mlp_bias=True)
    source, ctx, model, hf = _load(folder)
    assert model.head_size == 24
    _assert_prefill_matches(source, ctx, model, hf)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chunked_prefill_and_decode_match_full_forward(tmp_path, arch):
    """Prefill chunks over cached blocks, mixed with decodes, equal one full HF forward."""
    folder = make_tiny_model_dir(tmp_path, arch)
    source, ctx, model, hf = _load(folder, block_size=4)
    a_ids = source.tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"]
    b_ids = source.tokenizer("Short one")["input_ids"]
    harness = Harness(model, ctx)
    a, b = harness.add(len(a_ids)), harness.add(len(b_ids))
    got_a = [harness.step({a: a_ids[:10], b: b_ids[:-3]})[a]]
    got_b = []
    for i in range(3):  # a advances in chunks of 7 while b decodes one token a step
        out = harness.step({a: a_ids[10 + 7 * i : 17 + 7 * i], b: [b_ids[-3 + i]]})
        got_a.append(out[a])
        got_b.append(out[b])
    got_a.append(harness.step({a: a_ids[31:]})[a])
    torch.testing.assert_close(torch.cat(got_a), hf_logits(hf, a_ids), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(torch.cat(got_b), hf_logits(hf, b_ids)[-3:], atol=ATOL, rtol=1e-4)


def test_bfloat16_weights_and_float32_logits(tmp_path):
    folder = make_tiny_model_dir(tmp_path, "qwen2")
    source, ctx, model, hf = _load(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ids = source.tokenizer(PROMPTS[0])["input_ids"]
    harness = Harness(model, ctx)
    seq = harness.add(len(ids))
    logits = harness.step({seq: ids})[seq]
    assert logits.dtype == torch.float32
    expected = hf_logits(hf, ids)
    assert (logits - expected).abs().max() < 0.15 * expected.abs().max()


def test_missing_and_unexpected_weights_are_named(tmp_path):
    from heron.models.llama import LlamaForCausalLM

    hf = tiny_hf_model(tiny_config("llama"))
    state = dict(hf.state_dict())
    del state["model.layers.1.self_attn.k_proj.weight"]
    state["model.layers.0.mlp.extra.weight"] = torch.zeros(2)
    model = LlamaForCausalLM(hf.config, make_context())
    with pytest.raises(CheckpointMismatchError) as info:
        model.load_weights(state.items())
    message = str(info.value)
    assert "model.layers.1.self_attn.k_proj.weight" in message
    assert "model.layers.0.mlp.extra.weight" in message
    assert "missing" in message and "unexpected" in message


def test_shape_mismatch_is_reported(tmp_path):
    from heron.models.llama import LlamaForCausalLM

    hf = tiny_hf_model(tiny_config("llama"))
    state = dict(hf.state_dict())
    state["model.layers.0.self_attn.v_proj.weight"] = torch.zeros(3, 64)
    model = LlamaForCausalLM(hf.config, make_context())
    with pytest.raises(ValueError, match=r"v_proj\.weight"):
        model.load_weights(state.items())


def test_tied_model_ignores_checkpoint_lm_head_and_rotary_buffers():
    from heron.models.llama import Qwen2ForCausalLM

    hf = tiny_hf_model(tiny_config("qwen2", tie_word_embeddings=True))
    state = dict(hf.state_dict())
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    model = Qwen2ForCausalLM(hf.config, make_context())
    model.load_weights(state.items())
    assert model.lm_head is None
