"""Sliding-window attention end to end: which layers a config windows, the KV cache manager
freeing blocks that fell out of the window, and a windowed Mistral giving Hugging Face's greedy
ids in every engine mode (the window smaller than the prompts and the generated text)."""

from __future__ import annotations

import json

import pytest
import torch
from model_utils import ENGINE_MODES, EQUALITY_PROMPTS, hf_greedy, make_equality_model

from heron import LLM, SamplingParams
from heron.kv.kv_cache_manager import KVCacheManager
from heron.models.sliding_window import layer_windows, uniform_window
from heron.request import Request
from heron.sampling_params import SamplingParams as Params

NEW_TOKENS = 24
BS = 4


def test_layer_windows_follow_transformers_rules() -> None:
    from transformers import Gemma2Config, Gemma3TextConfig, MistralConfig, Qwen2Config

    mistral = MistralConfig(num_hidden_layers=3, sliding_window=8)
    assert layer_windows(mistral) == [8, 8, 8] and uniform_window(mistral) == 8
    assert layer_windows(MistralConfig(num_hidden_layers=2, sliding_window=None)) == [None] * 2
    qwen2 = Qwen2Config(num_hidden_layers=2, sliding_window=8, use_sliding_window=False)
    assert layer_windows(qwen2) == [None, None] and uniform_window(qwen2) is None
    gemma2 = Gemma2Config(num_hidden_layers=4, sliding_window=16)
    assert layer_windows(gemma2) == [16, None, 16, None] and uniform_window(gemma2) is None
    gemma3 = Gemma3TextConfig(num_hidden_layers=7, sliding_window=16)
    assert layer_windows(gemma3) == [16] * 5 + [None, 16]


def _request(request_id: str, prompt: list[int]) -> Request:
    return Request(request_id=request_id, prompt_token_ids=prompt, sampling_params=Params())


def test_blocks_out_of_the_window_are_freed_as_a_request_advances() -> None:
    kv = KVCacheManager(num_blocks=12, block_size=BS, enable_prefix_caching=True, sliding_window=6)
    request = _request("a", list(range(10)))
    assert kv.allocate_slots(request, 10) is not None  # blocks 0-2 (positions 0-11)
    request.num_computed_tokens = 10
    assert kv.num_free_blocks == 9 and kv.num_freed_blocks(request) == 0
    table = list(request.block_ids)
    # The next token (position 10) sees positions 5..10: block 0 (0-3) is out of the window.
    request.output_token_ids.append(7)
    assert kv.allocate_slots(request, 1) == []
    assert kv.num_freed_blocks(request) == 1 and kv.num_free_blocks == 10
    assert request.block_ids == table, "freed entries keep their place in the block table"
    for token in range(8, 14):  # up to position 16: positions 11..16 are needed, block 1 is not
        request.num_computed_tokens += 1
        request.output_token_ids.append(token)
        assert kv.allocate_slots(request, 1) is not None
    assert kv.num_freed_blocks(request) == 2
    held = len(request.block_ids) - 2
    assert kv.num_free_blocks == 12 - held
    kv.free(request)  # frees only what it still holds: no block is freed twice
    assert kv.num_free_blocks == 12 and request.block_ids == []
    assert kv.num_freed_blocks(request) == 0


def test_without_a_window_nothing_is_freed_early() -> None:
    kv = KVCacheManager(num_blocks=12, block_size=BS)
    request = _request("a", list(range(30)))
    assert kv.allocate_slots(request, 30) is not None
    request.num_computed_tokens = 30
    request.output_token_ids.append(1)
    kv.allocate_slots(request, 1)
    assert kv.num_freed_blocks(request) == 0 and kv.num_free_blocks == 12 - 8


def test_prefix_cache_hits_stay_correct_with_freed_blocks() -> None:
    """A freed block keeps its hash until evicted: a later request with the same prompt reuses
    the whole run of cached blocks from the start, and evicted ones end the run."""
    kv = KVCacheManager(num_blocks=16, block_size=BS, sliding_window=5)
    prompt = list(range(17))
    first = _request("a", prompt)
    assert kv.allocate_slots(first, 17) is not None
    first.num_computed_tokens = 17
    first.output_token_ids.append(99)
    kv.allocate_slots(first, 1)
    assert kv.num_freed_blocks(first) == 3
    second = _request("b", prompt)
    blocks, cached = kv.get_computed_blocks(second)
    assert cached == 16 and blocks == first.block_ids[:4]
    assert kv.allocate_slots(second, 1, blocks, cached) is not None
    kv.free(first)
    kv.free(second)
    assert kv.num_free_blocks == 16


def test_bad_window_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="sliding_window"):
        KVCacheManager(num_blocks=4, block_size=BS, sliding_window=0)


