"""``heron chat``: an interactive conversation that streams the model's answers as they arrive.

What a user at a terminal expects, and what this module guarantees:

* stdout carries the prompt and the answers only; the engine's log lines go to stderr, and the
  CLI raises logging to WARNING for chat unless ``--log-level`` asks otherwise, so lines such as
  "Recorded a step graph" do not land in the middle of an answer;
* Ctrl-C during an answer stops (aborts) that answer and returns to the prompt, keeping the
  conversation with the part of the answer that was shown;
* Ctrl-C, Ctrl-D or an empty line at the prompt ends the chat without a traceback, leaving the
  cursor on a fresh line for the shell.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TextIO

from heron.cli_common import CLIError, check_max_tokens, load_error_types, sampling_params_from_args
from heron.config import EngineArgs
from heron.sampling_params import SamplingParams

Messages = list[dict[str, str]]


def run_chat(args: argparse.Namespace, engine_args: EngineArgs) -> int:
    """Load the engine, converse until the user quits, and stop the engine; returns the status."""
    from heron.engine.async_llm import AsyncLLM

    params = sampling_params_from_args(args)  # a bad flag fails before the model loads
    print(f"Loading {engine_args.model or 'the bundled SmolLM2-135M-Instruct'}...", file=sys.stderr)
    try:
        engine = AsyncLLM(engine_args)
    except load_error_types() as exc:
        raise CLIError(f"cannot load the model: {exc}", status=1) from None
    try:
        # An explicit --max-tokens must leave room for at least a one-token conversation.
        check_max_tokens(args, 1, engine.max_model_len)
        print(
            f"Chatting with {engine.model_name}. Ctrl-C stops an answer; "
            "an empty line, Ctrl-D or Ctrl-C at the prompt quits.",
            file=sys.stderr,
        )
        return converse(engine, params, system=args.system)
    finally:
        engine.shutdown()


def converse(
    engine: Any,
    params: SamplingParams,
    *,
    system: str | None = None,
    read_line: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> int:
    """The prompt/answer loop over an :class:`~heron.engine.async_llm.AsyncLLM`-like ``engine``.

    ``read_line`` and ``out`` are the terminal (``input`` and stdout); tests pass their own.
    Returns 0, since every way the user leaves the chat is a normal end; 1 if the engine died.
    """
    from heron.engine.async_llm import EngineDeadError

    out = out or sys.stdout
    messages: Messages = [{"role": "system", "content": system}] if system else []
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                line = read_line("> ")
            except (EOFError, KeyboardInterrupt):
                out.write("\n")  # the cursor is after "> ": give the shell a fresh line
                out.flush()
                return 0
            if not line.strip():
                return 0
            messages.append({"role": "user", "content": line})
            parts: list[str] = []
            try:
                finished = _run_interruptible(loop, _answer(engine, messages, params, parts, out))
            except ValueError as exc:  # the conversation no longer fits the model's context
                messages.pop()
                print(f"heron chat: {exc}; start a new chat to go on", file=sys.stderr)
                continue
            except EngineDeadError as exc:  # its traceback is in the log already
                print(f"\nheron chat: {exc}", file=sys.stderr)
                return 1
            if not finished:
                out.write("\n")
                out.flush()
                print("[answer stopped]", file=sys.stderr)
            answer = "".join(parts)
            if answer:
                messages.append({"role": "assistant", "content": answer})
            else:  # nothing was said: forget the question rather than leave two user turns
                messages.pop()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _answer(
    engine: Any, messages: Messages, params: SamplingParams, parts: list[str], out: TextIO
) -> None:
    """Stream one answer to ``out``, collecting it in ``parts`` (which survive a cancellation)."""
    from heron.engine.output_processor import RequestOutputKind

    prompt = engine.render_chat(messages)
    stream = engine.generate(prompt, params, output_kind=RequestOutputKind.DELTA)
    # aclosing: a cancelled answer closes the stream at once, and closing it aborts the request
    # in the engine, so the next question does not queue behind the rest of this answer.
    async with contextlib.aclosing(stream):
        async for output in stream:
            delta = output.outputs[0].text
            parts.append(delta)
            out.write(delta)
            out.flush()
    out.write("\n")
    out.flush()


def _run_interruptible(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> bool:
    """Run ``coro`` on ``loop``; Ctrl-C (SIGINT) cancels it instead of raising in the middle.

    Returns True if it finished, False if Ctrl-C stopped it. Without this, a KeyboardInterrupt
    would surface wherever the main thread happened to be, leaving the request running and the
    loop broken. ``add_signal_handler`` also wakes the loop when the signal reaches another
    thread (the engine's); where it is missing (Windows), ``signal.signal`` does the same job.
    """
    task = loop.create_task(coro)
    interrupted = False

    def on_sigint(*_: object) -> None:
        nonlocal interrupted
        interrupted = True
        loop.call_soon_threadsafe(task.cancel)

    with contextlib.ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():
            try:
                loop.add_signal_handler(signal.SIGINT, on_sigint)
                stack.callback(loop.remove_signal_handler, signal.SIGINT)
            except NotImplementedError:
                stack.callback(
                    signal.signal, signal.SIGINT, signal.signal(signal.SIGINT, on_sigint)
                )
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            if not interrupted:
                raise
            return False
    return True
