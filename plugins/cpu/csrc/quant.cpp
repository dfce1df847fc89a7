// Linear layers over 8- and 4-bit block-quantized weights (see quant.h for the layout and why).
//
// The product is bound by the bytes of the weight at one to a few rows of x, so the loop is built
// like gemv.cpp's: each thread streams a contiguous slice of weight rows, several rows at a time
// so that each x load feeds several of them, with software prefetch a few rows ahead. A block's
// values are widened to fp32 in registers and multiplied by their block scale there; x is
// converted to fp32 once per call, and the Q4 minimum term sum_b m_b * sum(x_block) is a dot
// product of the row's minimums with per-block sums of x computed once per call too. Everything
// accumulates in fp32 and is rounded to the activation dtype once, after the bias.
//
// Three loops, chosen at run time from CPUID: AVX-512 (4 weight rows x up to 4 x rows per pass,
// 16 fp32 lanes), AVX2+FMA (2 x 4, 8 lanes) and portable C++. The x86 loops are functions with
// __attribute__((target(...))), so this one file, compiled for the baseline ISA, holds all three
// (the same arrangement as gemv.cpp). Helpers have internal linkage (see kernels.cpp's note on
// weak symbols).

#include "quant.h"
#include "scalar_math.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HERON_QUANT_X86 1
#include <immintrin.h>
#endif

#ifndef HERON_QUANT_PREFETCH_ROWS
#define HERON_QUANT_PREFETCH_ROWS 16  // weight rows ahead that the AVX-512 loop prefetches
#endif

namespace heron_cpu {
namespace quant {
namespace {

// Below this many weight bytes one thread is faster than waking a team (as in gemv.cpp).
constexpr int64_t kMinParallelBytes = int64_t{48} << 10;
constexpr int64_t kRows = 4;   // weight rows per AVX-512 tile
constexpr int64_t kXRows = 4;  // x rows per pass over a tile

// One call's operands with x already in fp32 (row stride k) and, for Q4, x's per-block sums.
struct Job {
  const QuantArgs* a;
  const float* x;     // [m, k]
  const float* xsum;  // [m, nb] or nullptr
  int64_t nb;         // blocks per row
  int64_t row_bytes;  // quantized bytes per weight row
};

inline float load_act(const void* p, int64_t i, DType dtype) {
  return dtype == DType::kBFloat16 ? bf16_to_float(static_cast<const uint16_t*>(p)[i])
                                   : static_cast<const float*>(p)[i];
}

// out[mi, n] = v + bias[n], rounded to the activation dtype.
inline void store(const QuantArgs& a, int64_t mi, int64_t n, float v) {
  if (a.bias) v += load_act(a.bias, n, a.dtype);
  if (a.dtype == DType::kBFloat16) {
    static_cast<uint16_t*>(a.out)[mi * a.n + n] = float_to_bf16(v);
  } else {
    static_cast<float*>(a.out)[mi * a.n + n] = v;
  }
}

using RowsFn = void (*)(const Job& job, int64_t n0, int64_t n1);

// fn over weight rows [0, n), split statically into contiguous slices of whole `align`-row tiles.
void run(const Job& job, RowsFn fn, int num_threads, int64_t align) {
  const QuantArgs& a = *job.a;
  const int64_t blocks = (a.n + align - 1) / align;
  const bool small = a.n * job.row_bytes < kMinParallelBytes || blocks < 2;
  const int threads = small || num_threads < 1 ? 1 : static_cast<int>(min64(num_threads, blocks));
  if (threads == 1) {
    fn(job, 0, a.n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num();
    const int64_t count = omp_get_num_threads();
    const int64_t begin = blocks * t / count * align;
    const int64_t end = min64(blocks * (t + 1) / count * align, a.n);
    if (begin < end) fn(job, begin, end);
  }
}

// ---- Portable path ----------------------------------------------------------------------------
void rows_portable(const Job& j, int64_t n0, int64_t n1) {
  const QuantArgs& a = *j.a;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* q = a.qs + n * j.row_bytes;
    const float* d = a.d + n * j.nb;
    for (int64_t mi = 0; mi < a.m; ++mi) {
      const float* x = j.x + mi * a.k;
      float s = 0.0f;
      for (int64_t b = 0; b < j.nb; ++b) {
        float bs = 0.0f;
        const float* xb = x + b * kBlock;
        if (a.format == Format::kQ8) {
          const int8_t* qb = reinterpret_cast<const int8_t*>(q + b * kBlock);
#pragma omp simd reduction(+ : bs)
          for (int t = 0; t < kBlock; ++t) bs += static_cast<float>(qb[t]) * xb[t];
        } else {
          const uint8_t* qb = q + b * (kBlock / 2);
#pragma omp simd reduction(+ : bs)
          for (int t = 0; t < kBlock / 2; ++t) {
            bs += static_cast<float>(qb[t] & 15) * xb[t] +
                  static_cast<float>(qb[t] >> 4) * xb[t + kBlock / 2];
          }
          s += a.mins[n * j.nb + b] * j.xsum[mi * j.nb + b];
        }
        s += d[b] * bs;
      }
      store(a, mi, n, s);
    }
  }
}

#if defined(HERON_QUANT_X86)
// ---- AVX-512 path -----------------------------------------------------------------------------
#define HERON_Q512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define HERON_Q2 __attribute__((target("avx2,fma")))
#define HERON_QINLINE inline __attribute__((always_inline))

// The 32 values of block b of one weight row, times its scale, as two 16-lane vectors.
template <Format F>
HERON_Q512 HERON_QINLINE void decode512(const uint8_t* q, float d, __m512* lo, __m512* hi) {
  const __m512 dv = _mm512_set1_ps(d);
  if (F == Format::kQ4) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
    *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15))), dv);
    *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), dv);
  } else {
    const __m128i* p = reinterpret_cast<const __m128i*>(q);
    *lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))), dv);
    *hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p + 1))), dv);
  }
}