@pytest.fixture(scope="module", params=[8, 21])
def windowed_mistral(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A tiny Mistral whose window (8: inside one block; 21: across block boundaries) is far
    shorter than the prompts plus the generated tokens."""
    from transformers import AutoModelForCausalLM

    window = request.param
    folder, prompt_ids = make_equality_model(tmp_path_factory.mktemp(f"w{window}"), "mistral")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["sliding_window"] = window
    config_path.write_text(json.dumps(config))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = hf_greedy(hf, prompt_ids, NEW_TOKENS)
    full = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, sliding_window=None)
    assert hf_greedy(full.eval(), prompt_ids, NEW_TOKENS) != expected, "the window must matter"
    return folder, prompt_ids, expected, window


# Freed blocks make ENGINE_MODES' 8-block cache (where the unwindowed tiny models preempt) roomy
# enough for a windowed model ("roomy"); one block less with 16-token steps preempts again.
WINDOW_MODES = {
    **ENGINE_MODES,
    "preemption": {
        "num_gpu_blocks_override": 7,
        "max_model_len": 112,
        "max_num_batched_tokens": 16,
    },
}


def test_windowed_mistral_equals_hf_in_every_mode(windowed_mistral, backend: str) -> None:
    folder, prompt_ids, expected, window = windowed_mistral
    greedy = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    for mode, kwargs in {**WINDOW_MODES, "roomy": ENGINE_MODES["preemption"]}.items():
        llm = LLM(str(folder), dtype="float32", block_size=16, **kwargs)
        core = llm.llm_engine.core
        assert type(core.runner.model).__name__ == "MistralForCausalLM"
        assert core.kv_manager.sliding_window == window
        outputs = llm.generate(EQUALITY_PROMPTS, greedy, use_tqdm=False)
        assert [o.prompt_token_ids for o in outputs] == prompt_ids
        got = [list(o.outputs[0].token_ids) for o in outputs]
        assert got == expected, f"mode {mode} on {backend}, window {window}"
        assert core.kv_manager.num_free_blocks == core.kv_manager.num_blocks
        preemptions = llm.llm_engine.stats().num_preemptions
        if mode == "preemption":
            assert preemptions > 0, "the small KV cache never preempted"
        if mode == "roomy":  # out-of-window blocks went back to the pool as requests advanced
            assert preemptions == 0, "the window freed no blocks"


def test_windowed_mistral_through_the_fallback_equals_hf(windowed_mistral, backend: str) -> None:
    """--model-impl transformers: transformers' modules pass the window to Heron's attention."""
    folder, _prompt_ids, expected, window = windowed_mistral
    if window != 21:
        pytest.skip("the fallback is checked with one window")
    greedy = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    for mode, kwargs in WINDOW_MODES.items():
        llm = LLM(str(folder), dtype="float32", block_size=16, model_impl="transformers", **kwargs)
        assert type(llm.llm_engine.core.runner.model).__name__ == "TransformersForCausalLM"
        outputs = llm.generate(EQUALITY_PROMPTS, greedy, use_tqdm=False)
        got = [list(o.outputs[0].token_ids) for o in outputs]
        assert got == expected, f"fallback, mode {mode} on {backend}"


def test_a_backend_without_windows_is_refused_naming_it(tmp_path) -> None:
    """A backend that does not declare sliding windows gets a clear error, not full attention."""
    from model_utils import make_context, tiny_config

    from heron.models.decoder import UnsupportedAttentionError
    from heron.models.llama import MistralForCausalLM
    from heron_interfaces.reference import ReferenceAttention

    class NoWindows(ReferenceAttention):
        name = "nowindows"
        supports_sliding_window = False

    config = tiny_config("mistral", sliding_window=16)
    with pytest.raises(UnsupportedAttentionError, match=r"'nowindows'.*sliding-window"):
        MistralForCausalLM(config, make_context(attention_cls=NoWindows))
    MistralForCausalLM(tiny_config("mistral"), make_context(attention_cls=NoWindows))


def test_windowed_mistral_with_speculative_decoding_equals_hf(windowed_mistral) -> None:
    """n-gram drafts verified under a window: rejected drafts roll back only blocks past the
    accepted tokens, never the window's (freed by the count before the step)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _prompt_ids, _expected, window = windowed_mistral
    if window != 21:
        pytest.skip("speculation is checked with one window")
    prompts = [p * 3 for p in EQUALITY_PROMPTS]  # repeated text: n-gram drafts get accepted
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = hf_greedy(hf, prompt_ids, 40)
    ngram = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
    llm = LLM(str(folder), dtype="float32", block_size=16, speculative_config=ngram)
    greedy = SamplingParams(temperature=0.0, max_tokens=40, min_tokens=40)
    outputs = llm.generate(prompts, greedy, use_tqdm=False)
    assert [list(o.outputs[0].token_ids) for o in outputs] == expected
    counters = llm.llm_engine.stats().spec_decode
    assert counters is not None and 0 < counters.num_accepted_tokens < counters.num_draft_tokens
    kv = llm.llm_engine.core.kv_manager
    assert kv.num_free_blocks == kv.num_blocks
