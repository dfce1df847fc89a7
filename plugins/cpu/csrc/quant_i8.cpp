// Quantized linear layers with int8 activations: the integer-dot loops (see quant.h for the
// weight layout).
//
// Why: the fp32 loops of quant.cpp widen every weight to fp32 and spend two to three vector
// instructions per 16 weights on it, which keeps a single decode stream compute-bound rather than
// bandwidth-bound. As llama.cpp does with its Q8 activations, x is quantized here once per call to
// int8 per 32-block (dx = max|x| / 127, qx = round(x / dx)); then a block's product is one integer
// dot product of 32 bytes, VNNI's vpdpbusd (u8 x s8 -> i32, four products per lane), scaled once
// by d_w * dx. Q4 values are unsigned nibbles, the u8 operand as they are; Q8 values are signed,
// so the 256-bit loop takes |w| as the u8 operand and gives x w's sign (vpsignb's trick), the
// AVX-512 one w + 128 and subtracts 128 sum(x) (tile_q8). The Q4 minimum term
// sum_b m_b * sum(x_b) uses the exact fp32 block sums of x, not the quantized ones.
//
// Two loops, chosen at run time: AVX-512 VNNI (4 weight rows x up to 4 x rows per pass; Q4: four
// blocks per 64-byte load, their low and high nibbles two dots summed in int32, x laid out to
// match; Q8: a block pair per dot) and AVX-VNNI (the same instruction on 256 bits, one block per
// dot). Both are __attribute__((target(...))) functions in this file, compiled for the baseline
// ISA. The AVX-512 loop reads GGUF scales in their f16 (QuantArgs::d16) where the caller has them,
// and quantizes x with vector instructions into a per-thread buffer: at one row of x a call's
// fixed costs (not the weight's bytes) were a third of a 576-wide product.

#include "quant.h"
#include "scalar_math.h"

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HERON_QI8_X86 1
#include <immintrin.h>
#endif

