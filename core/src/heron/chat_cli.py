"""``heron chat``: an interactive conversation that streams the model's answers as they arrive."""

from __future__ import annotations

import argparse
import asyncio
import sys

from heron.config import EngineArgs


def run_chat(args: argparse.Namespace, engine_args: EngineArgs) -> int:
    from heron.cli import sampling_params_from_args
    from heron.engine.async_llm import AsyncLLM
    from heron.engine.output_processor import RequestOutputKind

    engine = AsyncLLM(engine_args)
    params = sampling_params_from_args(args)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print(f"Chatting with {engine.model_name}. Empty line or Ctrl-D to quit.", file=sys.stderr)

    async def answer() -> str:
        prompt = engine.render_chat(messages)
        parts = []
        async for out in engine.generate(prompt, params, output_kind=RequestOutputKind.DELTA):
            delta = out.outputs[0].text
            parts.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return "".join(parts)

    try:
        while True:
            try:
                line = input("> ")
            except EOFError:
                break
            if not line.strip():
                break
            messages.append({"role": "user", "content": line})
            messages.append({"role": "assistant", "content": asyncio.run(answer())})
    finally:
        engine.shutdown()
    return 0
