"""Engine behaviour users rely on: seeds, prefix reuse, n/best_of, stops, limits, chat, AsyncLLM."""

from __future__ import annotations

import asyncio

import pytest
from model_utils import KERNEL_FRIENDLY, make_tiny_model_dir

from heron import LLM, AsyncLLM, SamplingParams
from heron.engine.input_processor import InvalidPromptError, PromptTooLongError
from heron.sampling_params import SamplingParamsError

LONG_PREFIX = "You are a careful assistant. " * 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("feat"), "llama", **KERNEL_FRIENDLY)


@pytest.fixture(scope="module")
def llm(model_dir) -> LLM:
    return LLM(str(model_dir), dtype="float32", block_size=16, max_model_len=256)


def test_seeded_sampling_is_reproducible_across_runs_and_batch_mixes(llm: LLM) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=10, seed=1234)
    alone = llm.generate(["Tell me about herons"], params, use_tqdm=False)[0]
    again = llm.generate(["Tell me about herons"], params, use_tqdm=False)[0]
    mixed = llm.generate(
        ["Other prompt", "Tell me about herons", "Yet another, longer prompt for the batch"],
        [
            SamplingParams(temperature=1.0, max_tokens=7),
            params,
            SamplingParams(temperature=0.8, max_tokens=12),
        ],
        use_tqdm=False,
    )[1]
    assert alone.outputs[0].token_ids == again.outputs[0].token_ids == mixed.outputs[0].token_ids


def test_shared_prefix_reuses_blocks_and_keeps_output(llm: LLM) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=8)
    first = llm.generate([LONG_PREFIX + "Question one?"], params, use_tqdm=False)[0]
    before = llm.llm_engine.stats()
    second = llm.generate([LONG_PREFIX + "Question two?"], params, use_tqdm=False)[0]
    after = llm.llm_engine.stats()
    assert after.prefix_cache_hits - before.prefix_cache_hits >= 16 * 5
    assert second.num_cached_tokens >= 16 * 5
    fresh = LLM(
        str(llm.engine_args.model),
        dtype="float32",
        block_size=16,
        max_model_len=256,
        enable_prefix_caching=False,
    )
    expected = fresh.generate([LONG_PREFIX + "Question two?"], params, use_tqdm=False)[0]
    assert second.outputs[0].token_ids == expected.outputs[0].token_ids
    assert first.outputs[0].text


def test_n_and_best_of(llm: LLM) -> None:
    out = llm.generate(
        ["Count:"], SamplingParams(n=3, temperature=1.0, max_tokens=6, seed=7), use_tqdm=False
    )[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    best = llm.generate(
        ["Count:"],
        SamplingParams(n=2, best_of=4, temperature=1.0, max_tokens=6, seed=7),
        use_tqdm=False,
    )[0]
    assert len(best.outputs) == 2
    scores = [o.cumulative_logprob for o in best.outputs]
    assert scores == sorted(scores, reverse=True)


def test_stop_strings_and_token_ids(llm: LLM) -> None:
    free = llm.generate(
        ["Stop test"], SamplingParams(temperature=0, max_tokens=20), use_tqdm=False
    )[0].outputs[0]
    text = free.text
    assert len(text) > 4
    stop = text[2:4]
    cut = llm.generate(
        ["Stop test"], SamplingParams(temperature=0, max_tokens=20, stop=[stop]), use_tqdm=False
    )[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == text[: text.index(stop)]
    kept = llm.generate(
        ["Stop test"],
        SamplingParams(temperature=0, max_tokens=20, stop=[stop], include_stop_str_in_output=True),
        use_tqdm=False,
    )[0].outputs[0]
    assert kept.text == text[: text.index(stop) + len(stop)]
    token = free.token_ids[3]
    by_id = llm.generate(
        ["Stop test"],
        SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[token]),
        use_tqdm=False,
    )[0].outputs[0]
    assert by_id.finish_reason == "stop" and by_id.stop_reason == token
    assert by_id.token_ids[-1] == token
    assert len(by_id.token_ids) == free.token_ids.index(token) + 1
    length = llm.generate(
        ["Stop test"], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True), use_tqdm=False
    )[0]
    assert length.outputs[0].finish_reason == "length" and len(length.outputs[0].token_ids) == 5


def test_limits_give_clear_errors(llm: LLM) -> None:
    with pytest.raises(PromptTooLongError, match="256") as info:
        llm.generate(["x" * 400], use_tqdm=False)
    assert "400" in str(info.value) or info.value.num_tokens >= 256
    with pytest.raises(InvalidPromptError, match="vocabulary"):
        llm.generate([[1, 2, 10**6]], use_tqdm=False)
    with pytest.raises(SamplingParamsError, match="top_p"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="max_num_seqs"):
        LLM(str(llm.engine_args.model), max_num_seqs=0)
    assert not llm.llm_engine.has_unfinished_requests()