namespace heron_cpu {
namespace quant {
namespace {

constexpr int64_t kMinParallelBytes = int64_t{48} << 10;  // as quant.cpp
constexpr int64_t kXRows = 4;
constexpr int64_t kPrefetchRows = 16;

// x quantized for one call: qx [m, kp] int8 (kp = nbp * 32, zero padded) in the loop's order
// (below), dx and the fp32 block sums xsum [m, nbp], and dxv [m, nbp / group, 16]: the dx of each
// 512-bit lane's block, for the AVX-512 loops (group: blocks per 512-bit dot, 4 for Q4, 2 for Q8).
struct JobI8 {
  const QuantArgs* a;
  const int8_t* qx;
  const float* dx;
  const float* xsum;
  const float* dxv;
  const int32_t* xneg;  // AVX-512 Q8: [m, nbp / 2, 16], -128 x the sum of each lane's 4 x bytes
  int64_t nb, nbp, kp;  // blocks per row, rounded up to the group, k padded
  int64_t row_bytes;
};

// Where x's values sit in qx. kNatural: value t of block b at 32 b + t (the 256-bit loop, and
// the AVX-512 Q8 loop, whose 64-byte weight load is a block pair in order). kQuad (the AVX-512 Q4
// loop): a 64-byte load of a row's nibbles holds 4 blocks, whose low nibbles (values 0-15) are one
// 512-bit operand and high nibbles (16-31) another, block i of the quad in lanes 4i..4i+3 of
// both; so x's values 0-15 of the quad's 4 blocks come first (16 bytes each), then 16-31.
enum class Order { kNatural, kQuad };

inline int64_t qx_at(Order order, int64_t b, int64_t t) {
  if (order == Order::kNatural) return b * kBlock + t;
  return (b / 4) * 128 + (t / 16) * 64 + (b % 4) * 16 + t % 16;
}

inline float load_act(const void* p, int64_t i, DType dtype) {
  return dtype == DType::kBFloat16 ? bf16_to_float(static_cast<const uint16_t*>(p)[i])
                                   : static_cast<const float*>(p)[i];
}

inline void store(const QuantArgs& a, int64_t mi, int64_t n, float v) {
  if (a.bias) v += load_act(a.bias, n, a.dtype);
  if (a.dtype == DType::kBFloat16) {
    static_cast<uint16_t*>(a.out)[mi * a.n + n] = float_to_bf16(v);
  } else {
    static_cast<float*>(a.out)[mi * a.n + n] = v;
  }
}

// Quantizes row mi of x into the job's buffers (the portable form; the AVX-512 loop has its own,
// which rounds every value the same way and sums each block in another order).
void quantize_row(const QuantArgs& a, const JobI8& j, int64_t mi, Order order, float* row,
                  int8_t* qx, float* dx, float* xsum) {
  const int64_t base = mi * a.x_stride;
  for (int64_t t = 0; t < a.k; ++t) row[t] = load_act(a.x, base + t, a.dtype);
  std::memset(qx, 0, j.kp);
  for (int64_t b = 0; b < j.nbp; ++b) {
    if (b >= j.nb) {
      dx[b] = 0.0f;
      xsum[b] = 0.0f;
      continue;
    }
    const float* xb = row + b * kBlock;
    float amax = 0.0f, sum = 0.0f;
    for (int t = 0; t < kBlock; ++t) {
      amax = std::fmax(amax, std::fabs(xb[t]));
      sum += xb[t];
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    dx[b] = d;
    xsum[b] = sum;
    for (int t = 0; t < kBlock; ++t) {
      // Round half to even (the default rounding mode), as torch.round and vcvtps2dq do.
      qx[qx_at(order, b, t)] = static_cast<int8_t>(std::nearbyint(xb[t] * id));
    }
  }
}

using RowsFn = void (*)(const JobI8& job, int64_t n0, int64_t n1);

void run(const JobI8& job, RowsFn fn, int num_threads, int64_t align) {
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

#if defined(HERON_QI8_X86)
#define HERON_QV512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
#define HERON_QAVXVNNI __attribute__((target("avx2,fma,avxvnni")))
#define HERON_QI8INLINE inline __attribute__((always_inline))

// ---- AVX-512 VNNI ------------------------------------------------------------------------------
// x quantized with 16 lanes per step: the same values, scales and rounding as quantize_row
// (vcvtps2dq rounds half to even like nearbyint); only each block's fp32 sum is added in another
// order. No allocation and no scalar loop per value: at one row this ran 2 us of a 576-wide
// product's 10 (6 us at K = 1536).
HERON_QV512 void quantize512(const QuantArgs& a, const JobI8& j, Order order, int group,
                             int8_t* qx, float* dx, float* xsum, float* dxv, int32_t* xneg) {
  const int64_t groups = j.nbp / group;
  for (int64_t mi = 0; mi < a.m; ++mi) {
    int8_t* q = qx + mi * j.kp;
    float* d = dx + mi * j.nbp;
    float* s = xsum + mi * j.nbp;
    std::memset(q, 0, j.kp);
    for (int64_t b = 0; b < j.nbp; ++b) {
      if (b >= j.nb) {
        d[b] = 0.0f;
        s[b] = 0.0f;
        continue;
      }
      const int64_t at = mi * a.x_stride + b * kBlock;
      __m512 v0, v1;
      if (a.dtype == DType::kBFloat16) {
        const __m512i raw = _mm512_loadu_si512(static_cast<const uint16_t*>(a.x) + at);
        v0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(raw)), 16));
        v1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(raw, 1)), 16));
      } else {
        v0 = _mm512_loadu_ps(static_cast<const float*>(a.x) + at);
        v1 = _mm512_loadu_ps(static_cast<const float*>(a.x) + at + 16);
      }
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      const float db = amax / 127.0f;
      const __m512 id = _mm512_set1_ps(db != 0.0f ? 1.0f / db : 0.0f);
      d[b] = db;
      s[b] = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
      const __m128i q0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, id)));
      const __m128i q1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, id)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + qx_at(order, b, 0)), q0);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + qx_at(order, b, 16)), q1);
    }
    if (xneg != nullptr) {  // the Q8 loop's offset term (tile_q8), one vpdpbusd per block pair
      for (int64_t p = 0; p < j.nbp / 2; ++p) {
        const __m512i xq = _mm512_loadu_si512(q + p * 64);
        const __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), xq);
        _mm512_storeu_si512(xneg + (mi * (j.nbp / 2) + p) * 16,
                            _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sums, 7)));
      }
    }
    const int lanes_per_block = 16 / group;
    for (int64_t g = 0; g < groups; ++g) {
      for (int l = 0; l < 16; ++l) dxv[(mi * groups + g) * 16 + l] = d[g * group + l / lanes_per_block];
    }
  }
}

