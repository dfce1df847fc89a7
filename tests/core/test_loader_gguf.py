"""GGUF: dequantization, the fast tensor index, name mapping, hand-made files, bundled SmolLM2."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize
from model_utils import (
    CHATML_TEMPLATE,
    EOS_ID,
    PAD_ID,
    Harness,
    _llama_cpp_permute,
    build_tokenizer,
    hf_logits,
    make_context,
    tiny_config,
    tiny_hf_model,
    write_tiny_gguf,
)

from heron.loader import build_model, default_model_path, load_model_source
from heron.loader.dequant import dequantize
from heron.loader.gguf_file import read_gguf
from heron.loader.gguf_source import hf_tensor_name, load_cached_metadata, unpermute_rotary

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
MIXED = {
    "embed_tokens": Q.Q8_0,
    "q_proj": Q.Q4_0,
    "k_proj": Q.Q4_1,
    "v_proj": Q.Q8_0,
    "o_proj": Q.F16,
    "gate_proj": Q.Q4_1,
    "up_proj": Q.Q4_0,
    "down_proj": Q.BF16,
    "lm_head": Q.F16,
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HERON_CACHE_DIR", str(tmp_path / "heron-cache"))


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16, Q.BF16, Q.F32, Q.Q5_0])
def test_dequantize_matches_gguf_py(qtype):
    data = np.random.default_rng(0).normal(size=(3, 5, 128)).astype(np.float32)
    encoded = data if qtype == Q.F32 else quantize(data, qtype)
    ours = dequantize(encoded, qtype)
    expected = torch.from_numpy(np.asarray(gguf_dequantize(encoded, qtype), np.float32))
    assert ours.shape == (3, 5, 128)
    torch.testing.assert_close(ours.float(), expected, rtol=0, atol=0)


def test_unpermute_inverts_llama_cpp():
    weight = torch.randn(6 * 8, 10)
    for heads in (6, 3):
        permuted = torch.from_numpy(_llama_cpp_permute(weight.numpy(), heads))
        assert not torch.equal(permuted, weight)
        assert torch.equal(unpermute_rotary(permuted, heads), weight)


def test_tensor_names():
    assert hf_tensor_name("token_embd.weight") == "model.embed_tokens.weight"
    assert hf_tensor_name("output.weight") == "lm_head.weight"
    assert hf_tensor_name("output_norm.weight") == "model.norm.weight"
    assert hf_tensor_name("blk.11.attn_output.weight") == "model.layers.11.self_attn.o_proj.weight"
    assert hf_tensor_name("blk.0.attn_q.bias") == "model.layers.0.self_attn.q_proj.bias"
    assert hf_tensor_name("blk.3.attn_k_norm.weight") == "model.layers.3.self_attn.k_norm.weight"
    ffn_norm = "model.layers.2.post_attention_layernorm.weight"
    assert hf_tensor_name("blk.2.ffn_norm.weight") == ffn_norm
    assert hf_tensor_name("blk.2.weird.weight") == "blk.2.weird.weight"


def test_fast_index_matches_gguf_reader(tmp_path):
    path = tmp_path / "mixed.gguf"
    write_tiny_gguf(path, tiny_hf_model(tiny_config("llama")), MIXED)
    metadata, tensors = read_gguf(str(path))
    reader = GGUFReader(str(path))
    assert metadata["general.architecture"] == "llama"
    assert metadata["tokenizer.chat_template"] == CHATML_TEMPLATE
    assert [t.name for t in tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(tensors, reader.tensors):
        assert ours.tensor_type == theirs.tensor_type
        assert ours.data.dtype == theirs.data.dtype and ours.data.shape == theirs.data.shape
        assert np.array_equal(ours.data, theirs.data)


@pytest.mark.parametrize(
    ("arch", "qtypes"),
    [("llama", MIXED), ("qwen2", {"proj": Q.Q8_0}), ("qwen3", {"proj": Q.F16})],
)
def test_handmade_gguf_matches_transformers(tmp_path, arch, qtypes):
    """Config, tokenizer and dequantized, un-permuted weights all survive the GGUF round trip."""
    hf = tiny_hf_model(tiny_config(arch, tie_word_embeddings=arch == "qwen2"))
    path = tmp_path / f"tiny-{arch}.gguf"
    reference = write_tiny_gguf(path, hf, qtypes)
    source = load_model_source(str(path))
    assert source.name == f"tiny-{arch}" and source.quantization == "gguf"
    config = source.hf_config
    assert config.architectures == [ARCHITECTURES[arch]]
    head_dim = getattr(hf.config, "head_dim", None) or 16
    assert (config.num_key_value_heads, config.head_dim) == (2, head_dim)
    assert config.tie_word_embeddings == (arch == "qwen2")
    assert source.generation_config == {"eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    assert source.tokenizer.chat_template == CHATML_TEMPLATE
    text = "Hello there, the tin-man!"
    ids = source.tokenizer(text)["input_ids"]
    assert ids == build_tokenizer()(text)["input_ids"]
    ctx = make_context()
    model = build_model(source, ctx)
    hf.load_state_dict(reference, strict=False)
    harness = Harness(model, ctx)
    seq = harness.add(len(ids))
    logits = harness.step({seq: ids})[seq]
    torch.testing.assert_close(logits, hf_logits(hf, ids), atol=1e-4, rtol=1e-4)


def test_metadata_is_converted_once(tmp_path):
    path = tmp_path / "cached.gguf"
    write_tiny_gguf(path, tiny_hf_model(tiny_config("llama")))
    load_model_source(str(path))
    entries = list((tmp_path / "heron-cache" / "gguf").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("cached-")
    assert (entries[0] / "config.json").is_file()
    again = load_model_source(str(path))
    assert again.hf_config.architectures == ["LlamaForCausalLM"]
    assert len(list((tmp_path / "heron-cache" / "gguf").iterdir())) == 1


def test_cached_metadata_reads_like_the_auto_classes(tmp_path):
    """The fast path (base config class, TokenizersBackend) gives what AutoConfig/AutoTokenizer do."""
    import json

    from transformers import AutoConfig, AutoTokenizer

    path = tmp_path / "fast.gguf"
    write_tiny_gguf(path, tiny_hf_model(tiny_config("llama")))
    load_model_source(str(path))
    (meta,) = (tmp_path / "heron-cache" / "gguf").iterdir()
    import transformers

    if not hasattr(transformers, "TokenizersBackend"):
        pytest.skip("this transformers has no TokenizersBackend: the Auto classes are used")
    fast = load_cached_metadata(meta)
    assert fast is not None, "a TokenizersBackend folder should take the fast path"
    config, tokenizer = fast
    auto_config = AutoConfig.from_pretrained(str(meta))
    assert type(config).__name__ == "PreTrainedConfig"
    # Not model fields: where it was read from, and a generation flag the base class keeps out.
    skipped = {"_name_or_path", "use_cache"}
    for key, value in auto_config.to_dict().items():
        assert key in skipped or getattr(config, key) == value, key
    auto_tokenizer = AutoTokenizer.from_pretrained(str(meta))
    chat = [{"role": "user", "content": "Herons wade."}]
    assert tokenizer.apply_chat_template(chat) == auto_tokenizer.apply_chat_template(chat)
    assert tokenizer.eos_token_id == auto_tokenizer.eos_token_id
    # Another tokenizer class: the caller falls back to the Auto classes.
    settings = json.loads((meta / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    (meta / "tokenizer_config.json").write_text(json.dumps(settings))
    assert load_cached_metadata(meta) is None


@pytest.fixture(scope="module")
def smollm2():
    """The bundled SmolLM2-135M-Instruct, loaded once (metadata cache: the user's)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("HERON_CACHE_DIR", raising=False)
        source = load_model_source(None)
    ctx = make_context(block_size=16)
    start = time.perf_counter()
    model = build_model(source, ctx)
    return source, ctx, model, time.perf_counter() - start


def _chat_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_smollm2_loads_and_answers(smollm2):
    source, ctx, model, _ = smollm2
    assert source.path == default_model_path()
    assert source.name == "SmolLM2-135M-Instruct.Q4_1"
    config = source.hf_config
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert config.tie_word_embeddings and model.lm_head is None
    assert source.generation_config["eos_token_id"] == 2
    tokenizer = source.tokenizer
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ids = _chat_ids(tokenizer, "What is the capital of France?")
    assert tokenizer.decode(ids).startswith("<|im_start|>system\n")
    harness = Harness(model, ctx)
    seq = harness.add(len(ids) + 8)
    logits = harness.step({seq: ids})[seq]
    answer = []
    for _ in range(8):
        token = int(logits[-1].argmax())
        answer.append(token)
        logits = harness.step({seq: [token]})[seq]
    assert "Paris" in tokenizer.decode(answer)


@pytest.mark.slow  # ~20 s, all in the oracle: transformers' numpy GGUF loader
def test_smollm2_logits_match_transformers_gguf_loader(smollm2):
    """transformers' own GGUF reader (gguf-py dequantization, its un-permute) is the oracle."""
    from transformers import LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    source, ctx, model, _ = smollm2
    hf = LlamaForCausalLM(source.hf_config).eval()
    tensors = load_gguf_checkpoint(source.path, return_tensors=True, model_to_load=hf)["tensors"]
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding
    ids = _chat_ids(source.tokenizer, "Name three colours.")
    harness = Harness(model, ctx)
    seq = harness.add(len(ids))
    logits = harness.step({seq: ids})[seq]
    torch.testing.assert_close(logits, hf_logits(hf, ids), atol=5e-4, rtol=1e-4)
