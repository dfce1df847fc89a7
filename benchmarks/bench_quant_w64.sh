#!/usr/bin/env bash
# W64 offline throughput with the GGUF weights kept quantized (--quantization gguf) against
# dequantized to bfloat16 (none), bundled SmolLM2, arms interleaved pair by pair (the machine's
# speed moves from hour to hour, so only a same-hour pair compares).
#   python ../shared/bench/workload.py --tokenizer <GGUF metadata cache> --out workload.jsonl
#   bash benchmarks/bench_quant_w64.sh workload.jsonl [PAIRS]
# Each arm prints heron bench throughput's summary line (two timed iterations per run).
set -euo pipefail
dataset=${1:?usage: bench_quant_w64.sh WORKLOAD.jsonl [PAIRS]}
pairs=${2:-2}
for ((i = 1; i <= pairs; i++)); do
    for quantization in gguf none; do
        r=$(OMP_NUM_THREADS=2 heron bench throughput --dataset "$dataset" --dtype bfloat16 \
            --max-model-len 1024 --no-enable-prefix-caching --num-iters 2 \
            --quantization "$quantization" 2>/dev/null | grep -iE "tok/s|tokens/s" | tr -s ' ' | tr '\n' ';')
        echo "pair $i, --quantization $quantization: $r (load $(cut -d' ' -f1 /proc/loadavg))"
    done
done
