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

BERT's normalizer (lower-casing, accent stripping and control-character cleaning, with the
alignments it keeps for offsets) was a third of that backend's time here (0.45 of 1.45 CPU-s for
the 10,000). On printable ASCII text it does nothing but lower-case, so such texts are lower-cased
by Python (the same mapping on ASCII) and encoded by a second copy without the normalizer: the
same ids. Texts that could differ keep the full path: any other character, and any text in which
an added token's content appears in any case (added tokens that skip normalisation are matched
on the text as written, so lower-casing first could make or break a match).

Where that copy is BERT's whole pipeline (``BertPreTokenizer``, ``WordPiece``, special tokens
around the text), such a text is split into words by the pre-tokenizer's rule (runs of anything
but whitespace and ASCII punctuation; each punctuation character alone) and each word's pieces
come from a cache filled by the WordPiece model itself: a word's pieces never depend on its
neighbours. Text repeats its words, and the Rust pipeline spent most of its time on the same ones
again: 1.12 -> 0.23 CPU-s for the 10,000 sentences.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_ASCII_SPACES = str.maketrans("\t\n\r", "   ")
# Pre-tokenizers that split on any whitespace and drop it, so a tab or line break left as it is
# gives the same pieces as the space BERT's normalizer makes of it.
_WHITESPACE_SPLITTERS = ("BertPreTokenizer", "WhitespaceSplit", "Whitespace")


