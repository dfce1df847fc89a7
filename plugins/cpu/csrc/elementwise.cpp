// Fused per-token kernels of a decoder layer: RMSNorm (with the residual add), SiLU-and-mul and
// GPT-NeoX rotary embedding; and of an encoder layer: LayerNorm (with the residual add) and a
// bfloat16 GELU by table lookup.
//
// Why: at decode sizes each of these is half a dozen torch calls on a few kilobytes, and the calls'
// dispatch costs more than the arithmetic (about a third of a small model's decode step). One call
// per operation here does the same work in one pass over the data. The encoder's two run on whole
// prompts (thousands of rows): there the gain is the passes saved — torch's add, LayerNorm and
// GELU each read and write every activation once more (a fifth of a MiniLM step in bfloat16).
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

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define HERON_ELEMENTWISE_AVX512 1
#include "vec512.h"
#endif

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

// The value a LayerNorm normalises: x, or x + residual rounded as torch's add of T rounds.
template <typename T, bool kResidual>
inline float norm_input(const T* x, const T* residual, int64_t i) {
  if (kResidual) return round_as(to_float(x[i]) + to_float(residual[i]), x);
  return to_float(x[i]);
}

// Three passes over a row (mean, centred variance, output), each re-forming x + residual from the
// inputs rather than keeping it: a row is a few KB and stays in L1, and out may alias x.
template <typename T, bool kResidual>
void layer_norm_rows(const LayerNormArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* residual = static_cast<const T*>(a.residual);
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const int64_t n = a.hidden;
  const float inv_n = 1.0f / static_cast<float>(n);
  const bool parallel = a.num_threads > 1 && a.rows * n >= kParallelElements;
#pragma omp parallel for num_threads(a.num_threads) if (parallel) schedule(static)
  for (int64_t row = 0; row < a.rows; ++row) {
    const T* xr = x + row * a.x_stride;
    const T* rr = kResidual ? residual + row * a.residual_stride : nullptr;
    T* o = out + row * a.out_stride;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < n; ++i) sum += norm_input<T, kResidual>(xr, rr, i);
    const float mean = sum * inv_n;
    float squares = 0.f;
#pragma omp simd reduction(+ : squares)
    for (int64_t i = 0; i < n; ++i) {
      const float d = norm_input<T, kResidual>(xr, rr, i) - mean;
      squares += d * d;
    }
    const float rstd = 1.0f / std::sqrt(squares * inv_n + a.eps);
    const float shift = -mean * rstd;  // torch's (v * rstd + shift) * weight + bias
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float normed = norm_input<T, kResidual>(xr, rr, i) * rstd + shift;
      store(o + i, normed * to_float(weight[i]) + to_float(bias[i]));
    }
  }
}

// Rows read once, in order, from tensors a matmul or an earlier layer wrote (a MiniLM step's 6 MB
// intermediate activation and 1.5 MB hidden states are in L3, not L2): the hardware prefetchers
// alone left the loops waiting on those lines; asking for the row ~4 KB ahead took a third off
// the GELU (1.0 -> 0.68 ms per [2048, 1536] call with its input in L3).
constexpr int64_t kPrefetchBytes = 4096;

inline int64_t rows_ahead(int64_t row_bytes) {
  return row_bytes <= 0 ? 1 : (kPrefetchBytes + row_bytes - 1) / row_bytes;
}

inline void prefetch_row(const void* row, int64_t bytes) {
  const char* p = static_cast<const char*>(row);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b, 0, 3);
}

#if defined(HERON_ELEMENTWISE_AVX512)
// Rows up to this long keep their (rounded) x + residual in a stack buffer between the passes.
constexpr int64_t kBufferedHidden = 8192;

// layer_norm_rows on sixteen lanes: one pass forms x + residual (rounded to T) into an L1 buffer
// and sums it, a second sums the centred squares, a third writes (v * rstd - mean * rstd) * weight
// + bias, torch's order of operations (as layer_norm_rows does).
// kNative: bfloat16 rounding by vcvtneps2bf16 (to_bf16_bits_native, the same bits).
template <typename T, bool kResidual, bool kNative>
void layer_norm_rows_avx512(const LayerNormArgs& a) {
  const T* x = static_cast<const T*>(a.x);
  const T* residual = static_cast<const T*>(a.residual);
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  T* out = static_cast<T*>(a.out);
  const int64_t n = a.hidden;
  const float inv_n = 1.0f / static_cast<float>(n);
  const bool parallel = a.num_threads > 1 && a.rows * n >= kParallelElements;
#pragma omp parallel num_threads(a.num_threads) if (parallel)
  {
    // weight and bias widened once per thread, not once per row.
    alignas(64) float w32[kBufferedHidden];
    alignas(64) float b32[kBufferedHidden];
    alignas(64) float buf[kBufferedHidden];
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = tail_mask(n - i);
      _mm512_store_ps(w32 + i, load16(weight + i, m));
      _mm512_store_ps(b32 + i, load16(bias + i, m));
    }
    const int64_t row_bytes = n * static_cast<int64_t>(sizeof(T));
    const int64_t ahead = rows_ahead(row_bytes);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < a.rows; ++row) {
      const T* xr = x + row * a.x_stride;
      const T* rr = kResidual ? residual + row * a.residual_stride : nullptr;
      T* o = out + row * a.out_stride;
      if (row + ahead < a.rows) {  // -18 % with x and the residual in L3
        prefetch_row(xr + ahead * a.x_stride, row_bytes);
        if (kResidual) prefetch_row(rr + ahead * a.residual_stride, row_bytes);
      }
      __m512 sum = _mm512_setzero_ps();
      for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        __m512 v = load16(xr + i, m);
        if (kResidual) {
          const __m512 sum_in = _mm512_add_ps(v, load16(rr + i, m));
          v = round_as16<kNative>(sum_in, xr);
        }
        _mm512_store_ps(buf + i, v);
        sum = _mm512_add_ps(sum, v);
      }
      const float mean_value = _mm512_reduce_add_ps(sum) * inv_n;
      const __m512 mean = _mm512_set1_ps(mean_value);
      __m512 squares = _mm512_setzero_ps();
      for (int64_t i = 0; i < n; i += 16) {
        const __m512 d = _mm512_maskz_sub_ps(tail_mask(n - i), _mm512_load_ps(buf + i), mean);
        squares = _mm512_add_ps(squares, _mm512_mul_ps(d, d));
      }
      const float rstd = 1.0f / std::sqrt(_mm512_reduce_add_ps(squares) * inv_n + a.eps);
      const __m512 scale = _mm512_set1_ps(rstd);
      const __m512 shift = _mm512_set1_ps(-mean_value * rstd);
      for (int64_t i = 0; i < n; i += 16) {
        const __m512 normed = _mm512_add_ps(_mm512_mul_ps(_mm512_load_ps(buf + i), scale), shift);
        const __m512 y = _mm512_add_ps(_mm512_mul_ps(normed, _mm512_load_ps(w32 + i)),
                                       _mm512_load_ps(b32 + i));
        store16<kNative>(o + i, y, tail_mask(n - i));
      }
    }
  }
}

