"""Speculative decoding: greedy ids identical to the same engine without speculation in every
scheduling mode, drafts rolled back in the KV cache, and its configuration's errors.

Prompt lookup on a random tiny model accepts few drafts, so most engine tests use an *oracle*
planner: it proposes the true greedy continuation (from a run without speculation) with every
third token corrupted, so runs are partly accepted and partly rolled back at every draft position.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from model_utils import (
    ENGINE_MODES,
    EQUALITY_PROMPTS,
    TINY_VOCAB,
    kernel_friendly_overrides,
    make_equality_model,
    make_tiny_model_dir,
)

from heron import LLM, SamplingParams
from heron.kv.kv_cache_manager import KVCacheManager
from heron.request import Request
from heron.spec_decode.config import SpeculativeConfig, parse_speculative_config
from heron.spec_decode.ngram import NgramProposer
from heron.spec_decode.proposer import DraftPlanner

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 3}
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder, _ = make_equality_model(tmp_path_factory.mktemp("spec"), "llama")
    return folder


class OraclePlanner(DraftPlanner):
    """Proposes the reference continuation, corrupting the token at every output index i with
    i % 3 == 2: drafts are accepted up to there and rejected at it."""

    def __init__(self, reference: dict[tuple[int, ...], list[int]], max_model_len: int) -> None:
        super().__init__(SpeculativeConfig.from_value(NGRAM), max_model_len)
        self.reference = reference

    def drafts(self, request: Request, budget: int, kv: KVCacheManager) -> list[int]:
        limit = self.limit(request, budget, kv)
        done = request.num_output_tokens
        truth = self.reference[tuple(request.prompt_token_ids)][done : done + limit]
        return [(t + 1) % TINY_VOCAB if (done + j) % 3 == 2 else t for j, t in enumerate(truth)]


def _run(llm: LLM, params: SamplingParams) -> list[list[int]]:
    outputs = llm.generate(EQUALITY_PROMPTS, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _greedy(n: int = NEW_TOKENS, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, **kwargs)


@pytest.mark.parametrize("mode", list(ENGINE_MODES))
def test_greedy_ids_equal_without_speculation(tiny_llama: Path, mode: str) -> None:
    kwargs = ENGINE_MODES[mode]
    plain = LLM(str(tiny_llama), dtype="float32", block_size=16, **kwargs)
    params = _greedy(logprobs=2)
    expected = plain.generate(EQUALITY_PROMPTS, params, use_tqdm=False)
    reference = {
        tuple(o.prompt_token_ids): list(o.outputs[0].token_ids) + [0] * 8 for o in expected
    }

    spec = LLM(str(tiny_llama), dtype="float32", block_size=16, speculative_config=NGRAM, **kwargs)
    engine = spec.llm_engine.core
    engine.scheduler.proposer = OraclePlanner(reference, engine.max_model_len)
    got = spec.generate(EQUALITY_PROMPTS, params, use_tqdm=False)
    for want, have in zip(expected, got):
        assert list(have.outputs[0].token_ids) == list(want.outputs[0].token_ids), mode
        for a, b in zip(want.outputs[0].logprobs, have.outputs[0].logprobs):
            assert a.keys() == b.keys()
            for token in a:
                assert b[token].logprob == pytest.approx(a[token].logprob, abs=1e-4)
    counters = engine.spec_decode
    assert counters.num_accepted_tokens > 0
    assert counters.num_accepted_tokens < counters.num_draft_tokens  # some were rolled back
    if mode == "preemption":
        assert spec.llm_engine.stats().num_preemptions > 0
    # Every block went back: nothing leaked by the rollbacks.
    assert engine.kv_manager.num_free_blocks == engine.kv_manager.num_blocks


def test_ngram_speculation_equal_with_stops_and_concurrency(tiny_llama: Path) -> None:
    """Prompt lookup itself (no oracle), several concurrent requests, stop strings and stop
    token ids inside accepted runs: the same tokens and texts as without speculation."""
    plain = LLM(str(tiny_llama), dtype="float32", block_size=16, max_num_seqs=3)
    spec = LLM(
        str(tiny_llama), dtype="float32", block_size=16, max_num_seqs=3, speculative_config=NGRAM
    )
    prompts = EQUALITY_PROMPTS * 2
    base = plain.generate(prompts, _greedy(40), use_tqdm=False)
    # Stops chosen from the reference outputs, so they do fire mid-run.
    stop_string = base[1].outputs[0].text[10:12]
    stop_token = base[3].outputs[0].token_ids[7]
    for params in (
        _greedy(40),
        _greedy(40, stop=[stop_string]),
        _greedy(40, stop_token_ids=[stop_token]),
        _greedy(7),
    ):
        want = plain.generate(prompts, params, use_tqdm=False)
        have = spec.generate(prompts, params, use_tqdm=False)
        for a, b in zip(want, have):
            assert list(b.outputs[0].token_ids) == list(a.outputs[0].token_ids), params
            assert b.outputs[0].text == a.outputs[0].text
            assert b.outputs[0].finish_reason == a.outputs[0].finish_reason
    counters = spec.llm_engine.core.spec_decode
    assert counters.num_drafts > 0 and counters.num_draft_tokens > 0


def test_structured_outputs_refused(tiny_llama: Path) -> None:
    from heron.structured_outputs.params import StructuredOutputsParams

    spec = LLM(str(tiny_llama), dtype="float32", block_size=16, speculative_config=NGRAM)
    params = SamplingParams(structured_outputs=StructuredOutputsParams(regex="[ab]+"))
    with pytest.raises(ValueError, match="structured outputs cannot be combined"):
        spec.generate(["a"], params, use_tqdm=False)


# -- units --------------------------------------------------------------------------------------
def test_ngram_proposer_longest_latest_match() -> None:
    proposer = NgramProposer(min_n=1, max_n=3)
    assert proposer.propose([1, 2, 3, 4, 5, 1, 2, 3], 3) == [4, 5, 1]
    assert proposer.propose([9, 2, 7, 1, 2, 8, 1, 2], 2) == [8, 1]  # latest occurrence of (1, 2)
    assert proposer.propose([1, 2, 3], 2) == []
    assert proposer.propose([1, 2, 3, 4, 1, 2], 0) == []
    # A 3-gram beats a later 1-gram.
    assert proposer.propose([5, 6, 7, 8, 0, 7, 9, 5, 6, 7], 1) == [8]
    assert NgramProposer(min_n=2, max_n=2).propose([3, 1, 4, 1], 2) == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"method": "ngram"}', "num_speculative_tokens must be an integer in"),
        ({"method": "ngram", "num_speculative_tokens": 0}, r"\[1, 16\]"),
        ({"method": "lookahead", "num_speculative_tokens": 2}, "method must be one of"),
        ({"method": "ngram", "num_speculative_tokens": 2, "typo": 1}, "unknown field"),
        (
            {
                "method": "ngram",
                "num_speculative_tokens": 2,
                "prompt_lookup_min": 3,
                "prompt_lookup_max": 2,
            },
            "prompt_lookup_min",
        ),
        ("{not json", "not valid JSON"),
    ],
)
def test_config_errors_name_the_field(value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_speculative_config(value)


def test_speculation_is_refused_for_the_pooling_runner() -> None:
    from types import SimpleNamespace

    from heron.spec_decode.enable import SpeculativeConfigError, check_speculation

    args = SimpleNamespace(speculative_config=NGRAM)
    assert check_speculation(args, pooling=False) is not None
    with pytest.raises(SpeculativeConfigError, match="pooling runner generates nothing"):
        check_speculation(args, pooling=True)


def _request(tokens: list[int]) -> Request:
    return Request(request_id="r", prompt_token_ids=tokens, sampling_params=SamplingParams())


def test_kv_rollback_frees_blocks_past_the_accepted_tokens() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=True)
    request = _request(list(range(6)))
    assert kv.allocate_slots(request, 6) is not None  # prompt: 2 blocks, 1 full and hashed
    request.num_computed_tokens = 6
    request.output_token_ids.append(6)
    # Last token + 5 drafts: positions 6..11, up to 3 blocks.
    kv.allocate_slots(request, 6)
    assert len(request.block_ids) == 3 and kv.num_free_blocks == 5
    assert len(request.block_hashes) == 1  # drafts are not the request's tokens: never hashed
    # One draft accepted: tokens 0..8 (the target's own token at 8), KV valid for 0..7.
    request.output_token_ids += [7, 8]
    request.num_computed_tokens = 8
    freed = kv.free_blocks_past(request, request.num_tokens)
    assert freed == [] and len(request.block_ids) == 3  # position 8 lies in the third block
    request.output_token_ids.pop()
    freed = kv.free_blocks_past(request, request.num_tokens)  # 8 tokens: two blocks suffice
    assert len(freed) == 1 and len(request.block_ids) == 2 and kv.num_free_blocks == 6
    assert kv.pool.block_hash(freed[0]) is None
    kv.free(request)
    assert kv.num_free_blocks == 8


def test_planner_limits_drafts_to_room_and_lengths() -> None:
    config = SpeculativeConfig.from_value({**NGRAM, "num_speculative_tokens": 8})
    planner = DraftPlanner(config, max_model_len=64)
    kv = KVCacheManager(num_blocks=2, block_size=4, enable_prefix_caching=False)
    request = _request([1, 2, 3, 1, 2, 3, 1])
    kv.allocate_slots(request, 7)
    request.num_computed_tokens = 7
    request.output_token_ids.append(2)  # 8 tokens; the last one's KV goes to position 7
    assert planner.limit(request, budget=100, kv=kv) == 0  # 2 blocks = 8 slots, all needed
    kv2 = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    request.block_ids = []
    kv2.allocate_slots(request, 7)
    assert planner.limit(request, budget=100, kv=kv2) == 8
    assert planner.limit(request, budget=3, kv=kv2) == 2
    request.sampling_params = SamplingParams(max_tokens=4)
    assert planner.limit(request, budget=100, kv=kv2) == 2  # 1 output so far, at most 4
    assert planner.drafts(request, budget=100, kv=kv2) == [3, 1]


def test_sampled_logprobs_equal_the_target_and_seeds_repeat(tiny_llama: Path) -> None:
    """Temperature > 0 through rejection sampling: each returned token's logprob is the target's
    own at that position (checked against prompt logprobs of the same tokens without
    speculation), and a seeded request gives the same tokens twice."""
    spec = LLM(str(tiny_llama), dtype="float32", block_size=16, speculative_config=NGRAM)
    engine = spec.llm_engine.core
    plain = LLM(str(tiny_llama), dtype="float32", block_size=16)
    params = SamplingParams(temperature=0.7, top_k=20, max_tokens=20, logprobs=1, seed=5)
    first = spec.generate(EQUALITY_PROMPTS[1:2], params, use_tqdm=False)[0]
    again = spec.generate(EQUALITY_PROMPTS[1:2], params, use_tqdm=False)[0]
    assert list(again.outputs[0].token_ids) == list(first.outputs[0].token_ids)
    assert engine.spec_decode.num_draft_tokens > 0
    tokens = list(first.outputs[0].token_ids)
    prompt = list(first.prompt_token_ids)
    check = plain.generate(
        [{"prompt_token_ids": prompt + tokens}],
        SamplingParams(max_tokens=1, prompt_logprobs=1),
        use_tqdm=False,
    )[0]
    for i, (token, entry) in enumerate(zip(tokens, first.outputs[0].logprobs)):
        want = check.prompt_logprobs[len(prompt) + i][token].logprob
        assert entry[token].logprob == pytest.approx(want, abs=1e-4)


def test_bench_latency_dataset_with_speculation(tiny_llama: Path, tmp_path: Path) -> None:
    """``heron bench latency --dataset`` cycles through the file's prompts and reports the
    acceptance of ``--speculative-config`` over the timed runs."""
    import json

    from heron.bench.cli import main as bench_main

    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"prompt": f"ab ab ab ab {i} ab ab"}) for i in range(3)) + "\n"
    )
    out = tmp_path / "l.json"
    argv = ["latency", "--model", str(tiny_llama), "--max-model-len", "128", "--batch-size", "2",
            "--output-len", "12", "--num-iters-warmup", "1", "--num-iters", "3", "--dataset",
            str(data), "--speculative-config", json.dumps(NGRAM), "--output-json", str(out),
            "--dtype", "float32"]  # fmt: skip
    assert bench_main(argv) == 0
    result = json.loads(out.read_text())
    spec = result["spec_decode"]
    assert spec["num_drafts"] > 0 and 0 <= spec["acceptance_rate"] <= 1
    assert spec["mean_acceptance_length"] == pytest.approx(
        1 + spec["num_accepted_tokens"] / spec["num_drafts"]
    )
    assert result["dataset"] == str(data) and result["output_tokens"] > 0


# -- draft model --------------------------------------------------------------------------------
@pytest.mark.parametrize(("draft", "mode"), [("self", "default"), ("other", "preemption"),
                                             ("other", "small-chunks"), ("self", "no-prefix-caching")])  # fmt: skip
def test_draft_model_greedy_equal_without_speculation(
    tiny_llama: Path, tmp_path: Path, draft: str, mode: str
) -> None:
    """The target's greedy ids whatever the draft: itself (nearly every draft accepted) or a
    model of other weights on the same tokenizer (most rejected, so its KV is rolled back)."""
    folder = tiny_llama
    if draft == "other":
        folder = make_tiny_model_dir(
            tmp_path, "llama", seed=3, name="draft", **kernel_friendly_overrides("llama")
        )
    kwargs = ENGINE_MODES[mode]
    params = _greedy(30, logprobs=1)
    plain = LLM(str(tiny_llama), dtype="float32", block_size=16, **kwargs)
    expected = plain.generate(EQUALITY_PROMPTS, params, use_tqdm=False)
    config = {"model": str(folder), "num_speculative_tokens": 3}
    spec = LLM(str(tiny_llama), dtype="float32", block_size=16, speculative_config=config, **kwargs)
    got = spec.generate(EQUALITY_PROMPTS, params, use_tqdm=False)
    for want, have in zip(expected, got):
        assert list(have.outputs[0].token_ids) == list(want.outputs[0].token_ids), (draft, mode)
        for a, b in zip(want.outputs[0].logprobs, have.outputs[0].logprobs):
            for token in a:
                assert b[token].logprob == pytest.approx(a[token].logprob, abs=1e-4)
    counters = spec.llm_engine.core.spec_decode
    assert counters.num_draft_tokens > 0
    rate = counters.num_accepted_tokens / counters.num_draft_tokens
    if draft == "self":
        assert rate > 0.9
    else:
        assert rate < 0.9
    planner = spec.llm_engine.core.scheduler.proposer
    planner.forget_finished([])
    assert planner.kv.num_free_blocks == planner.kv.num_blocks  # every shadow released


def test_draft_model_with_another_vocabulary_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = make_tiny_model_dir(
        tmp_path, "llama", name="other-vocab", **kernel_friendly_overrides("llama")
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(folder)
    config = {"model": str(folder), "num_speculative_tokens": 2}
    with pytest.raises(ValueError, match="must share the target's vocabulary"):
        LLM(str(tiny_llama), speculative_config=config)


def test_draft_model_step_graphs_propose_as_eager(tiny_llama: Path) -> None:
    """In bfloat16 the draft's one-token steps are replayed from recorded launches (float32
    matmuls are not recorded, so the tests above run eagerly): the same drafts, so the same
    acceptance counts and tokens as an eager engine."""
    config = {"model": str(tiny_llama), "num_speculative_tokens": 3}
    params = _greedy(30)
    runs = []
    for eager in (True, False):
        llm = LLM(str(tiny_llama), dtype="bfloat16", block_size=16, speculative_config=config,
                  enforce_eager=eager)  # fmt: skip
        tokens = [list(o.outputs[0].token_ids) for o in llm.generate(EQUALITY_PROMPTS, params)]
        core = llm.llm_engine.core
        runs.append((tokens, core.spec_decode.num_accepted_tokens, core.spec_decode.num_drafts))
        graphs = core.scheduler.proposer.runner.step_graphs
        if not eager:
            assert graphs is not None and graphs.replays > 0
    assert runs[0] == runs[1]
