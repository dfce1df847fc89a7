"""Scheduler with no model: a fake runner samples tokens, and we check what each step schedules."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from heron.kv.kv_cache_manager import KVCacheManager
from heron.request import Request, RequestStatus
from heron.sampling_params import SamplingParams
from heron.sched.output import RequestUpdate, RunnerOutput, SchedulerOutput, TokenLogprobs
from heron.sched.scheduler import Scheduler, SchedulerConfig

BS = 4
EOS = 2


def make_scheduler(num_blocks: int = 64, **config: object) -> Scheduler:
    """Admission of every waiting request that fits, unless a test asks for burst splitting."""
    config.setdefault("split_prompt_bursts", False)
    cfg = SchedulerConfig(block_size=BS, **config)  # type: ignore[arg-type]
    kv = KVCacheManager(num_blocks, BS, enable_prefix_caching=cfg.enable_prefix_caching)
    return Scheduler(cfg, kv)


def make_request(request_id: str, prompt_len: int, first: int = 10, **params: object) -> Request:
    return Request(
        request_id=request_id,
        prompt_token_ids=list(range(first, first + prompt_len)),
        sampling_params=SamplingParams(**params),
        eos_token_ids=frozenset({EOS}),
    )


def step(
    sched: Scheduler, token: Callable[[Request], int] = lambda r: 5
) -> tuple[SchedulerOutput, list[RequestUpdate]]:
    """Schedule, sample ``token(request)`` for every request whose step ends in a sample, update."""
    out = sched.schedule()
    runner = RunnerOutput()
    for item in out.scheduled:
        if item.samples:
            runner.sampled[item.request.request_id] = token(item.request)
    return out, sched.update_from_output(out, runner)


def new_tokens(out: SchedulerOutput) -> dict[str, int]:
    return {s.request.request_id: s.num_new_tokens for s in out.scheduled}


# -- budget, ordering, chunking ----------------------------------------------------------------
def test_token_budget_and_max_num_seqs_are_respected() -> None:
    sched = make_scheduler(max_num_batched_tokens=20, max_num_seqs=3)
    for i in range(5):
        sched.add_request(make_request(f"r{i}", 8, first=100 * i))
    out, _ = step(sched)
    assert new_tokens(out) == {"r0": 8, "r1": 8, "r2": 4}  # r2 is chunked to fit the budget
    assert out.num_scheduled_tokens == 20
    assert sched.num_running == 3 and sched.num_waiting == 2
    out, _ = step(sched)
    # max_num_seqs: r3 waits although budget is left; decodes first, then r2's last chunk.
    assert new_tokens(out) == {"r0": 1, "r1": 1, "r2": 4}
    assert [s.num_new_tokens for s in out.scheduled] == [1, 1, 4]
    assert out.num_scheduled_tokens == 6


def test_decodes_go_before_waiting_prefills() -> None:
    sched = make_scheduler(max_num_batched_tokens=10)
    sched.add_request(make_request("a", 6))
    step(sched)
    sched.add_request(make_request("b", 30, first=200))
    out, _ = step(sched)
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("a", 1), ("b", 9)]


def test_long_prompt_is_chunked_across_steps_and_samples_once() -> None:
    sched = make_scheduler(max_num_batched_tokens=16)
    request = make_request("a", 40, max_tokens=3)
    sched.add_request(request)
    chunks = []
    for _ in range(3):
        out, updates = step(sched)
        chunks.append(out.scheduled[0].num_new_tokens)
        if len(chunks) < 3:
            assert updates == [] and request.output_token_ids == []
    assert chunks == [16, 16, 8]
    assert updates[0].new_token_ids == [5]
    assert request.num_computed_tokens == 40
    assert len(request.block_ids) == 10


def test_unchunked_prompt_waits_for_a_step_with_enough_budget() -> None:
    sched = make_scheduler(
        max_num_batched_tokens=64, max_model_len=64, enable_chunked_prefill=False
    )
    sched.add_request(make_request("a", 40))
    sched.add_request(make_request("b", 30, first=300))
    out, _ = step(sched)
    assert new_tokens(out) == {"a": 40}  # b does not fit the 24 tokens left and is not chunked
    out, _ = step(sched)
    assert new_tokens(out) == {"a": 1, "b": 30}


# -- admission checks ----------------------------------------------------------------------------
def test_prompt_must_be_shorter_than_max_model_len() -> None:
    sched = make_scheduler(max_model_len=32)
    with pytest.raises(ValueError, match="max_model_len") as info:
        sched.add_request(make_request("a", 32))
    assert "32" in str(info.value)
    with pytest.raises(ValueError) as info:
        sched.add_request(make_request("b", 45))
    assert "45" in str(info.value) and "32" in str(info.value)
    sched.add_request(make_request("c", 31, max_tokens=100))  # stops at max_model_len instead
    assert sched.num_waiting == 1


def test_request_larger_than_the_whole_kv_cache_is_rejected() -> None:
    sched = make_scheduler(num_blocks=4)  # 16 tokens of KV
    with pytest.raises(ValueError, match="KV cache") as info:
        sched.add_request(make_request("a", 20, max_tokens=1))
    assert "4 blocks" in str(info.value) and "max_model_len" in str(info.value)
    # Its prompt fits, but generating max_tokens would not.
    with pytest.raises(ValueError, match="KV cache"):
        sched.add_request(make_request("b", 10, max_tokens=10))
    sched.add_request(make_request("c", 10, max_tokens=7))  # 16 tokens, the last never fed back


def test_other_admission_errors() -> None:
    sched = make_scheduler(max_num_batched_tokens=2048, enable_chunked_prefill=False)
    sched.add_request(make_request("a", 4))
    with pytest.raises(ValueError, match="already in use"):
        sched.add_request(make_request("a", 4))
    with pytest.raises(ValueError, match="empty"):
        sched.add_request(make_request("e", 0))
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        SchedulerConfig(max_num_batched_tokens=512, enable_chunked_prefill=False)
    with pytest.raises(ValueError, match="block_size"):
        Scheduler(SchedulerConfig(block_size=16), KVCacheManager(8, 4))


# -- stop conditions -------------------------------------------------------------------------------
def run_one(sched: Scheduler, request: Request, tokens: list[int]) -> list[RequestUpdate]:
    """Run a single request, sampling ``tokens`` in order, until it finishes."""
    sched.add_request(request)
    it = iter(tokens)
    updates: list[RequestUpdate] = []
    while sched.has_unfinished_requests():
        updates += step(sched, lambda r: next(it))[1]
    return updates


def test_eos_stops_with_no_stop_reason() -> None:
    sched = make_scheduler()
    request = make_request("a", 5)
    updates = run_one(sched, request, [7, 8, EOS, 9])
    assert request.output_token_ids == [7, 8, EOS]
    assert request.status is RequestStatus.FINISHED_STOPPED and request.stop_reason is None
    assert updates[-1].finished and not updates[0].finished
    assert sched.kv.num_free_blocks == sched.kv.num_blocks
    assert sched.get_request("a") is None


def test_ignore_eos_and_min_tokens_hold_back_eos() -> None:
    sched = make_scheduler()
    a = make_request("a", 5, ignore_eos=True, max_tokens=4)
    run_one(sched, a, [EOS, EOS, EOS, EOS])
    assert a.output_token_ids == [EOS] * 4 and a.status is RequestStatus.FINISHED_LENGTH
    b = make_request("b", 5, min_tokens=3)
    run_one(sched, b, [EOS, 11, EOS, EOS])
    assert b.output_token_ids == [EOS, 11, EOS] and b.status is RequestStatus.FINISHED_STOPPED


def test_stop_token_ids_set_the_stop_reason_and_respect_min_tokens() -> None:
    sched = make_scheduler()
    a = make_request("a", 5, stop_token_ids=[42], min_tokens=2)
    run_one(sched, a, [42, 7, 42, 8])
    assert a.output_token_ids == [42, 7, 42]
    assert a.status is RequestStatus.FINISHED_STOPPED and a.stop_reason == 42


def test_max_tokens_and_max_model_len_finish_with_length() -> None:
    sched = make_scheduler(max_model_len=12)
    a = make_request("a", 5, max_tokens=3)
    run_one(sched, a, [7] * 10)
    assert a.num_output_tokens == 3 and a.status is RequestStatus.FINISHED_LENGTH
    b = make_request("b", 9, max_tokens=100, min_tokens=50)
    run_one(sched, b, [7] * 10)
    assert b.num_tokens == 12 and b.status is RequestStatus.FINISHED_LENGTH


def test_logprobs_and_prompt_logprobs_are_collected() -> None:
    sched = make_scheduler(max_num_batched_tokens=4)
    request = make_request("a", 6, max_tokens=1, prompt_logprobs=0, logprobs=0)
    sched.add_request(request)
    collected: list[TokenLogprobs | None] = []
    for _ in range(2):
        out = sched.schedule()
        item = out.scheduled[0]
        runner = RunnerOutput()
        runner.prompt_logprobs["a"] = [
            None if i == 0 else TokenLogprobs(token_id=i + 10, logprob=-1.0, rank=1)
            for i in range(item.start, item.start + item.num_new_tokens)
        ]
        if item.samples:
            runner.sampled["a"] = 7
            runner.logprobs["a"] = TokenLogprobs(token_id=7, logprob=-0.5, rank=1)
        (update,) = sched.update_from_output(out, runner)
        collected += update.prompt_logprobs
    assert len(collected) == 6 and collected[0] is None
    assert update.new_token_ids == [7] and update.new_logprobs[0].logprob == -0.5
    assert update.finished


def test_prompt_logprobs_are_not_repeated_when_a_preempted_request_recomputes() -> None:
    sched = make_scheduler(num_blocks=4, max_num_batched_tokens=4)
    old = make_request("old", 4, max_tokens=6, ignore_eos=True)
    new = make_request("new", 12, first=300, max_tokens=1, prompt_logprobs=0)
    sched.add_request(old)
    sched.add_request(new)
    reported: list[TokenLogprobs | None] = []
    while sched.has_unfinished_requests():
        out = sched.schedule()
        runner = RunnerOutput()
        for item in out.scheduled:
            rid, start = item.request.request_id, item.start
            if item.samples:
                runner.sampled[rid] = 5
            if rid == "new":
                end = min(start + item.num_new_tokens, new.num_prompt_tokens)
                runner.prompt_logprobs[rid] = [
                    TokenLogprobs(token_id=i, logprob=-1.0, rank=1) for i in range(start, end)
                ]
        for update in sched.update_from_output(out, runner):
            if update.request is new:
                reported += update.prompt_logprobs
    assert new.num_preemptions >= 1
    assert [lp.token_id for lp in reported if lp is not None] == list(range(12))


def test_missing_sampled_token_is_an_error() -> None:
    sched = make_scheduler()
    sched.add_request(make_request("a", 5))
    out = sched.schedule()
    with pytest.raises(RuntimeError, match="no sampled token"):
        sched.update_from_output(out, RunnerOutput())


# -- prompt bursts ---------------------------------------------------------------------------------
def test_a_burst_gets_a_quarter_of_its_prompt_tokens_per_step_in_whole_prompts() -> None:
    sched = make_scheduler(split_prompt_bursts=True, max_num_batched_tokens=80)
    for i in range(7):
        sched.add_request(make_request(f"r{i}", 20, first=100 * i, max_tokens=8))
    out, _ = step(sched)
    assert new_tokens(out) == {"r0": 20}  # 140 / 4 = 35 tokens: r1 would not finish, so it waits
    out, _ = step(sched)
    assert new_tokens(out) == {"r0": 1, "r1": 20}  # 1 decode + 120 / 4
    admitted = ["r0", "r1"]
    for _ in range(20):
        out, _ = step(sched)
        fresh = [r for r in new_tokens(out) if r not in admitted]
        # Only a step's first prompt may be a chunk: one behind it must finish in this step.
        assert all(new_tokens(out)[r] == 20 for r in fresh[1:])
        admitted += fresh
        if not sched.num_waiting:
            break
    assert admitted == [f"r{i}" for i in range(7)]


def test_a_prompt_longer_than_a_short_step_is_chunked_when_it_comes_first() -> None:
    sched = make_scheduler(split_prompt_bursts=True, max_num_batched_tokens=80)
    sched.add_request(make_request("a", 30, max_tokens=8))
    sched.add_request(make_request("b", 30, first=300, max_tokens=8))
    steps = [new_tokens(step(sched)[0]) for _ in range(4)]
    # 60 / 4 = 15, then 45 / 4 = 12, then the eighth of the budget (10): a's last 3 tokens, and b
    # (30) waits; alone, b gets the whole budget.
    assert steps == [{"a": 15}, {"a": 12}, {"a": 3}, {"a": 1, "b": 30}]


def test_short_bursts_get_an_eighth_of_the_budget_and_decodes_always_run() -> None:
    sched = make_scheduler(split_prompt_bursts=True, max_num_batched_tokens=80)
    for i in range(3):
        sched.add_request(make_request(f"d{i}", 3, first=100 * i, max_tokens=8))
    step(sched)
    for i in range(4):
        sched.add_request(make_request(f"r{i}", 5, first=500 + 10 * i, max_tokens=8))
    out, _ = step(sched)
    # 20 prompt tokens wait: max(80 // 8, 20 / 4) = 10 of them, beside the three decodes.
    assert new_tokens(out) == {"d0": 1, "d1": 1, "d2": 1, "r0": 5, "r1": 5}


def test_a_lone_long_prompt_gets_the_whole_budget() -> None:
    sched = make_scheduler(split_prompt_bursts=True, max_num_batched_tokens=80)
    sched.add_request(make_request("a", 70, max_tokens=3))
    out, _ = step(sched)
    assert new_tokens(out) == {"a": 70}


def test_a_lone_waiting_request_is_admitted_at_once() -> None:
    sched = make_scheduler(split_prompt_bursts=True)
    sched.add_request(make_request("a", 5, max_tokens=3))
    out, _ = step(sched)
    assert new_tokens(out) == {"a": 5}
    sched.add_request(make_request("b", 5, first=40, max_tokens=3))
    out, _ = step(sched)
    assert new_tokens(out) == {"a": 1, "b": 5}


def test_burst_splitting_off_admits_everything_that_fits() -> None:
    sched = make_scheduler(split_prompt_bursts=False)
    for i in range(7):
        sched.add_request(make_request(f"r{i}", 5, first=10 + 10 * i))
    out, _ = step(sched)
    assert len(new_tokens(out)) == 7


# -- head-of-line blocking ------------------------------------------------------------------------
@pytest.mark.parametrize("split", [False, True])
def test_a_short_request_is_not_held_behind_a_long_prefill(split: bool) -> None:
    """A short request arriving during a long prefill gets its prefill in the next step, then
    decodes in every step beside the long prompt's chunks (issue: it waited for the whole prefill)."""
    sched = make_scheduler(
        num_blocks=128, max_num_batched_tokens=16, split_prompt_bursts=split, max_model_len=400
    )
    sched.add_request(make_request("long", 200, max_tokens=2))
    assert new_tokens(step(sched)[0]) == {"long": 16}
    sched.add_request(make_request("short", 5, first=300, max_tokens=4))
    steps = [new_tokens(step(sched)[0]) for _ in range(4)]
    assert steps[0]["short"] == 5
    assert [s["short"] for s in steps[1:]] == [1, 1, 1]  # three more tokens: max_tokens=4
    assert all(0 < s["long"] < 16 for s in steps)  # the long prompt still advances every step
    assert all(sum(s.values()) <= 16 for s in steps)


