"""What the scheduler asks each step: the draft tokens of one decoding request.

The scheduler knows tokens and blocks, so drafts are planned there: at most
``num_speculative_tokens``, never more than the step's budget, the request's remaining
``max_tokens``/``max_model_len``, or the free KV blocks allow. Speculation never preempts a
request: a short cache just gets shorter drafts.
"""

from __future__ import annotations

from heron.kv.kv_cache_manager import KVCacheManager
from heron.request import Request
from heron.spec_decode.config import SpeculativeConfig
from heron.spec_decode.ngram import NgramProposer


class DraftPlanner:
    """Drafts for decoding requests under the scheduler's limits; proposes by prompt lookup
    (a subclass overrides ``propose`` for a draft model)."""

    def __init__(self, config: SpeculativeConfig, max_model_len: int) -> None:
        self.config = config
        self.max_model_len = max_model_len
        self.ngram = NgramProposer(config.prompt_lookup_min, config.prompt_lookup_max)

    @staticmethod
    def check_request(request: Request) -> None:
        """Refuse what speculation cannot serve: a grammar's matcher would have to advance
        through drafts and roll back, which xgrammar's matchers here are not driven to do."""
        if request.sampling_params.structured_outputs is not None:
            raise ValueError(
                "structured outputs cannot be combined with speculative decoding: this engine "
                "was started with speculative_config; start one without it for constrained output"
            )

    def limit(self, request: Request, budget: int, kv: KVCacheManager) -> int:
        """How many drafts ``request`` may get this step (the step also computes its last token).

        At most k + 1 tokens are appended, so k stays below what ``max_tokens`` and
        ``max_model_len`` leave; and the KV of the last token plus k drafts must fit in the blocks
        the request holds plus the free ones.
        """
        limit = min(self.length_limit(request), budget - 1)
        room = (len(request.block_ids) + kv.num_free_blocks) * kv.block_size
        return max(0, min(limit, room - request.num_computed_tokens - 1))

    def drafts(self, request: Request, budget: int, kv: KVCacheManager) -> list[int]:
        """Draft tokens to verify after ``request``'s last token this step (possibly none)."""
        limit = self.limit(request, budget, kv)
        if limit <= 0:
            return []
        return self.propose(request, limit)

    def propose(self, request: Request, limit: int) -> list[int]:
        """Up to ``limit`` tokens to follow the request's tokens."""
        return self.ngram.propose(request.all_token_ids, limit)

    def length_limit(self, request: Request) -> int:
        """Drafts that ``max_tokens`` and ``max_model_len`` allow, before budget and blocks."""
        limit = min(self.config.num_speculative_tokens, self.max_model_len - request.num_tokens - 1)
        max_tokens = request.sampling_params.max_tokens
        if max_tokens is not None:
            limit = min(limit, max_tokens - request.num_output_tokens - 1)
        return limit
