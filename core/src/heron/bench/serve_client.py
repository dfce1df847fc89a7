"""One streamed request to an OpenAI-compatible server, timed chunk by chunk on the client.

The SSE stream is the OpenAI one that vLLM, llama.cpp's ``llama-server`` and Heron all send:
``data: {json}`` events, text in ``choices[i].text`` (completions) or ``choices[i].delta.content``
(chat), ``data: [DONE]`` at the end, and with ``stream_options.include_usage`` a last chunk whose
``usage`` holds the exact token counts. A server that sends no usage gets its output tokens
counted as content chunks (one token per chunk at the usual stream interval of 1).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from heron.bench.datasets import BenchRequest

COMPLETIONS = "/v1/completions"
CHAT_COMPLETIONS = "/v1/chat/completions"


@dataclass(slots=True)
class RequestResult:
    """What the client saw of one request; times in seconds from the moment it was sent."""

    success: bool = False
    error: str = ""
    ttft: float = 0.0
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    """Gaps between successive content chunks (ITL; not TPOT when a chunk holds several tokens)."""
    output_tokens: int = 0
    prompt_tokens: int | None = None
    usage_reported: bool = False
    """True when the token counts came from the server's ``usage``, not from counting chunks."""
    text: str = ""


def build_body(
    endpoint: str,
    model: str,
    request: BenchRequest,
    *,
    temperature: float,
    ignore_eos: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body: standard OpenAI fields plus what makes the output length fixed.

    ``ignore_eos`` is understood by vLLM, llama.cpp and Heron; ``min_tokens`` (vLLM, Heron) also
    keeps stop token ids from ending the request early. llama.cpp maps ``max_tokens`` to its own
    ``n_predict``, so nothing else is needed there; vLLM logs a warning for every unknown field, so
    none is sent by default. ``extra`` (``--extra-body``) is merged last.
    """
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.output_len,
        "temperature": temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint.endswith(CHAT_COMPLETIONS):
        if request.prompt is None:
            raise ValueError(f"{CHAT_COMPLETIONS} needs text prompts, the dataset has token ids")
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.api_prompt()
    if ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = request.output_len
    body.update(extra or {})
    return body


def chunk_text(choice: dict[str, Any]) -> str:
    """The text a streamed choice carries: ``text``, or the delta's content or reasoning."""
    text = choice.get("text")
    if text:
        return str(text)
    delta = choice.get("delta") or {}
    return str(
        delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
    )


async def send_request(
    client: Any, url: str, body: dict[str, Any], headers: dict[str, str], request: BenchRequest
) -> RequestResult:
    """POST ``body`` with streaming and time it; never raises for a server or network failure
    (the failure is recorded in the result, so one bad request does not end a benchmark)."""
    import httpx

    result = RequestResult()
    chunks = 0
    usage: dict[str, Any] | None = None
    pieces: list[str] = []
    start = time.perf_counter()
    last = start
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:500]
                result.error = f"HTTP {resp.status_code}: {detail}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, ``event:`` lines and ``: keep-alive`` comments
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                obj = json.loads(payload)
                if obj.get("error"):
                    result.error = f"stream error: {json.dumps(obj['error'])[:500]}"
                    return result
                if obj.get("usage"):
                    usage = obj["usage"]
                for choice in obj.get("choices") or []:
                    text = chunk_text(choice)
                    if not text:
                        continue
                    now = time.perf_counter()
                    if chunks == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last = now
                    chunks += 1
                    pieces.append(text)
    except (httpx.HTTPError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.e2el = time.perf_counter() - start
    result.text = "".join(pieces)
    result.usage_reported = bool(usage and usage.get("completion_tokens") is not None)
    if result.usage_reported:
        result.output_tokens = int(usage["completion_tokens"])  # type: ignore[index]
    else:
        result.output_tokens = chunks
    if usage and usage.get("prompt_tokens") is not None:
        result.prompt_tokens = int(usage["prompt_tokens"])
    else:
        result.prompt_tokens = request.prompt_len
    if chunks == 0:
        result.error = "the stream carried no text"
        return result
    result.success = True
    return result
