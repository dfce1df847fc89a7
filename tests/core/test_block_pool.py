"""Block pool and block hashing: reference counts, the hash chain, LRU eviction and cache reset."""

from __future__ import annotations

import subprocess
import sys

import pytest

from heron.kv.block_pool import BlockPool
from heron.kv.hashing import hash_block


def chain(tokens: list[int], block_size: int, extra: tuple | None = None) -> list[bytes]:
    hashes: list[bytes] = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = hashes[-1] if hashes else None
        hashes.append(hash_block(parent, tokens[start : start + block_size], extra))
    return hashes


# -- hashing ---------------------------------------------------------------------------------------
def test_same_prefix_gives_same_hashes() -> None:
    a = chain(list(range(64)), 16)
    b = chain([*range(48), 100, 101, *range(50, 64)], 16)
    assert len(a) == 4
    assert a[:3] == b[:3]
    assert a[3] != b[3]


def test_earlier_token_changes_every_later_hash() -> None:
    tokens = list(range(64))
    changed = [*tokens]
    changed[3] = 999
    a, b = chain(tokens, 16), chain(changed, 16)
    assert all(x != y for x, y in zip(a, b))
    # The last block's own tokens are equal: only the chain tells them apart.
    assert tokens[48:] == changed[48:]


def test_extra_keys_and_parent_are_part_of_the_hash() -> None:
    tokens = list(range(16))
    assert hash_block(None, tokens) == hash_block(None, tokens)
    assert hash_block(None, tokens) != hash_block(None, tokens, ("salt", "a"))
    assert hash_block(None, tokens, ("salt", "a")) != hash_block(None, tokens, ("salt", "b"))
    assert hash_block(None, tokens) != hash_block(hash_block(None, tokens), tokens)
    assert len(hash_block(None, tokens)) == 32