def test_nothing_is_kept_for_waiting_requests_that_cannot_be_admitted() -> None:
    sched = make_scheduler(num_blocks=128, max_num_batched_tokens=16, max_num_seqs=1)
    sched.add_request(make_request("long", 60, max_tokens=2))
    step(sched)
    sched.add_request(make_request("short", 5, first=300))
    assert new_tokens(step(sched)[0]) == {"long": 16}  # max_num_seqs: short cannot start


def test_unchunked_prompts_are_never_split_for_waiting_requests() -> None:
    sched = make_scheduler(
        num_blocks=128, max_num_batched_tokens=64, max_model_len=64, enable_chunked_prefill=False
    )
    sched.add_request(make_request("a", 40))
    sched.add_request(make_request("b", 30, first=200))
    assert new_tokens(step(sched)[0]) == {"a": 40}


# -- preemption ------------------------------------------------------------------------------------
def test_newest_request_is_preempted_and_later_recomputed_to_completion() -> None:
    sched = make_scheduler(num_blocks=4)  # 16 tokens
    old = make_request("old", 6, max_tokens=6, ignore_eos=True)
    new = make_request("new", 6, first=300, max_tokens=6, ignore_eos=True)
    sched.add_request(old)
    sched.add_request(new)
    out, _ = step(sched)  # 2 + 2 blocks
    assert new_tokens(out) == {"old": 6, "new": 6} and sched.kv.num_free_blocks == 0
    step(sched)  # KV of 7 tokens each
    step(sched)  # KV of 8 tokens each: still 2 blocks each
    out, _ = step(sched)  # old's 9th token needs a third block: new is preempted
    assert out.preempted_ids == ["new"]
    assert new_tokens(out) == {"old": 1}
    assert new.status is RequestStatus.PREEMPTED and new.num_preemptions == 1
    assert new.num_computed_tokens == 0 and new.block_ids == []
    assert new.output_token_ids == [5, 5, 5]  # outputs so far are kept and recomputed
    assert sched.stats().num_preemptions == 1
    while sched.has_unfinished_requests():
        out, _ = step(sched)
        assert not out.is_empty
    assert old.status is RequestStatus.FINISHED_LENGTH and old.num_output_tokens == 6
    assert new.status is RequestStatus.FINISHED_LENGTH and new.num_output_tokens == 6
    assert sched.kv.num_free_blocks == 4


