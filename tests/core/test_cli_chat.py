"""``heron chat`` at a real terminal (issue 23, item 10): no log lines in the answers, Ctrl-C
stops an answer and keeps the conversation, Ctrl-C at the prompt quits without a traceback, and
Ctrl-D leaves the shell a fresh line.

The terminal is a pseudo-terminal whose controlling process is the chat, so Ctrl-C and Ctrl-D are
typed as a user types them (the tty turns ``\\x03`` into SIGINT and ``\\x04`` into end-of-file).
The model is a tiny random one that never says end-of-sequence under greedy sampling, so an
answer is still streaming when Ctrl-C arrives.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from model_utils import EOS_ID, KERNEL_FRIENDLY, build_tokenizer, tiny_config, tiny_hf_model

from heron.sampling_params import SamplingParams

STARTUP_S = 180.0  # torch import and model load, on a shared 2-core machine
MAX_LEN = 4096


@pytest.fixture(scope="module")
def endless_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose end-of-sequence logit is always 0 while the top logit is positive, so a
    greedy answer runs to ``--max-tokens`` (thousands of tokens) instead of stopping early."""
    from transformers import GenerationConfig

    folder = tmp_path_factory.mktemp("chat") / "endless"
    config = tiny_config("llama", **dict(KERNEL_FRIENDLY, max_position_embeddings=MAX_LEN))
    model = tiny_hf_model(config)
    with torch.no_grad():
        model.lm_head.weight[EOS_ID].zero_()
    model.generation_config = GenerationConfig(eos_token_id=EOS_ID)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    return folder


def _take_terminal() -> None:
    """In the child, after setsid: make the pty (fd 0) the controlling terminal, as a shell does."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A program on a pseudo-terminal: type into it, wait for what it prints."""

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        env = dict(os.environ, HERON_CPU_KVCACHE_SPACE="0.25", HERON_KVCACHE_SPACE="0.25")
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=_take_terminal,
        )
        os.close(slave)
        self.master = master
        self.output = b""
        self.seen = 0  # where the next expect() starts looking

    def _read(self, timeout: float) -> bool:
        """Append what the program printed within ``timeout``; False at end of output."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the program closed the terminal
            return False
        self.output += data
        return bool(data)

    def expect(self, text: bytes, timeout: float = 60.0) -> None:
        """Wait until ``text`` appears after the previous match; move past it."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self.seen :]:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.text}")
        self.seen = self.output.index(text, self.seen) + len(text)

    def expect_more(self, count: int, timeout: float = 60.0) -> None:
        """Wait until at least ``count`` bytes arrived after the previous match."""
        deadline = time.monotonic() + timeout
        while len(self.output) - self.seen < count:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)):
                raise AssertionError(f"no {count} more bytes; the terminal shows:\n{self.text}")
        self.seen = len(self.output)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float = 60.0) -> int:
        """The exit status, after reading everything the program printed.

        Bounded on purpose: a program that is still running at ``timeout`` fails the test with
        what it printed, instead of hanging the test run.
        """
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        if self.proc.poll() is None:
            raise AssertionError(
                f"still running after {timeout} s; the terminal shows:\n{self.text}"
            )
        drained = len(self.output)
        while self._read(0.2) and len(self.output) > drained:  # until end of output or silence
            drained = len(self.output)
        return self.proc.wait(timeout=5)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def chat(endless_model: Path) -> Iterator[Terminal]:
    """``heron chat --model MODEL`` with the default log level."""
    terminal = Terminal(
        [
            sys.executable,
            "-m",
            "heron.cli",
            "chat",
            "--model",
            str(endless_model),
            "--temperature",
            "0",
            "--max-tokens",
            str(MAX_LEN - 64),
            "--dtype",
            "float32",
        ]
    )
    try:
        terminal.expect(b"Chatting with", timeout=STARTUP_S)
        terminal.expect(b"> ")
        yield terminal
    finally:
        terminal.close()


def _assert_clean(terminal: Terminal) -> None:
    assert "Traceback" not in terminal.text, terminal.text
    # The engine's INFO lines (loading, "Recorded a step graph", ...) stay out of the chat.
    assert " INFO " not in terminal.text, terminal.text


def test_ctrl_c_stops_the_answer_and_the_chat_goes_on_then_ctrl_d_quits(chat: Terminal) -> None:
    for question in (b"Hello", b"And then?"):
        chat.type(question + b"\r")
        chat.expect(question + b"\r\n")
        chat.expect_more(40)  # the answer is streaming
        chat.type(b"\x03")
        chat.expect(b"[answer stopped]")
        chat.expect(b"> ")  # back at the prompt, not back at the shell
    chat.type(b"\x04")
    assert chat.wait() == 0, chat.text
    _assert_clean(chat)
    # Ctrl-D ends the chat with a newline, so the shell's prompt starts on its own line.
    assert b"\n" in chat.output[chat.seen :], chat.output[chat.seen :]


def test_ctrl_c_at_the_prompt_quits_cleanly(chat: Terminal) -> None:
    # "> " is written just before the chat blocks reading its line; a SIGINT that lands between the
    # two only sets Python's flag and the read then blocks anyway (CPython's input(), not Heron).
    # A person cannot type that fast; on a loaded CI machine the test can, so it waits a moment.
    time.sleep(1.0)
    chat.type(b"\x03")
    assert chat.wait() == 0, chat.text
    _assert_clean(chat)
    assert b"\n" in chat.output[chat.seen :]


# -- the conversation that Ctrl-C keeps, with an engine stand-in ---------------------------------


class FakeEngine:
    """Streams a fixed answer; the first answer is cut by a real SIGINT after its first words."""

    def __init__(self) -> None:
        self.conversations: list[list[dict[str, str]]] = []
        self.closed_streams = 0

    def render_chat(self, messages: list[dict[str, str]]) -> Any:
        self.conversations.append([dict(m) for m in messages])
        return messages

    async def generate(self, prompt: Any, params: SamplingParams, **_: Any) -> AsyncIterator[Any]:
        try:
            for word in ("Herons ", "wade ", "slowly."):
                yield SimpleNamespace(outputs=[SimpleNamespace(text=word)])
                if len(self.conversations) == 1 and word == "wade ":
                    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, mid-answer
                    await asyncio.sleep(30)
        finally:  # AsyncLLM aborts the request here
            self.closed_streams += 1


def test_ctrl_c_keeps_the_conversation_with_the_part_that_was_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from heron.chat_cli import converse

    lines = iter(["Tell me about herons.", "More?"])

    def read_line(prompt: str) -> str:
        print(prompt, end="")
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    engine = FakeEngine()
    status = converse(engine, SamplingParams(max_tokens=8), system="Be brief.", read_line=read_line)
    assert status == 0
    assert engine.closed_streams == 2
    assert engine.conversations[-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about herons."},
        {"role": "assistant", "content": "Herons wade "},
        {"role": "user", "content": "More?"},
    ]
    captured = capsys.readouterr()
    assert captured.out == "> Herons wade \n> Herons wade slowly.\n> \n"
    assert "[answer stopped]" in captured.err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
