// Fused per-token kernels of a decoder layer: RMSNorm (with the residual add), SiLU-and-mul and
// GPT-NeoX rotary embedding.
//
// Why: at decode sizes each of these is half a dozen torch calls on a few kilobytes, and the calls'
// dispatch costs more than the arithmetic (about a third of a small model's decode step). One call
// per operation here does the same work in one pass over the data.
//
// Rounding: every bfloat16 result is rounded where Hugging Face's torch code rounds (each torch op
// on bf16 tensors computes in float and rounds its output), so that greedy outputs keep matching
// `transformers`: e.g. RMSNorm rounds x * rsqrt(mean(x^2) + eps) to bf16 before the weight
// multiply, and rotary rounds each product before the sum.
//
// Compiled once per ISA variant like kernels.cpp (same rules: internal linkage, no std templates).

#include <omp.h>

#include <cmath>

#include "kernels.h"
#include "scalar_math.h"

#ifndef HERON_ISA
#error "compile with -DHERON_ISA=<variant namespace>"
#endif

namespace heron_cpu {
namespace HERON_ISA {
namespace {

inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) { return bf16_to_float(x); }

// What a torch op with output dtype T stores for the float result x.
inline float round_as(float x, const float*) { return x; }
inline float round_as(float x, const uint16_t*) { return to_float(float_to_bf16(x)); }

inline void store(float* p, float x) { *p = x; }
inline void store(uint16_t* p, float x) { *p = float_to_bf16(x); }

// Element counts below which waking the thread team costs more than the loop. 16 Ki: a 64-token
// decode step's RMSNorm (64 x 576) takes 12.5 us on two threads against 19 us on one.
constexpr int64_t kParallelElements = int64_t{1} << 14;

template <typename T>
void rms_norm_impl(const RmsNormArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* residual = static_cast<const T*>(a.residual);
  const T* weight = static_cast<const T*>(a.weight);
  T* out = static_cast<T*>(a.out);
  T* residual_out = static_cast<T*>(a.residual_out);
  const int64_t n = a.hidden;
  const bool parallel = a.num_threads > 1 && a.rows * n >= kParallelElements;
#pragma omp parallel for num_threads(a.num_threads) if (parallel) schedule(static)
  for (int64_t row = 0; row < a.rows; ++row) {
    const T* xr = x + row * a.x_stride;
    T* o = out + row * n;
    // The normed input: x, or x + residual rounded as torch's add rounds (kept in residual_out).
    const T* src = xr;
    if (residual != nullptr) {
      const T* rr = residual + row * a.residual_stride;
      T* so = residual_out + row * n;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) store(so + i, to_float(xr[i]) + to_float(rr[i]));
      src = so;
    }
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) {
      const float v = to_float(src[i]);
      sum += v * v;
    }
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(n) + a.eps);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float normed = round_as(to_float(src[i]) * inv, out);
      store(o + i, to_float(weight[i]) * normed);
    }
  }
}

template <typename T>
void silu_and_mul_impl(const SiluAndMulArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const int64_t d = a.width;
  const bool parallel = a.num_threads > 1 && a.rows * d >= kParallelElements;
#pragma omp parallel for num_threads(a.num_threads) if (parallel) schedule(static)
  for (int64_t row = 0; row < a.rows; ++row) {
    const T* gate = x + row * a.x_stride;
    const T* up = gate + d;
    T* o = out + row * d;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) {
      const float g = to_float(gate[i]);
      const float silu = round_as(g / (1.0f + exp_clamped(-g)), o);
      store(o + i, silu * to_float(up[i]));
    }
  }
}

template <typename T>
void rotary_impl(const RotaryArgs& a) {
  const T* heads = static_cast<const T*>(a.heads);
  const T* cache = static_cast<const T*>(a.cos_sin_cache);
  T* out = static_cast<T*>(a.out);
  const int64_t half = a.rotary_dim / 2;
  const int64_t hd = a.head_size;
  const bool parallel = a.num_threads > 1 && a.num_tokens * a.num_heads * hd >= kParallelElements;
#pragma omp parallel for num_threads(a.num_threads) if (parallel) schedule(static)
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    const T* cos = cache + a.positions[t] * a.rotary_dim;
    const T* sin = cos + half;
    for (int64_t h = 0; h < a.num_heads; ++h) {
      const T* x = heads + t * a.token_stride + h * a.head_stride;
      T* o = out + (t * a.num_heads + h) * hd;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = to_float(x[i]), x2 = to_float(x[i + half]);
        const float c = to_float(cos[i]), s = to_float(sin[i]);
        store(o + i, round_as(x1 * c, o) - round_as(x2 * s, o));
        store(o + i + half, round_as(x2 * c, o) + round_as(x1 * s, o));
      }
      for (int64_t i = a.rotary_dim; i < hd; ++i) o[i] = x[i];
    }
  }
}

}  // namespace

void rms_norm(const RmsNormArgs& args) {
  if (args.dtype == DType::kBFloat16) {
    rms_norm_impl<uint16_t>(args);
  } else {
    rms_norm_impl<float>(args);
  }
}

void silu_and_mul(const SiluAndMulArgs& args) {
  if (args.dtype == DType::kBFloat16) {
    silu_and_mul_impl<uint16_t>(args);
  } else {
    silu_and_mul_impl<float>(args);
  }
}

void rotary(const RotaryArgs& args) {
  if (args.dtype == DType::kBFloat16) {
    rotary_impl<uint16_t>(args);
  } else {
    rotary_impl<float>(args);
  }
}

}  // namespace HERON_ISA
}  // namespace heron_cpu