// The 4 (or, at a row's end, `count`) scales of blocks b..b+3 of one row, from f16 or fp32.
template <bool F16>
HERON_QV512 HERON_QI8INLINE __m128 scales4(const QuantArgs& a, int64_t at, int count) {
  if (F16) {
    const uint16_t* p = a.d16 + at;
    return _mm_cvtph_ps(count == 4 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))
                                   : _mm_maskz_loadu_epi16(static_cast<__mmask8>((1u << count) - 1), p));
  }
  const float* p = a.d + at;
  return count == 4 ? _mm_loadu_ps(p) : _mm_maskz_loadu_ps(static_cast<__mmask8>((1u << count) - 1), p);
}

// 16 (or `count`) values of a row's d or mins from block b, from f16 or fp32.
template <bool F16>
HERON_QV512 HERON_QI8INLINE __m512 values16(const uint16_t* p16, const float* p32, int64_t at,
                                            int64_t count) {
  const __mmask16 mask = count >= 16 ? __mmask16(0xffff) : static_cast<__mmask16>((1u << count) - 1);
  if (F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p16 + at));
  return _mm512_maskz_loadu_ps(mask, p32 + at);
}

// Q4: R weight rows from n0 against XR x rows from m0. One 64-byte load holds 4 blocks of a row;
// its low and high nibbles are two u8 operands against x's two 64-byte halves (Order::kQuad),
// summed exactly in int32 (at most 2 x 4 x 15 x 127 per lane), so 128 weights cost two vpdpbusd,
// one conversion and one fma per x row, with one scale vector per row.
template <int R, int XR, bool PREFETCH, bool F16>
HERON_QV512 HERON_QI8INLINE void tile_q4(const JobI8& j, int64_t n0, int64_t m0) {
  const QuantArgs& a = *j.a;
  const __m512i lane_block = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  const __m512i low = _mm512_set1_epi8(15);
  const int64_t groups = j.nbp / 4, full = j.nb / 4;
  const int tail = static_cast<int>(j.nb % 4);
  const __mmask64 tail_bytes = (uint64_t{1} << (16 * tail)) - 1;
  const uint8_t* q[R];
  for (int r = 0; r < R; ++r) q[r] = a.qs + (n0 + r) * j.row_bytes;
  __m512 acc[R][XR];
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < XR; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    const bool whole = g < full;
    __m512i lo[R], hi[R];
    __m512 dw[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* qg = q[r] + g * 64;
      if (PREFETCH) {
        _mm_prefetch(reinterpret_cast<const char*>(qg + kPrefetchRows * j.row_bytes), _MM_HINT_T1);
      }
      const __m512i raw = whole ? _mm512_loadu_si512(qg) : _mm512_maskz_loadu_epi8(tail_bytes, qg);
      lo[r] = _mm512_and_si512(raw, low);
      hi[r] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
      const __m128 d4 = scales4<F16>(a, (n0 + r) * j.nb + g * 4, whole ? 4 : tail);
      dw[r] = _mm512_permutexvar_ps(lane_block, _mm512_castps128_ps512(d4));
    }
    for (int i = 0; i < XR; ++i) {
      const int8_t* xg = j.qx + (m0 + i) * j.kp + g * 128;
      const __m512i xlo = _mm512_loadu_si512(xg);
      const __m512i xhi = _mm512_loadu_si512(xg + 64);
      const __m512 dxv = _mm512_loadu_ps(j.dxv + ((m0 + i) * groups + g) * 16);
      for (int r = 0; r < R; ++r) {
        const __m512i dot =
            _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[r], xlo), hi[r], xhi);
        acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[r], dxv), acc[r][i]);
      }
    }
  }
  // + sum_b m_b * sum(x_b), 16 blocks per step
  for (int64_t b = 0; b < j.nb; b += 16) {
    for (int i = 0; i < XR; ++i) {
      const __m512 xs = values16<false>(nullptr, j.xsum, (m0 + i) * j.nbp + b, j.nb - b);
      for (int r = 0; r < R; ++r) {
        const __m512 mv = values16<F16>(a.mins16, a.mins, (n0 + r) * j.nb + b, j.nb - b);
        acc[r][i] = _mm512_fmadd_ps(mv, xs, acc[r][i]);
      }
    }
  }
  for (int i = 0; i < XR; ++i) {
    for (int r = 0; r < R; ++r) store(a, m0 + i, n0 + r, _mm512_reduce_add_ps(acc[r][i]));
  }
}

