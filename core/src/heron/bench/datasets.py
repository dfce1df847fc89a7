"""Benchmark requests: read from a JSONL dataset, or made up (random token ids or random words).

A dataset line is ``{"prompt": str}`` or ``{"prompt_token_ids": [int, ...]}`` (both may be present),
with an optional output length as ``output_len`` or ``max_tokens``. That covers the W64 reference
workload of ``/work/shared/bench/workload.py`` (``id``, ``prompt``, ``prompt_token_ids``,
``prompt_len``, ``max_tokens``), so every engine is measured on the very same requests.
"""

from __future__ import annotations

import json
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT_LEN = 128


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file and line."""


@dataclass(slots=True, frozen=True)
class BenchRequest:
    """One benchmark request: a prompt (text, token ids or both) and how many tokens to generate.

    ``prompt_len`` is the prompt's length in tokens when it is known (token ids given, or stated by
    the dataset); servers report the exact count in ``usage`` anyway.
    """

    prompt: str | None
    prompt_token_ids: list[int] | None
    output_len: int
    prompt_len: int | None = None

    def engine_prompt(self) -> str | dict[str, Any]:
        """What ``LLM.generate`` gets: the text when there is one (tokenized by the engine, as in
        ``bench_offline.py``), else the token ids."""
        if self.prompt is not None:
            return self.prompt
        return {"prompt_token_ids": list(self.prompt_token_ids or [])}

    def api_prompt(self) -> str | list[int]:
        """What ``/v1/completions`` gets: text, or a list of token ids (vLLM and llama.cpp accept
        both)."""
        if self.prompt is not None:
            return self.prompt
        return list(self.prompt_token_ids or [])


def load_dataset(path: str | Path, output_len: int | None = None) -> list[BenchRequest]:
    """Requests from a JSONL file (a JSON array of the same objects is accepted too).

    ``output_len`` given overrides every line's own; otherwise a line's ``output_len`` or
    ``max_tokens`` applies, and :data:`DEFAULT_OUTPUT_LEN` when it states neither.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"cannot read dataset {path}: {exc}") from None
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON: {exc}") from None
        numbered = list(enumerate(items, start=1))
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON: {exc}") from None
    requests = [_parse_item(item, f"{path}:{lineno}", output_len) for lineno, item in numbered]
    if not requests:
        raise DatasetError(f"{path}: no requests in the dataset")
    return requests


def _parse_item(item: Any, where: str, output_len: int | None) -> BenchRequest:
    if not isinstance(item, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(item).__name__}")
    prompt = item.get("prompt")
    ids = item.get("prompt_token_ids")
    if prompt is None and ids is None:
        raise DatasetError(f"{where}: needs 'prompt' (text) or 'prompt_token_ids'")
    if prompt is not None and not isinstance(prompt, str):
        raise DatasetError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
    if ids is not None and (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids)
    ):
        raise DatasetError(f"{where}: 'prompt_token_ids' must be a non-empty list of token ids")
    if output_len is None:
        output_len = item.get("output_len", item.get("max_tokens", DEFAULT_OUTPUT_LEN))
    _check_positive(output_len, f"{where}: output length")
    prompt_len = len(ids) if ids is not None else item.get("prompt_len")
    if prompt_len is not None:
        _check_positive(prompt_len, f"{where}: 'prompt_len'")
    return BenchRequest(
        prompt=prompt, prompt_token_ids=ids, output_len=output_len, prompt_len=prompt_len
    )


def _check_positive(value: Any, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise DatasetError(f"{what} must be a positive integer, got {value!r}")


def take(requests: Sequence[BenchRequest], num_prompts: int | None) -> list[BenchRequest]:
    """The first ``num_prompts`` requests, cycling through the dataset when it has fewer."""
    if num_prompts is None:
        return list(requests)
    if num_prompts < 1:
        raise DatasetError(f"--num-prompts must be positive, got {num_prompts}")
    return [requests[i % len(requests)] for i in range(num_prompts)]


def _lengths(rng: random.Random, num: int, mean: int, range_ratio: float) -> list[int]:
    """Lengths uniform in [mean·(1−r), mean·(1+r)], at least 1; exactly ``mean`` for r = 0."""
    if not 0.0 <= range_ratio < 1.0:
        raise DatasetError(f"--range-ratio must be within [0, 1), got {range_ratio}")
    if mean < 1:
        raise DatasetError(f"lengths must be positive, got {mean}")
    low = max(1, round(mean * (1 - range_ratio)))
    high = max(low, round(mean * (1 + range_ratio)))
    return [rng.randint(low, high) for _ in range(num)]


def synthetic_token_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    vocab_size: int,
    *,
    seed: int = 0,
    range_ratio: float = 0.0,
    exclude_ids: Collection[int] = (),
) -> list[BenchRequest]:
    """Prompts of random token ids (as ``vllm bench``'s random dataset): every prompt differs, so
    prefix caching cannot make the run look faster than real traffic. ``exclude_ids`` keeps special
    tokens (EOS, chat markers) out of the prompts."""
    rng = random.Random(seed)
    excluded = set(exclude_ids)
    if len(excluded) >= vocab_size:
        raise DatasetError("every token id is excluded; no synthetic prompt can be made")

    def token() -> int:
        while True:
            t = rng.randrange(vocab_size)
            if t not in excluded:
                return t

    return [
        BenchRequest(
            prompt=None,
            prompt_token_ids=[token() for _ in range(n)],
            output_len=output_len,
            prompt_len=n,
        )
        for n in _lengths(rng, num_prompts, input_len, range_ratio)
    ]


def synthetic_text_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    *,
    seed: int = 0,
    range_ratio: float = 0.0,
) -> list[BenchRequest]:
    """Prompts of ``input_len`` random common English words, for servers (which need text and
    whose tokenizer the client does not know). Each of these words is one token for the usual BPE
    vocabularies when preceded by a space, so the prompt is about ``input_len`` tokens; the exact
    count comes back in the server's ``usage``."""
    rng = random.Random(seed)
    return [
        BenchRequest(
            prompt=" ".join(rng.choice(WORDS) for _ in range(n)),
            prompt_token_ids=None,
            output_len=output_len,
        )
        for n in _lengths(rng, num_prompts, input_len, range_ratio)
    ]


_WORD_TEXT = """
    the of and to in is was for that with on as by at from his her they this had are not but be
    have one all were which she he we their there been has when who will more no if out so said
    what up its about into than them can only other new some could time these two may then do
    first any my now such like our over man me even most made after also did many before must
    through back years where much your way well down should because each just those people how
    too little state good very make world still own see men work long get here between both
    life being under never day same another know while last might us great old year off come
    since against go came right used take three house water small found light city river stone
    tree green blue morning evening night music story garden window road market winter summer
    bread sea wind bird book letter table door field mountain island forest school friend
    family village
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())
"""Common English words, each a single token for the usual BPE vocabularies."""
