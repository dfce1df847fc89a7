// Packed bf16 GEMM: out[m, n] = sum_k x[m, k] * weight[n, k] (+ bias[n]), for CPUs with
// AVX512-BF16 and without AMX (AMX machines keep oneDNN, whose tile kernels are faster there).
//
// Why a kernel of our own: on such CPUs (AMD Zen 4 is the one measured) oneDNN's bf16 GEMM at a
// decode step's 64 rows runs SmolLM2-135M's projections at 225-375 GFLOP/s with cold weights, and
// each call also pays torch's dispatch. This loop reaches 340-405 GFLOP/s on the same shapes
// (two cores peak at ~465), matches oneDNN at prefill's 2,048 rows, and at one row streams the
// weight faster than the GEMV (benchmarks/bench_gemv.py); one packed copy serves every row count.
//
// - The weight is packed once (heron_cpu/gemm.py) into panels of kPanel = 48 output columns:
//   packed[panel][kk][c][e] = weight[panel * 48 + c][2 * kk + e], zero past N and K. One 64-byte
//   load is then 16 columns x one K pair, the operand vdpbf16ps multiplies with a broadcast pair of
//   x, and a panel is one contiguous stream.
// - The microkernel holds R <= 8 x rows x 48 columns in 24 fp32 accumulators (of 32 registers)
//   for all of K: per K pair, 3 weight loads and R broadcasts feed 3R dot products, so at 8 rows
//   it is bound by the dot-product port, not by loads. Fewer rows (decode with few sequences, the
//   tail of a batch) use the same loop with fewer accumulators; there it is bound by memory.
// - Threads take contiguous ranges of panels; rows go in chunks of kRowChunk so that a panel is
//   reused from L2 by every pass of the chunk.
// - Accumulation is fp32; the bias is added and the result rounded to bf16 once per element, with
//   torch's rounding (nearest even, NaNs kept quiet, no flush of denormals).
//
// Compiled for the baseline ISA like gemv.cpp: the loops are __attribute__((target(...)))
// functions chosen at run time, and every helper has internal linkage (see kernels.cpp's header).

#include "gemm.h"
#include "gemv.h"
#include "scalar_math.h"

#include <omp.h>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define HERON_GEMM_X86 1
#include <immintrin.h>
#endif

namespace heron_cpu {
namespace gemm {
namespace {

#if defined(HERON_GEMM_X86)
constexpr int kRows = 8;           // x rows per microkernel pass
constexpr int64_t kRowChunk = 64;  // x rows whose passes share a panel in L2
// Below this many weight bytes one thread is faster (as in gemv.cpp: waking the team costs about
// what a second thread saves on a small cold weight).
constexpr int64_t kMinParallelBytes = int64_t{64} << 10;

#define HERON_GEMM_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define HERON_GEMM_INLINE inline __attribute__((always_inline))

// float -> bf16 for 16 lanes with float_to_bf16's rule (round to nearest even, quiet NaNs).
HERON_GEMM_TARGET HERON_GEMM_INLINE __m256i round_to_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
}

// 16 bf16 values (fewer under the mask) widened to fp32.
HERON_GEMM_TARGET HERON_GEMM_INLINE __m512 load_bf16(const uint16_t* p, __mmask16 mask) {
  const __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// x rows [m0, m0 + R) against panel p: all of K, then bias, rounding and the (masked) store.
template <int R>
HERON_GEMM_TARGET void panel_rows(const GemmArgs& a, int64_t p, int64_t m0) {
  const int64_t pairs = a.k / 2;
  const uint16_t* w = a.packed + p * ((a.k + 1) / 2) * kPanel * 2;
  const uint16_t* x[R];
  for (int r = 0; r < R; ++r) x[r] = a.x + (m0 + r) * a.x_stride;
  __m512 acc[R][3];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    acc[r][0] = _mm512_setzero_ps();
    acc[r][1] = _mm512_setzero_ps();
    acc[r][2] = _mm512_setzero_ps();
  }
  for (int64_t kk = 0; kk < pairs; ++kk, w += kPanel * 2) {
    const __m512bh w0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w));
    const __m512bh w1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + 32));
    const __m512bh w2 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + 64));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, x[r] + 2 * kk, sizeof pair);
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xv, w1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], xv, w2);
    }
  }
  if (a.k & 1) {
    // Odd K: the last pair holds one real element; its packed partner is zero, and x's is taken as
    // zero instead of read past the row.
    const __m512bh w0 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w));
    const __m512bh w1 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + 32));
    const __m512bh w2 = reinterpret_cast<__m512bh>(_mm512_loadu_si512(w + 64));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(x[r][a.k - 1]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xv, w1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], xv, w2);
    }
  }
  const int64_t n0 = p * kPanel;
  __mmask16 mask[3];
  __m512 bias[3];
