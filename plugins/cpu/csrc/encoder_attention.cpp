// Bidirectional attention of whole prompts for encoder models (see encoder_attention.h).
//
// Why a kernel of our own: an encoder such as all-MiniLM-L6-v2 has heads of 32 elements. At that
// size torch's CPU SDPA reaches ~45 GFLOP/s on one core and, with the views and copies that feed
// it padded batches, took ~40 % of a bfloat16 embedding step; the GEMMs around it run on AMX.
//
// One work item is (sequence, head); OpenMP hands them out longest sequence first. An item packs
// its keys once, transposed to fp32 [head_size][len] (so 16 keys' scores are one vector FMA per
// head element), and its values to fp32 [len][head_size], both from the projection rows in
// place. Then each tile of kRows query rows (scaled q in fp32) runs flash-attention style over
// blocks of kKeys keys: scores of the block, the block's row maxima, exp in fp32, the running sum
// and the accumulator rescaled by exp(m_old - m_new) (online softmax: one pass, any length, no
// score matrix larger than kRows x kKeys), then the values. Output rows are divided by the sum
// and rounded to the element type once. No padding: each sequence is attended at its own length.
//
// Two loops with the same arithmetic: AVX-512 intrinsics in target("avx512f") functions (8 query
// rows x 32 keys of scores in 16 registers; 8 rows x 32 value columns likewise), and a portable
// C++ loop (`omp simd`) for other CPUs and head sizes that are not a multiple of 16. bfloat16
// inputs are widened to fp32 when packed (exact), so both dtypes share the fp32 loops. This file
// is compiled once, for the baseline ISA, like gemv.cpp: every helper has internal linkage and no
// standard-library template is used (see the note at the top of kernels.cpp).

#include "encoder_attention.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "scalar_math.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HERON_ENCODER_X86 1
#include <immintrin.h>  // intrinsics are always-inline; usable inside target("...") functions
#endif

namespace heron_cpu {
namespace encoder {
namespace {

constexpr int64_t kRows = 8;    // query rows per tile (the AVX-512 loops keep 8 rows in registers)
constexpr int64_t kKeys = 256;  // keys per online-softmax block
constexpr float kNegInf = -__builtin_inff();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline float maxf(float a, float b) { return a > b ? a : b; }

inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) { return bf16_to_float(x); }
inline void from_float(float x, float* dst) { *dst = x; }
inline void from_float(float x, uint16_t* dst) { *dst = float_to_bf16(x); }

// Per-thread working memory, 64-byte aligned parts, sized for the step's longest sequence.
struct Scratch {
  float* kt;  // [head_size][lp]: keys transposed, zero past the sequence's length
  float* v;   // [len][head_size]
  float* q;   // [kRows][head_size], scaled; zero rows past the tile's end
  float* s;   // [kRows][kKeys]: one block's scores, then its probabilities
  float* o;   // [kRows][head_size]: unnormalised output
  float m[kRows];
  float l[kRows];
  void* memory;
};

bool scratch_alloc(Scratch* sc, int64_t max_len, int64_t d) {
  const int64_t lp = round_up(max_len, 16);
  const int64_t parts[5] = {round_up(d * lp, 16), round_up(max_len * d, 16), round_up(kRows * d, 16),
                            kRows * kKeys, round_up(kRows * d, 16)};
  int64_t total = 0;
  for (int64_t p : parts) total += p;
  auto* base = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(total) * 4));
  if (base == nullptr) return false;
  sc->memory = base;
  float** slots[5] = {&sc->kt, &sc->v, &sc->q, &sc->s, &sc->o};
  for (int i = 0; i < 5; ++i) {
    *slots[i] = base;
    base += parts[i];
  }
  return true;
}

// Keys (transposed) and values of head h of the sequence at token `start`, widened to fp32.
template <typename T>
void pack_kv(const EncoderAttentionArgs& a, const T* qkv, int64_t start, int64_t len, int64_t h,
             Scratch& sc) {
  const int64_t d = a.head_size;
  const int64_t lp = round_up(len, 16);
  for (int64_t j = 0; j < len; ++j) {
    const T* k = qkv + (start + j) * a.qkv_stride + a.k_offset + h * d;
    for (int64_t e = 0; e < d; ++e) sc.kt[e * lp + j] = to_float(k[e]);
    const T* v = qkv + (start + j) * a.qkv_stride + a.v_offset + h * d;
    float* dst = sc.v + j * d;
#pragma omp simd
    for (int64_t e = 0; e < d; ++e) dst[e] = to_float(v[e]);
  }
  for (int64_t e = 0; e < d; ++e) {
    for (int64_t j = len; j < lp; ++j) sc.kt[e * lp + j] = 0.0f;
  }
}

