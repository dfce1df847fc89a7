"""W64 with quantized weights against the same file dequantized: greedy text and logprobs.

Why: issue 24 asks that keeping the bundled SmolLM2's Q4_1 blocks (``--quantization gguf``)
answer like dequantizing them at load (``--quantization none``) in at least 95 % of the W64
requests (64 chat prompts of 100-200 tokens, 128 greedy tokens each), with close logprobs. Both
engines run in this process one after the other; the report gives the share of requests whose
128 ids are identical, where the others first diverge, and the chosen tokens' logprob differences
over the common prefix.

    python benchmarks/quant_w64_equality.py --workload workload.jsonl --dtype bfloat16

``workload.jsonl`` is ``../shared/bench/workload.py``'s W64 file.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics

from heron import LLM, SamplingParams


def run(mode: str, dtype: str, prompts: list[list[int]]) -> list:
    llm = LLM(dtype=dtype, quantization=mode, max_model_len=1024, enable_prefix_caching=False)
    params = SamplingParams(temperature=0.0, max_tokens=128, ignore_eos=True, logprobs=1)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    result = [o.outputs[0] for o in outputs]
    del llm
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    with open(args.workload) as f:
        prompts = [json.loads(line)["prompt_token_ids"] for line in f if line.strip()]
    kept = run("gguf", args.dtype, prompts)
    plain = run("none", args.dtype, prompts)
    equal, diverged_at, lp_diffs = 0, [], []
    for a, b in zip(kept, plain):
        ids_a, ids_b = list(a.token_ids), list(b.token_ids)
        if ids_a == ids_b:
            equal += 1
            common = len(ids_a)
        else:
            common = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y)
            diverged_at.append(common)
        for i in range(common):
            token = ids_a[i]
            lp_diffs.append(abs(a.logprobs[i][token].logprob - b.logprobs[i][token].logprob))
    n = len(prompts)
    print(f"dtype {args.dtype}: {equal} of {n} requests identical ({100 * equal / n:.1f} %)")
    if diverged_at:
        print(f"  the others first diverge at token {sorted(diverged_at)}")
    lp_diffs.sort()
    print(
        f"  chosen-token logprob |gguf - none| over {len(lp_diffs)} common tokens: median "
        f"{statistics.median(lp_diffs):.4f}, p99 {lp_diffs[int(0.99 * (len(lp_diffs) - 1))]:.4f}, "
        f"max {lp_diffs[-1]:.4f}"
    )


if __name__ == "__main__":
    main()
