"""Which KV blocks each request holds, and the prefix cache over them.

The scheduler asks two questions per request: "how much of this request is already cached?"
(``get_computed_blocks``, once when it leaves the waiting queue) and "give it room for n more
tokens" (``allocate_slots``, every step it is scheduled). The answer ``None`` to the second is the
only signal the scheduler needs to preempt. Block ids are kept in ``request.block_ids`` (the block
table the runner reads); the chained block hashes in ``request.block_hashes`` survive preemption,
since the tokens do.

Sliding window (every layer windowed, Mistral-style): a request's leading blocks that lie wholly
before the window of its next token are returned to the pool as it advances. Their ids stay in
``request.block_ids`` (so block-table positions do not move) as stale entries that kernels never
read (heron_interfaces 1.9's contract). Prefix caching stays on: a freed block keeps its hash
until the pool evicts it, and a lookup only ever returns a run of cached blocks from the start.
"""

from __future__ import annotations

from heron.kv.block_pool import BlockPool
from heron.kv.hashing import hash_block
from heron.request import Request


class KVCacheManager:
    """Allocates blocks to requests from a ``BlockPool`` and looks up and fills its prefix cache."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        sliding_window: int | None = None,
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or None, got {sliding_window}")
        self.sliding_window = sliding_window
        """The window every layer shares, or None: then no block is freed before the request."""
        self._num_freed_blocks: dict[str, int] = {}
        """request_id -> its leading blocks already returned to the pool (out of the window)."""
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_caching=enable_prefix_caching)
        self._num_cached_blocks: dict[str, int] = {}
        """request_id -> how many of its leading blocks are already registered in the pool's map."""
        self.prefix_cache_queries = 0
        """Tokens looked up in the prefix cache (each admitted request's length), as vLLM counts."""
        self.prefix_cache_hits = 0
        """Tokens of those found cached."""

    # -- sizes -----------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold the KV of ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    # -- prefix cache ----------------------------------------------------------------------------
    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """The longest run of cached full blocks at the start of the request, and its token count.

        Only blocks lying wholly inside the first ``num_tokens - 1`` tokens count (vLLM's cap): the
        last token must always be computed, since its logits give the next token. So a fully cached
        prompt whose length is a multiple of the block size gives back its last block to recompute.
        Requests asking for prompt logprobs skip the lookup: those need every prompt token's logits.
        The blocks are not referenced yet; ``allocate_slots`` does that if the request is admitted.
        """
        if not self.enable_prefix_caching or request.sampling_params.prompt_logprobs is not None:
            return [], 0
        self._update_block_hashes(request, request.num_tokens)
        max_blocks = (request.num_tokens - 1) // self.block_size
        blocks: list[int] = []
        for block_hash in request.block_hashes[:max_blocks]:
            block_id = self.pool.get_cached_block(block_hash)
            if block_id is None:
                break
            blocks.append(block_id)
        return blocks, len(blocks) * self.block_size

    def reset_prefix_cache(self) -> bool:
        """Drop all cached KV (e.g. after new weights); False while any request holds blocks."""
        return self.pool.reset_prefix_cache()

    # -- allocation ------------------------------------------------------------------------------
    def allocate_slots(
        self,
        request: Request,
        num_new_tokens: int,
        computed_blocks: list[int] | None = None,
        num_computed_from_cache: int = 0,
    ) -> list[int] | None:
        """Make room for ``num_new_tokens`` more tokens; the newly allocated block ids, or None.

        ``computed_blocks`` / ``num_computed_from_cache`` come from ``get_computed_blocks`` when the
        request is admitted; they are prepended to its block table and referenced here, so that a
        failed admission leaves nothing to undo. Unreferenced cached blocks among them sit in the
        free queue, so taking them costs free blocks too, and the check counts them. On success the
        full blocks this step completes are registered in the prefix cache right away: the runner
        writes every token's KV before any attention reads it, so a request admitted later in the
        same step may already share them.
        """
        computed_blocks = computed_blocks or []
        pool = self.pool
        self._free_out_of_window(request)
        first_allocation = not request.block_ids and request.num_computed_tokens == 0
        num_total = request.num_computed_tokens + num_computed_from_cache + num_new_tokens
        num_held = len(request.block_ids) + len(computed_blocks)
        num_new_blocks = max(0, self.num_blocks_for(num_total) - num_held)
        num_evictable = sum(1 for b in computed_blocks if pool.ref_count(b) == 0)
        if num_new_blocks + num_evictable > pool.num_free_blocks:
            return None

        if computed_blocks:
            pool.touch(computed_blocks)
            request.block_ids.extend(computed_blocks)
        new_blocks = pool.get_new_blocks(num_new_blocks)
        request.block_ids.extend(new_blocks)

        if first_allocation and self._looks_up(request):
            self.prefix_cache_queries += request.num_tokens
            self.prefix_cache_hits += num_computed_from_cache
        if self.enable_prefix_caching:
            self._cache_full_blocks(request, min(num_total, request.num_tokens))
        return new_blocks

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first, so its tail is evicted before its head."""
        freed = self._num_freed_blocks.pop(request.request_id, 0)
        self.pool.free_blocks(reversed(request.block_ids[freed:]))
        request.block_ids = []
        self._num_cached_blocks.pop(request.request_id, None)

    def num_freed_blocks(self, request: Request) -> int:
        """Leading blocks of ``request`` already returned to the pool (out of the window)."""
        return self._num_freed_blocks.get(request.request_id, 0)

    def free_blocks_past(self, request: Request, num_tokens: int) -> list[int]:
        """Free the request's blocks that lie wholly past its first ``num_tokens`` tokens; their
        ids, tail first.

        Speculative decoding allocates slots for draft tokens, and rejected drafts leave blocks
        that hold nothing valid. They were never hashed (hashes cover the request's own tokens
        only), so they go back to the pool as plain free blocks.
        """
        keep = self.num_blocks_for(num_tokens)
        if len(request.block_ids) <= keep:
            return []
        if self._num_cached_blocks.get(request.request_id, 0) > keep:
            raise RuntimeError(
                f"request {request.request_id!r}: a block past token {num_tokens} is in the "
                "prefix cache, so it would be freed with KV that other requests may share"
            )
        tail = request.block_ids[keep:][::-1]
        del request.block_ids[keep:]
        self.pool.free_blocks(tail)
        return tail

    # -- internals -------------------------------------------------------------------------------
    def _free_out_of_window(self, request: Request) -> None:
        """Return the blocks wholly before the window of the request's next token to the pool.

        The next token to compute sits at ``num_computed_tokens`` and sees positions from
        ``num_computed_tokens - window + 1`` on; every later token sees less of the past. Called
        before a step's tokens are scheduled, so a rollback of speculated tokens (which never goes
        below this count) still finds its window's blocks.
        """
        if self.sliding_window is None or not request.block_ids:
            return
        first_needed = request.num_computed_tokens - self.sliding_window + 1
        num_out = min(max(0, first_needed) // self.block_size, len(request.block_ids))
        done = self._num_freed_blocks.get(request.request_id, 0)
        if num_out <= done:
            return
        self.pool.free_blocks(reversed(request.block_ids[done:num_out]))
        self._num_freed_blocks[request.request_id] = num_out

    def _looks_up(self, request: Request) -> bool:
        return self.enable_prefix_caching and request.sampling_params.prompt_logprobs is None

    def _cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Register the request's blocks that are full within its first ``num_tokens`` tokens."""
        num_full = num_tokens // self.block_size
        start = self._num_cached_blocks.get(request.request_id, 0)
        if num_full <= start:
            return
        self._update_block_hashes(request, num_tokens)
        self.pool.cache_full_blocks(
            request.block_ids[start:num_full], request.block_hashes[start:num_full]
        )
        self._num_cached_blocks[request.request_id] = num_full

    def _update_block_hashes(self, request: Request, num_tokens: int) -> None:
        """Extend ``request.block_hashes`` over the full blocks among the first ``num_tokens``."""
        hashes = request.block_hashes
        bs = self.block_size
        for index in range(len(hashes), num_tokens // bs):
            parent = hashes[-1] if hashes else None
            tokens = request.token_ids_range(index * bs, (index + 1) * bs)
            hashes.append(hash_block(parent, tokens, self._extra_keys(request, index)))

    @staticmethod
    def _extra_keys(request: Request, block_index: int) -> tuple | None:
        """Keys besides tokens that decide whether KV can be shared.

        The cache salt goes into the first block only, like vLLM: the chain carries it to every
        later block, so requests with different salts never share anything.
        """
        if block_index == 0 and request.cache_salt is not None:
            return ("salt", request.cache_salt)
        return None