// Q8: a block pair (64 bytes, natural order) per dot. vpdpbusd multiplies u8 by s8 and the
// values are signed, so the u8 operand is w + 128 (one xor) and the dot starts from
// -128 sum(x) per lane (JobI8::xneg, once per call): sum((w + 128) x) - 128 sum(x) = sum(w x),
// the same int32 as before, in 2 instructions per pair and row instead of 4 (sign and abs).
template <int R, int XR, bool PREFETCH, bool F16>
HERON_QV512 HERON_QI8INLINE void tile_q8(const JobI8& j, int64_t n0, int64_t m0) {
  const QuantArgs& a = *j.a;
  const __m512i lane_block = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const int64_t pairs = j.nbp / 2;
  const uint8_t* q[R];
  for (int r = 0; r < R; ++r) q[r] = a.qs + (n0 + r) * j.row_bytes;
  __m512 acc[R][XR];
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < XR; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < pairs; ++p) {
    const bool full = 2 * p + 1 < j.nb;  // else only block 2p exists: nothing past the row read
    __m512i w[R];
    __m512 dw[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* qp = q[r] + p * 64;
      if (PREFETCH) {
        _mm_prefetch(reinterpret_cast<const char*>(qp + kPrefetchRows * j.row_bytes), _MM_HINT_T1);
      }
      const __m512i raw = full ? _mm512_loadu_si512(qp) : _mm512_maskz_loadu_epi8(0xffffffffULL, qp);
      w[r] = _mm512_xor_si512(raw, _mm512_set1_epi8(static_cast<char>(0x80)));  // w + 128 as u8
      const __m128 d2 = scales4<F16>(a, (n0 + r) * j.nb + 2 * p, full ? 2 : 1);
      dw[r] = _mm512_permutexvar_ps(lane_block, _mm512_castps128_ps512(d2));
    }
    for (int i = 0; i < XR; ++i) {
      const __m512i xq = _mm512_loadu_si512(j.qx + (m0 + i) * j.kp + p * 64);
      const __m512 dxv = _mm512_loadu_ps(j.dxv + ((m0 + i) * pairs + p) * 16);
      const __m512i start = _mm512_loadu_si512(j.xneg + ((m0 + i) * pairs + p) * 16);
      for (int r = 0; r < R; ++r) {
        const __m512i dot = _mm512_dpbusd_epi32(start, w[r], xq);
        acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[r], dxv), acc[r][i]);
      }
    }
  }
  for (int i = 0; i < XR; ++i) {
    for (int r = 0; r < R; ++r) store(a, m0 + i, n0 + r, _mm512_reduce_add_ps(acc[r][i]));
  }
}

