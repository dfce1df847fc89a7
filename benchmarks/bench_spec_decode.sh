#!/usr/bin/env bash
# n-gram speculative decoding against none, single stream, on input-grounded prompts (repeat a
# passage: benchmarks/make_rewrite_dataset.py), bundled SmolLM2, runs interleaved round by round.
#   python benchmarks/make_rewrite_dataset.py --out rewrite.jsonl
#   bash benchmarks/bench_spec_decode.sh rewrite.jsonl [ROUNDS [QUANTIZATION [K...]]]
#   bash benchmarks/bench_spec_decode.sh rewrite.jsonl 2 none 4 8
set -euo pipefail
dataset=${1:?usage: bench_spec_decode.sh DATASET.jsonl [ROUNDS [QUANTIZATION [K...]]]}
rounds=${2:-2}
quantization=${3:-gguf}
shift $(($# < 3 ? $# : 3))
ks=("$@")
[[ ${#ks[@]} -gt 0 ]] || ks=(4)
run() {  # label, then extra arguments
    local label=$1; shift
    local r
    r=$(OMP_NUM_THREADS=2 heron bench latency --batch-size 1 --output-len 160 --no-ignore-eos \
        --num-iters-warmup 1 --num-iters 8 --dtype bfloat16 --max-model-len 1024 \
        --dataset "$dataset" --quantization "$quantization" "$@" 2>/dev/null \
        | grep -E "Decode tok/s per sequence|end to end|acceptance" | tr -s ' ' | tr '\n' ';')
    echo "$label: $r"
}
for ((i = 1; i <= rounds; i++)); do
    run "--quantization $quantization, no speculation"
    for k in "${ks[@]}"; do
        run "--quantization $quantization, ngram k=$k" --speculative-config \
            "{\"method\": \"ngram\", \"num_speculative_tokens\": $k, \"prompt_lookup_max\": 4, \"prompt_lookup_min\": 1}"
    done
done
