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
// inputs are widened to fp32 when packed (exact), so both dtypes share the fp32 loops. A third
// loop, for bfloat16 inputs on AMX CPUs (head sizes that are multiples of 32), runs both products
// on tiles; it is described where it begins ("AMX-BF16 loops"). This file
// is compiled once, for the baseline ISA, like gemv.cpp: every helper has internal linkage and no
// standard-library template is used (see the note at the top of kernels.cpp).

#include "encoder_attention.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <new>

#include "amx_tile.h"
#include "gemv.h"
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

// ---- AMX-BF16 loops (bfloat16 inputs) --------------------------------------------------------------
// The same attention with both products on tiles, for bfloat16 inputs and head sizes that are
// multiples of 32. A 16-row query block's scores against every key of the sequence come from
// tdpbf16ps (bf16 products are exact, sums in fp32: the same scores as the fp32 loops up to the
// order of the additions), scaled and soft-maxed in fp32 over the whole row at once (two passes;
// no online rescaling is needed when the row fits in scratch, and it always does: 16 x len fp32),
// and the probabilities are rounded once to bfloat16 to be the A operand of P.V, whose sums are
// fp32 again; each row is divided by the fp32 sum of its unrounded probabilities. The rounding of P
// is the only step the fp32 loops do not have: it moves each weight by at most 2^-9 of itself, so
// an output by at most 2^-9 max|v|, as much as rounding the output to bfloat16 may (the kernel
// test holds the two together to their sum). The A operand of QK^T is read straight from the
// projection rows (tileloadd takes a row stride); keys are packed per two heads of a sequence into
// B tiles (16 keys x 16 pairs of head elements, an in-register transpose), values likewise (16 pairs
// of keys x 16 head elements). Where the time went at MiniLM's shape before packing took two heads
// at once (each part knocked out in turn): the softmax a quarter of the kernel (its exp a fifth),
// packing a quarter, the tile products with their stores and the output's rounding the rest.
#if defined(HERON_ENCODER_X86) && defined(HERON_AMX_TILE_X86)
#define HERON_ENCODER_AMX 1
#define HERON_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))

constexpr int64_t kTileRows = 16;
constexpr int64_t kBlockRows = 32;   // query rows per pass: two A tiles against two B tiles
constexpr int64_t kTileElems = 512;  // bf16 elements of one 16 x 64-byte tile

struct AmxScratch {
  // Per head of a work unit (see run_amx), the head's keys and values packed:
  uint16_t* kb;  // [lp16 / 16][d / 32] B tiles: row e2, column n = (k[n][2 e2], k[n][2 e2 + 1])
  uint16_t* vb;  // [lp32 / 32][d / 16] B tiles: row j2, column n = (v[2 j2][n], v[2 j2 + 1][n])
  uint16_t* q;   // [32][d]: last query rows copied, zero rows after the sequence
  float* s;      // [32][lp16]: scores
  uint16_t* p;   // [32][lp32]: probabilities in bf16, zero past the sequence
  float* o;      // [32][d]: unnormalised output
  float l[kBlockRows];
  void* memory;
};

// Head hh's packed keys and values in a unit's scratch, for a sequence of len tokens.
inline uint16_t* unit_keys(const AmxScratch& sc, int64_t hh, int64_t len, int64_t d) {
  return sc.kb + hh * round_up(len, 16) * d;
}
inline uint16_t* unit_values(const AmxScratch& sc, int64_t hh, int64_t len, int64_t d) {
  return sc.vb + hh * round_up(len, 32) * d;
}

bool amx_scratch_alloc(AmxScratch* sc, int64_t max_len, int64_t d, int64_t heads) {
  const int64_t lp16 = round_up(max_len, 16);
  const int64_t lp32 = round_up(max_len, 32);
  const int64_t bytes[6] = {heads * lp16 * d * 2, heads * lp32 * d * 2, kBlockRows * d * 2,
                            kBlockRows * lp16 * 4, kBlockRows * lp32 * 2, kBlockRows * d * 4};
  int64_t total = 0;
  for (int64_t b : bytes) total += round_up(b, 64);
  auto* base = static_cast<char*>(std::aligned_alloc(64, static_cast<size_t>(total)));
  if (base == nullptr) return false;
  sc->memory = base;
  void* parts[6];
  for (int i = 0; i < 6; ++i) {
    parts[i] = base;
    base += round_up(bytes[i], 64);
  }
  sc->kb = static_cast<uint16_t*>(parts[0]);
  sc->vb = static_cast<uint16_t*>(parts[1]);
  sc->q = static_cast<uint16_t*>(parts[2]);
  sc->s = static_cast<float*>(parts[3]);
  sc->p = static_cast<uint16_t*>(parts[4]);
  sc->o = static_cast<float*>(parts[5]);
  // Probability columns past a sequence stay zero for every item (softmax writes zeros there
  // up to the sequence's own lp32, and a shorter sequence's tail is rewritten by its own pass).
  std::memset(sc->p, 0, static_cast<size_t>(kBlockRows * lp32) * 2);
  return true;
}

