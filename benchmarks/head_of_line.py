"""Head-of-line blocking on a running server: a short chat sent while a long prompt prefills.

Sends one ``/v1/completions`` request whose prompt is ``--long-tokens`` random token ids (one
output token), waits ``--delay`` seconds, then sends a short streamed chat, and reports when each
answered. Before the scheduler kept a share of each step for waiting requests, the short chat
waited for the whole long prefill (issue 23: 24.9 s behind an 8,000-token prompt).

    heron serve --port 8000 &      # any OpenAI-compatible server
    python benchmarks/head_of_line.py --base-url http://127.0.0.1:8000 [--long-tokens 8000]

Standard library only, so it runs against any server from any environment.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import urllib.request
from typing import Any


def _post(url: str, body: dict[str, Any]) -> urllib.request.addinfourl:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    return urllib.request.urlopen(request, timeout=600)


def _model(base_url: str) -> str:
    with urllib.request.urlopen(base_url + "/v1/models", timeout=30) as response:
        return json.load(response)["data"][0]["id"]


def _has_content(line: bytes) -> bool:
    """Whether an SSE line carries generated text (the first chunk holds only the role)."""
    if not line.startswith(b"data: {"):
        return False
    choices = json.loads(line[6:]).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--long-tokens", type=int, default=8000)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds before the short chat")
    parser.add_argument("--short-max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = _model(args.base_url)
    rng = random.Random(args.seed)
    prompt = [rng.randrange(1000, 40000) for _ in range(args.long_tokens)]
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    def long_request() -> None:
        body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
        with _post(args.base_url + "/v1/completions", body) as response:
            response.read()
        times["long done"] = time.perf_counter() - t0

    thread = threading.Thread(target=long_request)
    thread.start()
    time.sleep(args.delay)
    sent = time.perf_counter()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": args.short_max_tokens,
        "temperature": 0,
        "stream": True,
    }
    with _post(args.base_url + "/v1/chat/completions", body) as response:
        for line in response:
            if "short first token" not in times and _has_content(line):
                times["short first token"] = time.perf_counter() - sent
        times["short done"] = time.perf_counter() - sent
    thread.join()
    print(f"long prompt of {args.long_tokens} tokens: answered after {times['long done']:.2f} s")
    print(
        f"short chat sent {args.delay:.1f} s later: first token after "
        f"{times['short first token']:.2f} s, done ({args.short_max_tokens} tokens) after "
        f"{times['short done']:.2f} s"
    )


if __name__ == "__main__":
    main()
