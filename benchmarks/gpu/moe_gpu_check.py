"""heron-cuda's fused experts on a real GPU: tiny MoE models against Hugging Face, and a timing.

Run by ``bash benchmarks/gpu/check_moe.sh`` (which builds and installs heron-cuda first), or alone
from the repository root once heron-cuda is installed: ``python benchmarks/gpu/moe_gpu_check.py``.

1. ``equality``: tiny random Mixtral, Qwen3-MoE and Qwen2-MoE (tests/core/breadth_models.py) run
   by Heron on the cuda backend in float16, in every scheduling mode, with the fused experts on
   (the kernels are counted, so a silent fallback to torch fails the check) and off (core's
   plain-torch experts, ``prepare_moe`` declining); greedy ids are compared with Hugging Face
   ``generate()`` in float32. A difference passes only if the run without fused experts has the
   very same ids (then it comes from float16 elsewhere, not from the experts).
2. ``timing``: one MoE layer of a small Mixtral shape (hidden 1024, 8 experts of 2816, top 2) in
   bfloat16: the fused kernels against transformers' per-expert loop (benchmarks/bench_moe.py)
   and the contract's ``moe_reference``, CUDA-event medians, eager and (fused) graph-replayed.

Exit status 1 when an equality check fails. ``--only equality`` / ``--only timing`` run one part;
``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "core"))
sys.path.insert(0, str(ROOT / "benchmarks"))

MOE_ARCHS = ("mixtral", "qwen3_moe", "qwen2_moe")
NEW_TOKENS = 10
BACKEND, DTYPE = "cuda", "float16"
TIMING_TOKENS = (1, 4, 16, 64, 256, 1024, 4096)


def equality(results: dict) -> bool:
    """Heron float16 on cuda (fused experts on and off) against HF float32; True if all pass."""
    from breadth_models import load_hf, make_breadth_model_dir
    from model_utils import ENGINE_MODES, EQUALITY_PROMPTS, hf_greedy
    from transformers import AutoTokenizer

    from heron import LLM, SamplingParams
    from heron_cuda.gpu_kernel_ops import GpuKernelOps

    calls = {"fused": 0}
    fused_moe = GpuKernelOps.fused_moe
    prepare_moe = GpuKernelOps.prepare_moe

    def counting(self, x, prepared, ids, weights):
        calls["fused"] += int(x.is_cuda and type(prepared).__name__ == "GpuExperts")
        return fused_moe(self, x, prepared, ids, weights)

    GpuKernelOps.fused_moe = counting
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for arch in MOE_ARCHS:
            folder = make_breadth_model_dir(Path(tmp), arch)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            prompt_ids = [tokenizer(p)["input_ids"] for p in EQUALITY_PROMPTS]
            expected = hf_greedy(load_hf(folder), prompt_ids, NEW_TOKENS)
            for mode, kwargs in ENGINE_MODES.items():
                runs = {}
                for fused in (True, False):
                    GpuKernelOps.prepare_moe = prepare_moe if fused else lambda self, a, b: None
                    calls["fused"] = 0
                    llm = LLM(str(folder), dtype=DTYPE, block_size=16, backend=BACKEND, **kwargs)
                    outputs = llm.generate(EQUALITY_PROMPTS, params, use_tqdm=False)
                    runs[fused] = ([list(o.outputs[0].token_ids) for o in outputs], calls["fused"])
                    del llm
                    gc.collect()  # the next engine sizes its KV cache from free memory
                    torch.cuda.empty_cache()
                GpuKernelOps.prepare_moe = prepare_moe
                (got, fused_calls), (unfused, _) = runs[True], runs[False]
                if fused_calls == 0:
                    verdict = "FAIL: the fused kernels never ran"
                elif got == expected:
                    verdict = "equal to HF"
                elif got == unfused:
                    verdict = "differs from HF exactly as Heron without fused experts does"
                else:
                    verdict = "FAIL: differs from HF and from Heron without fused experts"
                ok = ok and not verdict.startswith("FAIL")
                results.setdefault("equality", {}).setdefault(arch, {})[mode] = {
                    "verdict": verdict,
                    "fused_calls": fused_calls,
                    "heron_fused": got,
                    "heron_unfused": unfused,
                    "hf_float32": expected,
                }
                print(f"{arch:10s} {mode:14s} fused calls {fused_calls:4d}: {verdict}", flush=True)
    GpuKernelOps.fused_moe = fused_moe
    return ok


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def timing(results: dict) -> None:
    """The fused kernels against per-expert loops, one Mixtral-shaped layer, bfloat16."""
    from bench_moe import EXPERTS, HIDDEN, INTER, TOP_K, transformers_loop

    from heron_cuda import moe_ops
    from heron_interfaces.kernel_ops import moe_reference

    dev, dtype = torch.device("cuda", 0), torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    w13 = (torch.randn(EXPERTS, 2 * INTER, HIDDEN, generator=gen, device=dev) / 32).to(dtype)
    w2 = (torch.randn(EXPERTS, HIDDEN, INTER, generator=gen, device=dev) / 53).to(dtype)
    print(f"\none MoE layer: hidden {HIDDEN}, {EXPERTS} experts of {INTER}, top {TOP_K}, bf16")
    print(
        f"{'tokens':>7} {'loop ms':>9} {'reference ms':>13} {'fused ms':>9} {'graph ms':>9} "
        f"{'loop/fused':>10}"
    )
    rows = []
    for tokens in TIMING_TOKENS:
        x = torch.randn(tokens, HIDDEN, generator=gen, device=dev).to(dtype)
        logits = torch.randn(tokens, EXPERTS, generator=gen, device=dev)
        weights, ids = torch.topk(torch.softmax(logits, -1), TOP_K, dim=-1)
        out = torch.empty_like(x)
        reps = 50 if tokens <= 256 else 20

        args = (x, w13, w2, ids, weights)
        fused = partial(moe_ops.fused_moe, out, *args)
        loop_ms = _median_ms(partial(transformers_loop, *args), reps)
        ref_ms = _median_ms(partial(moe_reference, *args), reps)
        fused_ms = _median_ms(fused, reps)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fused()
        graph_ms = _median_ms(graph.replay, reps)
        torch.testing.assert_close(
            out.float(), transformers_loop(x, w13, w2, ids, weights).float(), rtol=3e-2, atol=3e-2
        )
        row = {
            "tokens": tokens,
            "loop_ms": loop_ms,
            "reference_ms": ref_ms,
            "fused_ms": fused_ms,
            "fused_graph_ms": graph_ms,
        }
        rows.append(row)
        print(
            f"{tokens:7d} {loop_ms:9.3f} {ref_ms:13.3f} {fused_ms:9.3f} {graph_ms:9.3f} "
            f"{loop_ms / fused_ms:9.2f}x",
            flush=True,
        )
    results["timing"] = {"shape": [HIDDEN, INTER, EXPERTS, TOP_K], "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("equality", "timing"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available() or torch.version.cuda is None:
        print("needs an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name(0)} | torch {torch.__version__} cuda {torch.version.cuda}")
    results: dict = {"device": torch.cuda.get_device_name(0)}
    ok = True
    if args.only in (None, "equality"):
        ok = equality(results)
    if args.only in (None, "timing"):
        timing(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
