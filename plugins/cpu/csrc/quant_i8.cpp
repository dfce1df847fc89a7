// Quantized linear layers with int8 activations: the integer-dot loops (see quant.h for the
// weight layout).
//
// Why: the fp32 loops of quant.cpp widen every weight to fp32 and spend two to three vector
// instructions per 16 weights on it, which keeps a single decode stream compute-bound rather than
// bandwidth-bound. As llama.cpp does with its Q8 activations, x is quantized here once per call to
// int8 per 32-block (dx = max|x| / 127, qx = round(x / dx)); then a block's product is one integer
// dot product of 32 bytes, VNNI's vpdpbusd (u8 x s8 -> i32, four products per lane), scaled once
// by d_w * dx. Q4 values are unsigned nibbles, the u8 operand as they are; Q8 values are signed,
// so |w| is the u8 operand and x takes w's sign (vpsignb's trick). The Q4 minimum term
// sum_b m_b * sum(x_b) uses the exact fp32 block sums of x, not the quantized ones.
//
// Two loops, chosen at run time: AVX-512 VNNI (two blocks per 512-bit dot, 4 weight rows x up to
// 4 x rows per pass) and AVX-VNNI (the same instruction on 256 bits, one block per dot). Both
// are __attribute__((target(...))) functions in this file, compiled for the baseline ISA.

#include "quant.h"
#include "scalar_math.h"

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

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

// x quantized: qx [m, kp] int8 (kp = k rounded up to 64, zero padded) in the loop's order, dx and
// the fp32 block sums xsum [m, nbp], and dxv [m, nbp / 2, 16]: dx of each 512-bit lane's block.
struct JobI8 {
  const QuantArgs* a;
  const int8_t* qx;
  const float* dx;
  const float* xsum;
  const float* dxv;
  int64_t nb, nbp, kp;  // blocks per row, rounded up to even, k padded
  int64_t row_bytes;
};

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

// Which block of a block pair each 32-bit lane of a 512-bit dot covers. Q4: the low nibbles of
// the pair's 32 bytes fill lanes 0-7 (block 0's values 0-15, then block 1's), the high nibbles
// lanes 8-15 (values 16-31). Q8: the pair's 64 bytes in order.
constexpr int kLaneBlockQ4[16] = {0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1};
constexpr int kLaneBlockQ8[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};

