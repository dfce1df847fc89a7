// Small-batch bf16 linear layer (GEMV) for decode: out = x @ weight^T (+ bias), few rows of x.
//
// At decode with 1-8 sequences this product reads every weight once per step and does almost no
// arithmetic per byte, so its speed is the memory bandwidth it sustains. gemv.cpp streams the
// weight with several rows in flight per thread and software prefetch; see the comments there.
// Like kernels.h, nothing here depends on libtorch: raw pointers, element strides, caller-allocated
// outputs.
#pragma once

#include <cstdint>

namespace heron_cpu {
namespace gemv {

// All bf16 values travel as their raw 16-bit patterns.
struct GemvArgs {
  uint16_t* out;          // [m, n], row stride out_stride
  const uint16_t* x;      // [m, k], row stride x_stride, each row contiguous
  const uint16_t* weight; // [n, k], contiguous
  const uint16_t* bias;   // [n] or nullptr
  int64_t m, n, k;
  int64_t x_stride;
  int64_t out_stride;
  int num_threads;
};

// Which loop computes the product. kAuto picks the fastest this CPU runs for the shape; the others
// exist so that tests and benchmarks can run each path (a path this CPU lacks falls back to the
// next simpler one: kAmx -> kAvx512Bf16 -> kPortable).
enum class Path : int { kAuto = 0, kAvx512Bf16 = 1, kAmx = 2, kPortable = 3 };

// Whether this CPU (and its OS) runs the AVX512-BF16 loop.
bool avx512_bf16_supported();
// Whether this CPU runs AMX-BF16 tiles and the OS granted this process the tile state (the first
// call asks Linux for it, once per process).
bool amx_supported();

// out = x @ weight^T (+ bias), rounded to bf16 (round to nearest even).
void linear_bf16(const GemvArgs& args, Path path);

}  // namespace gemv
}  // namespace heron_cpu
