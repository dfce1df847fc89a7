"""The scheduler with several batches in flight (pipeline parallelism): a request in flight is
neither scheduled again nor preempted, the batches share the requests about equally, and a
random workload with results coming back one batch late still finishes everything."""

from __future__ import annotations

import random
from collections import deque

from test_scheduler import add_random_requests, make_request, new_tokens

from heron.kv.kv_cache_manager import KVCacheManager
from heron.request import RequestStatus
from heron.sched.output import RunnerOutput, SchedulerOutput
from heron.sched.scheduler import Scheduler, SchedulerConfig

BS = 4


def pipelined(num_blocks: int = 64, depth: int = 2, **config: object) -> Scheduler:
    config.setdefault("split_prompt_bursts", False)
    cfg = SchedulerConfig(block_size=BS, max_batches_in_flight=depth, **config)  # type: ignore[arg-type]
    return Scheduler(cfg, KVCacheManager(num_blocks, BS, enable_prefix_caching=True))


def results(out: SchedulerOutput, token: int = 5) -> RunnerOutput:
    runner = RunnerOutput()
    for item in out.scheduled:
        if item.samples:
            runner.sampled[item.request.request_id] = token
    return runner


def test_requests_in_flight_are_not_scheduled_again_and_batches_share_them() -> None:
    sched = pipelined()
    for i in range(4):
        sched.add_request(make_request(f"r{i}", 5, first=100 * i, max_tokens=3, ignore_eos=True))
    first = sched.schedule()
    assert new_tokens(first) == {"r0": 5, "r1": 5}  # half of the four: one batch per stage
    second = sched.schedule()
    assert new_tokens(second) == {"r2": 5, "r3": 5}
    assert sched.schedule().is_empty  # every request is in flight
    sched.update_from_output(first, results(first))
    third = sched.schedule()
    assert new_tokens(third) == {"r0": 1, "r1": 1}  # their sampled tokens are known now
    assert sched.in_flight == {"r0", "r1", "r2", "r3"}


def test_one_depth_keeps_no_requests_in_flight() -> None:
    sched = pipelined(depth=1)
    for i in range(4):
        sched.add_request(make_request(f"r{i}", 5, first=100 * i))
    assert len(sched.schedule().scheduled) == 4
    assert sched.in_flight == set()
    assert len(sched.schedule().scheduled) == 4  # (no results taken in: scheduled again)


def test_a_request_in_flight_is_never_preempted() -> None:
    sched = pipelined(num_blocks=4, max_num_batched_tokens=16)  # 16 tokens of KV
    old = make_request("old", 8, max_tokens=8, ignore_eos=True)
    new = make_request("new", 8, first=300, max_tokens=8, ignore_eos=True)
    sched.add_request(old)
    sched.add_request(new)
    a = sched.schedule()  # old: 2 blocks
    b = sched.schedule()  # new: 2 blocks, the cache is full
    assert new_tokens(a) == {"old": 8} and new_tokens(b) == {"new": 8}
    sched.update_from_output(a, results(a))
    # old's 9th token needs a third block; the only newer request is in flight: old waits for it
    # instead of preempting itself (and never takes new's blocks while its step runs).
    out = sched.schedule()
    assert out.is_empty and out.preempted_ids == []
    assert new.status is RequestStatus.RUNNING and new.num_computed_tokens == 0
    sched.update_from_output(b, results(b))
    out = sched.schedule()  # now new is not in flight: it is the newest, so it gives way
    assert out.preempted_ids == ["new"] and new_tokens(out) == {"old": 1}


def test_an_abort_while_in_flight_drops_the_results_and_frees_the_request() -> None:
    sched = pipelined()
    sched.add_request(make_request("a", 5))
    sched.add_request(make_request("b", 5, first=300))
    out = sched.schedule()
    sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    assert sched.update_from_output(out, results(out)) == []
    assert "a" not in sched.in_flight


def test_random_workload_with_results_one_batch_late_finishes_everything() -> None:
    rng = random.Random(1)
    sched = pipelined(num_blocks=24, max_num_batched_tokens=24, max_num_seqs=6)
    requests = add_random_requests(sched, rng)
    queue: deque[SchedulerOutput] = deque()
    steps = 0
    while sched.has_unfinished_requests() or queue:
        if len(queue) < 2:
            out = sched.schedule()
            if not out.is_empty:
                ids = [s.request.request_id for s in out.scheduled]
                assert len(ids) == len(set(ids))
                assert all(
                    not any(rid == s.request.request_id for s in o.scheduled)
                    for o in queue
                    for rid in ids
                )  # nothing scheduled twice in flight
                queue.append(out)
                if len(queue) < 2:
                    continue
        assert queue, "nothing in flight and nothing schedulable: the scheduler is stuck"
        done = queue.popleft()
        sched.update_from_output(done, results(done, rng.randint(3, 50)))
        steps += 1
        assert steps < 5000
    for request, max_tokens in requests.values():
        assert request.num_output_tokens == max_tokens
    assert sched.kv.num_free_blocks == 24 and not sched.in_flight