template <typename T, bool kResidual>
void layer_norm_avx512(const LayerNormArgs& a) {
  if (sizeof(T) == 2 && cpu_has_avx512_bf16()) {
    layer_norm_rows_avx512<T, kResidual, true>(a);
  } else {
    layer_norm_rows_avx512<T, kResidual, false>(a);
  }
}
#endif

// GELU of every bfloat16 value (indexed by its bits), from the form's double-precision value:
// a bfloat16 activation needs no arithmetic at all, only a lookup, and the result is the closest
// (up to double rounding through float) to the exact GELU, in both tails. One entry of padding
// lets a 32-bit gather read the last entry. Built on first use (65,536 double evaluations, ~1 ms).
struct GeluTable {
  uint16_t value[65536 + 2];
};

inline const GeluTable* build_gelu_table(bool tanh_form) {
  static GeluTable tables[2];
  GeluTable& t = tables[tanh_form ? 1 : 0];
  for (uint32_t bits = 0; bits < 65536; ++bits) {
    const double v = bf16_to_float(static_cast<uint16_t>(bits));
    double g;
    if (tanh_form) {
      const double u = 0.7978845608028654 * (v + 0.044715 * v * v * v);
      g = v / (1.0 + std::exp(-2.0 * u));
    } else {
      g = v * 0.5 * std::erfc(-v * 0.7071067811865476);
    }
    t.value[bits] = float_to_bf16(static_cast<float>(g));
  }
  t.value[65536] = t.value[65537] = 0;
  return &t;
}

inline const uint16_t* gelu_table(bool tanh_form) {  // each built once (thread-safe statics)
  if (tanh_form) {
    static const GeluTable* const tanh_table = build_gelu_table(true);
    return tanh_table->value;
  }
  static const GeluTable* const erf_table = build_gelu_table(false);
  return erf_table->value;
}

void gelu_rows_bf16(const GeluArgs& a) {
  const uint16_t* table = gelu_table(a.tanh_approximation != 0);
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  uint16_t* out = static_cast<uint16_t*>(a.out);
  const int64_t d = a.width;
  [[maybe_unused]] const int64_t ahead = rows_ahead(d * 2);
  const bool parallel = a.num_threads > 1 && a.rows * d >= kParallelElements;
#pragma omp parallel for num_threads(a.num_threads) if (parallel) schedule(static)
  for (int64_t row = 0; row < a.rows; ++row) {
    const uint16_t* xr = x + row * a.x_stride;
    uint16_t* o = out + row * a.out_stride;
#if defined(HERON_ELEMENTWISE_AVX512)
    if (row + ahead < a.rows) prefetch_row(xr + ahead * a.x_stride, d * 2);
    for (int64_t i = 0; i < d; i += 16) {
      const __mmask16 m = tail_mask(d - i);
      const __m512i idx = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, xr + i));
      const __m512i got = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, table, 2);
      _mm256_mask_storeu_epi16(o + i, m, _mm512_cvtepi32_epi16(got));
    }
#else
    for (int64_t i = 0; i < d; ++i) o[i] = table[xr[i]];
#endif
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

void layer_norm(const LayerNormArgs& args) {
  const bool residual = args.residual != nullptr;
#if defined(HERON_ELEMENTWISE_AVX512)
  if (args.hidden <= kBufferedHidden) {
    if (args.dtype == DType::kBFloat16) {
      residual ? layer_norm_avx512<uint16_t, true>(args) : layer_norm_avx512<uint16_t, false>(args);
    } else {
      residual ? layer_norm_avx512<float, true>(args) : layer_norm_avx512<float, false>(args);
    }
    return;
  }
#endif
  if (args.dtype == DType::kBFloat16) {
    residual ? layer_norm_rows<uint16_t, true>(args) : layer_norm_rows<uint16_t, false>(args);
  } else {
    residual ? layer_norm_rows<float, true>(args) : layer_norm_rows<float, false>(args);
  }
}

void gelu(const GeluArgs& args) { gelu_rows_bf16(args); }

}  // namespace HERON_ISA
}  // namespace heron_cpu
