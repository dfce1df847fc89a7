"""Encoders on the tpu backend are refused up front, naming the backend: heron-tpu's Pallas
kernel has no non-causal mode (heron_interfaces 1.7's ``supports_non_causal`` is false), so a
BERT would otherwise attend causally and pool wrong vectors without a word."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "core"))
from test_embed_encoders import _encoder_dir

from heron import LLM
from heron.engine.engine_core import EngineConfigError

pytest.importorskip("heron_tpu", reason="heron-tpu is not installed")


def test_encoder_on_tpu_is_refused_naming_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from heron_tpu.attention import TpuAttentionBackend

    assert not TpuAttentionBackend.supports_non_causal
    monkeypatch.setenv("HERON_BACKEND", "tpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HERON_PLUGINS", raising=False)
    folder, _ = _encoder_dir(tmp_path, "bert")
    with pytest.raises(EngineConfigError) as refused:
        LLM(str(folder), dtype="float32", enforce_eager=True)
    message = str(refused.value)
    assert "tpu-pallas" in message and "non-causal" in message, message
    assert "HERON_BACKEND" in message  # and says how to pick another backend
