"""llama.cpp's K-quants under ``--quantization gguf``: Q4_K kept quantized, Q6_K dequantized at load.

Q4_K's 32-weight sub-blocks have a float32 scale ``d sc`` and minimum ``-(dmin m)`` that are
exact products (an f16 times a 6-bit integer), so heron-cpu repacks them into its 4-bit loop's
layout without changing a weight (heron_interfaces 1.10's ``q4_k`` format). Q6_K's 16-weight
int8 scales have no such form, so it is dequantized at load and the start-up log says so.

gguf-py decodes K-quants but cannot encode them; :func:`encode_q4_k` / :func:`encode_q6_k` below
write valid blocks (a plain min/max fit, not llama.cpp's search), enough for a tiny random model
whose file must run exactly like its dequantized twin (float32 greedy ids, ``--quantization
none``), with every Q4_K linear layer and the tied output projection kept in blocks.
"""

from __future__ import annotations

import logging

import gguf.quants
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from model_utils import EQUALITY_PROMPTS, tiny_config, tiny_hf_model, write_tiny_gguf

from heron import LLM, SamplingParams
from heron.layers.linear import Linear
from heron_interfaces.quantization import QuantizedWeight

pytest.importorskip("heron_cpu.quant", reason="heron-cpu is not installed")

NEW_TOKENS = 12
SHAPE = {  # K a multiple of 256 for every linear layer: 256 (hidden) and 512 (intermediate)
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).reshape(-1, 1).view(np.uint8)


def encode_q4_k(data: np.ndarray) -> np.ndarray:
    """float32 ``[rows, k]`` (k % 256 == 0) as Q4_K blocks, uint8 ``[rows, k / 256 * 144]``."""
    rows = data.shape[0]
    x = data.reshape(-1, 8, 32).astype(np.float32)
    low = np.minimum(x.min(axis=-1), 0.0)
    step = (x.max(axis=-1) - low) / 15.0
    d = (step.max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)
    dmin = ((-low).max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(step / np.where(d > 0, d, 1)[:, None]), 0, 63).astype(np.uint8)
    m = np.clip(np.round(-low / np.where(dmin > 0, dmin, 1)[:, None]), 0, 63).astype(np.uint8)
    scale = d[:, None] * sc.astype(np.float32)
    offset = dmin[:, None] * m.astype(np.float32)
    q = np.round((x + offset[..., None]) / np.where(scale > 0, scale, 1)[..., None])
    q = np.clip(q, 0, 15).astype(np.uint8)
    packed = np.concatenate(
        [
            (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
            (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6),
            (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4),
        ],
        axis=-1,
    )
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)  # sub-block 2i low, 2i + 1 high
    blocks = np.concatenate([_f16_bytes(d), _f16_bytes(dmin), packed, qs], axis=-1)
    return blocks.reshape(rows, -1)


def encode_q6_k(data: np.ndarray) -> np.ndarray:
    """float32 ``[rows, k]`` (k % 256 == 0) as Q6_K blocks, uint8 ``[rows, k / 256 * 210]``."""
    rows = data.shape[0]
    x = data.reshape(-1, 16, 16).astype(np.float32)
    step = np.abs(x).max(axis=-1) / 31.0
    d = (step.max(axis=-1) / 127.0).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(step / np.where(d > 0, d, 1)[:, None]), -128, 127).astype(np.int8)
    scale = d[:, None] * sc.astype(np.float32)
    q = np.round(x / np.where(scale > 0, scale, 1)[..., None]) + 32
    q = np.clip(q, 0, 63).astype(np.uint8).reshape(-1, 2, 128)  # two halves of 128 values
    low, high = q & 15, q >> 4
    ql = (low[..., :64] | (low[..., 64:] << 4)).reshape(-1, 128)
    qh = high[..., 0:32] | (high[..., 32:64] << 2) | (high[..., 64:96] << 4) | (high[..., 96:] << 6)
    blocks = np.concatenate([ql, qh.reshape(-1, 64), sc.view(np.uint8), _f16_bytes(d)], axis=-1)
    return blocks.reshape(rows, -1)


_ENCODERS = {Q.Q4_K: encode_q4_k, Q.Q6_K: encode_q6_k}


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("HERON_BACKEND", "cpu")
    monkeypatch.setenv("HERON_CPU_KVCACHE_SPACE", "0.25")
    monkeypatch.setenv("HERON_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "heron-cache"))


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K])
def test_encoders_round_trip_through_gguf_py(qtype: Q) -> None:
    """The test's encoders write blocks gguf-py decodes to the input, within 4/6-bit rounding."""
    data = np.random.default_rng(0).standard_normal((6, 512)).astype(np.float32) * 0.05
    decoded = gguf.quants.dequantize(_ENCODERS[qtype](data), qtype)
    bits = 4 if qtype == Q.Q4_K else 6
    assert np.abs(decoded - data).max() < 0.05 * 8 / 2**bits


def test_q4_k_reference_decode_equals_gguf_py() -> None:
    """heron_interfaces' reference decode of ``q4_k`` is bit-identical to gguf-py's."""
    data = np.random.default_rng(1).standard_normal((9, 768)).astype(np.float32) * 0.02
    blocks = encode_q4_k(data)
    weight = QuantizedWeight(format="q4_k", shape=(9, 768), data=torch.from_numpy(blocks))
    expected = torch.from_numpy(np.asarray(gguf.quants.dequantize(blocks, Q.Q4_K), np.float32))
    assert torch.equal(weight.dequantize(), expected)


@pytest.fixture(scope="module")
def kquant_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    config = tiny_config("llama", tie_word_embeddings=True, **SHAPE)
    path = tmp_path_factory.mktemp("kquants") / "tiny-kquants.gguf"
    plain_quantize = gguf.quants.quantize

    def quantize(data: np.ndarray, qtype: Q) -> np.ndarray:
        encoder = _ENCODERS.get(qtype)
        return plain_quantize(data, qtype) if encoder is None else encoder(data)

    with pytest.MonkeyPatch.context() as patch:  # write_tiny_gguf imports it when called
        patch.setattr(gguf.quants, "quantize", quantize)
        qtypes = {"down_proj": Q.Q6_K, "proj": Q.Q4_K, "embed_tokens": Q.Q4_K}
        write_tiny_gguf(path, tiny_hf_model(config), qtypes)
    return str(path)


def _ids(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    outputs = llm.generate(EQUALITY_PROMPTS, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_q4_k_kept_q6_k_dequantized_equal_dequantized_twin(
    kquant_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    plain = LLM(kquant_file, dtype="float32", block_size=16, quantization="none")
    expected = _ids(plain)
    del plain
    with caplog.at_level(logging.INFO):
        llm = LLM(kquant_file, dtype="float32", block_size=16)
    model = llm.llm_engine.core.runner.model
    kept = {name: m.quant_format for name, m in model.named_modules() if isinstance(m, Linear)}
    assert {f for name, f in kept.items() if "down_proj" not in name} == {"q4_k"}, kept
    assert {f for name, f in kept.items() if "down_proj" in name} == {None}, kept
    assert model._logits_weight.format == "q4_k"
    assert "Q6_K tensors dequantized at load" in caplog.text
    assert _ids(llm) == expected