def test_request_that_is_itself_the_newest_preempts_itself() -> None:
    sched = make_scheduler(num_blocks=3, max_num_batched_tokens=8)
    a = make_request("a", 4, max_tokens=5, ignore_eos=True)
    b = make_request("b", 4, first=300, max_tokens=5, ignore_eos=True)
    sched.add_request(a)
    sched.add_request(b)
    step(sched)  # a: 1 block, b: 1 block
    out, _ = step(sched)  # a's 5th token takes the last block; b's 5th has none: b preempts itself
    assert new_tokens(out) == {"a": 1}
    assert out.preempted_ids == ["b"]
    assert sched.waiting.peek() is b


def test_preempted_requests_go_back_first_in_line() -> None:
    sched = make_scheduler(num_blocks=4, max_num_seqs=2)
    a = make_request("a", 6, max_tokens=6, ignore_eos=True)
    b = make_request("b", 6, first=300, max_tokens=6, ignore_eos=True)
    c = make_request("c", 6, first=600, max_tokens=2)
    for r in (a, b, c):
        sched.add_request(r)
    for _ in range(3):
        step(sched)
    out, _ = step(sched)
    assert out.preempted_ids == ["b"]
    assert [r.request_id for r in sched.waiting] == ["b", "c"]


# -- aborts and finishing from outside -------------------------------------------------------------
def test_finish_requests_for_waiting_running_and_unknown_ids() -> None:
    sched = make_scheduler(num_blocks=8, max_num_seqs=1)
    a = make_request("a", 6)
    b = make_request("b", 6, first=300)
    sched.add_request(a)
    sched.add_request(b)
    step(sched)
    assert sched.kv.num_free_blocks == 6
    sched.finish_requests(["a", "b", "nope"], RequestStatus.FINISHED_ABORTED)
    assert a.status is b.status is RequestStatus.FINISHED_ABORTED
    assert sched.kv.num_free_blocks == 8
    assert not sched.has_unfinished_requests()
    assert sched.num_running == 0 and sched.num_waiting == 0
    sched.finish_requests("a", RequestStatus.FINISHED_STOPPED)  # already finished: ignored
    assert a.status is RequestStatus.FINISHED_ABORTED
    with pytest.raises(ValueError, match="finished status"):
        sched.finish_requests(["b"], RequestStatus.RUNNING)