// Transposes the 16 x 16 matrix of 32-bit elements r[row][lane] in place: 32-bit, then 64-bit
// interleaves within 128-bit lanes, then two rounds of 128-bit lane shuffles.
HERON_AMX_TARGET inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// Heads [h0, h0 + heads) of one sequence, head by head inside each block of keys. Each head's
// slice of a projection row is one 64-byte line at MiniLM's head size, and packing one head at a
// time waited on a cold line per key: a quarter of the kernel (the projection of a 2,048-token step
// is 4.7 MB, read from L3). Two adjacent heads read both lines of each 128-byte pair, which the
// hardware's adjacent-line prefetch fetches together: the kernel ran ~11 % faster (and as fast as
// with all twelve heads at once, whose 340 KB of packed keys and values crowded L2 for the GEMMs).
HERON_AMX_TARGET void amx_pack_kv(const EncoderAttentionArgs& a, const uint16_t* qkv, int64_t start,
                                  int64_t len, int64_t h0, int64_t heads, AmxScratch& sc) {
  const int64_t d = a.head_size;
  const int64_t chunks = d / 32;
  const int64_t cols = d / 16;
  const int64_t lp16 = round_up(len, 16);
  const int64_t lp32 = round_up(len, 32);
  for (int64_t blk = 0; blk < lp16 / 16; ++blk) {
    const int64_t keys = min64(16, len - blk * 16);
    const uint16_t* k_rows = qkv + (start + blk * 16) * a.qkv_stride + a.k_offset + h0 * d;
    for (int64_t hh = 0; hh < heads; ++hh) {
      const uint16_t* k = k_rows + hh * d;
      uint16_t* kb = unit_keys(sc, hh, len, d) + blk * chunks * kTileElems;
      for (int64_t c = 0; c < chunks; ++c) {
        // Key n's 16 pairs of this chunk become column n of the tile (one dword per row).
        __m512i rows16[16];
        for (int64_t n = 0; n < 16; ++n) {
          rows16[n] =
              n < keys ? _mm512_loadu_si512(k + n * a.qkv_stride + c * 32) : _mm512_setzero_si512();
        }
        transpose16(rows16);
        auto* dst = reinterpret_cast<__m512i*>(kb + c * kTileElems);
        for (int64_t e2 = 0; e2 < 16; ++e2) _mm512_storeu_si512(dst + e2, rows16[e2]);
      }
    }
  }
  for (int64_t j = 0; j < lp32; j += 2) {
    const uint16_t* v_rows = qkv + (start + j) * a.qkv_stride + a.v_offset + h0 * d;
    for (int64_t hh = 0; hh < heads; ++hh) {
      const uint16_t* v0 = v_rows + hh * d;
      const uint16_t* v1 = v0 + a.qkv_stride;
      uint32_t* dst =
          reinterpret_cast<uint32_t*>(unit_values(sc, hh, len, d) + (j / 32) * cols * kTileElems) +
          (j % 32) / 2 * 16;
      for (int64_t c = 0; c < cols; ++c) {
        const __m256i lo = j < len ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v0 + c * 16))
                                   : _mm256_setzero_si256();
        const __m256i hi = j + 1 < len
                               ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v1 + c * 16))
                               : _mm256_setzero_si256();
        const __m512i row = _mm512_or_si512(_mm512_cvtepu16_epi32(lo),
                                            _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
        _mm512_storeu_si512(dst + c * (kTileElems / 2), row);
      }
    }
  }
}

// float_to_bf16 (scalar_math.h) sixteen lanes at a time: round to nearest even, NaNs kept quiet
// (not vcvtneps2bf16, which flushes denormal results to zero).
HERON_AMX_TARGET inline __m256i round_bf16x16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
}