// R weight rows from n0 against XR x rows from m0, over all of K.
template <Format F, int R, int XR, bool PREFETCH>
HERON_Q512 HERON_QINLINE void tile512(const Job& j, int64_t n0, int64_t m0) {
  const QuantArgs& a = *j.a;
  constexpr int64_t bb = F == Format::kQ4 ? kBlock / 2 : kBlock;
  constexpr int64_t per_line = 64 / bb;  // blocks per cache line of quantized values
  const int64_t ahead = HERON_QUANT_PREFETCH_ROWS * j.row_bytes;
  const uint8_t* q[R];
  const float* d[R];
  for (int r = 0; r < R; ++r) {
    q[r] = a.qs + (n0 + r) * j.row_bytes;
    d[r] = a.d + (n0 + r) * j.nb;
    if (PREFETCH) _mm_prefetch(reinterpret_cast<const char*>(d[r] + HERON_QUANT_PREFETCH_ROWS * j.nb), _MM_HINT_T1);
  }
  const float* x[XR];
  for (int i = 0; i < XR; ++i) x[i] = j.x + (m0 + i) * a.k;
  __m512 acc[R][XR];
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < XR; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  for (int64_t b = 0; b < j.nb; ++b) {
    __m512 lo[R], hi[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* qb = q[r] + b * bb;
      // Prefetch never faults: running past the end of the weight is harmless.
      if (PREFETCH && b % per_line == 0) _mm_prefetch(reinterpret_cast<const char*>(qb + ahead), _MM_HINT_T1);
      decode512<F>(qb, d[r][b], &lo[r], &hi[r]);
    }
    for (int i = 0; i < XR; ++i) {
      const __m512 xl = _mm512_loadu_ps(x[i] + b * kBlock);
      const __m512 xh = _mm512_loadu_ps(x[i] + b * kBlock + 16);
      for (int r = 0; r < R; ++r) {
        acc[r][i] = _mm512_fmadd_ps(lo[r], xl, acc[r][i]);
        acc[r][i] = _mm512_fmadd_ps(hi[r], xh, acc[r][i]);
      }
    }
  }
  if (F == Format::kQ4) {  // + sum_b m_b * sum(x_block b), 16 blocks per step
    for (int64_t b = 0; b < j.nb; b += 16) {
      const __mmask16 mask = j.nb - b >= 16 ? __mmask16(0xffff)
                                            : static_cast<__mmask16>((1u << (j.nb - b)) - 1);
      for (int i = 0; i < XR; ++i) {
        const __m512 xs = _mm512_maskz_loadu_ps(mask, j.xsum + (m0 + i) * j.nb + b);
        for (int r = 0; r < R; ++r) {
          const __m512 mv = _mm512_maskz_loadu_ps(mask, a.mins + (n0 + r) * j.nb + b);
          acc[r][i] = _mm512_fmadd_ps(mv, xs, acc[r][i]);
        }
      }
    }
  }
  for (int i = 0; i < XR; ++i) {
    for (int r = 0; r < R; ++r) store(a, m0 + i, n0 + r, _mm512_reduce_add_ps(acc[r][i]));
  }
}