template <Format F, int R, int XR, bool PREFETCH, bool F16>
HERON_QV512 HERON_QI8INLINE void tile512(const JobI8& j, int64_t n0, int64_t m0) {
  if (F == Format::kQ4) {
    tile_q4<R, XR, PREFETCH, F16>(j, n0, m0);
  } else {
    tile_q8<R, XR, PREFETCH, F16>(j, n0, m0);
  }
}

template <Format F, int R, bool F16>
HERON_QV512 void block512(const JobI8& j, int64_t n0) {
  const int64_t m = j.a->m;
  int64_t m0 = 0;
  for (; m0 + kXRows <= m; m0 += kXRows) {
    if (m0 == 0) {
      tile512<F, R, kXRows, true, F16>(j, n0, m0);
    } else {
      tile512<F, R, kXRows, false, F16>(j, n0, m0);
    }
  }
  const bool first = m0 == 0;
  switch (m - m0) {
    case 1: first ? tile512<F, R, 1, true, F16>(j, n0, m0) : tile512<F, R, 1, false, F16>(j, n0, m0); break;
    case 2: first ? tile512<F, R, 2, true, F16>(j, n0, m0) : tile512<F, R, 2, false, F16>(j, n0, m0); break;
    case 3: first ? tile512<F, R, 3, true, F16>(j, n0, m0) : tile512<F, R, 3, false, F16>(j, n0, m0); break;
    default: break;
  }
}

template <Format F, bool F16>
HERON_QV512 void rows512(const JobI8& j, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) block512<F, 4, F16>(j, n);
  for (; n < n1; ++n) block512<F, 1, F16>(j, n);
}

// ---- AVX-VNNI (256 bits) -----------------------------------------------------------------------
// One block per dot: Q4's 16 bytes give the low nibbles (values 0-15) in lanes 0-3 and the high
// ones (16-31) in lanes 4-7, so x stays in natural order and a block's scale is one broadcast.
template <Format F, int R, int XR>
HERON_QAVXVNNI HERON_QI8INLINE void tile256(const JobI8& j, int64_t n0, int64_t m0) {
  const QuantArgs& a = *j.a;
  constexpr int64_t bb = F == Format::kQ4 ? kBlock / 2 : kBlock;
  __m256 acc[R][XR];
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < XR; ++i) acc[r][i] = _mm256_setzero_ps();
  }
  for (int64_t b = 0; b < j.nb; ++b) {
    for (int r = 0; r < R; ++r) {
      const uint8_t* qb = a.qs + (n0 + r) * j.row_bytes + b * bb;
      __m256i w;
      if (F == Format::kQ4) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qb));
        w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(15));
      } else {
        w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qb));
      }
      const float dw = a.d[(n0 + r) * j.nb + b];
      for (int i = 0; i < XR; ++i) {
        const int64_t mi = m0 + i;
        __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(j.qx + mi * j.kp + b * kBlock));
        __m256i u = w;
        if (F == Format::kQ8) {
          xq = _mm256_sign_epi8(xq, w);
          u = _mm256_sign_epi8(w, w);
        }
        const __m256i dot = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, xq);
        const __m256 scale = _mm256_set1_ps(dw * j.dx[mi * j.nbp + b]);
        acc[r][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r][i]);
      }
    }
  }
  for (int i = 0; i < XR; ++i) {
    for (int r = 0; r < R; ++r) {
      const __m256 v = acc[r][i];
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
      s = _mm_add_ps(s, _mm_movehl_ps(s, s));
      s = _mm_add_ss(s, _mm_movehdup_ps(s));
      float total = _mm_cvtss_f32(s);
      if (F == Format::kQ4) {
        const float* mins = a.mins + (n0 + r) * j.nb;
        const float* xs = j.xsum + (m0 + i) * j.nbp;
        for (int64_t b = 0; b < j.nb; ++b) total += mins[b] * xs[b];
      }
      store(a, m0 + i, n0 + r, total);
    }
  }
}

