"""Speculative decoding through ``heron serve --speculative-config``: vLLM's counters on /metrics,
the acceptance rate in the periodic stats line, and a clear 400 for structured outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest
from server_utils import TINY_ARGS, start_server

SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
PREFIX = "heron:spec_decode_num_"


def test_spec_decode_metrics_on_a_test_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path
) -> None:
    server = start_server(
        tmp_path_factory.mktemp("spec"),
        "--model",
        str(tiny_model),
        *TINY_ARGS,
        "--speculative-config",
        json.dumps(SPEC),
        env={"HERON_LOG_STATS_INTERVAL": "0.2"},
        heron_cli=True,
    )
    try:
        client = server.client()
        model = client.models.list().data[0].id
        assert server.metric(PREFIX + "drafts_total") == 0
        for prompt in ("abcabcabcabc", "the cat the cat the cat", "a"):
            client.completions.create(model=model, prompt=prompt, max_tokens=40, temperature=0)
        drafts = server.metric(PREFIX + "drafts_total")
        drafted = server.metric(PREFIX + "draft_tokens_total")
        accepted = server.metric(PREFIX + "accepted_tokens_total")
        per_pos = {
            k: v
            for k, v in server.metrics().items()
            if k.startswith(PREFIX + "accepted_tokens_per_pos_total")
        }
        assert drafts > 0
        assert drafts <= drafted <= 3 * drafts
        assert 0 <= accepted <= drafted
        assert len(per_pos) == 3 and all('position="' in k for k in per_pos)
        assert sum(per_pos.values()) == accepted

        with pytest.raises(openai.BadRequestError, match="speculative decoding"):
            client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "hi"}],
                response_format={"type": "json_object"},
                max_tokens=5,
            )
        deadline = time.monotonic() + 10
        while "Spec decode acceptance rate" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Spec decode acceptance rate" in server.log()
    finally:
        server.stop()