// Query rows [i0, i0 + rows) of the sequence at `start`, scaled; the tile's other rows zero.
template <typename T>
void load_q(const EncoderAttentionArgs& a, const T* qkv, int64_t row0, int64_t rows, int64_t h,
            Scratch& sc) {
  const int64_t d = a.head_size;
  for (int64_t r = 0; r < kRows; ++r) {
    float* dst = sc.q + r * d;
    if (r >= rows) {
      std::memset(dst, 0, static_cast<size_t>(d) * sizeof(float));
      continue;
    }
    const T* q = qkv + (row0 + r) * a.qkv_stride + h * d;
#pragma omp simd
    for (int64_t e = 0; e < d; ++e) dst[e] = to_float(q[e]) * a.scale;
  }
  for (int64_t r = 0; r < kRows; ++r) {
    sc.m[r] = kNegInf;
    sc.l[r] = 0.0f;
  }
  std::memset(sc.o, 0, static_cast<size_t>(kRows * d) * sizeof(float));
}

template <typename T>
void store_rows(const EncoderAttentionArgs& a, T* out, int64_t row0, int64_t rows, int64_t h,
                const Scratch& sc) {
  const int64_t d = a.head_size;
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = 1.0f / sc.l[r];
    T* dst = out + (row0 + r) * a.out_stride + h * d;
    for (int64_t e = 0; e < d; ++e) from_float(sc.o[r * d + e] * inv, dst + e);
  }
}

// ---- Portable loops ------------------------------------------------------------------------------

// s[r][j] = q[r] . k[j0 + j] for the tile's rows and the block's nk keys.
void scores_portable(const Scratch& sc, int64_t d, int64_t lp, int64_t j0, int64_t nk,
                     int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = sc.s + r * kKeys;
    for (int64_t j = 0; j < nk; ++j) s[j] = 0.0f;
    for (int64_t e = 0; e < d; ++e) {
      const float qe = sc.q[r * d + e];
      const float* k = sc.kt + e * lp + j0;
#pragma omp simd
      for (int64_t j = 0; j < nk; ++j) s[j] = HERON_FMA(qe, k[j], s[j]);
    }
  }
}

// The block's scores become probabilities against the running maxima; sums and accumulators of
// rows whose maximum grew are rescaled (online softmax).
void softmax_portable(Scratch& sc, int64_t d, int64_t nk, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = sc.s + r * kKeys;
    float block_max = kNegInf;
    for (int64_t j = 0; j < nk; ++j) block_max = maxf(block_max, s[j]);
    const float m_new = maxf(sc.m[r], block_max);
    const float alpha = sc.m[r] == kNegInf ? 0.0f : exp_clamped(sc.m[r] - m_new);
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < nk; ++j) {
      s[j] = exp_clamped(s[j] - m_new);
      sum += s[j];
    }
    sc.l[r] = sc.l[r] * alpha + sum;
    sc.m[r] = m_new;
    if (alpha != 1.0f) {
      float* o = sc.o + r * d;
#pragma omp simd
      for (int64_t e = 0; e < d; ++e) o[e] *= alpha;
    }
  }
}

// o[r] += sum_j p[r][j] v[j0 + j].
void values_portable(Scratch& sc, int64_t d, int64_t j0, int64_t nk, int64_t rows) {
  for (int64_t r = 0; r < rows; ++r) {
    float* o = sc.o + r * d;
    const float* p = sc.s + r * kKeys;
    for (int64_t j = 0; j < nk; ++j) {
      const float* v = sc.v + (j0 + j) * d;
      const float pj = p[j];
#pragma omp simd
      for (int64_t e = 0; e < d; ++e) o[e] = HERON_FMA(pj, v[e], o[e]);
    }
  }
}

// ---- AVX-512 loops ---------------------------------------------------------------------------------
#if defined(HERON_ENCODER_X86)
#define HERON_AVX512 __attribute__((target("avx512f,avx2,fma")))

