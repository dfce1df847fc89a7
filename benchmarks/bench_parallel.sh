#!/usr/bin/env bash
# Pipeline parallel 2 on this machine (one core per stage) against one process with two threads,
# W64's shape on the tensor-parallel bench model, runs interleaved (the machine's speed drifts).
# With BEFORE=<commit>, also runs pipeline parallel 2 from that commit (checked out in a git
# worktree beside this checkout), e.g. the commit before batches were kept in flight.
#   python benchmarks/make_tp_bench_model.py tp-bench-model
#   bash benchmarks/bench_pipeline.sh tp-bench-model [ROUNDS]
set -euo pipefail
model=${1:?usage: bench_pipeline.sh MODEL_DIR [ROUNDS]}
rounds=${2:-2}
common=(--model "$model" --input-len 150 --output-len 128 --num-prompts 64 --dtype bfloat16
        --max-model-len 1024 --no-enable-prefix-caching --num-iters 3)
before_src=""
if [[ -n "${BEFORE:-}" ]]; then
    before_dir="$(git rev-parse --show-toplevel)/../heron-bench-before"
    [[ -d "$before_dir" ]] || git worktree add -f "$before_dir" "$BEFORE" >/dev/null
    git -C "$before_dir" checkout -q "$BEFORE"
    before_src="$before_dir/core/src"
fi
run() {  # label, then extra arguments
    local label=$1; shift
    local tps
    tps=$(heron bench throughput "${common[@]}" "$@" 2>/dev/null | grep "Output token throughput" | head -1)
    echo "$label: $tps"
}
for ((i = 1; i <= rounds; i++)); do
    run "one process (2 threads)"
    run "pipeline parallel 2, a batch per stage in flight" --pipeline-parallel-size 2
    if [[ -n "$before_src" ]]; then
        PYTHONPATH="$before_src" run "pipeline parallel 2 at $BEFORE" --pipeline-parallel-size 2
    fi
done