// 2^t sixteen lanes at a time for the probabilities: n = round(t), 2^f for f = t - n in [-1/2, 1/2]
// (exact) by a degree-3 polynomial in f fitted to 2^f's relative error (1.0e-4 at most on the
// interval), 2^n by vscalefps, which needs no clamp: far below the row maximum the result
// underflows to zero, as it should. Each probability is rounded to bfloat16 next (2^-9 of itself),
// so a fifth of that is enough: two FMAs fewer than a float32-exact degree 5, -3 % of the kernel.
HERON_AMX_TARGET inline __m512 exp2_16(__m512 t) {
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(0.0550089308280681f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24221098356459916f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6932829299384123f));
  return _mm512_scalef_ps(_mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f)), n);
}

// Rows [0, rows) of the block: p = exp((s - max) * scale) as 2^(s * scale * log2(e) - max * ...),
// rounded to bf16 (zero past the sequence, up to the next multiple of 32 keys), and its fp32 sum.
// Thirty-two keys per step: two independent chains for the maximum and the sum, and one
// vcvtne2ps2bf16 rounding both halves (-6 % of the kernel against sixteen keys per step).
HERON_AMX_TARGET void amx_softmax(AmxScratch& sc, int64_t len, int64_t rows, float scale) {
  const int64_t lp16 = round_up(len, 16);
  const int64_t lp32 = round_up(len, 32);
  const __m512 neg_inf = _mm512_set1_ps(kNegInf);
  const float a = scale * 1.44269504088896341f;
  const __m512 va = _mm512_set1_ps(a);
  const __mmask16 tail = len % 16 == 0 ? 0xffff : static_cast<__mmask16>((1u << (len % 16)) - 1);
  const int64_t full = len / 16 * 16;
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = sc.s + r * lp16;
    uint16_t* p = sc.p + r * lp32;
    const int64_t full32 = len / 32 * 32;
    __m512 vmax = neg_inf, vmax1 = neg_inf;
    for (int64_t j = 0; j < full32; j += 32) {
      vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + j));
      vmax1 = _mm512_max_ps(vmax1, _mm512_loadu_ps(s + j + 16));
    }
    if (full32 < full) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + full32));
    if (full < len) vmax1 = _mm512_max_ps(vmax1, _mm512_mask_loadu_ps(neg_inf, tail, s + full));
    const __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(vmax, vmax1)) * a);
    __m512 vsum = _mm512_setzero_ps(), vsum1 = _mm512_setzero_ps();
    for (int64_t j = 0; j < full32; j += 32) {
      const __m512 e0 = exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), va, vm));
      const __m512 e1 = exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(s + j + 16), va, vm));
      _mm512_storeu_si512(p + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
      vsum = _mm512_add_ps(vsum, e0);
      vsum1 = _mm512_add_ps(vsum1, e1);
    }
    int64_t j = full32;
    if (j < len) {  // 1-31 keys left: the rest of the row up to lp32, zeros past len
      const int64_t left = len - j;
      const __mmask16 m0 = left >= 16 ? 0xffff : static_cast<__mmask16>((1u << left) - 1);
      const __mmask16 m1 = left <= 16 ? 0 : static_cast<__mmask16>((1u << (left - 16)) - 1);
      const __m512 e0 = _mm512_maskz_mov_ps(m0, exp2_16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m0, s + j), va, vm)));
      const __m512 e1 = _mm512_maskz_mov_ps(m1, exp2_16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m1, s + j + 16), va, vm)));
      _mm512_storeu_si512(p + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
      vsum = _mm512_add_ps(vsum, e0);
      vsum1 = _mm512_add_ps(vsum1, e1);
    }
    vsum = _mm512_add_ps(vsum, vsum1);
    sc.l[r] = _mm512_reduce_add_ps(vsum);
  }
}