def test_hash_is_deterministic_across_processes() -> None:
    code = (
        "from heron.kv.hashing import hash_block;"
        "print(hash_block(hash_block(None, range(16)), range(16, 32), ('salt', 'x')).hex())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = hash_block(hash_block(None, range(16)), range(16, 32), ("salt", "x")).hex()
    assert out.stdout.strip() == expected


# -- reference counts ------------------------------------------------------------------------------
def test_new_blocks_are_referenced_once_and_freed_back() -> None:
    pool = BlockPool(4, enable_caching=True)
    blocks = pool.get_new_blocks(3)
    assert len(set(blocks)) == 3
    assert all(pool.ref_count(b) == 1 for b in blocks)
    assert pool.num_free_blocks == 1
    assert pool.usage == pytest.approx(0.75)
    pool.free_blocks(blocks)
    assert pool.num_free_blocks == 4
    assert pool.usage == 0.0


def test_shared_block_is_free_only_after_the_last_reference() -> None:
    pool = BlockPool(2, enable_caching=True)
    (block,) = pool.get_new_blocks(1)
    pool.touch([block])
    assert pool.ref_count(block) == 2
    pool.free_blocks([block])
    assert not pool.is_free(block)
    pool.free_blocks([block])
    assert pool.is_free(block)
    with pytest.raises(ValueError, match="freed more often"):
        pool.free_blocks([block])


def test_asking_for_too_many_blocks_raises() -> None:
    pool = BlockPool(2, enable_caching=False)
    with pytest.raises(ValueError, match="only 2 are free"):
        pool.get_new_blocks(3)


# -- caching and eviction --------------------------------------------------------------------------
def test_cached_block_is_found_and_survives_free() -> None:
    pool = BlockPool(4, enable_caching=True)
    blocks = pool.get_new_blocks(2)
    hashes = chain(list(range(32)), 16)
    pool.cache_full_blocks(blocks, hashes)
    assert pool.get_cached_block(hashes[0]) == blocks[0]
    pool.free_blocks(reversed(blocks))
    # Free but still cached: a hit can take it back.
    assert pool.get_cached_block(hashes[1]) == blocks[1]
    assert pool.num_cached_blocks == 2


def test_touching_a_free_cached_block_takes_it_out_of_the_free_queue() -> None:
    pool = BlockPool(3, enable_caching=True)
    (block,) = pool.get_new_blocks(1)
    pool.cache_full_blocks([block], chain(list(range(16)), 16))
    pool.free_blocks([block])
    assert pool.is_free(block) and pool.num_free_blocks == 3
    pool.touch([block])
    assert not pool.is_free(block)
    assert pool.ref_count(block) == 1
    assert pool.num_free_blocks == 2
    # It can no longer be handed out (and evicted) while referenced.
    assert block not in pool.get_new_blocks(2)
    assert pool.block_hash(block) is not None


def test_eviction_is_lru_and_tail_blocks_go_first() -> None:
    pool = BlockPool(6, enable_caching=True)
    old = pool.get_new_blocks(3)
    new = pool.get_new_blocks(3)
    old_hashes = chain(list(range(48)), 16)
    new_hashes = chain(list(range(100, 148)), 16)
    pool.cache_full_blocks(old, old_hashes)
    pool.cache_full_blocks(new, new_hashes)
    pool.free_blocks(reversed(old))  # freed first: least recently used
    pool.free_blocks(reversed(new))
    assert pool.free_block_ids() == [*reversed(old), *reversed(new)]

    first = pool.get_new_blocks(1)
    assert first == [old[2]]  # the older request's tail block is evicted first
    assert pool.get_cached_block(old_hashes[2]) is None
    assert pool.get_cached_block(old_hashes[0]) == old[0]
    assert pool.block_hash(first[0]) is None


def test_touch_refreshes_recency() -> None:
    pool = BlockPool(2, enable_caching=True)
    a, b = pool.get_new_blocks(2)
    hashes = chain(list(range(32)), 16)
    pool.cache_full_blocks([a, b], hashes)
    pool.free_blocks([a])
    pool.free_blocks([b])
    pool.touch([a])  # a hit: a becomes the most recently used once freed again
    pool.free_blocks([a])
    assert pool.get_new_blocks(1) == [b]


def test_empty_free_blocks_are_handed_out_before_cached_ones() -> None:
    pool = BlockPool(3, enable_caching=True)
    cached, plain, _ = pool.get_new_blocks(3)
    pool.cache_full_blocks([cached], chain(list(range(16)), 16))
    pool.free_blocks([cached])
    pool.free_blocks([plain])
    # plain holds nothing reusable, so it goes before the cached block even though freed later.
    assert pool.get_new_blocks(1) == [plain]


def test_duplicate_hash_keeps_the_first_block() -> None:
    pool = BlockPool(2, enable_caching=True)
    a, b = pool.get_new_blocks(2)
    (h,) = chain(list(range(16)), 16)
    pool.cache_full_blocks([a], [h])
    pool.cache_full_blocks([b], [h])
    assert pool.get_cached_block(h) == a
    assert pool.block_hash(b) is None


def test_caching_disabled_caches_nothing() -> None:
    pool = BlockPool(2, enable_caching=False)
    (a,) = pool.get_new_blocks(1)
    (h,) = chain(list(range(16)), 16)
    pool.cache_full_blocks([a], [h])
    assert pool.get_cached_block(h) is None


def test_reset_prefix_cache_only_when_nothing_is_referenced() -> None:
    pool = BlockPool(2, enable_caching=True)
    a, b = pool.get_new_blocks(2)
    hashes = chain(list(range(32)), 16)
    pool.cache_full_blocks([a, b], hashes)
    pool.free_blocks([b])
    assert pool.reset_prefix_cache() is False
    assert pool.get_cached_block(hashes[1]) == b
    pool.free_blocks([a])
    assert pool.reset_prefix_cache() is True
    assert pool.get_cached_block(hashes[0]) is None
    assert pool.num_cached_blocks == 0
    assert pool.block_hash(a) is None and pool.num_free_blocks == 2