def test_chat_and_token_prompts(llm: LLM) -> None:
    one = llm.chat(
        [{"role": "user", "content": "hi"}],
        SamplingParams(temperature=0, max_tokens=4),
        use_tqdm=False,
    )
    many = llm.chat(
        [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]],
        SamplingParams(temperature=0, max_tokens=4),
        use_tqdm=False,
    )
    assert len(one) == 1 and len(many) == 2
    assert one[0].outputs[0].token_ids == many[0].outputs[0].token_ids
    assert one[0].prompt.endswith("<|im_start|>assistant\n")
    ids = llm.get_tokenizer()("hello")["input_ids"]
    by_ids = llm.generate(ids, SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    by_text = llm.generate("hello", SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert by_ids[0].outputs[0].token_ids == by_text[0].outputs[0].token_ids


def test_async_llm_streams_and_aborts(model_dir) -> None:
    engine = AsyncLLM(model=str(model_dir), dtype="float32", block_size=16, max_model_len=256)

    async def main() -> None:
        from heron.engine.output_processor import RequestOutputKind

        pieces = []
        async for out in engine.generate(
            "stream me",
            SamplingParams(temperature=0, max_tokens=8, ignore_eos=True),
            request_id="s1",
            output_kind=RequestOutputKind.DELTA,
        ):
            pieces.append(list(out.outputs[0].token_ids))
        assert sum(len(p) for p in pieces) == 8 and len(pieces) > 1

        async def consume_two() -> None:
            count = 0
            async for _ in engine.generate(
                "abort me", SamplingParams(max_tokens=200, ignore_eos=True), request_id="a1"
            ):
                count += 1
                if count == 2:
                    break

        await consume_two()
        for _ in range(100):
            if engine.stats().num_running == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.stats().num_running == 0
        assert engine.stats().kv_cache_usage == 0.0 or engine.engine_args.enable_prefix_caching

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()


def test_generation_config_supplies_defaults_unless_opted_out(tmp_path) -> None:
    import json

    folder = make_tiny_model_dir(tmp_path, "llama", **KERNEL_FRIENDLY)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update({"max_new_tokens": 3, "temperature": 0.0})
    (folder / "generation_config.json").write_text(json.dumps(config))
    prompt = "defaults"
    llm = LLM(str(folder), dtype="float32", block_size=16, max_model_len=256)
    default = llm.generate(prompt, SamplingParams(ignore_eos=True), use_tqdm=False)[0].outputs[0]
    assert len(default.token_ids) == 3  # max_new_tokens from the model's generation config
    explicit = llm.generate(prompt, SamplingParams(ignore_eos=True, max_tokens=6), use_tqdm=False)
    assert len(explicit[0].outputs[0].token_ids) == 6  # what the user sets wins
    plain = LLM(
        str(folder), dtype="float32", block_size=16, max_model_len=256, generation_config="vllm"
    )
    out = plain.generate(prompt, SamplingParams(ignore_eos=True), use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 16  # SamplingParams' own default


def test_prompt_logprobs_survive_chunked_prefill(llm: LLM) -> None:
    prompt = "Prompt logprobs must not depend on how the prompt is split into chunks."
    params = SamplingParams(temperature=0, max_tokens=2, prompt_logprobs=1)
    whole = llm.generate(prompt, params, use_tqdm=False)[0].prompt_logprobs
    chunked_llm = LLM(
        str(llm.engine_args.model),
        dtype="float32",
        block_size=16,
        max_model_len=256,
        max_num_batched_tokens=16,
    )
    chunked = chunked_llm.generate(prompt, params, use_tqdm=False)[0].prompt_logprobs
    assert len(whole) == len(chunked) == len(llm.get_tokenizer()(prompt)["input_ids"])
    assert whole[0] is None and chunked[0] is None
    for a, b in zip(whole[1:], chunked[1:]):
        assert a.keys() == b.keys()
        for token in a:
            assert a[token].logprob == pytest.approx(b[token].logprob, abs=1e-5)


def test_backend_that_cannot_run_the_model_is_named(tmp_path, monkeypatch) -> None:
    import importlib.util

    from heron.engine.engine_core import EngineConfigError

    if importlib.util.find_spec("heron_cpu") is None:
        pytest.skip("needs heron-cpu, whose kernels have a fixed set of head sizes")
    folder = make_tiny_model_dir(tmp_path, "llama")  # head size 16
    monkeypatch.setenv("HERON_BACKEND", "cpu")
    with pytest.raises(EngineConfigError, match=r"head size 16.*HERON_BACKEND"):
        LLM(str(folder), dtype="float32")


def test_prompt_bursts_split_for_streams_and_admitted_whole_offline(model_dir) -> None:
    """Offline batches return all at once, so staggering their admission would only cost time."""
    kwargs = {"dtype": "float32", "block_size": 16, "max_model_len": 256}
    offline = LLM(str(model_dir), **kwargs)
    assert offline.llm_engine.core.scheduler_config.split_prompt_bursts is False
    asked = LLM(str(model_dir), split_prompt_bursts=True, **kwargs)
    assert asked.llm_engine.core.scheduler_config.split_prompt_bursts is True
    streaming = AsyncLLM(model=str(model_dir), **kwargs)
    try:
        assert streaming.engine.core.scheduler_config.split_prompt_bursts is True
    finally:
        streaming.shutdown()
