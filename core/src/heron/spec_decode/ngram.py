"""Prompt lookup: propose the tokens that followed the latest earlier occurrence of the context's
tail.

Why it works: when the output quotes, rewrites or continues its input (summaries, code edits,
retrieval answers), the next few tokens often already appear right after the same few tokens
earlier in the sequence. The proposal costs no model call, only a search over token ids.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class NgramProposer:
    """Longest n-gram first: an ``n``-token tail that occurred before, from ``max_n`` down to
    ``min_n``; the latest earlier occurrence wins (the most recent context is the likeliest to
    continue the same way) among those followed by ``k`` tokens."""

    def __init__(self, min_n: int, max_n: int) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, token_ids: list[int] | np.ndarray, k: int) -> list[int]:
        """Up to ``k`` tokens to follow ``token_ids``; empty when no tail n-gram recurs."""
        tokens = np.asarray(token_ids, dtype=np.int64)
        length = len(tokens)
        if k <= 0 or length < self.min_n + 1:
            return []
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            tail = tokens[length - n :]
            # Windows starting at 0 .. length-n-1: every occurrence before the tail itself.
            windows = sliding_window_view(tokens[: length - 1], n)
            hits = np.flatnonzero((windows == tail).all(axis=1))
            if len(hits):
                # Prefer the latest occurrence followed by k whole tokens; in a repeating tail
                # the very latest one is followed by fewer.
                full = hits[hits + n + k <= length]
                start = int(full[-1] if len(full) else hits[-1]) + n
                return tokens[start : start + k].tolist()
        return []
