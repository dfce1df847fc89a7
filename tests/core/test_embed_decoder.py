"""Pooling runner on tiny random decoders: last-token pooling (Qwen3-Embedding style) equals the
Hugging Face hidden state at the last position, on every installed backend, inputs of different
lengths batched in one step; Matryoshka truncation; and the pooling runner's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_utils import kernel_friendly_overrides, make_tiny_model_dir

from heron import LLM, PoolingParams
from heron.pooling import PoolerConfigError, PoolingParamsError
from heron.pooling.frontend import InputTooLongError

INPUTS = [[5, 17, 99, 3], list(range(40, 120)), [7], [200, 100, 50, 25, 12, 6, 3, 2] * 4]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_decoder_last_token_pooling_equals_hf_hidden_state(
    tmp_path: Path, backend: str, arch: str
) -> None:
    from transformers import AutoModel

    folder = make_tiny_model_dir(tmp_path, arch, **kernel_friendly_overrides(arch))
    llm = LLM(
        str(folder),
        runner="pooling",
        dtype="float32",
        pooler_config='{"pooling_type": "last", "normalize": false}',
    )
    outs = llm.embed(INPUTS, use_tqdm=False)
    hf = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    for ids, out in zip(INPUTS, outs):
        with torch.no_grad():
            want = hf(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        torch.testing.assert_close(torch.tensor(out.outputs.embedding), want, atol=1e-4, rtol=1e-4)
    # Normalised by default (Qwen3-Embedding's recipe) and with Matryoshka truncation asked for.
    llm = LLM(str(folder), runner="pooling", dtype="float32", pooler_config={"matryoshka": True})
    full, short = llm.embed([INPUTS[1], {"prompt_token_ids": INPUTS[1]}], use_tqdm=False)
    short = llm.embed(INPUTS[1], PoolingParams(dimensions=16), use_tqdm=False)[0]
    vector = torch.tensor(full.outputs.embedding)
    assert vector.norm().item() == pytest.approx(1.0, abs=1e-5)
    assert len(short.outputs.embedding) == 16
    torch.testing.assert_close(
        torch.tensor(short.outputs.embedding),
        torch.nn.functional.normalize(vector[:16], dim=0),
        atol=1e-5,
        rtol=1e-5,
    )


def test_pooling_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_BACKEND", "reference")
    folder = make_tiny_model_dir(tmp_path, "llama")
    llm = LLM(str(folder), runner="pooling", dtype="float32", max_model_len=32)
    with pytest.raises(ValueError, match="pooling runner: it computes embeddings"):
        llm.generate([[1, 2, 3]], use_tqdm=False)
    with pytest.raises(PoolingParamsError, match="does not support Matryoshka"):
        llm.embed([[1, 2]], PoolingParams(dimensions=8), use_tqdm=False)
    with pytest.raises(InputTooLongError, match=r"maximum context length is 32 tokens.*40") as info:
        llm.embed([list(range(40))], use_tqdm=False)
    assert (info.value.num_tokens, info.value.max_model_len) == (40, 32)
    with pytest.raises(PoolingParamsError, match="truncate_prompt_tokens must be -1 or between"):
        llm.embed([[1]], truncate_prompt_tokens=33, use_tqdm=False)
    whole = llm.embed([list(range(8, 40))], use_tqdm=False)[0]
    cut = llm.embed([list(range(40))], truncate_prompt_tokens=-1, use_tqdm=False)[0]
    assert cut.prompt_token_ids == list(range(8, 40))  # the last max_model_len ids, as vLLM
    assert cut.outputs.embedding == whole.outputs.embedding
    assert llm.llm_engine.core.kv_manager.usage == 0.0  # KV freed after the step

    gen = LLM(str(folder), max_model_len=32)  # auto: a decoder folder generates
    with pytest.raises(ValueError, match="generate runner, which returns no embeddings"):
        gen.embed(["hello"], use_tqdm=False)
    with pytest.raises(PoolerConfigError, match="only used with runner 'pooling'"):
        LLM(str(folder), pooler_config={"pooling_type": "MEAN"})
