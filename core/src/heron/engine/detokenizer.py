"""Incremental detokenization and stop strings for one sequence.

Algorithm: vLLM's prefix/read offsets, on ``decode`` of a short window. Each new token decodes
the window ``ids[prefix:]`` and the previous window ``ids[prefix:read]``; the difference is the new
text. A window that starts a few tokens back keeps what single-token decoding loses (SentencePiece
drops a leading space at the start of a string; WordPiece glues ``##`` pieces), and a window that
ends in U+FFFD is an incomplete UTF-8 character, so the text waits for the next token instead of
showing a replacement character that would later change.

Why not ``tokenizers.decoders.DecodeStream``: it has no way to flush bytes still pending when a
sequence ends (so the final text could not equal ``tokenizer.decode(ids)``), it only exists for fast
tokenizers, and seeding it with a prompt that ends inside a character silently loses text. For fast
tokenizers we call the Rust ``Tokenizer.decode`` directly, which is what ``DecodeStream`` does
internally anyway, at a cost of one or two short decodes per token.

``clean_up_tokenization_spaces`` is never applied (vLLM does not either): it rewrites earlier text
when later text arrives. ``spaces_between_special_tokens`` only exists for slow (Python) tokenizers;
fast tokenizers ignore it, exactly as ``tokenizer.decode`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from heron.sampling_params import SamplingParams

try:  # tokenizers is a dependency of transformers; keep the module importable without it.
    from tokenizers import Tokenizer as _RustTokenizer
except ImportError:  # pragma: no cover
    _RustTokenizer = None  # type: ignore[assignment,misc]

_REPLACEMENT = "\ufffd"
_PROMPT_WINDOW = 5
"""Prompt tokens decoded before the first output token (vLLM's initial offset): enough context for
leading-space rules, short enough to stay cheap."""


def make_decode(
    tokenizer: Any, *, skip_special_tokens: bool, spaces_between_special_tokens: bool = True
) -> Callable[[list[int]], str]:
    """A ``decode(ids) -> str`` for any tokenizer, going straight to Rust for fast tokenizers."""
    backend = tokenizer if _is_rust(tokenizer) else getattr(tokenizer, "backend_tokenizer", None)
    if _is_rust(backend):
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(
        ids,
        skip_special_tokens=skip_special_tokens,
        spaces_between_special_tokens=spaces_between_special_tokens,
        clean_up_tokenization_spaces=False,
    )


def _is_rust(obj: Any) -> bool:
    return _RustTokenizer is not None and isinstance(obj, _RustTokenizer)


def decode_token(tokenizer: Any, token_id: int) -> str:
    """One token's text for a logprob entry; special tokens keep their text (as in vLLM)."""
    return make_decode(tokenizer, skip_special_tokens=False)([token_id])


class IncrementalDetokenizer:
    """Turns one sequence's output tokens into text as they arrive, and finds its stop strings."""

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self._decode = make_decode(
            tokenizer,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
        )
        # Only the prompt's tail matters; the window never reaches further back.
        self._ids: list[int] = list(prompt_token_ids[-_PROMPT_WINDOW:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._prefix_text: str | None = None
        """Cached decode of ``ids[prefix:read]``; it only changes when the offsets move."""
        self.output_token_ids: list[int] = []
        """Output tokens consumed (the tokens after a stop string are dropped)."""
        self.output_text = ""
        """All text so far (after a stop string: truncated). Use ``get_delta_text`` to stream."""
        self.stop_string: str | None = None
        self.finished = False
        self._stops: list[str] = list(params.stop or [])
        self._max_stop_len = max((len(s) for s in self._stops), default=0)
        self._include_stop = params.include_stop_str_in_output
        self._min_tokens = params.min_tokens
        self._emitted = 0

    def update(
        self, new_token_ids: list[int], *, finished: bool = False, stop_terminated: bool = False
    ) -> str | None:
        """Consume new tokens; return the stop string if one completed (the sequence is then over).

        ``finished``: the engine ended the sequence (length, EOS, stop token, abort): pending bytes
        of an incomplete character are flushed (as U+FFFD, like ``tokenizer.decode``) and streaming
        stops holding text back. ``stop_terminated``: the last token is an EOS or stop token; like
        vLLM it counts as output but adds no text unless ``include_stop_str_in_output``.
        Once a stop string was found, further calls are ignored.
        """
        if self.finished:
            return None
        skipped: int | None = None
        if stop_terminated and new_token_ids and not self._include_stop:
            skipped = new_token_ids[-1]
            new_token_ids = new_token_ids[:-1]
        for token_id in new_token_ids:
            self._ids.append(token_id)
            self.output_token_ids.append(token_id)
            added = self._decode_next()
            if added and self._find_stop(len(added)):
                return self.stop_string
        if skipped is not None:
            self.output_token_ids.append(skipped)
        if finished:
            added = self._flush()
            self.finished = True
            if added and self._find_stop(len(added)):
                return self.stop_string
        return None

    def _decode_next(self) -> str:
        if self._prefix_text is None:
            self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(self._prefix_text) or new_text.endswith(_REPLACEMENT):
            # A special token being skipped, or a character still missing bytes: wait.
            return ""
        added = new_text[len(self._prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = None
        self.output_text += added
        return added

    def _flush(self) -> str:
        """Text of tokens still waiting for the rest of a character, as ``decode`` would give it."""
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        added = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        self._prefix_text = None
        self.output_text += added
        return added

    def _find_stop(self, num_new_chars: int) -> bool:
        """Look for a stop string ending in the new text; truncate the text if one is found.

        Among stop strings the one that completes first in the text wins (earliest end; at equal
        ends the longer one). As in vLLM, none is checked until ``min_tokens`` tokens were produced,
        and an occurrence that completed before then is not matched later.
        """
        if not self._stops or len(self.output_token_ids) <= self._min_tokens:
            return False
        text = self.output_text
        start = max(0, len(text) - num_new_chars - self._max_stop_len + 1)
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            i = text.find(stop, start)
            if i != -1 and (best is None or (i + len(stop), i) < best[:2]):
                best = (i + len(stop), i, stop)
        if best is None:
            return False
        end, begin, stop = best
        self.output_text = text[:end] if self._include_stop else text[:begin]
        self.stop_string = stop
        self.finished = True
        return True

    def _held_back(self) -> int:
        """Characters at the end that could begin a stop string, hidden from streams until known.

        Holding back only such a suffix (not vLLM's fixed ``max_stop_len - 1``) streams ordinary
        text without delay and still never shows a stop string's prefix that is then cut.
        """
        if self.finished or self._include_stop or not self._stops:
            return 0
        text = self.output_text
        longest = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest

    @property
    def visible_text(self) -> str:
        """The text a cumulative stream may show now (without a possible stop string's start)."""
        held = self._held_back()
        return self.output_text[: len(self.output_text) - held] if held else self.output_text

    def get_delta_text(self) -> str:
        """Text that became visible since the last call; deltas concatenate to the final text."""
        end = len(self.output_text) - self._held_back()
        if end <= self._emitted:
            return ""
        delta = self.output_text[self._emitted : end]
        self._emitted = end
        return delta
