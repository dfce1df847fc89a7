"""Structured outputs (issue 20): random-weight models whose outputs only a grammar can make valid.

With random weights the model itself never writes JSON, a regex match or one of the choices; every
seed validating is the grammar's work. Also: the mask applied equals xgrammar's own matcher, the
engine's scheduling modes (n > 1, chunked prefill, prefix caching, preemption) keep the grammar,
bad constraints fail for their own request only, and a slow compile holds no other request.
"""

from __future__ import annotations

import json
import re
import threading
import time

import jsonschema
import pytest
import torch
from model_utils import ENGINE_MODES, KERNEL_FRIENDLY, build_tokenizer, make_tiny_model_dir

from heron import LLM, SamplingParams
from heron.structured_outputs import StructuredOutputsError, StructuredOutputsParams
from heron.structured_outputs.manager import StructuredOutputManager, apply_grammar_bitmask

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]{1,8}$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
        "address": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Oslo", "Lima"]},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "color", "tags", "address", "active"],
    "additionalProperties": False,
}
SMALL_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "pattern": "^[a-z]{1,4}$"},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
    },
    "required": ["id", "n", "ok"],
    "additionalProperties": False,
}
"""Short enough for the preemption mode's 112-token context."""
REGEX = r"[0-9]{3}-[a-z]{2,4}( [A-Z]+)?"
CHOICES = ["yes", 'no "way"', "maybe later"]
SEEDS = range(50)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("structured"), "llama", **KERNEL_FRIENDLY)


@pytest.fixture(scope="module")
def llm(model_dir) -> LLM:
    return LLM(str(model_dir), dtype="float32", block_size=16, max_model_len=512)


def _seeded(constraint: dict, **kwargs) -> list[SamplingParams]:
    return [
        SamplingParams(temperature=1.0, seed=seed, max_tokens=400, structured_outputs=constraint)
        for seed in SEEDS
    ]


def test_json_schema_holds_on_every_seed(llm: LLM) -> None:
    outputs = llm.generate(
        ["Describe a person"] * len(SEEDS), _seeded({"json": SCHEMA}), use_tqdm=False
    )
    for output in outputs:
        completion = output.outputs[0]
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), SCHEMA)
    # Random weights and sampling: the seeds really differ (the grammar is not a lone path).
    assert len({o.outputs[0].text for o in outputs}) > 40


def test_regex_and_choice_hold_on_every_seed(llm: LLM) -> None:
    by_regex = llm.generate(["Code:"] * len(SEEDS), _seeded({"regex": REGEX}), use_tqdm=False)
    for output in by_regex:
        assert re.fullmatch(REGEX, output.outputs[0].text), output.outputs[0].text
    by_choice = llm.generate(["Answer:"] * len(SEEDS), _seeded({"choice": CHOICES}), use_tqdm=False)
    texts = [o.outputs[0].text for o in by_choice]
    assert set(texts) <= set(CHOICES)


def test_json_object_is_an_object_and_json_text_schema_works(llm: LLM) -> None:
    compact = StructuredOutputsParams(json=json.dumps(SCHEMA), disable_any_whitespace=True)
    out = llm.generate(
        ["x"],
        SamplingParams(temperature=0, max_tokens=400, structured_outputs=compact),
        use_tqdm=False,
    )[0].outputs[0]
    assert out.text == json.dumps(json.loads(out.text))  # no whitespace beyond ", " and ": "
    params = [
        SamplingParams(
            temperature=1.0, seed=s, max_tokens=60, structured_outputs={"json_object": True}
        )
        for s in range(20)
    ]
    finished = [
        o.outputs[0].text
        for o in llm.generate(["JSON please"] * 20, params, use_tqdm=False)
        if o.outputs[0].finish_reason == "stop"
    ]
    assert finished  # some end within 60 tokens; every one that ends is a JSON object
    assert all(isinstance(json.loads(text), dict) for text in finished)


def test_params_need_exactly_one_constraint_named_in_the_error() -> None:
    with pytest.raises(StructuredOutputsError, match="exactly one"):
        StructuredOutputsParams()
    with pytest.raises(StructuredOutputsError, match=r"exactly one.*json, regex"):
        StructuredOutputsParams(json={"type": "object"}, regex="a+")
    with pytest.raises(StructuredOutputsError, match=r"structured_outputs\.choice"):
        StructuredOutputsParams(choice=[])
    with pytest.raises(StructuredOutputsError, match="unknown field 'schema'"):
        SamplingParams(structured_outputs={"schema": {}})
    assert SamplingParams(structured_outputs={"regex": "a"}).structured_outputs.kind == "regex"


