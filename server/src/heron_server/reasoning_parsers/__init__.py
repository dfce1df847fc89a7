"""Reasoning parsers for ``--reasoning-parser NAME`` (vLLM's names): ``<think>…</think>`` goes to
``reasoning_content``, the rest stays ``content``, in whole and streamed answers alike.

- ``deepseek_r1``: DeepSeek-R1's template opens ``<think>`` in the prompt, so the answer starts in
  the reasoning; everything before ``</think>`` is reasoning (all of it while the tag is missing).
- ``qwen3``: Qwen3 writes ``<think>…</think>`` itself when thinking (with ``enable_thinking=False``
  its template puts an empty block in the prompt): an answer that starts with ``<think>`` reasons
  until ``</think>``; any other answer is content.
"""

from __future__ import annotations

from heron_server.tool_parsers.base import marker_prefix_len

START, END = "<think>", "</think>"


class ReasoningParser:
    """Splits an answer into (reasoning, content); each None when empty."""

    name = ""
    starts_in_reasoning = False
    """The prompt opened the reasoning (DeepSeek-R1): no ``<think>`` needed in the answer."""

    def split(self, text: str, final: bool = True) -> tuple[str, str, int]:
        """(reasoning, content, held) of ``text`` so far; ``held`` trailing characters might
        begin a tag and belong to neither yet (0 when ``final``)."""
        body = text.lstrip()
        opened = body.startswith(START)
        if not final and not opened and START.startswith(body):
            return "", "", len(text)  # nothing yet, or a prefix of "<think>": wait
        if not (opened or self.starts_in_reasoning):
            return "", text, 0
        if opened:
            body = body[len(START) :]
        end = body.find(END)
        if end >= 0:
            return body[:end], body[end + len(END) :], 0
        held = 0 if final else marker_prefix_len(body, (END,))
        return body[: len(body) - held], "", held

    def extract(self, text: str) -> tuple[str | None, str | None]:
        reasoning, content, _ = self.split(text)
        return reasoning or None, content or None


class DeepSeekR1ReasoningParser(ReasoningParser):
    name = "deepseek_r1"
    starts_in_reasoning = True


class Qwen3ReasoningParser(ReasoningParser):
    name = "qwen3"


REASONING_PARSERS: dict[str, type[ReasoningParser]] = {
    p.name: p for p in (DeepSeekR1ReasoningParser, Qwen3ReasoningParser)
}


class ReasoningStream:
    """Per choice of a stream: feed the cumulative text, get (reasoning, content) deltas."""

    def __init__(self, parser: ReasoningParser) -> None:
        self.parser = parser
        self.reasoning_sent = 0
        self.content_sent = 0

    def feed(self, text: str, final: bool) -> tuple[str, str]:
        reasoning, content, _ = self.parser.split(text, final)
        r_delta = reasoning[self.reasoning_sent :]
        c_delta = content[self.content_sent :]
        self.reasoning_sent = max(self.reasoning_sent, len(reasoning))
        self.content_sent = max(self.content_sent, len(content))
        return r_delta, c_delta


__all__ = ["REASONING_PARSERS", "ReasoningParser", "ReasoningStream"]