// One (sequence, head) item of a bfloat16 step on tiles. Each pass takes 32 query rows as two A
// tiles against two B tiles at a time into four C tiles (tmm0-3: rows 0-15 and 16-31 by two key
// blocks or two output column tiles), so that four products are in flight between loads; a
// pass with 16 rows or fewer uses one A tile.
HERON_AMX_TARGET void amx_attend_item(const EncoderAttentionArgs& a, int64_t seq, int64_t h,
                                      AmxScratch& sc, const uint16_t* kbh, const uint16_t* vbh) {
  const auto* qkv = static_cast<const uint16_t*>(a.qkv);
  auto* out = static_cast<uint16_t*>(a.out);
  const int64_t start = a.starts[seq];
  const int64_t len = a.starts[seq + 1] - start;
  const int64_t limit = a.starts[a.num_seqs];  // rows past it may lie outside qkv
  const int64_t d = a.head_size;
  const int64_t chunks = d / 32;
  const int64_t cols = d / 16;  // even: d is a multiple of 32
  const int64_t lp16 = round_up(len, 16);
  const int64_t lp32 = round_up(len, 32);
  const int64_t blocks = lp16 / 16;
  const int64_t s_stride = lp16 * 4;  // bytes between score rows
  const int64_t p_stride = lp32 * 2;
  const int64_t o_stride = d * 4;
  float* s_hi = sc.s + 16 * lp16;  // rows 16-31
  uint16_t* p_hi = sc.p + 16 * lp32;
  float* o_hi = sc.o + 16 * d;
  for (int64_t i0 = 0; i0 < len; i0 += kBlockRows) {
    const int64_t rows = min64(kBlockRows, len - i0);
    const bool two = rows > kTileRows;
    const uint16_t* q = qkv + (start + i0) * a.qkv_stride + h * d;
    int64_t q_stride = a.qkv_stride * 2;
    const int64_t tile_rows = two ? kBlockRows : kTileRows;
    if (start + i0 + tile_rows > limit) {  // the tiles would read rows that may not exist
      for (int64_t r = 0; r < tile_rows; ++r) {
        uint16_t* dst = sc.q + r * d;
        if (r < rows) {
          std::memcpy(dst, q + r * a.qkv_stride, static_cast<size_t>(d) * 2);
        } else {
          std::memset(dst, 0, static_cast<size_t>(d) * 2);
        }
      }
      q = sc.q;
      q_stride = d * 2;
    }
    const uint16_t* q_hi = q + 16 * (q_stride / 2);
    // Scores, two key blocks per step.
    int64_t blk = 0;
    for (; blk + 2 <= blocks; blk += 2) {
      const uint16_t* k0 = kbh + blk * chunks * kTileElems;
      const uint16_t* k1 = k0 + chunks * kTileElems;
      HERON_AMX_ZERO(0);
      HERON_AMX_ZERO(1);
      if (two) {
        HERON_AMX_ZERO(2);
        HERON_AMX_ZERO(3);
      }
      for (int64_t c = 0; c < chunks; ++c) {
        HERON_AMX_LOAD(4, q + c * 32, q_stride);
        HERON_AMX_LOAD(6, k0 + c * kTileElems, 64);
        HERON_AMX_LOAD(7, k1 + c * kTileElems, 64);
        HERON_AMX_DP(0, 4, 6);
        HERON_AMX_DP(1, 4, 7);
        if (two) {
          HERON_AMX_LOAD(5, q_hi + c * 32, q_stride);
          HERON_AMX_DP(2, 5, 6);
          HERON_AMX_DP(3, 5, 7);
        }
      }
      HERON_AMX_STORE(0, sc.s + blk * 16, s_stride);
      HERON_AMX_STORE(1, sc.s + (blk + 1) * 16, s_stride);
      if (two) {
        HERON_AMX_STORE(2, s_hi + blk * 16, s_stride);
        HERON_AMX_STORE(3, s_hi + (blk + 1) * 16, s_stride);
      }
    }
    if (blk < blocks) {
      const uint16_t* k0 = kbh + blk * chunks * kTileElems;
      HERON_AMX_ZERO(0);
      HERON_AMX_ZERO(2);
      for (int64_t c = 0; c < chunks; ++c) {
        HERON_AMX_LOAD(4, q + c * 32, q_stride);
        HERON_AMX_LOAD(6, k0 + c * kTileElems, 64);
        HERON_AMX_DP(0, 4, 6);
        if (two) {
          HERON_AMX_LOAD(5, q_hi + c * 32, q_stride);
          HERON_AMX_DP(2, 5, 6);
        }
      }
      HERON_AMX_STORE(0, sc.s + blk * 16, s_stride);
      if (two) HERON_AMX_STORE(2, s_hi + blk * 16, s_stride);
    }
    amx_softmax(sc, len, rows, a.scale);
    // P.V, two 16-column tiles of the output per step.
    for (int64_t c0 = 0; c0 < cols; c0 += 2) {
      HERON_AMX_ZERO(0);
      HERON_AMX_ZERO(1);
      if (two) {
        HERON_AMX_ZERO(2);
        HERON_AMX_ZERO(3);
      }
      for (int64_t kb = 0; kb < lp32 / 32; ++kb) {
        const uint16_t* v = vbh + (kb * cols + c0) * kTileElems;
        HERON_AMX_LOAD(4, sc.p + kb * 32, p_stride);
        HERON_AMX_LOAD(6, v, 64);
        HERON_AMX_LOAD(7, v + kTileElems, 64);
        HERON_AMX_DP(0, 4, 6);
        HERON_AMX_DP(1, 4, 7);
        if (two) {
          HERON_AMX_LOAD(5, p_hi + kb * 32, p_stride);
          HERON_AMX_DP(2, 5, 6);
          HERON_AMX_DP(3, 5, 7);
        }
      }
      HERON_AMX_STORE(0, sc.o + c0 * 16, o_stride);
      HERON_AMX_STORE(1, sc.o + (c0 + 1) * 16, o_stride);
      if (two) {
        HERON_AMX_STORE(2, o_hi + c0 * 16, o_stride);
        HERON_AMX_STORE(3, o_hi + (c0 + 1) * 16, o_stride);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const __m512 inv = _mm512_set1_ps(1.0f / sc.l[r]);
      uint16_t* dst = out + (start + i0 + r) * a.out_stride + h * d;
      for (int64_t e = 0; e < d; e += 16) {
        const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(sc.o + r * d + e), inv);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + e), round_bf16x16(x));
      }
    }
  }
}

