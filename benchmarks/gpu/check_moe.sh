#!/usr/bin/env bash
# heron-cuda's fused mixture-of-experts kernels on a machine with an NVIDIA GPU, in one command:
#
#   bash benchmarks/gpu/check_moe.sh            # logs and moe.json land in $OUT (moe-gpu-check-out)
#   SKIP_INSTALL=1 bash benchmarks/gpu/check_moe.sh   # heron-cuda already installed from this tree
#
# Steps (each runs even if an earlier one failed; a summary ends the run, exit 1 if any failed):
#   install      heron-interfaces, heron-core and heron-cuda for this GPU's architecture only
#                (as .ci/gpu-check does: the machine's own torch with CUDA, nothing downloaded)
#   conformance  the conformance suite's moe_suite on the cuda backend (GpuKernelOps' experts)
#   kernels      tests/plugins/cuda: the MoE kernels against torch (grouping, router, experts in
#                float32/float16/bfloat16, opcheck, graph replay) and the host-side tests
#   models       tiny Mixtral / Qwen3-MoE / Qwen2-MoE greedy ids against Hugging Face, fused
#                experts on and off, then one Mixtral-shaped layer timed: fused vs per-expert loop
# About 5 minutes on an H100, most of it the install's compile (one architecture) and the models.
set -uo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-python3}"
OUT="${OUT:-moe-gpu-check-out}"
mkdir -p "${OUT}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

summary=()
status=0
step() {  # step <name> <command...>: runs, logs to $OUT/<name>.log, records pass/fail and time
  local name="$1" start rc
  shift
  echo "== ${name}: $*"
  start=$(date +%s)
  "$@" 2>&1 | tee "${OUT}/${name}.log"
  rc=${PIPESTATUS[0]}
  summary+=("$(printf '%-12s %-4s %4ss' "${name}" "$([ "${rc}" = 0 ] && echo ok || echo FAIL)" $(($(date +%s) - start)))")
  [ "${rc}" = 0 ] || status=1
  return 0
}

nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader | tee "${OUT}/device.txt"
ARCH="${CUDA_ARCH:-$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '.')}"

install_cuda() {
  "${PYTHON}" -m pip install -q --no-deps --no-build-isolation ./interfaces ./core || return 1
  CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${ARCH}" \
    "${PYTHON}" -m pip install --no-deps --no-build-isolation ./plugins/cuda || return 1
  "${PYTHON}" -c 'import heron_cuda.moe_ops as m; print("heron_cuda MoE kernels loaded, max experts", m.MAX_EXPERTS)'
}
if [ -z "${SKIP_INSTALL:-}" ]; then
  step install install_cuda
fi

step conformance "${PYTHON}" -m heron_interfaces.testing cuda -q -rs -k moe -p no:cacheprovider
step kernels "${PYTHON}" -m pytest tests/plugins/cuda/test_cuda_moe_kernels.py \
  tests/plugins/cuda/test_cuda_moe_ops_host.py tests/plugins/cuda/test_moe_logic_host.py \
  tests/plugins/cuda/test_moe_kernels_emulated.py \
  -q -rs -k "not rocm" -p no:cacheprovider
step models "${PYTHON}" benchmarks/gpu/moe_gpu_check.py --json "${OUT}/moe.json"

echo
cat "${OUT}/device.txt"
printf '%s\n' "${summary[@]}" | tee "${OUT}/summary.txt"
exit "${status}"