// exp_clamped (scalar_math.h) sixteen lanes at a time: the same clamp, reduction and polynomial;
// 2^n applied with vscalefps.
HERON_AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// Scores of all kRows rows against keys [j0, j0 + nk) (rounded up to 16: kt is zero there, and
// the softmax masks them), 32 keys per pass with 16 accumulators.
HERON_AVX512 void scores_avx512(const Scratch& sc, int64_t d, int64_t lp, int64_t j0, int64_t nk) {
  const int64_t nkp = round_up(nk, 16);
  const float* kt = sc.kt + j0;
  int64_t j = 0;
  for (; j + 32 <= nkp; j += 32) {
    __m512 a0[kRows], a1[kRows];
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t e = 0; e < d; ++e) {
      const __m512 k0 = _mm512_loadu_ps(kt + e * lp + j);
      const __m512 k1 = _mm512_loadu_ps(kt + e * lp + j + 16);
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRows; ++r) {
        const __m512 qb = _mm512_set1_ps(sc.q[r * d + e]);
        a0[r] = _mm512_fmadd_ps(qb, k0, a0[r]);
        a1[r] = _mm512_fmadd_ps(qb, k1, a1[r]);
      }
    }
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r) {
      _mm512_storeu_ps(sc.s + r * kKeys + j, a0[r]);
      _mm512_storeu_ps(sc.s + r * kKeys + j + 16, a1[r]);
    }
  }
  for (; j < nkp; j += 16) {
    __m512 a0[kRows];
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r) a0[r] = _mm512_setzero_ps();
    for (int64_t e = 0; e < d; ++e) {
      const __m512 k0 = _mm512_loadu_ps(kt + e * lp + j);
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRows; ++r) {
        a0[r] = _mm512_fmadd_ps(_mm512_set1_ps(sc.q[r * d + e]), k0, a0[r]);
      }
    }
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r) _mm512_storeu_ps(sc.s + r * kKeys + j, a0[r]);
  }
}

HERON_AVX512 void softmax_avx512(Scratch& sc, int64_t d, int64_t nk, int64_t rows) {
  const __m512 neg_inf = _mm512_set1_ps(kNegInf);
  for (int64_t r = 0; r < rows; ++r) {
    float* s = sc.s + r * kKeys;
    __m512 vmax = neg_inf;
    for (int64_t j = 0; j < nk; j += 16) {
      const __mmask16 mask = nk - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (nk - j)) - 1);
      vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(neg_inf, mask, s + j));
    }
    const float m_new = maxf(sc.m[r], _mm512_reduce_max_ps(vmax));
    const float alpha = sc.m[r] == kNegInf ? 0.0f : exp_clamped(sc.m[r] - m_new);
    const __m512 vm = _mm512_set1_ps(m_new);
    __m512 vsum = _mm512_setzero_ps();
    for (int64_t j = 0; j < nk; j += 16) {
      const __mmask16 mask = nk - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (nk - j)) - 1);
      const __m512 p = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + j), vm));
      _mm512_mask_storeu_ps(s + j, mask, p);
      vsum = _mm512_mask_add_ps(vsum, mask, vsum, p);
    }
    sc.l[r] = sc.l[r] * alpha + _mm512_reduce_add_ps(vsum);
    sc.m[r] = m_new;
    if (alpha != 1.0f) {
      float* o = sc.o + r * d;
      const __m512 va = _mm512_set1_ps(alpha);
      for (int64_t e = 0; e < d; e += 16) _mm512_storeu_ps(o + e, _mm512_mul_ps(_mm512_loadu_ps(o + e), va));
    }
  }
}

// o[r] += sum_j p[r][j] v[j0 + j] for all kRows rows (rows past the tile hold zero q and are
// never stored), 32 value columns per pass with 16 accumulators.
HERON_AVX512 void values_avx512(Scratch& sc, int64_t d, int64_t j0, int64_t nk) {
  const float* v = sc.v + j0 * d;
  int64_t c = 0;
  for (; c + 32 <= d; c += 32) {
    __m512 a0[kRows], a1[kRows];
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r) {
      a0[r] = _mm512_loadu_ps(sc.o + r * d + c);
      a1[r] = _mm512_loadu_ps(sc.o + r * d + c + 16);
    }
    for (int64_t j = 0; j < nk; ++j) {
      const __m512 v0 = _mm512_loadu_ps(v + j * d + c);
      const __m512 v1 = _mm512_loadu_ps(v + j * d + c + 16);
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRows; ++r) {
        const __m512 pb = _mm512_set1_ps(sc.s[r * kKeys + j]);
        a0[r] = _mm512_fmadd_ps(pb, v0, a0[r]);
        a1[r] = _mm512_fmadd_ps(pb, v1, a1[r]);
      }
    }
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r) {
      _mm512_storeu_ps(sc.o + r * d + c, a0[r]);
      _mm512_storeu_ps(sc.o + r * d + c + 16, a1[r]);
    }
  }
  for (; c < d; c += 16) {
    __m512 a0[kRows];
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r) a0[r] = _mm512_loadu_ps(sc.o + r * d + c);
    for (int64_t j = 0; j < nk; ++j) {
      const __m512 v0 = _mm512_loadu_ps(v + j * d + c);
#pragma GCC unroll 8
      for (int64_t r = 0; r < kRows; ++r) {
        a0[r] = _mm512_fmadd_ps(_mm512_set1_ps(sc.s[r * kKeys + j]), v0, a0[r]);
      }
    }