// Every item of a bfloat16 step on tiles, longest sequence first, over the step's threads.
bool run_amx(const EncoderAttentionArgs& a) {
  auto* order = static_cast<int64_t*>(std::malloc(static_cast<size_t>(a.num_seqs + 1) * 8));
  if (order == nullptr) return false;
  const int64_t seqs = order_by_length(a.starts, a.num_seqs, order);
  const int64_t max_len = seqs > 0 ? int64_t{a.starts[order[0] + 1]} - a.starts[order[0]] : 0;
  // A work unit is two heads of one sequence where the head count is even (see amx_pack_kv).
  const int64_t unit_heads = a.num_heads % 2 == 0 ? 2 : 1;
  const int64_t units_per_seq = a.num_heads / unit_heads;
  const int64_t items = seqs * units_per_seq;
  const int threads = static_cast<int>(min64(a.num_threads < 1 ? 1 : a.num_threads, items));
  bool ok = true;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads)
  {
    AmxScratch sc;
    const bool mine = items > 0 && amx_scratch_alloc(&sc, max_len, a.head_size, unit_heads);
    if (!mine && items > 0) {
#pragma omp atomic write
      ok = false;
    }
    if (mine) amx_configure_full_tiles();
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      if (!mine) continue;
      const int64_t seq = order[it / units_per_seq];
      const int64_t h0 = it % units_per_seq * unit_heads;
      const int64_t start = a.starts[seq];
      const int64_t len = a.starts[seq + 1] - start;
      amx_pack_kv(a, static_cast<const uint16_t*>(a.qkv), start, len, h0, unit_heads, sc);
      for (int64_t hh = 0; hh < unit_heads; ++hh) {
        amx_attend_item(a, seq, h0 + hh, sc, unit_keys(sc, hh, len, a.head_size),
                        unit_values(sc, hh, len, a.head_size));
      }
    }
    if (mine) {
      amx_release_tiles();
      std::free(sc.memory);
    }
  }
  std::free(order);
  return ok;
}
#endif  // HERON_ENCODER_X86 && HERON_AMX_TILE_X86

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

