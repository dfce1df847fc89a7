"""Reasoning parsers (issue 20, item 3): ``<think>…</think>`` into ``reasoning_content``, the
same whole and streamed in pieces, on the formats DeepSeek-R1 and Qwen3 write."""

from __future__ import annotations

import pytest

from heron_server.reasoning_parsers import REASONING_PARSERS, ReasoningStream

CASES = [
    # DeepSeek-R1: the prompt opened <think>, the answer closes it.
    (
        "deepseek_r1",
        "Let me add: 2+2=4.\n</think>\n\nThe answer is 4.",
        "Let me add: 2+2=4.\n",
        "\n\nThe answer is 4.",
    ),
    ("deepseek_r1", "<think>\nHmm.\n</think>Four.", "\nHmm.\n", "Four."),
    (
        "deepseek_r1",
        "Still thinking when max_tokens hit",
        "Still thinking when max_tokens hit",
        None,
    ),
    # Qwen3 thinking mode writes the block itself; non-thinking answers are plain content.
    (
        "qwen3",
        "<think>\nThe user greets me.\n</think>\n\nHello!",
        "\nThe user greets me.\n",
        "\n\nHello!",
    ),
    ("qwen3", "Hello! <think> is just text here", None, "Hello! <think> is just text here"),
    ("qwen3", "<think>cut short", "cut short", None),
    ("qwen3", "<th", None, "<th"),
]


def _pieces(text: str) -> list[str]:
    out, i, k = [], 0, 0
    while i < len(text):
        size = (1, 2, 5, 3)[k % 4]
        out.append(text[i : i + size])
        i, k = i + size, k + 1
    return out


@pytest.mark.parametrize(("name", "text", "reasoning", "content"), CASES)
def test_whole_and_streamed_split_alike(name, text, reasoning, content) -> None:
    parser = REASONING_PARSERS[name]()
    assert parser.extract(text) == (reasoning, content)
    stream = ReasoningStream(parser)
    so_far, r_parts, c_parts = "", [], []
    pieces = _pieces(text)
    for i, piece in enumerate(pieces):
        so_far += piece
        r, c = stream.feed(so_far, final=i == len(pieces) - 1)
        r_parts.append(r)
        c_parts.append(c)
        assert "</think>" not in r and "<think>" not in r
    assert ("".join(r_parts) or None, "".join(c_parts) or None) == (reasoning, content)