// Quantizes row mi of x into the job's buffers. `pair_order`: Q4's order within a block pair
// (x[0:16] of both blocks, then x[16:32] of both), else the natural one.
void quantize_row(const QuantArgs& a, const JobI8& j, int64_t mi, bool pair_order, float* qxbuf,
                  int8_t* qx, float* dx, float* xsum) {
  const int64_t base = mi * a.x_stride;
  for (int64_t t = 0; t < a.k; ++t) qxbuf[t] = load_act(a.x, base + t, a.dtype);
  std::memset(qx, 0, j.kp);
  for (int64_t b = 0; b < j.nbp; ++b) {
    if (b >= j.nb) {
      dx[b] = 0.0f;
      xsum[b] = 0.0f;
      continue;
    }
    const float* xb = qxbuf + b * kBlock;
    float amax = 0.0f, sum = 0.0f;
    for (int t = 0; t < kBlock; ++t) {
      amax = std::fmax(amax, std::fabs(xb[t]));
      sum += xb[t];
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    dx[b] = d;
    xsum[b] = sum;
    const int64_t pair = b / 2, half = b % 2;
    for (int t = 0; t < kBlock; ++t) {
      // Round half to even (the default rounding mode), as torch.round and vcvtps2dq do.
      const int8_t v = static_cast<int8_t>(std::nearbyint(xb[t] * id));
      int64_t at = b * kBlock + t;
      if (pair_order) at = pair * 64 + (t / 16) * 32 + half * 16 + t % 16;
      qx[at] = v;
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
#define HERON_QV512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")))
#define HERON_QAVXVNNI __attribute__((target("avx2,fma,avxvnni")))
#define HERON_QI8INLINE inline __attribute__((always_inline))

// ---- AVX-512 VNNI ------------------------------------------------------------------------------
// The u8 operand of block pair p (blocks 2p, 2p + 1) of a row; `full` false: only block 2p exists
// (an odd count, the last pair), so nothing past the row is read.
template <Format F>
HERON_QV512 HERON_QI8INLINE __m512i weight_pair512(const uint8_t* q, bool full) {
  if (F == Format::kQ4) {
    const __m256i raw = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q))
                             : _mm256_maskz_loadu_epi8(0xffff, q);
    const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(raw), _mm256_srli_epi16(raw, 4), 1);
    return _mm512_and_si512(both, _mm512_set1_epi8(15));
  }
  return full ? _mm512_loadu_si512(q) : _mm512_maskz_loadu_epi8(0xffffffffULL, q);
}

template <Format F, int R, int XR, bool PREFETCH>
HERON_QV512 HERON_QI8INLINE void tile512(const JobI8& j, int64_t n0, int64_t m0) {
  const QuantArgs& a = *j.a;
  constexpr int64_t pair_bytes = F == Format::kQ4 ? 32 : 64;
  const __m512i lane_block = F == Format::kQ4
      ? _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0)
      : _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const int64_t pairs = j.nbp / 2;
  const uint8_t* q[R];
  const float* d[R];
  for (int r = 0; r < R; ++r) {
    q[r] = a.qs + (n0 + r) * j.row_bytes;
    d[r] = a.d + (n0 + r) * j.nb;
  }
  __m512 acc[R][XR];
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < XR; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  for (int64_t p = 0; p < pairs; ++p) {
    const bool full = 2 * p + 1 < j.nb;
    __m512i w[R];
    __m512 dw[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* qp = q[r] + p * pair_bytes;
      if (PREFETCH && (p * pair_bytes) % 64 == 0) {
        _mm_prefetch(reinterpret_cast<const char*>(qp + kPrefetchRows * j.row_bytes), _MM_HINT_T1);
      }
      w[r] = weight_pair512<F>(qp, full);
      const __m128 d2 = full ? _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(d[r] + 2 * p)))
                             : _mm_load_ss(d[r] + 2 * p);
      dw[r] = _mm512_permutexvar_ps(lane_block, _mm512_castps128_ps512(d2));
    }
    for (int i = 0; i < XR; ++i) {
      const __m512i xq = _mm512_loadu_si512(j.qx + (m0 + i) * j.kp + p * 64);
      const __m512 dxv = _mm512_loadu_ps(j.dxv + ((m0 + i) * pairs + p) * 16);
      for (int r = 0; r < R; ++r) {
        __m512i u = w[r], s = xq;
        if (F == Format::kQ8) {  // |w| x (x with w's sign)
          const __mmask64 neg = _mm512_movepi8_mask(w[r]);
          u = _mm512_abs_epi8(w[r]);
          s = _mm512_mask_sub_epi8(xq, neg, _mm512_setzero_si512(), xq);
        }
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s);
        acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[r], dxv), acc[r][i]);
      }
    }
  }
  if (F == Format::kQ4) {  // + sum_b m_b * sum(x_b), 16 blocks per step
    for (int64_t b = 0; b < j.nb; b += 16) {
      const __mmask16 mask = j.nb - b >= 16 ? __mmask16(0xffff)
                                            : static_cast<__mmask16>((1u << (j.nb - b)) - 1);
      for (int i = 0; i < XR; ++i) {
        const __m512 xs = _mm512_maskz_loadu_ps(mask, j.xsum + (m0 + i) * j.nbp + b);
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
HERON_QV512 void block512(const JobI8& j, int64_t n0) {
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
HERON_QV512 void rows512(const JobI8& j, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) block512<F, 4>(j, n);
  for (; n < n1; ++n) block512<F, 1>(j, n);
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
  RowsFn fn = nullptr;
  int64_t align = 1;
  if (path == Path::kVnni512 && vnni512_supported()) {
    fn = q4 ? rows512<Format::kQ4> : rows512<Format::kQ8>;
    align = 4;
  } else if (path == Path::kAvxVnni && avxvnni_supported()) {
    fn = q4 ? rows256<Format::kQ4> : rows256<Format::kQ8>;
    align = 2;
  }
  if (fn == nullptr) return false;
  if (a.m == 0 || a.n == 0) return true;
  const int64_t nb = a.k / kBlock;
  const int64_t nbp = (nb + 1) / 2 * 2;
  const int64_t kp = nbp * kBlock;
  // One allocation: qx, then dx, xsum, dxv (floats), then an fp32 copy of one x row.
  const size_t qx_bytes = static_cast<size_t>(a.m * kp + 64);
  const size_t floats = static_cast<size_t>(a.m * (2 * nbp + nbp * 8) + a.k + 16);
  char* buf = static_cast<char*>(std::malloc(qx_bytes + floats * sizeof(float)));
  int8_t* qx = reinterpret_cast<int8_t*>(buf);
  float* dx = reinterpret_cast<float*>(buf + qx_bytes);
  float* xsum = dx + a.m * nbp;
  float* dxv = xsum + a.m * nbp;
  float* row = dxv + a.m * nbp * 8;
  const JobI8 job{&a, qx, dx, xsum, dxv, nb, nbp, kp, nb * block_bytes(a.format)};
  // AVX-VNNI's 256-bit Q4 dot takes one block's low and high nibbles: natural order.
  const bool pair_order = q4 && path == Path::kVnni512;
  const int* lane_block = q4 ? kLaneBlockQ4 : kLaneBlockQ8;
  for (int64_t mi = 0; mi < a.m; ++mi) {
    quantize_row(a, job, mi, pair_order, row, qx + mi * kp, dx + mi * nbp, xsum + mi * nbp);
    for (int64_t p = 0; p < nbp / 2; ++p) {
      for (int l = 0; l < 16; ++l) dxv[(mi * (nbp / 2) + p) * 16 + l] = dx[mi * nbp + 2 * p + lane_block[l]];
    }
  }
  run(job, fn, a.num_threads, align);
  std::free(buf);
  return true;
#else
  (void)a;
  (void)path;
  return false;
#endif
}

}  // namespace quant
}  // namespace heron_cpu
