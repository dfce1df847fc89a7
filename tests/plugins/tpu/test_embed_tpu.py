"""An encoder on the tpu backend: heron-tpu's Pallas attention runs BERT's bidirectional layers
(heron_interfaces 1.7's non-causal mode), so the pooled vectors equal Hugging Face's.

The tiny BERT has heads of 64 (the kernel's smallest head size) and inputs of different lengths,
batched in one step, so rows of several prompts share the kernel's token tiles: a row that saw
another prompt's keys, or only the keys before it (a causal mask), would be far off.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from model_utils import build_tokenizer
from test_embed_encoders import _randomize

from heron import LLM

pytest.importorskip("heron_tpu", reason="heron-tpu is not installed")

INPUTS = [[5, 17, 99, 3], list(range(40, 75)), [7], [200, 100, 50, 25, 12, 6, 3, 2] * 3]


def _bert_dir(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=259,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        type_vocab_size=2,
        hidden_act="gelu",
    )
    model = _randomize(BertModel(config, add_pooling_layer=False), seed=5)
    folder = tmp_path / "tiny-bert-d64"
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder, model


def test_bert_on_tpu_pools_hugging_face_hidden_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from heron_tpu.attention import TpuAttentionBackend

    assert TpuAttentionBackend.supports_non_causal
    monkeypatch.setenv("HERON_BACKEND", "tpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HERON_PLUGINS", raising=False)
    folder, hf = _bert_dir(tmp_path)
    llm = LLM(
        str(folder),
        dtype="float32",
        pooler_config={"pooling_type": "MEAN", "normalize": False},
        enforce_eager=True,
        max_model_len=64,  # few padding buckets to compile in the interpreter
        max_num_seqs=4,
        max_num_batched_tokens=64,
    )
    assert llm.llm_engine.core.args.runner == "pooling"
    outs = llm.embed(INPUTS, use_tqdm=False)
    for ids, out in zip(INPUTS, outs):
        with torch.no_grad():
            want = hf(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0)
        got = torch.tensor(out.outputs.embedding)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
