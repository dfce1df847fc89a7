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
#include <cstring>

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

#if defined(__FMA__)
#define HERON_FMA(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define HERON_FMA(a, b, c) ((a) * (b) + (c))
#endif

// silu(g) = g / (1 + exp(-g)) in float, before the rounding torch applies. exp_clamped's
// polynomial with FMAs where the variant has them, and one 2^n scaling: clamped to [-87, 88],
// n = round(x / ln 2) stays in [-126, 127], a normal power of two. Differs from exp_clamped by an
// ulp or two of float, which the bf16 rounding after it hides (the conformance suite checks it).
inline float silu_value(float g) {
  float x = -g;
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = HERON_FMA(x, 1.44269504088896341f, shifter);
  const float n = t - shifter;
  int32_t t_bits, shifter_bits;
  std::memcpy(&t_bits, &t, sizeof t_bits);
  std::memcpy(&shifter_bits, &shifter, sizeof shifter_bits);
  float r = HERON_FMA(n, -0.693359375f, x);
  r = HERON_FMA(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = HERON_FMA(p, r, 1.3981999507e-3f);
  p = HERON_FMA(p, r, 8.3334519073e-3f);
  p = HERON_FMA(p, r, 4.1665795894e-2f);
  p = HERON_FMA(p, r, 1.6666665459e-1f);
  p = HERON_FMA(p, r, 5.0000001201e-1f);
  const float y = HERON_FMA(p, r * r, r) + 1.0f;
  const int32_t scale_bits = (t_bits - shifter_bits + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return g / HERON_FMA(y, scale, 1.0f);
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
      const float silu = round_as(silu_value(g), o);
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