template <Format F, int R>
HERON_QAVXVNNI void block256(const JobI8& j, int64_t n0) {
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
HERON_QAVXVNNI void rows256(const JobI8& j, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) block256<F, 2>(j, n);
  for (; n < n1; ++n) block256<F, 1>(j, n);
}
#endif  // HERON_QI8_X86

}  // namespace

bool vnni512_supported() {
#if defined(HERON_QI8_X86)
  static const bool ok = avx512_supported() && __builtin_cpu_supports("avx512vnni");
  return ok;
#else
  return false;
#endif
}

bool avxvnni_supported() {
#if defined(HERON_QI8_X86) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
  static const bool ok = avx2_supported() && __builtin_cpu_supports("avxvnni");
  return ok;
#else
  return false;
#endif
}

bool linear_i8(const QuantArgs& a, Path path) {
#if defined(HERON_QI8_X86)
  const bool q4 = a.format == Format::kQ4;
  // f16 scales only where every array the loop reads has them (the pack step sets both or none).
  const bool f16 = a.d16 != nullptr && (!q4 || a.mins16 != nullptr);
  const bool wide = path == Path::kVnni512 && vnni512_supported();
  RowsFn fn = nullptr;
  int64_t align = 1;
  if (wide) {
    fn = q4 ? (f16 ? rows512<Format::kQ4, true> : rows512<Format::kQ4, false>)
            : (f16 ? rows512<Format::kQ8, true> : rows512<Format::kQ8, false>);
    align = 4;
  } else if (path == Path::kAvxVnni && avxvnni_supported()) {
    fn = q4 ? rows256<Format::kQ4> : rows256<Format::kQ8>;
    align = 2;
  }
  if (fn == nullptr) return false;
  if (a.m == 0 || a.n == 0) return true;
  // The AVX-512 Q4 loop takes 4 blocks per dot (Order::kQuad), the others 2 or 1.
  const int group = wide && q4 ? 4 : 2;
  const Order order = wide && q4 ? Order::kQuad : Order::kNatural;
  const int64_t nb = a.k / kBlock;
  const int64_t nbp = (nb + group - 1) / group * group;
  const int64_t kp = nbp * kBlock;
  // One buffer per calling thread, kept between calls: qx, then dx, xsum, dxv (floats), then an
  // fp32 copy of one x row (the portable quantizer's).
  const size_t qx_bytes = static_cast<size_t>(a.m * kp + 64);
  const size_t floats = static_cast<size_t>(a.m * (2 * nbp + 2 * nbp * 8) + a.k + 16);
  thread_local std::vector<float> scratch;
  const size_t need = qx_bytes / sizeof(float) + 1 + floats;
  if (scratch.size() < need) scratch.resize(need);
  char* buf = reinterpret_cast<char*>(scratch.data());
  int8_t* qx = reinterpret_cast<int8_t*>(buf);
  float* dx = reinterpret_cast<float*>(buf + (qx_bytes / sizeof(float) + 1) * sizeof(float));
  float* xsum = dx + a.m * nbp;
  float* dxv = xsum + a.m * nbp;
  int32_t* xneg = reinterpret_cast<int32_t*>(dxv + a.m * nbp * 8);
  float* row = dxv + 2 * a.m * nbp * 8;
  const JobI8 job{&a, qx, dx, xsum, dxv, xneg, nb, nbp, kp, nb * block_bytes(a.format)};
  if (wide) {
    quantize512(a, job, order, group, qx, dx, xsum, dxv, q4 ? nullptr : xneg);
  } else {
    for (int64_t mi = 0; mi < a.m; ++mi) {
      quantize_row(a, job, mi, order, row, qx + mi * kp, dx + mi * nbp, xsum + mi * nbp);
    }
  }
  run(job, fn, a.num_threads, align);
  return true;
#else
  (void)a;
  (void)path;
  return false;
#endif
}

}  // namespace quant
}  // namespace heron_cpu