class TextIds:
    """``ids(texts, k)``: the token ids ``tokenizer(texts, ...)["input_ids"]`` would give."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._backend = _private_backend(tokenizer)
        self._plain = _PlainText.of(self._backend)
        self._truncation: int | None = None
        self._lock = threading.Lock()  # the copy's truncation is per call; the server has threads

    @property
    def direct(self) -> bool:
        """Whether the Rust backend is called directly (else the tokenizer's own call)."""
        return self._backend is not None

    @property
    def skips_normalizer_on_ascii(self) -> bool:
        """Whether printable ASCII texts skip the backend's (BERT) normalizer (see the module)."""
        return self._plain is not None

    def ids(self, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
        """Ids with special tokens, truncated to ``max_length`` tokens when it is not None."""
        if self._backend is None:
            kwargs: dict[str, Any] = {"add_special_tokens": True}
            if max_length is not None:
                kwargs.update(truncation=True, max_length=max_length)
            return [list(ids) for ids in self.tokenizer(list(texts), **kwargs)["input_ids"]]
        with self._lock:
            if max_length != self._truncation:
                for backend in self._backends():
                    if max_length is None:
                        backend.no_truncation()
                    else:
                        backend.enable_truncation(
                            max_length,
                            stride=0,
                            strategy="longest_first",
                            direction=self.tokenizer.truncation_side,
                        )
                self._truncation = max_length
            if self._plain is None:
                return _encode(self._backend, list(texts))
            return self._encode_split(texts, self._plain)

    def _backends(self) -> list[Any]:
        return [self._backend] if self._plain is None else [self._backend, self._plain.backend]

    def _encode_split(self, texts: Sequence[str], plain: _PlainText) -> list[list[int]]:
        """Printable ASCII texts through the copy without the normalizer, the rest through the
        full backend, in the callers' order."""
        easy = [plain.accepts(text) for text in texts]
        side = self.tokenizer.truncation_side
        if all(easy):
            return plain.encode([plain.normalized(t) for t in texts], self._truncation, side)
        if not any(easy):
            return _encode(self._backend, list(texts))
        ids: list[list[int]] = [[] for _ in texts]
        for subset in (True, False):
            where = [i for i, e in enumerate(easy) if e is subset]
            if subset:
                chosen = [plain.normalized(texts[i]) for i in where]
                encoded = plain.encode(chosen, self._truncation, side)
            else:
                encoded = _encode(self._backend, [texts[i] for i in where])
            for i, got in zip(where, encoded, strict=True):
                ids[i] = got
        return ids

    def __getstate__(self) -> dict[str, Any]:
        # A data-parallel replica sends its frontend to the front: the copy is rebuilt there
        # (tokenizers pickle, locks do not).
        return {"tokenizer": self.tokenizer}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.tokenizer = state["tokenizer"]
        self._backend = _private_backend(self.tokenizer)
        self._plain = _PlainText.of(self._backend)
        self._truncation = None
        self._lock = threading.Lock()


def _encode(backend: Any, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=True)]


@dataclass(frozen=True, slots=True)
class _PlainText:
    """The normalizer-free copy of a backend whose normalizer is BERT's, and which texts it may
    encode (see the module's docstring)."""

    backend: Any
    lowercase: bool
    added: re.Pattern[str] | None  # every added token's content, any case
    splits_on_whitespace: bool  # then tabs and line breaks, which the normalizer makes spaces, too
    words: _WordPieces | None  # BERT's pre-tokenizer, WordPiece and template: words from a cache

    @classmethod
    def of(cls, backend: Any | None) -> _PlainText | None:
        if backend is None:
            return None
        from tokenizers import Tokenizer

        spec = json.loads(backend.to_str())
        normalizer = spec.get("normalizer") or {}
        if normalizer.get("type") != "BertNormalizer":
            return None
        spec["normalizer"] = None
        plain = Tokenizer.from_str(json.dumps(spec))
        plain.no_padding()
        plain.no_truncation()
        plain.encode_special_tokens = backend.encode_special_tokens
        contents = sorted({t["content"] for t in spec.get("added_tokens", []) if t["content"]})
        added = re.compile("|".join(map(re.escape, contents)), re.IGNORECASE) if contents else None
        pre_tokenizer = (spec.get("pre_tokenizer") or {}).get("type")
        splits = pre_tokenizer in _WHITESPACE_SPLITTERS
        words = None
        if pre_tokenizer == "BertPreTokenizer" and (spec.get("model") or {}).get("type") == (
            "WordPiece"
        ):
            words = _WordPieces.of(plain)
        return cls(plain, bool(normalizer.get("lowercase", True)), added, splits, words)

    def accepts(self, text: str) -> bool:
        """Printable ASCII holding no added token's content in any case."""
        if not text.isascii():
            return False
        if not text.isprintable() and not (
            self.splits_on_whitespace and text.translate(_ASCII_SPACES).isprintable()
        ):
            return False
        return self.added is None or self.added.search(text) is None

    def normalized(self, text: str) -> str:
        return text.lower() if self.lowercase else text

    def encode(self, texts: list[str], max_length: int | None, side: str) -> list[list[int]]:
        """Ids of accepted, normalized texts (the backend's truncation set to ``max_length``)."""
        if self.words is None:
            return _encode(self.backend, texts)
        return self.words.encode(texts, max_length, side)


_BERT_WORD = re.compile(r"[^\s!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]")
"""BertPreTokenizer's pieces of ASCII text: it splits on whitespace (dropped) and around each
punctuation character (kept alone); ASCII's punctuation is ``!``-``/``, ``:``-``@``, ``[``-`` ` ``
and ``{``-``~``."""


class _WordPieces:
    """BERT's pipeline on printable ASCII text, with each word's WordPiece ids cached."""

    MAX_WORDS = 1 << 16  # cached words; the cache starts again when full
    MAX_CHARS = 64  # longer words are looked up every time (rare, and unbounded in size)

    def __init__(self, backend: Any, prefix: list[int], suffix: list[int]) -> None:
        self.backend = backend
        self.model = backend.model
        self.prefix = prefix
        self.suffix = suffix
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def of(cls, backend: Any) -> _WordPieces | None:
        """The pipeline of ``backend`` (without normalizer or truncation) where its special tokens
        go around the text's pieces, as BERT's template puts them; checked on probe texts."""
        model = backend.model
        piece = [t.id for t in model.tokenize("a")]
        whole = backend.encode("a", add_special_tokens=True).ids
        at = next((i for i in range(len(whole)) if whole[i : i + len(piece)] == piece), None)
        if not piece or at is None:
            return None
        words = cls(backend, whole[:at], whole[at + len(piece) :])
        for probe in ("", "the heron, at 3.14am!", "x" * 120, "unaffable ~`{} z"):
            if words._ids(probe) != backend.encode(probe, add_special_tokens=True).ids:
                return None
        return words

    def _ids(self, text: str) -> list[int]:
        cache = self._cache
        ids = list(self.prefix)
        for word in _BERT_WORD.findall(text):
            pieces = cache.get(word)
            if pieces is None:
                pieces = [t.id for t in self.model.tokenize(word)]
                if len(word) <= self.MAX_CHARS:
                    if len(cache) >= self.MAX_WORDS:
                        cache.clear()
                    cache[word] = pieces
            ids += pieces
        ids += self.suffix
        return ids

    def encode(self, texts: list[str], max_length: int | None, side: str) -> list[list[int]]:
        """Each text's ids; one longer than ``max_length`` keeps its special tokens and loses
        pieces on ``side`` (the backend's own truncation, which is set to ``max_length``), and
        one that cannot keep them all goes through the backend."""
        special = len(self.prefix) + len(self.suffix)
        out = []
        for text in texts:
            ids = self._ids(text)
            if max_length is not None and len(ids) > max_length:
                if max_length <= special:
                    ids = self.backend.encode(text, add_special_tokens=True).ids
                else:
                    keep = max_length - special
                    body = ids[len(self.prefix) : len(ids) - len(self.suffix)]
                    body = body[:keep] if side == "right" else body[len(body) - keep :]
                    ids = self.prefix + body + self.suffix
            out.append(ids)
        return out


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
