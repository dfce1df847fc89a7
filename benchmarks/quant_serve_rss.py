"""Peak RSS of ``heron serve`` on the bundled SmolLM2 with its Q4_1 weights kept quantized vs bf16.

Why: keeping the 4-bit blocks should also shrink the server's memory (issue 24: below the
bfloat16 figure). Each arm starts ``heron serve --quantization {gguf,none}``, waits for its ready
line, sends the W64 prompts through ``/v1/completions`` (8 at a time, 128 tokens each), and reads
the peak resident set (``VmHWM`` in ``/proc/PID/status``) of the server and every process under
it before stopping it. Arms alternate for ``--pairs`` rounds.

    python benchmarks/quant_serve_rss.py --workload workload.jsonl --pairs 2
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

READY = re.compile(r"Heron server ready at (http://\S+)")


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    children = [int(p) for p in out.stdout.split()]
    return [pid] + [d for c in children for d in _descendants(c)]


def _peak_rss_mib(pid: int) -> float:
    total = 0
    for p in _descendants(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        total += int(match.group(1)) if match else 0
    return total / 1024


def _complete(url: str, prompt: str) -> None:
    body = {"model": "smollm2", "prompt": prompt, "max_tokens": 128, "temperature": 0,
            "ignore_eos": True}  # fmt: skip
    request = urllib.request.Request(
        f"{url}/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        json.load(response)


def serve_peak(mode: str, prompts: list[str]) -> float:
    with tempfile.TemporaryFile("w+") as log:
        cmd = ["heron", "serve", "--port", "0", "--served-model-name", "smollm2",
               "--dtype", "bfloat16", "--max-model-len", "1024", "--quantization", mode,
               "--no-enable-prefix-caching", "--disable-log-stats"]  # fmt: skip
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = None
            for _ in range(1200):
                log.seek(0)
                match = READY.search(log.read())
                if match:
                    url = match.group(1).rstrip("/").removesuffix("/v1")
                    break
                if server.poll() is not None:
                    raise RuntimeError(f"heron serve exited:\n{log.read()}")
                time.sleep(0.1)
            if url is None:
                raise RuntimeError("heron serve was not ready after 120 s")
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda p: _complete(url, p), prompts))
            return _peak_rss_mib(server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    with open(args.workload) as f:
        prompts = [json.loads(line)["prompt"] for line in f if line.strip()]
    peaks: dict[str, list[float]] = {"gguf": [], "none": []}
    for _ in range(args.pairs):
        for mode in peaks:
            peaks[mode].append(serve_peak(mode, prompts))
            print(f"--quantization {mode}: peak RSS {peaks[mode][-1]:.0f} MiB", flush=True)
    for mode, values in peaks.items():
        print(f"{mode}: peak RSS {min(values):.0f}-{max(values):.0f} MiB")


if __name__ == "__main__":
    main()
