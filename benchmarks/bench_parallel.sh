#!/usr/bin/env bash
# Parallel layouts on this machine against one process with two threads: W64's shape on the
# tensor-parallel bench model, runs interleaved round by round (the machine's speed drifts).
# Each ARGS is one set of extra `heron bench throughput` arguments (default: -pp 2). With
# BEFORE=<commit>, each set also runs from that commit (checked out in a git worktree beside this
# checkout), e.g. the commit before a change.
#   python benchmarks/make_tp_bench_model.py tp-bench-model
#   bash benchmarks/bench_parallel.sh tp-bench-model [ROUNDS [ARGS...]]
#   bash benchmarks/bench_parallel.sh tp-bench-model 2 "--tensor-parallel-size 2" "--enforce-eager"
# A set may start with NAME=value words, set in the environment of its runs:
#   bash benchmarks/bench_parallel.sh tp-bench-model 2 "-tp 2" "HERON_CPU_SHM_ALLREDUCE_IMPL=python -tp 2"
set -euo pipefail
model=${1:?usage: bench_parallel.sh MODEL_DIR [ROUNDS [ARGS...]]}
rounds=${2:-2}
shift $(($# < 2 ? $# : 2))
layouts=("$@")
[[ ${#layouts[@]} -gt 0 ]] || layouts=("--pipeline-parallel-size 2")
common=(--model "$model" --input-len 150 --output-len 128 --num-prompts 64 --dtype bfloat16
        --max-model-len 1024 --no-enable-prefix-caching --num-iters 3)
before_src=""
if [[ -n "${BEFORE:-}" ]]; then
    before_dir="$(git rev-parse --show-toplevel)/../heron-bench-before"
    [[ -d "$before_dir" ]] || git worktree add -f "$before_dir" "$BEFORE" >/dev/null
    git -C "$before_dir" checkout -q "$BEFORE"
    before_src="$before_dir/core/src"
fi
run() {  # label, then extra arguments (leading NAME=value words go to the environment)
    local label=$1; shift
    local env_words=()
    while [[ $# -gt 0 && $1 == [A-Z_]*=* ]]; do env_words+=("$1"); shift; done
    local tps
    tps=$(env "${env_words[@]}" heron bench throughput "${common[@]}" "$@" 2>/dev/null |
          grep "Output token throughput")
    echo "$label: ${tps##* }"
}
for ((i = 1; i <= rounds; i++)); do
    run "one process (2 threads)"
    for args in "${layouts[@]}"; do
        # shellcheck disable=SC2086  # each set is split into its arguments on purpose
        run "$args" $args
        if [[ -n "$before_src" ]]; then
            # shellcheck disable=SC2086
            PYTHONPATH="$before_src" run "$args at $BEFORE" $args
        fi
    done
done
