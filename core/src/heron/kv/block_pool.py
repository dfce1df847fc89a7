"""The pool of fixed-size KV blocks: reference counts, a free queue and the prefix-cache map.

The pool only knows block ids, not tokens or tensors: the runner owns the memory, the KV cache
manager decides which blocks a request holds. A block is in exactly one of three states:

- referenced (``ref_cnt > 0``): in some request's block table; never in the free queue;
- free and cached: unreferenced but still holding the KV of a full block whose hash is in the map,
  so a later request with the same prefix can take it back (``touch``) instead of recomputing it;
- free and empty: holds nothing worth keeping.

The free queue is an ``OrderedDict`` used as a doubly linked list: pop from the head, append at the
tail, remove from the middle are all O(1), like vLLM's ``FreeKVCacheBlockQueue`` but with no
hand-written list. Allocation pops the head, so the head is the eviction end: freed cached blocks go
to the tail (the most recently used end), while freed empty blocks go to the head: handing out a
block that holds nothing costs nothing, handing out a cached one throws reusable KV away.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence


class BlockPool:
    """Blocks ``0 .. num_blocks-1`` with reference counts, LRU eviction and a hash -> block map."""

    def __init__(self, num_blocks: int, enable_caching: bool) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self._ref_cnt: list[int] = [0] * num_blocks
        self._block_hash: list[bytes | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}

    # -- queries ---------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        """Blocks that ``get_new_blocks`` can hand out, cached-but-unreferenced ones included."""
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks referenced by requests (evictable cached blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def ref_count(self, block_id: int) -> int:
        return self._ref_cnt[block_id]

    def block_hash(self, block_id: int) -> bytes | None:
        return self._block_hash[block_id]

    def is_free(self, block_id: int) -> bool:
        return block_id in self._free

    def free_block_ids(self) -> list[int]:
        """The free queue from the eviction end (head) to the most recently freed (tail)."""
        return list(self._free)

    def get_cached_block(self, block_hash: bytes) -> int | None:
        """The block holding the KV for ``block_hash``, referenced or not; None on a miss."""
        if not self.enable_caching:
            return None
        return self._cached.get(block_hash)

    # -- mutations -------------------------------------------------------------------------------
    def get_new_blocks(self, n: int) -> list[int]:
        """Take ``n`` blocks from the head of the free queue, evicting their cached KV, ref count 1.

        Raises ValueError when fewer than ``n`` are free: callers check ``num_free_blocks`` first,
        because running out is a scheduling decision (preempt), not an error.
        """
        if n > len(self._free):
            raise ValueError(f"asked for {n} blocks but only {len(self._free)} are free")
        blocks: list[int] = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            self._evict(block_id)
            self._ref_cnt[block_id] = 1
            blocks.append(block_id)
        return blocks

    def touch(self, block_ids: Iterable[int]) -> None:
        """Add a reference to each block; free cached ones leave the free queue (a cache hit)."""
        for block_id in block_ids:
            if self._ref_cnt[block_id] == 0:
                del self._free[block_id]
            self._ref_cnt[block_id] += 1

    def free_blocks(self, block_ids: Iterable[int]) -> None:
        """Drop one reference from each block, in the order given; unreferenced blocks become free.

        The caller passes a request's blocks tail first, so that among its cached blocks the tail
        ones sit nearer the eviction end: a later request is likelier to share the head of a prompt
        (a system prompt) than its tail.
        """
        for block_id in block_ids:
            ref_cnt = self._ref_cnt[block_id] - 1
            if ref_cnt < 0:
                raise ValueError(f"block {block_id} freed more often than it was referenced")
            self._ref_cnt[block_id] = ref_cnt
            if ref_cnt == 0:
                self._free[block_id] = None
                if self._block_hash[block_id] is None:
                    self._free.move_to_end(block_id, last=False)

    def cache_full_blocks(self, block_ids: Sequence[int], block_hashes: Sequence[bytes]) -> None:
        """Record that ``block_ids[i]`` holds the full block hashed ``block_hashes[i]``.

        Blocks that already carry a hash are skipped (a prefix hit, or cached on an earlier step).
        When another block already holds the same hash (two requests computed the same prefix at
        once), the map keeps the first one and this block stays uncached: one copy suffices for
        future hits.
        """
        if not self.enable_caching:
            return
        for block_id, block_hash in zip(block_ids, block_hashes):
            if self._block_hash[block_id] is not None or block_hash in self._cached:
                continue
            self._block_hash[block_id] = block_hash
            self._cached[block_hash] = block_id

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block; refused (False) while any block is referenced.

        Referenced blocks are refused because their hashes are still needed for the running
        requests' later caching decisions, and dropping the map under them would leave the two out
        of step.
        """
        if len(self._free) != self.num_blocks:
            return False
        for block_id in self._cached.values():
            self._block_hash[block_id] = None
        self._cached.clear()
        return True

    def _evict(self, block_id: int) -> None:
        block_hash = self._block_hash[block_id]
        if block_hash is None:
            return
        self._block_hash[block_id] = None
        if self._cached.get(block_hash) == block_id:
            del self._cached[block_hash]
