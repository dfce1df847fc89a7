"""Token ids of many embedding texts in one call, without the rest of a ``BatchEncoding``.

A Hugging Face fast tokenizer's ``tokenizer(texts)`` encodes the batch in Rust, then builds
Python lists of attention masks and token type ids for every text and copies them into a
``BatchEncoding``; an embedding request needs only the ids. With ``-dp 2`` on two cores every
CPU-second the front spends is taken from the replicas: for 10,000 MiniLM sentences the
``tokenizer(texts)`` path cost 1.98 CPU-s here, the Rust backend's ``encode_batch_fast`` taking
only the ids 1.57.

:class:`TextIds` calls that backend with exactly what ``tokenizer(texts, add_special_tokens=True,
truncation=True, max_length=k)`` (or no truncation) sets on it: no padding, ``longest_first``
truncation at ``k`` with stride 0 on the tokenizer's ``truncation_side``, and its
``split_special_tokens``; so the ids are the same (tests/core/test_embed_text_ids.py). It works
on a private copy of the backend, because the tokenizer's own one carries whatever padding and
truncation its last caller (or ``tokenizer.json``) left on it. Tokenizers whose class changes how
a call encodes (a slow tokenizer, one that overrides ``__call__`` or ``_encode_plus``, one with
input/target modes) keep the ``tokenizer(texts)`` path.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any


class TextIds:
    """``ids(texts, k)``: the token ids ``tokenizer(texts, ...)["input_ids"]`` would give."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._backend = _private_backend(tokenizer)
        self._truncation: int | None = None
        self._lock = threading.Lock()  # the copy's truncation is per call; the server has threads

    @property
    def direct(self) -> bool:
        """Whether the Rust backend is called directly (else the tokenizer's own call)."""
        return self._backend is not None

    def ids(self, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
        """Ids with special tokens, truncated to ``max_length`` tokens when it is not None."""
        if self._backend is None:
            kwargs: dict[str, Any] = {"add_special_tokens": True}
            if max_length is not None:
                kwargs.update(truncation=True, max_length=max_length)
            return [list(ids) for ids in self.tokenizer(list(texts), **kwargs)["input_ids"]]
        with self._lock:
            if max_length != self._truncation:
                if max_length is None:
                    self._backend.no_truncation()
                else:
                    self._backend.enable_truncation(
                        max_length,
                        stride=0,
                        strategy="longest_first",
                        direction=self.tokenizer.truncation_side,
                    )
                self._truncation = max_length
            encodings = self._backend.encode_batch_fast(list(texts), add_special_tokens=True)
        return [e.ids for e in encodings]

    def __getstate__(self) -> dict[str, Any]:
        # A data-parallel replica sends its frontend to the front: the copy is rebuilt there
        # (tokenizers pickle, locks do not).
        return {"tokenizer": self.tokenizer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tokenizer = state["tokenizer"]
        self._backend = _private_backend(self.tokenizer)
        self._truncation = None
        self._lock = threading.Lock()


def _private_backend(tokenizer: Any) -> Any | None:
    """A copy of ``tokenizer``'s Rust tokenizer set up as its call would, or None where its call
    may do more than encode with the backend."""
    try:
        from tokenizers import Tokenizer
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: its call is the reference
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    cls = type(tokenizer)
    if (
        not isinstance(tokenizer, TokenizersBackend)
        or not isinstance(backend, Tokenizer)
        or cls.__call__ is not PreTrainedTokenizerBase.__call__
        or cls._encode_plus is not TokenizersBackend._encode_plus
        or hasattr(tokenizer, "_switch_to_input_mode")
        or getattr(tokenizer, "truncation_side", None) not in ("left", "right")
    ):
        return None
    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    copy.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return copy