#pragma GCC unroll 3
  for (int c = 0; c < 3; ++c) {
    const int64_t left = a.n - n0 - 16 * c;
    mask[c] = left >= 16 ? __mmask16{0xffff} : static_cast<__mmask16>(left > 0 ? (1u << left) - 1 : 0);
    bias[c] = a.bias ? load_bf16(a.bias + n0 + 16 * c, mask[c]) : _mm512_setzero_ps();
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    uint16_t* out = a.out + (m0 + r) * a.out_stride + n0;
#pragma GCC unroll 3
    for (int c = 0; c < 3; ++c) {
      _mm256_mask_storeu_epi16(out + 16 * c, mask[c],
                               round_to_bf16(_mm512_add_ps(acc[r][c], bias[c])));
    }
  }
}

HERON_GEMM_TARGET void panel_all_rows(const GemmArgs& a, int64_t p, int64_t m0, int64_t m1) {
  int64_t m = m0;
  for (; m + kRows <= m1; m += kRows) panel_rows<kRows>(a, p, m);
  switch (m1 - m) {
    case 7: panel_rows<7>(a, p, m); break;
    case 6: panel_rows<6>(a, p, m); break;
    case 5: panel_rows<5>(a, p, m); break;
    case 4: panel_rows<4>(a, p, m); break;
    case 3: panel_rows<3>(a, p, m); break;
    case 2: panel_rows<2>(a, p, m); break;
    case 1: panel_rows<1>(a, p, m); break;
    default: break;
  }
}

// Thread t of count: its contiguous panels, for every chunk of rows.
void thread_share(const GemmArgs& a, int64_t t, int64_t count) {
  const int64_t panels = (a.n + kPanel - 1) / kPanel;
  const int64_t begin = panels * t / count;
  const int64_t end = panels * (t + 1) / count;
  for (int64_t m0 = 0; m0 < a.m; m0 += kRowChunk) {
    const int64_t m1 = min64(m0 + kRowChunk, a.m);
    for (int64_t p = begin; p < end; ++p) panel_all_rows(a, p, m0, m1);
  }
}

#endif  // HERON_GEMM_X86

}  // namespace

// The same instructions as the GEMV's dot-product loop, so the same CPUID check.
bool supported() { return gemv::avx512_bf16_supported(); }

void linear_bf16_packed(const GemmArgs& args) {
#if defined(HERON_GEMM_X86)
  if (args.m <= 0 || args.n <= 0) return;
  const int64_t panels = (args.n + kPanel - 1) / kPanel;
  const bool small = args.n * args.k * 2 < kMinParallelBytes || panels < 2;
  const int threads = small || args.num_threads < 1
                          ? 1
                          : static_cast<int>(min64(args.num_threads, panels));
  if (threads == 1) {
    thread_share(args, 0, 1);
    return;
  }
#pragma omp parallel num_threads(threads)
  thread_share(args, omp_get_thread_num(), omp_get_num_threads());
#else
  (void)args;  // the binding refuses the call where supported() is false
#endif
}

}  // namespace gemm
}  // namespace heron_cpu
