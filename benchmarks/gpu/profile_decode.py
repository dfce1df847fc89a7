"""Where one GPU decode step goes: graphed speed, the graph's GPU time alone, host and kernels.

Run on a machine with an NVIDIA GPU and heron-cuda installed (see `.ci/gpu-check`), from the
repository root: ``python benchmarks/gpu/profile_decode.py``. It builds a SmolLM2-135M-shaped model
with random weights, times 256 greedy tokens of one sequence with CUDA graphs, times the captured
graph's replay alone (GPU time of a step), profiles the host side with cProfile, then lists the
heaviest kernels of a few eager steps with ``torch.profiler``. The seventh session's figures are in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parents[2] / "tests" / "core"))
from model_utils import SMOLLM2_SHAPE, make_tiny_model_dir

from heron import LLM, SamplingParams

PROMPT = [{"prompt_token_ids": list(range(1000, 1032))}]


def main() -> None:
    folder = make_tiny_model_dir(Path(tempfile.mkdtemp()), "llama", name="model", **SMOLLM2_SHAPE)
    llm = LLM(str(folder), dtype="bfloat16", backend="cuda", max_model_len=1024)
    params = SamplingParams(temperature=0.0, max_tokens=256, min_tokens=256, ignore_eos=True)
    for _ in range(2):
        llm.generate(PROMPT, params, use_tqdm=False)
    start = time.perf_counter()
    llm.generate(PROMPT, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    print(
        f"256 tokens in {elapsed:.3f} s: {256 / elapsed:.1f} tok/s, {elapsed / 256e-3:.2f} ms/step"
    )

    graphs = llm.llm_engine.core.runner.step_graphs
    recorded = next(iter(graphs._graphs.values()))
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin.record()
    for _ in range(100):
        recorded.graph.replay()
    end.record()
    torch.cuda.synchronize()
    print(f"graph replay alone: {begin.elapsed_time(end) / 100:.3f} ms/step")

    host = cProfile.Profile()
    host.enable()
    llm.generate(PROMPT, params, use_tqdm=False)
    host.disable()
    report = io.StringIO()
    pstats.Stats(host, stream=report).sort_stats("tottime").print_stats(20)
    print(report.getvalue())

    eager = LLM(
        str(folder), dtype="bfloat16", backend="cuda", max_model_len=1024, enforce_eager=True
    )
    few = SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8, ignore_eos=True)
    eager.generate(PROMPT, few, use_tqdm=False)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        eager.generate(PROMPT, few, use_tqdm=False)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14))


if __name__ == "__main__":
    main()
