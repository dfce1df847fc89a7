"""``--quantization gguf``: a GGUF file's Q8_0/Q4_0/Q4_1 weights stay in blocks on the CPU backend.

A tiny llama (tied embeddings, so the output projection is a quantized table too) written as a
GGUF of each format must give, in the engine on heron-cpu, the greedy ids of the same file with
``--quantization none`` (dequantized at load), with every linear layer and the tied logits kept
quantized. In float32 the two differ only in the order of the fp32 sums. Also: the resolution
of ``--quantization`` (defaults, refusals naming the flag), int8 for a Hugging Face folder, and a
backend without quantized kernels (the reference) dequantizing the same file by itself.
"""

from __future__ import annotations

import shutil

import pytest
from gguf import GGMLQuantizationType as Q
from model_utils import (
    ENGINE_MODES,
    EQUALITY_PROMPTS,
    kernel_friendly_overrides,
    make_tiny_model_dir,
    tiny_config,
    tiny_hf_model,
    write_tiny_gguf,
)

from heron import LLM, SamplingParams
from heron.layers.linear import Linear
from heron.loader.quantized import quantize_int8, resolve_quantization

pytest.importorskip("heron_cpu.quant", reason="heron-cpu is not installed")

NEW_TOKENS = 12
FORMATS = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("HERON_BACKEND", "cpu")
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.25")
    monkeypatch.setenv("HERON_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "heron-cache"))


def greedy() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)


def _ids(llm: LLM, prompts: list[str] = EQUALITY_PROMPTS) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, greedy(), use_tqdm=False)]


def _kept_formats(llm: LLM) -> set[str | None]:
    model = llm.llm_engine.core.runner.model
    return {m.quant_format for m in model.modules() if isinstance(m, Linear)}


@pytest.fixture(scope="module", params=list(FORMATS))
def gguf_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    config = tiny_config("llama", tie_word_embeddings=True, **kernel_friendly_overrides("llama"))
    path = tmp_path_factory.mktemp(request.param) / f"tiny-{request.param}.gguf"
    qtype = FORMATS[request.param]
    write_tiny_gguf(path, tiny_hf_model(config), {"proj": qtype, "embed_tokens": qtype})
    return request.param, str(path)


def test_kept_quantized_equals_dequantized(gguf_file) -> None:
    fmt, path = gguf_file
    plain = LLM(path, dtype="float32", block_size=16, quantization="none")
    assert _kept_formats(plain) == {None}
    expected = _ids(plain)
    del plain
    for mode, kwargs in {"default": {}, "small-chunks": ENGINE_MODES["small-chunks"]}.items():
        # Default: quantization gguf for a GGUF file.
        llm = LLM(path, dtype="float32", block_size=16, **kwargs)
        assert _kept_formats(llm) == {fmt}
        logits = llm.llm_engine.core.runner.model._logits_weight
        assert type(logits).__name__ == "PackedQuant" and logits.format == fmt
        assert _ids(llm) == expected, f"{fmt}, mode {mode}"


def test_bfloat16_activations_stay_close(gguf_file) -> None:
    """--dtype bfloat16 sets the activations; weights stay in blocks (exact, unlike bf16 copies)."""
    fmt, path = gguf_file
    llm = LLM(path, dtype="bfloat16", block_size=16)
    assert _kept_formats(llm) == {fmt}
    got = _ids(llm)
    plain = _ids(LLM(path, dtype="bfloat16", block_size=16, quantization="none"))
    # A random model's near-tied logits diverge in bf16 after a while; its first tokens may not.
    prefix = [len(_common_prefix(a, b)) for a, b in zip(got, plain)]
    assert min(prefix) >= 1 and sum(prefix) >= NEW_TOKENS * len(plain) // 2, f"{fmt}: {prefix}"


def _common_prefix(a: list[int], b: list[int]) -> list[int]:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def test_backend_without_kernels_dequantizes(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    config = tiny_config("llama", tie_word_embeddings=True, **kernel_friendly_overrides("llama"))
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, tiny_hf_model(config), {"proj": Q.Q4_1, "embed_tokens": Q.Q8_0})
    cpu = _ids(LLM(str(path), dtype="float32", block_size=16, quantization="none"))
    monkeypatch.setenv("HERON_BACKEND", "reference")
    monkeypatch.setenv("HERON_KVCACHE_SPACE", "0.25")
    llm = LLM(str(path), dtype="float32", block_size=16, quantization="gguf")
    model = llm.llm_engine.core.runner.model
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    assert {m.quant_format for m in layers} == {None}
    assert {m.dequantized_format for m in layers} == {"q4_1"}
    assert _ids(llm) == cpu


def test_int8_for_hugging_face_folder(tmp_path) -> None:
    """int8 keeps every linear weight as int8 + per-row scales. The reference is the same model
    whose checkpoint already holds those int8 values times their scales, run unquantized (the
    embedding table is looked up unquantized in both; this model's lm_head is its own)."""
    from safetensors.torch import load_file, save_file

    folder = make_tiny_model_dir(tmp_path / "a", "llama", **kernel_friendly_overrides("llama"))
    rounded = tmp_path / "rounded"
    shutil.copytree(folder, rounded)
    state = load_file(str(rounded / "model.safetensors"))
    for name, tensor in state.items():
        if name.endswith(".weight") and tensor.dim() == 2 and "embed_tokens" not in name:
            state[name] = quantize_int8(tensor).dequantize(tensor.dtype)
    save_file(state, str(rounded / "model.safetensors"), metadata={"format": "pt"})
    llm = LLM(str(folder), dtype="float32", block_size=16, quantization="int8")
    assert _kept_formats(llm) == {"int8"}
    got = _ids(llm)
    assert got == _ids(LLM(str(rounded), dtype="float32", block_size=16))
    assert got != _ids(LLM(str(folder), dtype="float32", block_size=16)), "int8 changed nothing"


def test_resolution_and_refusals() -> None:
    assert resolve_quantization(None, "gguf", 1) == "gguf"
    assert resolve_quantization(None, "gguf", 2) == "none"
    assert resolve_quantization(None, None, 1) == "none"
    assert resolve_quantization("int8", None, 1) == "int8"
    with pytest.raises(ValueError, match=r"--quantization gguf needs a \.gguf"):
        resolve_quantization("gguf", None, 1)
    with pytest.raises(ValueError, match="--quantization int8 is for Hugging Face"):
        resolve_quantization("int8", "gguf", 1)
    with pytest.raises(ValueError, match="--quantization gguf is not supported with tensor"):
        resolve_quantization("gguf", "gguf", 2)
    with pytest.raises(ValueError, match="--quantization must be one of"):
        resolve_quantization("awq", "gguf", 1)
