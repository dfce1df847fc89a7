"""``heron serve -dp 2`` on an encoder: /v1/embeddings through two pooling replicas returns Hugging
Face's vectors, and every embedding input is counted on /metrics (prompt tokens, a finished
request, an end-to-end latency) while a refused one counts nothing."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from server_utils import SERVED_NAME, RemoteServer, start_server

sys.path.insert(0, str(Path(__file__).parents[1] / "core"))
from test_embed_encoders import INPUTS, _encoder_dir


@pytest.fixture(scope="module")
def dp_embed_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RemoteServer, torch.nn.Module]]:
    tmp = tmp_path_factory.mktemp("dp-embed")
    folder, hf = _encoder_dir(tmp, "bert")
    remote = start_server(
        tmp,
        str(folder),
        "--dtype",
        "float32",
        "--max-model-len",
        "128",
        "--served-model-name",
        SERVED_NAME,
        "--pooler-config",
        json.dumps({"pooling_type": "MEAN", "normalize": False}),
        "-dp",
        "2",
        env={"HERON_CPU_KVCACHE_SPACE": "0.1", "HERON_KVCACHE_SPACE": "0.1"},
    )
    yield remote, hf
    remote.stop(signal.SIGKILL)


def test_dp_embeddings_equal_hf_and_are_counted(
    dp_embed_server: tuple[RemoteServer, torch.nn.Module],
) -> None:
    server, hf = dp_embed_server
    assert "Data parallelism: 2 engine replicas" in server.log()
    before_tokens = server.metric("heron:prompt_tokens_total")
    before_ok = server.metric('heron:request_success_total{finished_reason="stop"')
    before_e2e = server.metric("heron:e2e_request_latency_seconds_count")
    with server.client() as client:
        result = client.embeddings.create(model=SERVED_NAME, input=INPUTS, encoding_format="float")
        single = client.embeddings.create(model=SERVED_NAME, input=INPUTS[1])
    for ids, item in zip(INPUTS, result.data):
        with torch.no_grad():
            want = hf(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(0).numpy()
        np.testing.assert_allclose(np.array(item.embedding), want, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(single.data[0].embedding, result.data[1].embedding, atol=1e-6)
    tokens = sum(len(ids) for ids in INPUTS) + len(INPUTS[1])
    assert result.usage.prompt_tokens + single.usage.prompt_tokens == tokens
    assert server.metric("heron:prompt_tokens_total") - before_tokens == tokens
    ok = server.metric('heron:request_success_total{finished_reason="stop"') - before_ok
    assert ok == len(INPUTS) + 1
    e2e = server.metric("heron:e2e_request_latency_seconds_count") - before_e2e
    assert e2e == len(INPUTS) + 1
    assert server.metric("heron:e2e_request_latency_seconds_sum") > 0
    # A refused input (too long: a 400 from the front) is not counted.
    with server.http() as http:
        response = http.post("/v1/embeddings", json={"input": [list(range(2, 140))]})
    assert response.status_code == 400, response.text
    assert server.metric("heron:prompt_tokens_total") - before_tokens == tokens