// ---- mean pooling --------------------------------------------------------------------------------
// One pass over each sequence's rows with float32 accumulators; core's reference (a float32 copy
// of the whole step and a scatter into its sums) cost 0.55 ms per 2,048-token MiniLM step.
template <typename T>
void mean_pool_portable(const MeanPoolArgs& a, int64_t s) {
  const T* x = static_cast<const T*>(a.hidden);
  float* out = a.out + s * a.width;
  const int64_t b0 = a.starts[s], b1 = a.starts[s + 1];
  for (int64_t i = 0; i < a.width; ++i) out[i] = 0.0f;
  for (int64_t r = b0; r < b1; ++r) {
    const T* row = x + r * a.stride;
#pragma omp simd
    for (int64_t i = 0; i < a.width; ++i) out[i] += to_float(row[i]);
  }
  const float inv = 1.0f / static_cast<float>(b1 - b0);
  for (int64_t i = 0; i < a.width; ++i) out[i] = b1 > b0 ? out[i] * inv : out[i] / 0.0f;
}

#if defined(HERON_ENCODER_X86)
#define HERON_POOL_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
HERON_POOL_TARGET inline __m512 load_row16(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
HERON_POOL_TARGET inline __m512 load_row16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

// Eight vectors (128 columns) of accumulators in registers per pass over the rows.
template <typename T>
HERON_POOL_TARGET void mean_pool_avx512(const MeanPoolArgs& a, int64_t s) {
  const T* x = static_cast<const T*>(a.hidden);
  float* out = a.out + s * a.width;
  const int64_t b0 = a.starts[s], b1 = a.starts[s + 1];
  const float inv = 1.0f / static_cast<float>(b1 - b0);
  for (int64_t c0 = 0; c0 < a.width; c0 += 128) {
    __m512 acc[8];
    __mmask16 m[8];
    for (int k = 0; k < 8; ++k) {
      acc[k] = _mm512_setzero_ps();
      const int64_t left = a.width - c0 - 16 * k;
      m[k] = left >= 16 ? 0xffff : left <= 0 ? 0 : static_cast<__mmask16>((1u << left) - 1);
    }
    for (int64_t r = b0; r < b1; ++r) {
      const T* row = x + r * a.stride + c0;
      for (int k = 0; k < 8; ++k) acc[k] = _mm512_add_ps(acc[k], load_row16(row + 16 * k, m[k]));
    }
    for (int k = 0; k < 8; ++k) {
      _mm512_mask_storeu_ps(out + c0 + 16 * k, m[k], _mm512_mul_ps(acc[k], _mm512_set1_ps(inv)));
    }
  }
}
#endif

void mean_pool(const MeanPoolArgs& a) {
#if defined(HERON_ENCODER_X86)
  static const bool avx512bw = avx512_supported() && __builtin_cpu_supports("avx512bw") &&
                               __builtin_cpu_supports("avx512vl");
  const bool avx = avx512bw && !a.portable;
#else
  const bool avx = false;
#endif
  const bool parallel = a.num_threads > 1 && a.num_seqs > 1;
#pragma omp parallel for num_threads(a.num_threads) if (parallel) schedule(dynamic, 1)
  for (int64_t s = 0; s < a.num_seqs; ++s) {
#if defined(HERON_ENCODER_X86)
    if (avx && a.starts[s + 1] > a.starts[s]) {
      if (a.bf16) {
        mean_pool_avx512<uint16_t>(a, s);
      } else {
        mean_pool_avx512<float>(a, s);
      }
      continue;
    }
#endif
    (void)avx;
    if (a.bf16) {
      mean_pool_portable<uint16_t>(a, s);
    } else {
      mean_pool_portable<float>(a, s);
    }
  }
}

bool avx512_supported() {
#if defined(HERON_ENCODER_X86)
  static const bool supported = cpu_has_avx512();
  return supported;
#else
  return false;
#endif
}

bool amx_supported() {
#if defined(HERON_ENCODER_AMX)
  return avx512_supported() && gemv::amx_supported();
#else
  return false;
#endif
}

Path encoder_attention(const EncoderAttentionArgs& args, Path path) {
#if defined(HERON_ENCODER_AMX)
  const bool want_amx = path == Path::kAuto || path == Path::kAmx;
  if (want_amx && args.bf16 && args.head_size % 32 == 0 && amx_supported()) {
    if (!run_amx(args)) throw std::bad_alloc();
    return Path::kAmx;
  }
#endif
  const bool avx = path != Path::kPortable && args.head_size % 16 == 0 && avx512_supported();
  const bool ok = args.bf16 ? run<uint16_t>(args, avx) : run<float>(args, avx);
  if (!ok) throw std::bad_alloc();  // after the OpenMP region: never thrown across it
  return avx ? Path::kAvx512 : Path::kPortable;
}

}  // namespace encoder
}  // namespace heron_cpu
