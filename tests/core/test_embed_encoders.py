"""Pooling runner on tiny random encoders: BERT and RoBERTa (bidirectional attention through the
backend's non-causal mode) pooled by mean, CLS and last token equal Hugging Face's last hidden
states, on every installed backend, inputs of different lengths batched in one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_utils import build_tokenizer

from heron import LLM
from heron.pooling import PoolerConfigError

INPUTS = [[5, 17, 99, 3], list(range(40, 120)), [7], [200, 100, 50, 25, 12, 6, 3, 2] * 4]
"""No id 1: RoBERTa numbers positions around its padding id 1, which a real input never holds."""


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight matters (no unit norms or zero biases), so a mis-mapped tensor shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0.0, 0.2)
    return model.eval()


def _encoder_dir(tmp_path: Path, kind: str) -> tuple[Path, torch.nn.Module]:
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    common = {
        "vocab_size": 259,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 160,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    }
    if kind == "bert":
        config = BertConfig(**common, type_vocab_size=2, hidden_act="gelu")
        model = BertModel(config, add_pooling_layer=True)
    else:
        config = RobertaConfig(**common, type_vocab_size=1, pad_token_id=1, hidden_act="gelu")
        model = RobertaModel(config, add_pooling_layer=False)
    model = _randomize(model, seed=3)
    folder = tmp_path / f"tiny-{kind}"
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder, model


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("pooling", ["MEAN", "CLS", "LAST"])
def test_encoder_pooling_equals_hf(tmp_path: Path, backend: str, kind: str, pooling: str) -> None:
    folder, hf = _encoder_dir(tmp_path, kind)
    llm = LLM(
        str(folder),
        dtype="float32",
        pooler_config={"pooling_type": pooling, "normalize": False},
        enforce_eager=True,
    )
    assert llm.llm_engine.core.args.runner == "pooling"  # auto: an encoder architecture pools
    outs = llm.embed(INPUTS, use_tqdm=False)
    for ids, out in zip(INPUTS, outs):
        with torch.no_grad():
            hidden = hf(input_ids=torch.tensor([ids])).last_hidden_state[0]
        want = {"MEAN": hidden.mean(0), "CLS": hidden[0], "LAST": hidden[-1]}[pooling]
        got = torch.tensor(out.outputs.embedding)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        assert out.prompt_token_ids == ids


def test_encoder_cannot_generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_BACKEND", "reference")
    folder, _ = _encoder_dir(tmp_path, "bert")
    with pytest.raises(PoolerConfigError, match="encoder model: it cannot generate"):
        LLM(str(folder), runner="generate")
