// Packed bf16 GEMM for CPUs with AVX512-BF16: out = x @ weight^T (+ bias), any number of rows.
//
// The weight is packed once at load into panels of kPanel output columns whose K pairs are
// interleaved (the operand layout of vdpbf16ps), so that one 64-byte load feeds 16 columns for a
// pair of K and every x row of a pass. heron_cpu/gemm.py packs it; see gemm.cpp for why.
// Like kernels.h and gemv.h, nothing here depends on libtorch.
#pragma once

#include <cstdint>

namespace heron_cpu {
namespace gemm {

// Output columns per panel: three 16-lane accumulators per x row.
constexpr int64_t kPanel = 48;

// All bf16 values travel as their raw 16-bit patterns.
struct GemmArgs {
  uint16_t* out;           // [m, n], row stride out_stride
  const uint16_t* x;       // [m, k], row stride x_stride, each row contiguous
  const uint16_t* packed;  // [ceil(n / kPanel)][ceil(k / 2)][kPanel][2], zero past n and k
  const uint16_t* bias;    // [n] or nullptr
  int64_t m, n, k;
  int64_t x_stride;
  int64_t out_stride;
  int num_threads;
};

// Whether this CPU (and its OS) runs the packed GEMM.
bool supported();

// out = x @ weight^T (+ bias), accumulated in fp32 and rounded once to bf16 (nearest even).
void linear_bf16_packed(const GemmArgs& args);

}  // namespace gemm
}  // namespace heron_cpu
