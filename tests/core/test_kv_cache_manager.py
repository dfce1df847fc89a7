"""KV cache manager: allocation, prefix-cache hits and their accounting, back-off, freeing order."""

from __future__ import annotations

from heron.kv.kv_cache_manager import KVCacheManager
from heron.request import Request
from heron.sampling_params import SamplingParams

BS = 4


def make_request(request_id: str, prompt: list[int], **params: object) -> Request:
    return Request(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampling_params=SamplingParams(**params),
    )


def admit(kv: KVCacheManager, request: Request) -> int:
    """Look up the cache and allocate the whole rest of the prompt, as the scheduler does."""
    blocks, num_cached = kv.get_computed_blocks(request)
    new = kv.allocate_slots(request, request.num_tokens - num_cached, blocks, num_cached)
    assert new is not None
    request.num_computed_tokens = request.num_tokens
    return num_cached


def test_allocate_rounds_up_to_blocks_and_grows_by_decode() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    request = make_request("a", list(range(6)))
    assert admit(kv, request) == 0
    assert len(request.block_ids) == 2
    request.output_token_ids.append(100)  # 7 tokens: still fits in 2 blocks
    assert kv.allocate_slots(request, 1) == []
    request.num_computed_tokens += 1
    request.output_token_ids.append(101)
    assert kv.allocate_slots(request, 1) == []  # token 7 is the last slot of block 1
    request.num_computed_tokens += 1
    request.output_token_ids.append(102)
    new = kv.allocate_slots(request, 1)  # token 8 opens block 2
    assert new is not None and len(new) == 1
    assert request.block_ids[-1] == new[0]


def test_allocate_returns_none_when_blocks_run_out() -> None:
    kv = KVCacheManager(num_blocks=2, block_size=BS)
    a = make_request("a", list(range(8)))
    assert kv.allocate_slots(a, 8) is not None
    b = make_request("b", list(range(100, 101)))
    assert kv.allocate_slots(b, 1) is None
    assert b.block_ids == []
    kv.free(a)
    assert kv.allocate_slots(b, 1) is not None


def test_second_request_reuses_the_shared_prefix() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=BS)
    system = list(range(12))
    a = make_request("a", [*system, 50, 51, 52])
    assert admit(kv, a) == 0
    b = make_request("b", [*system, 60, 61])
    assert admit(kv, b) == 12
    assert b.block_ids[:3] == a.block_ids[:3]
    assert b.block_ids[3] != a.block_ids[3]
    assert kv.pool.ref_count(a.block_ids[0]) == 2
    assert kv.prefix_cache_queries == 15 + 14
    assert kv.prefix_cache_hits == 12
    assert b.block_hashes[:3] == a.block_hashes[:3]


def test_hit_after_the_first_request_finished() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(9)))
    admit(kv, a)
    kv.free(a)
    assert kv.num_free_blocks == 8
    b = make_request("b", list(range(10)))
    assert admit(kv, b) == 8
    assert kv.num_free_blocks == 5


def test_fully_cached_prompt_backs_off_one_block() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(8)))
    admit(kv, a)
    kv.free(a)
    b = make_request("b", list(range(8)))
    blocks, num_cached = kv.get_computed_blocks(b)
    # Both blocks are cached, but the last token must be computed to get logits.
    assert num_cached == 4 and len(blocks) == 1
    c = make_request("c", list(range(9)))
    assert kv.get_computed_blocks(c)[1] == 8


def test_prompt_logprobs_skip_the_lookup() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    admit(kv, make_request("a", list(range(9))))
    b = make_request("b", list(range(9)), prompt_logprobs=1)
    assert kv.get_computed_blocks(b) == ([], 0)
    assert admit(kv, b) == 0
    assert kv.prefix_cache_queries == 9  # only a's lookup was counted


def test_prefix_caching_disabled() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    admit(kv, make_request("a", list(range(9))))
    b = make_request("b", list(range(9)))
    assert admit(kv, b) == 0
    assert kv.prefix_cache_queries == 0
    assert b.block_hashes == []


def test_blocks_filled_by_generated_tokens_are_cached() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", [1, 2, 3])
    admit(kv, a)
    assert a.block_hashes == []  # no full block yet
    a.output_token_ids.append(4)  # block 0 = [1, 2, 3, 4] is full once token 3 is computed
    kv.allocate_slots(a, 1)
    a.num_computed_tokens += 1
    assert len(a.block_hashes) == 1
    assert kv.pool.get_cached_block(a.block_hashes[0]) == a.block_ids[0]
    b = make_request("b", [1, 2, 3, 4, 5])
    assert kv.get_computed_blocks(b) == ([a.block_ids[0]], 4)


def test_evictable_hits_count_against_free_blocks() -> None:
    kv = KVCacheManager(num_blocks=3, block_size=BS)
    a = make_request("a", list(range(9)))
    admit(kv, a)  # 3 blocks, 2 of them full and cached
    kv.free(a)
    b = make_request("b", list(range(12)))
    blocks, num_cached = kv.get_computed_blocks(b)
    assert num_cached == 8
    # Needs 3 blocks in all: the 2 hits (free, so they cost free blocks) and 1 new one.
    assert kv.allocate_slots(b, 4, blocks, num_cached) is not None
    assert kv.num_free_blocks == 0
    assert b.block_ids[:2] == blocks


def test_failed_allocation_with_hits_changes_nothing() -> None:
    kv = KVCacheManager(num_blocks=3, block_size=BS)
    a = make_request("a", list(range(9)))
    admit(kv, a)
    kv.free(a)
    blocker = make_request("x", [7])
    kv.allocate_slots(blocker, 1)  # takes the one empty block
    b = make_request("b", list(range(16)))
    blocks, num_cached = kv.get_computed_blocks(b)
    assert kv.allocate_slots(b, 16 - num_cached, blocks, num_cached) is None
    assert b.block_ids == []
    assert all(kv.pool.ref_count(x) == 0 for x in blocks)
    assert kv.prefix_cache_queries == 9 + 1  # a and the blocker; a failed admission is no query


def test_free_releases_in_reverse_order() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    a = make_request("a", list(range(16)))
    admit(kv, a)
    kv.free(a)
    assert a.block_ids == []
    # All four blocks are full and cached; the request's tail block sits at the eviction end.
    assert kv.pool.free_block_ids() == list(reversed(range(4)))
    assert kv.usage == 0.0


def test_cache_salt_separates_requests() -> None:
    kv = KVCacheManager(num_blocks=8, block_size=BS)
    a = make_request("a", list(range(9)))
    a.cache_salt = "tenant-1"
    admit(kv, a)
    b = make_request("b", list(range(9)))
    b.cache_salt = "tenant-2"
    assert kv.get_computed_blocks(b)[1] == 0
    c = make_request("c", list(range(9)))
    c.cache_salt = "tenant-1"
    assert kv.get_computed_blocks(c)[1] == 8


def test_reset_prefix_cache() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=BS)
    a = make_request("a", list(range(9)))
    admit(kv, a)
    assert kv.reset_prefix_cache() is False
    kv.free(a)
    assert kv.reset_prefix_cache() is True
    assert kv.get_computed_blocks(make_request("b", list(range(9)))) == ([], 0)