def test_abort_during_the_step_is_skipped_in_update() -> None:
    sched = make_scheduler()
    sched.add_request(make_request("a", 5))
    out = sched.schedule()
    sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    assert sched.update_from_output(out, RunnerOutput(sampled={"a": 5})) == []


# -- prefix caching through the scheduler ----------------------------------------------------------
def test_prefix_hits_are_recorded_and_skip_computation() -> None:
    sched = make_scheduler()
    a = make_request("a", 13)
    sched.add_request(a)
    step(sched)
    b = make_request("b", 13)  # same prompt
    sched.add_request(b)
    out, _ = step(sched)
    assert new_tokens(out) == {"a": 1, "b": 1}  # 12 tokens from the cache, the last recomputed
    assert a.num_cached_tokens == 0 and b.num_cached_tokens == 12
    stats = sched.stats()
    assert stats.prefix_cache_queries == 26 and stats.prefix_cache_hits == 12
    assert stats.num_running == 2 and stats.num_waiting == 0 and stats.kv_cache_usage > 0


# -- a randomized run: always progress, never over budget, everything freed ------------------------
def add_random_requests(sched: Scheduler, rng: random.Random) -> dict[str, tuple[Request, int]]:
    """40 requests of random prompt and output lengths: id -> (request, its max_tokens)."""
    added: dict[str, tuple[Request, int]] = {}
    for i in range(40):
        prompt_len = rng.randint(1, 40)
        max_tokens = rng.randint(1, 90 - prompt_len)
        # A shared prefix for half the requests exercises the prefix cache under eviction.
        first = 10 if i % 2 else 1000 * i
        request = make_request(f"r{i}", prompt_len, first, max_tokens=max_tokens, ignore_eos=True)
        sched.add_request(request)
        added[request.request_id] = (request, max_tokens)
    return added


def test_random_workload_always_makes_progress() -> None:
    rng = random.Random(0)
    sched = make_scheduler(num_blocks=24, max_num_batched_tokens=24, max_num_seqs=6)
    requests = add_random_requests(sched, rng)
    steps = 0
    while sched.has_unfinished_requests():
        out, _ = step(sched, lambda r: rng.randint(3, 50))
        assert not out.is_empty
        assert 0 < out.num_scheduled_tokens <= 24
        assert len(out.scheduled) <= 6
        steps += 1
        assert steps < 5000
    for request, max_tokens in requests.values():
        assert request.num_output_tokens == max_tokens
    assert sched.kv.num_free_blocks == 24
    assert sched.stats().prefix_cache_hits > 0