template <Format F, int R>
HERON_Q512 void block512(const Job& j, int64_t n0) {
  const int64_t m = j.a->m;
  int64_t m0 = 0;
  for (; m0 + kXRows <= m; m0 += kXRows) {
    if (m0 == 0) {
      tile512<F, R, kXRows, true>(j, n0, m0);
    } else {
      tile512<F, R, kXRows, false>(j, n0, m0);
    }
  }
  const bool first = m0 == 0;
  switch (m - m0) {
    case 1: first ? tile512<F, R, 1, true>(j, n0, m0) : tile512<F, R, 1, false>(j, n0, m0); break;
    case 2: first ? tile512<F, R, 2, true>(j, n0, m0) : tile512<F, R, 2, false>(j, n0, m0); break;
    case 3: first ? tile512<F, R, 3, true>(j, n0, m0) : tile512<F, R, 3, false>(j, n0, m0); break;
    default: break;
  }
}

template <Format F>
HERON_Q512 void rows512(const Job& j, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) block512<F, kRows>(j, n);
  for (; n < n1; ++n) block512<F, 1>(j, n);
}

// ---- AVX2 path --------------------------------------------------------------------------------
// 8 lanes: a block is four vectors; Q4's bytes 0-7 give values 0-7 (low nibbles) and 16-23
// (high), bytes 8-15 values 8-15 and 24-31.
template <Format F>
HERON_Q2 HERON_QINLINE void decode256(const uint8_t* q, float d, __m256* w) {
  const __m256 dv = _mm256_set1_ps(d);
  if (F == Format::kQ4) {
    const __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)));
    const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8)));
    const __m256i low = _mm256_set1_epi32(15);
    w[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(a, low)), dv);
    w[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(b, low)), dv);
    w[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4)), dv);
    w[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), dv);
  } else {
    for (int p = 0; p < 4; ++p) {
      const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + 8 * p));
      w[p] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw)), dv);
    }
  }
}

HERON_Q2 HERON_QINLINE float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <Format F, int R, int XR>
HERON_Q2 HERON_QINLINE void tile256(const Job& j, int64_t n0, int64_t m0) {
  const QuantArgs& a = *j.a;
  constexpr int64_t bb = F == Format::kQ4 ? kBlock / 2 : kBlock;
  __m256 acc[R][XR];
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < XR; ++i) acc[r][i] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < j.nb; ++b) {
    for (int r = 0; r < R; ++r) {
      __m256 w[4];
      decode256<F>(a.qs + (n0 + r) * j.row_bytes + b * bb, a.d[(n0 + r) * j.nb + b], w);
      for (int i = 0; i < XR; ++i) {
        const float* xb = j.x + (m0 + i) * a.k + b * kBlock;
        for (int p = 0; p < 4; ++p) {
          acc[r][i] = _mm256_fmadd_ps(w[p], _mm256_loadu_ps(xb + 8 * p), acc[r][i]);
        }
      }
    }
  }
  for (int i = 0; i < XR; ++i) {
    for (int r = 0; r < R; ++r) {
      float s = hsum256(acc[r][i]);
      if (F == Format::kQ4) {
        const float* mins = a.mins + (n0 + r) * j.nb;
        const float* xs = j.xsum + (m0 + i) * j.nb;
        for (int64_t b = 0; b < j.nb; ++b) s += mins[b] * xs[b];
      }
      store(a, m0 + i, n0 + r, s);
    }
  }
}