#pragma GCC unroll 8
    for (int64_t r = 0; r < kRows; ++r) _mm512_storeu_ps(sc.o + r * d + c, a0[r]);
  }
}

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
         __builtin_cpu_supports("fma");
}
#endif  // HERON_ENCODER_X86

// One (sequence, head) item: keys and values packed once, then every query tile.
template <typename T>
void attend_item(const EncoderAttentionArgs& a, int64_t seq, int64_t h, Scratch& sc, bool avx) {
  const T* qkv = static_cast<const T*>(a.qkv);
  T* out = static_cast<T*>(a.out);
  const int64_t start = a.starts[seq];
  const int64_t len = a.starts[seq + 1] - start;
  const int64_t d = a.head_size;
  const int64_t lp = round_up(len, 16);
  pack_kv(a, qkv, start, len, h, sc);
  for (int64_t i0 = 0; i0 < len; i0 += kRows) {
    const int64_t rows = min64(kRows, len - i0);
    load_q(a, qkv, start + i0, rows, h, sc);
    for (int64_t j0 = 0; j0 < len; j0 += kKeys) {
      const int64_t nk = min64(kKeys, len - j0);
#if defined(HERON_ENCODER_X86)
      if (avx) {
        scores_avx512(sc, d, lp, j0, nk);
        softmax_avx512(sc, d, nk, rows);
        values_avx512(sc, d, j0, nk);
        continue;
      }
#endif
      scores_portable(sc, d, lp, j0, nk, rows);
      softmax_portable(sc, d, nk, rows);
      values_portable(sc, d, j0, nk, rows);
    }
    store_rows(a, out, start + i0, rows, h, sc);
  }
  (void)avx;
}

// Sequences longest first (so the last items handed out are the short ones), skipping empty ones.
int64_t order_by_length(const int32_t* starts, int64_t num_seqs, int64_t* order) {
  int64_t n = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t len = int64_t{starts[s + 1]} - starts[s];
    if (len <= 0) continue;
    int64_t i = n++;
    while (i > 0 && int64_t{starts[order[i - 1] + 1]} - starts[order[i - 1]] < len) {
      order[i] = order[i - 1];
      --i;
    }
    order[i] = s;
  }
  return n;
}

template <typename T>
bool run(const EncoderAttentionArgs& a, bool avx) {
  auto* order = static_cast<int64_t*>(std::malloc(static_cast<size_t>(a.num_seqs + 1) * 8));
  if (order == nullptr) return false;
  const int64_t seqs = order_by_length(a.starts, a.num_seqs, order);
  const int64_t max_len = seqs > 0 ? int64_t{a.starts[order[0] + 1]} - a.starts[order[0]] : 0;
  const int64_t items = seqs * a.num_heads;
  const int threads = static_cast<int>(min64(a.num_threads < 1 ? 1 : a.num_threads, items));
  bool ok = true;
  if (threads <= 1) {
    Scratch sc;
    if (items > 0 && scratch_alloc(&sc, max_len, a.head_size)) {
      for (int64_t it = 0; it < items; ++it) {
        attend_item<T>(a, order[it / a.num_heads], it % a.num_heads, sc, avx);
      }
      std::free(sc.memory);
    } else {
      ok = items == 0;
    }
  } else {
#pragma omp parallel num_threads(threads)
    {
      Scratch sc;
      const bool mine = scratch_alloc(&sc, max_len, a.head_size);
      if (!mine) {
#pragma omp atomic write
        ok = false;
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; ++it) {
        if (mine) attend_item<T>(a, order[it / a.num_heads], it % a.num_heads, sc, avx);
      }
      if (mine) std::free(sc.memory);
    }
  }
  std::free(order);
  return ok;
}

}  // namespace

bool avx512_supported() {
#if defined(HERON_ENCODER_X86)
  static const bool supported = cpu_has_avx512();
  return supported;
#else
  return false;
#endif
}

Path encoder_attention(const EncoderAttentionArgs& args, Path path) {
  const bool avx = path != Path::kPortable && args.head_size % 16 == 0 && avx512_supported();
  const bool ok = args.bf16 ? run<uint16_t>(args, avx) : run<float>(args, avx);
  if (!ok) throw std::bad_alloc();  // after the OpenMP region: never thrown across it
  return avx ? Path::kAvx512 : Path::kPortable;
}

}  // namespace encoder
}  // namespace heron_cpu
