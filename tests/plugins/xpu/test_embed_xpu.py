"""Encoders on the xpu backend: heron-xpu's Triton attention kernel in its non-causal mode
(``CAUSAL=False``, heron_interfaces 1.7), interpreted on this CPU host, pools a tiny random BERT
to Hugging Face's last hidden states (the whole forward through Triton kernels)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from xpu_device import DEVICE

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from test_embed_encoders import INPUTS, _encoder_dir

from heron import LLM

pytest.importorskip("heron_xpu", reason="heron-xpu is not installed")
pytest.importorskip("triton", reason="triton is not installed")


def test_bert_mean_pooling_on_xpu_equals_hf(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if DEVICE not in ("cpu", "xpu"):
        pytest.skip(f"HERON_XPU_DEVICE={DEVICE}: the engine's xpu platform drives torch.xpu")
    monkeypatch.setenv("HERON_BACKEND", "xpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HERON_PLUGINS", raising=False)
    if DEVICE == "cpu":
        monkeypatch.setenv("HERON_XPU_INTERPRET", "1")
        monkeypatch.setenv("HERON_XPU_KVCACHE_SPACE", "0.25")
    folder, hf = _encoder_dir(tmp_path, "bert")
    llm = LLM(
        str(folder),
        dtype="float32",
        pooler_config={"pooling_type": "MEAN", "normalize": False},
        enforce_eager=True,
    )
    assert llm.llm_engine.core.platform.name == "xpu"
    outs = llm.embed(INPUTS, use_tqdm=False)
    for ids, out in zip(INPUTS, outs):
        with torch.no_grad():
            want = hf(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0)
        torch.testing.assert_close(torch.tensor(out.outputs.embedding), want, atol=1e-4, rtol=1e-4)