def test_a_bad_constraint_fails_its_request_only(llm: LLM) -> None:
    for constraint, field in (
        ({"regex": "a("}, "structured_outputs.regex"),
        ({"json": "{not json"}, "structured_outputs.json"),
        ({"grammar": "root ::= missing_rule"}, "structured_outputs.grammar"),
        ({"json": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}, "json"),
    ):
        with pytest.raises(StructuredOutputsError, match=re.escape(field)):
            llm.generate(["x"], SamplingParams(structured_outputs=constraint), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()
    ok = llm.generate(
        ["x"], SamplingParams(max_tokens=5, structured_outputs={"regex": "ab"}), use_tqdm=False
    )
    assert ok[0].outputs[0].text == "ab"


@pytest.mark.parametrize("mode", sorted(ENGINE_MODES))
def test_scheduling_modes_keep_the_grammar(model_dir, mode: str) -> None:
    """n > 1, chunked prefill, no prefix caching and preemption: every sequence validates, and
    the same seeds give the same texts as the default mode."""
    engine = LLM(str(model_dir), dtype="float32", block_size=16, **ENGINE_MODES[mode])
    prompts = ["Describe a person who likes herons and long walks", "Person:", "a", "Tell me"]
    params = SamplingParams(
        n=2,
        temperature=1.0,
        seed=7,
        max_tokens=60,
        structured_outputs={"json": SMALL_SCHEMA, "disable_any_whitespace": True},
    )
    outputs = engine.generate(prompts, params, use_tqdm=False)
    texts = []
    for output in outputs:
        assert len(output.outputs) == 2
        for completion in output.outputs:
            jsonschema.validate(json.loads(completion.text), SMALL_SCHEMA)
            texts.append(completion.text)
    if mode == "preemption":
        assert engine.llm_engine.core.scheduler.num_preemptions > 0
    baseline = LLM(str(model_dir), dtype="float32", block_size=16)
    expected = [
        c.text for o in baseline.generate(prompts, params, use_tqdm=False) for c in o.outputs
    ]
    assert texts == expected


def test_stop_strings_end_a_constrained_output(llm: LLM) -> None:
    whole = (
        llm.generate(
            ["Code:"],
            SamplingParams(temperature=0, max_tokens=50, structured_outputs={"regex": REGEX}),
            use_tqdm=False,
        )[0]
        .outputs[0]
        .text
    )
    stop = whole[4:6]
    cut = llm.generate(
        ["Code:"],
        SamplingParams(
            temperature=0, max_tokens=50, stop=[stop], structured_outputs={"regex": REGEX}
        ),
        use_tqdm=False,
    )[0].outputs[0]
    assert cut.finish_reason == "stop" and cut.text == whole[: whole.index(stop)]
    assert not llm.llm_engine.has_unfinished_requests()
    assert not llm.llm_engine.core.structured._matchers  # its matcher was released


def test_mask_equals_xgrammar_matcher_acceptance() -> None:
    """Each step's masked logits are finite exactly where xgrammar's matcher accepts the token,
    for a constrained row next to an unconstrained one (which keeps every logit)."""
    import xgrammar as xgr

    tokenizer = build_tokenizer()
    vocab = len(tokenizer)
    manager = StructuredOutputManager(tokenizer, vocab_size=vocab, stop_token_ids=[258])
    manager.add("r", StructuredOutputsParams(json=SCHEMA))
    while not manager.poll()[0]:
        manager.wait(1.0)
    reference = manager._matchers["r"].fork()
    generator = torch.Generator().manual_seed(0)
    steps = 0
    while not reference.is_terminated():
        step = manager.bitmask(["free", "r"])
        assert step is not None and step.rows == [1]
        logits = torch.randn(2, vocab + 5, generator=generator)  # a padded LM head
        masked = apply_grammar_bitmask(logits.clone(), step)
        assert torch.isfinite(masked[0]).all()
        allowed = {t for t in range(vocab) if torch.isfinite(masked[1, t])}
        accepted = set()
        for token in range(vocab):
            probe = reference.fork()
            if probe.accept_token(token):
                accepted.add(token)
        assert allowed == accepted and allowed
        token = max(allowed, key=lambda t: float(masked[1, t]))
        manager.accept("r", [token])
        assert reference.accept_token(token)
        steps += 1
    assert steps > 20
    assert isinstance(reference, xgr.GrammarMatcher)
    manager.shutdown()


def test_a_slow_grammar_does_not_stall_other_requests(model_dir) -> None:
    engine = LLM(str(model_dir), dtype="float32", block_size=16).llm_engine
    engine.add_request("warm", "x", SamplingParams(max_tokens=1, structured_outputs={"regex": "a"}))
    while engine.has_unfinished_requests():
        engine.step()
    manager = engine.core.structured
    release = threading.Event()
    compile_grammar = manager.compile

    def slow(params: StructuredOutputsParams):
        if params.regex == "slow+":
            release.wait(30)
        return compile_grammar(params)

    manager.compile = slow
    engine.add_request(
        "slow", "x", SamplingParams(max_tokens=3, structured_outputs={"regex": "slow+"})
    )
    engine.add_request("free", "y", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    engine.add_request(
        "fast", "z", SamplingParams(max_tokens=3, structured_outputs={"regex": "ok"})
    )
    done: dict[str, str] = {}
    started = time.monotonic()
    while not {"free", "fast"} <= set(done):
        for output in engine.step():
            if output.finished:
                done[output.request_id] = output.outputs[0].text
        assert time.monotonic() - started < 20
    assert "slow" not in done and done["fast"] == "ok" and len(done["free"]) > 0
    assert engine.core.scheduler.get_request("slow") is None  # never scheduled while compiling
    release.set()
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                done[output.request_id] = output.outputs[0].text
    assert done["slow"] == "slo"  # max_tokens=3 of "slow+"
    # A request still waiting for its grammar is not lost by abort_all (a server shutdown).
    release.clear()
    engine.add_request("held", "x", SamplingParams(structured_outputs={"regex": "slow+"}))
    assert engine.core.scheduler.get_request("held") is None  # cached grammar: joins next step
    engine.add_request("gated", "x", SamplingParams(structured_outputs={"regex": "slow+ "}))
    manager.compile = lambda params: (release.wait(30), compile_grammar(params))[1]
    engine.add_request("gated2", "x", SamplingParams(structured_outputs={"regex": "gate"}))
    finals = {o.request_id: o.outputs[0].finish_reason for o in engine.abort_all()}
    assert finals == {"held": "abort", "gated": "abort", "gated2": "abort"}
    assert not engine.has_unfinished_requests()
    release.set()


@pytest.mark.parametrize(
    ("num_rows", "rows"), [(5, [0, 1, 2, 3, 4]), (5, [1, 4]), (6, [0, 1, 2, 3, 4, 5])]
)
def test_word_wise_mask_equals_xgrammar_kernel(num_rows: int, rows: list[int]) -> None:
    """The fast path (logits exactly as wide as the mask, mostly whole words: zero or all-ones,
    a few partial) and, with a dense random sixth row, the fallback: both equal xgrammar's own
    kernel."""
    import xgrammar as xgr

    from heron.structured_outputs.manager import GrammarStep

    generator = torch.Generator().manual_seed(1)
    words = 64
    bitmask = torch.zeros(6, words, dtype=torch.int32)
    bitmask[1, 3] = -1
    bitmask[2, 5:9] = torch.randint(
        -(2**31), 2**31 - 1, (4,), dtype=torch.int32, generator=generator
    )
    bitmask[3] = -1
    bitmask[3, 0] = 0b1011
    bitmask[4, 10] = -(2**31)  # bit 31 only: the word's last token
    bitmask[5] = torch.randint(
        -(2**31), 2**31 - 1, (words,), dtype=torch.int32, generator=generator
    )
    bitmask = bitmask[:num_rows]
    logits = torch.randn(num_rows, words * 32, generator=generator)
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, bitmask, indices=rows)
    got = apply_grammar_bitmask(logits.clone(), GrammarStep(bitmask=bitmask, rows=rows))
    assert torch.equal(got, expected)
    assert torch.isinf(got[rows]).any() and torch.isfinite(got[rows]).any()


def test_pipeline_parallel_ranks_sample_with_the_mask(model_dir) -> None:
    """With two pipeline stages the last one, a worker process, samples: it gets the mask too,
    so outputs validate and equal one process's for the same seeds."""
    params = SamplingParams(
        temperature=1.0,
        seed=3,
        max_tokens=60,
        structured_outputs={"json": SMALL_SCHEMA, "disable_any_whitespace": True},
    )
    prompts = ["Person:", "Describe someone"]
    one = LLM(str(model_dir), dtype="float32", block_size=16)
    expected = [o.outputs[0].text for o in one.generate(prompts, params, use_tqdm=False)]
    two = LLM(str(model_dir), dtype="float32", block_size=16, pipeline_parallel_size=2)
    try:
        got = [o.outputs[0].text for o in two.generate(prompts, params, use_tqdm=False)]
    finally:
        two.shutdown()
    assert got == expected
    for text in got:
        jsonschema.validate(json.loads(text), SMALL_SCHEMA)