template <Format F, int R>
HERON_Q2 void block256(const Job& j, int64_t n0) {
  const int64_t m = j.a->m;
  int64_t m0 = 0;
  for (; m0 + kXRows <= m; m0 += kXRows) tile256<F, R, kXRows>(j, n0, m0);
  switch (m - m0) {
    case 1: tile256<F, R, 1>(j, n0, m0); break;
    case 2: tile256<F, R, 2>(j, n0, m0); break;
    case 3: tile256<F, R, 3>(j, n0, m0); break;
    default: break;
  }
}

template <Format F>
HERON_Q2 void rows256(const Job& j, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) block256<F, 2>(j, n);
  for (; n < n1; ++n) block256<F, 1>(j, n);
}
#endif  // HERON_QUANT_X86

}  // namespace

int64_t block_bytes(Format format) { return format == Format::kQ4 ? kBlock / 2 : kBlock; }

bool avx512_supported() {
#if defined(HERON_QUANT_X86)
  // __builtin_cpu_supports also checks that the OS saves the AVX-512 register state.
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

bool avx2_supported() {
#if defined(HERON_QUANT_X86)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

void linear(const QuantArgs& a, Path path) {
  if (path == Path::kAmx) {
    if (linear_amx(a)) return;
    path = Path::kAuto;  // no AMX here, or float32 activations: the loops below
  }
  if (path == Path::kVnni512 || path == Path::kAvxVnni) {
    if (linear_i8(a, path)) return;
    path = Path::kAuto;  // this CPU lacks it: the fp32 loops
  }
  if (a.m == 0 || a.n == 0) return;
  const int64_t nb = a.k / kBlock;
  // x in fp32 (and, for Q4, its per-block sums): computed once, read by every weight row.
  float* x = static_cast<float*>(std::malloc(sizeof(float) * (a.m * a.k + a.m * nb + 16)));
  float* xsum = x + a.m * a.k;
  for (int64_t mi = 0; mi < a.m; ++mi) {
    const int64_t base = mi * a.x_stride;
    for (int64_t t = 0; t < a.k; ++t) x[mi * a.k + t] = load_act(a.x, base + t, a.dtype);
    for (int64_t b = 0; b < nb; ++b) {
      float s = 0.0f;
      for (int t = 0; t < kBlock; ++t) s += x[mi * a.k + b * kBlock + t];
      xsum[mi * nb + b] = s;
    }
  }
  const Job job{&a, x, xsum, nb, nb * block_bytes(a.format)};
  RowsFn fn = rows_portable;
  int64_t align = 1;
#if defined(HERON_QUANT_X86)
  const bool q4 = a.format == Format::kQ4;
  if ((path == Path::kAuto || path == Path::kAvx512) && avx512_supported()) {
    fn = q4 ? rows512<Format::kQ4> : rows512<Format::kQ8>;
    align = kRows;
  } else if (path != Path::kPortable && avx2_supported()) {
    fn = q4 ? rows256<Format::kQ4> : rows256<Format::kQ8>;
    align = 2;
  }
#endif
  run(job, fn, a.num_threads, align);
  std::free(x);
}

void dequantize(const QuantArgs& a, void* out) {
  const int64_t nb = a.k / kBlock;
  const int64_t row_bytes = nb * block_bytes(a.format);
  const int threads = a.n * row_bytes < kMinParallelBytes ? 1 : (a.num_threads > 0 ? a.num_threads : 1);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t n = 0; n < a.n; ++n) {
    float row[kBlock];
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* q = a.qs + n * row_bytes + b * block_bytes(a.format);
      const float d = a.d[n * nb + b];
      if (a.format == Format::kQ8) {
        for (int t = 0; t < kBlock; ++t) row[t] = d * static_cast<float>(static_cast<int8_t>(q[t]));
      } else {
        const float mn = a.mins[n * nb + b];
        for (int t = 0; t < kBlock / 2; ++t) {
          row[t] = d * static_cast<float>(q[t] & 15) + mn;
          row[t + kBlock / 2] = d * static_cast<float>(q[t] >> 4) + mn;
        }
      }
      const int64_t base = n * a.k + b * kBlock;
      if (a.dtype == DType::kBFloat16) {
        uint16_t* o = static_cast<uint16_t*>(out) + base;
        for (int t = 0; t < kBlock; ++t) o[t] = float_to_bf16(row[t]);
      } else {
        std::memcpy(static_cast<float*>(out) + base, row, sizeof row);
      }
    }
  }
}

}  // namespace quant
}  // namespace heron_cpu
