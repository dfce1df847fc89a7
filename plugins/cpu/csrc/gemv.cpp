// Small-batch bf16 linear layer (GEMV): out[m, n] = sum_k x[m, k] * weight[n, k] (+ bias[n]).
//
// Why a kernel of our own: at decode the product has 1-8 rows of x, so every weight byte is read
// once per call and used for 1-8 multiply-adds. The speed is the memory bandwidth the loop keeps
// busy, and a general GEMM (oneDNN) tuned for reuse leaves much of it idle at one row. This code
// only has to keep enough cache-line misses in flight without becoming compute-bound:
//
// - Each thread streams one contiguous slice of the weight rows (a static split of n: the work is
//   uniform, and a contiguous slice is one stream for the hardware prefetchers).
// - Blocks of weight rows are processed together so that each x load feeds several dot products,
//   and the next blocks are software-prefetched while this one is computed (the L2 streamer alone
//   ramps up too slowly on short rows such as K = 576, 1152 bytes).
// - Accumulation is fp32; the result is rounded to bf16 once, after the bias is added.
//
// Three loops, picked per call (see linear_bf16). Cold-weight bandwidth on 2 Sapphire Rapids cores
// (roof ~30 GB/s), SmolLM2-135M's shapes:
// - AVX512-BF16 (_mm512_dpbf16_ps): 4 weight rows x up to 4 x rows per pass. 25-31 GB/s at one x
//   row, 22-27 at two, but one dpbf16 (32 multiply-adds) issues only every other cycle here
//   (measured: throughput 2 cycles, latency 8), so from about 4 x rows it is compute-bound
//   (19-24 GB/s at 4, 13-16 at 8).
// - AMX-BF16 tiles: a 16-row x 32-column block of the weight, loaded in place as the A tile (rows
//   at stride K), times x packed as the B tile (up to 16 x rows). One tdpbf16ps consumes 1 KiB of
//   weight whatever the number of x rows, so it is memory-bound at every row count up to 16:
//   19-25 GB/s. It streams somewhat slower than dpbf16 (its tile loads gather 16 rows at stride K;
//   no prefetch pattern we tried closed the gap), so it takes over from 4 x rows.
// - Portable C++ (fp32 accumulate, `omp simd`) for CPUs without AVX512-BF16.
//
// The x86 loops live in functions with __attribute__((target(...))) (AVX-512) or in inline
// assembly (AMX) rather than in an object compiled with -mavx512bf16, so this one file, compiled
// for the baseline ISA, also holds the portable loop. Every helper has internal linkage and no
// standard-library template is used: see the note at the top of kernels.cpp about weak symbols.

#include "gemv.h"
#include "amx_tile.h"
#include "scalar_math.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define HERON_GEMV_X86 1
#include <cpuid.h>
#include <immintrin.h>  // intrinsics are always-inline; usable inside target("...") functions
#endif

// Tuning knobs, measured with cold weights on a 2-core Sapphire Rapids VM (see
// benchmarks/bench_gemv.py); overridable with -D for experiments. Prefetching into L2 (T1) beat
// L1 (T0) at 2+ x rows: an L1 prefetch holds one of the core's few fill buffers until its line
// arrives, and the loop's own loads need them too.
#ifndef HERON_GEMV_PREFETCH_HINT
#define HERON_GEMV_PREFETCH_HINT _MM_HINT_T1
#endif
// The distance: 8 rows was best on Sapphire Rapids; on a 2-core AMD EPYC (Zen 4) VM 16 rows gave
// 7-8 % more single-stream decode (heron bench latency, same-hour A/B twice), 32 only helped the
// long lm_head stream.
#ifndef HERON_GEMV_PREFETCH_ROWS
#define HERON_GEMV_PREFETCH_ROWS 16  // prefetch distance of the dpbf16 loop, in weight rows
#endif
#ifndef HERON_GEMV_AMX_PREFETCH_ROWS
#define HERON_GEMV_AMX_PREFETCH_ROWS 32  // and of the AMX loop
#endif
#ifndef HERON_GEMV_AMX_MIN_ROWS
#define HERON_GEMV_AMX_MIN_ROWS 4  // fewest x rows for which Path::kAuto takes the AMX loop
#endif

namespace heron_cpu {
namespace gemv {
namespace {

// Weight rows per dpbf16 block: they share each x load. Four rows times up to four x rows is 16
// accumulators, leaving registers for the weight and x vectors (AVX-512 has 32).
constexpr int64_t kRows = 4;
// x rows per pass over a dpbf16 block; more rows take further passes over the block (then in L1).
constexpr int64_t kXRows = 4;
// AMX: a tile holds 16 rows of 64 bytes, so a block is 16 weight rows by 32 bf16 columns and a pass
// serves up to 16 x rows (the B tile's 16 columns of fp32 pairs).
constexpr int64_t kTileRows = 16;
constexpr int64_t kTileK = 32;
// Below this many weight bytes one thread is faster: waking the team and joining it costs about a
// microsecond, what a second thread saves on a cold 64 KiB weight (measured: 36 KiB 4.8 us on one
// thread, 5.6 us on two; 126 KiB 10.6 us and 9.2 us).
constexpr int64_t kMinParallelBytes = int64_t{64} << 10;

// out[m0 + i, n0 + r] = sums[i * row_stride + r * col_stride] + bias[n0 + r], rounded to bf16.
inline void store_sums(const GemvArgs& a, int64_t n0, int64_t rows, int64_t m0, int64_t x_rows,
                       const float* sums, int64_t row_stride, int64_t col_stride) {
  for (int64_t i = 0; i < x_rows; ++i) {
    uint16_t* out = a.out + (m0 + i) * a.out_stride + n0;
    for (int64_t r = 0; r < rows; ++r) {
      const float b = a.bias ? bf16_to_float(a.bias[n0 + r]) : 0.0f;
      out[r] = float_to_bf16(sums[i * row_stride + r * col_stride] + b);
    }
  }
}

// Computes weight rows [n0, n1) for every x row of the job behind ctx.
using RowsFn = void (*)(const void* ctx, int64_t n0, int64_t n1);

// Runs fn over weight rows [0, n): on one thread for small weights, else split statically into
// contiguous slices aligned to `align` rows, one per thread. Each thread calls fn once, so fn may
// hold per-thread state (the AMX tile configuration) for the whole slice.
void run(const void* ctx, RowsFn fn, int64_t n, int64_t k, int num_threads, int64_t align) {
  const int64_t blocks = (n + align - 1) / align;
  const bool small = n * k * 2 < kMinParallelBytes || blocks < 2;
  const int threads = small || num_threads < 1 ? 1 : static_cast<int>(min64(num_threads, blocks));
  if (threads == 1) {
    fn(ctx, 0, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num();
    const int64_t count = omp_get_num_threads();
    const int64_t begin = blocks * t / count * align;
    const int64_t end = min64(blocks * (t + 1) / count * align, n);
    if (begin < end) fn(ctx, begin, end);
  }
}

// ---- Portable path ----------------------------------------------------------------------------
// One weight row at a time against every x row (the weight row stays in L1 across them); `omp
// simd` lets the compiler reorder the fp32 sum into vector lanes.
void rows_portable(const void* ctx, int64_t n0, int64_t n1) {
  const GemvArgs& a = *static_cast<const GemvArgs*>(ctx);
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* w = a.weight + n * a.k;
    for (int64_t m = 0; m < a.m; ++m) {
      const uint16_t* x = a.x + m * a.x_stride;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < a.k; ++j) s += bf16_to_float(w[j]) * bf16_to_float(x[j]);
      store_sums(a, n, 1, m, 1, &s, 0, 0);
    }
  }
}

#if defined(HERON_GEMV_X86)
// ---- AVX512-BF16 path -------------------------------------------------------------------------
#define HERON_GEMV_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define HERON_GEMV_INLINE inline __attribute__((always_inline))

HERON_GEMV_TARGET HERON_GEMV_INLINE __m512 dot(__m512 acc, __m512i w, __m512i x) {
  return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(w), reinterpret_cast<__m512bh>(x));
}

// The four horizontal sums of a, b, c, d as one 128-bit vector: two rounds of unpack + add pair
// the lanes up, then two of shuffle + add sum the four 128-bit quarters (10 instructions instead
// of 4 x 8 for four separate reductions).
HERON_GEMV_TARGET HERON_GEMV_INLINE __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512d ab_d = _mm512_castps_pd(ab);
  const __m512d cd_d = _mm512_castps_pd(cd);
  __m512 abcd = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(ab_d, cd_d)),
                              _mm512_castpd_ps(_mm512_unpackhi_pd(ab_d, cd_d)));
  abcd = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, _MM_SHUFFLE(1, 0, 3, 2)));
  abcd = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_castps512_ps128(abcd);
}

// One tile: R weight rows from n0 against XR x rows from m0, over all of K. PREFETCH is false on
// the second and later x passes over the same block (its prefetches were issued by the first).
template <int R, int XR, bool PREFETCH>
HERON_GEMV_TARGET HERON_GEMV_INLINE void dp_tile(const GemvArgs& a, int64_t n0, int64_t m0) {
  const int64_t k = a.k;
  const uint16_t* w = a.weight + n0 * k;
  const uint16_t* x[XR];
  for (int i = 0; i < XR; ++i) x[i] = a.x + (m0 + i) * a.x_stride;
  const int64_t ahead = HERON_GEMV_PREFETCH_ROWS * k;  // elements
  __m512 acc[R][XR];
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < XR; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  int64_t j = 0;
  for (; j + 32 <= k; j += 32) {
    __m512i wv[R];
    for (int r = 0; r < R; ++r) {
      // Prefetch never faults, so running past the end of the weight is harmless.
      const char* line = reinterpret_cast<const char*>(w + r * k + j + ahead);
      if (PREFETCH) _mm_prefetch(line, HERON_GEMV_PREFETCH_HINT);
      wv[r] = _mm512_loadu_si512(w + r * k + j);
    }
    for (int i = 0; i < XR; ++i) {
      const __m512i xv = _mm512_loadu_si512(x[i] + j);
      for (int r = 0; r < R; ++r) acc[r][i] = dot(acc[r][i], wv[r], xv);
    }
  }
  if (j < k) {
    // K tail: masked loads read zeros past the row (without touching that memory), and 0 * 0
    // adds nothing.
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (k - j)) - 1);
    __m512i wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_epi16(mask, w + r * k + j);
    for (int i = 0; i < XR; ++i) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, x[i] + j);
      for (int r = 0; r < R; ++r) acc[r][i] = dot(acc[r][i], wv[r], xv);
    }
  }
  float sums[kXRows * kRows];
  const __m512 zero = _mm512_setzero_ps();
  for (int i = 0; i < XR; ++i) {
    // Fewer than four rows (the row tail) pad with zeros: rare, so one code path.
    _mm_storeu_ps(sums + i * kRows, hsum4(acc[0][i], R > 1 ? acc[R > 1 ? 1 : 0][i] : zero,
                                          R > 2 ? acc[R > 2 ? 2 : 0][i] : zero,
                                          R > 3 ? acc[R > 3 ? 3 : 0][i] : zero));
  }
  store_sums(a, n0, R, m0, XR, sums, kRows, 1);
}

// All x rows against the R weight rows at n0, kXRows x rows per pass.
template <int R>
HERON_GEMV_TARGET void dp_block(const GemvArgs& a, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + kXRows <= a.m; m0 += kXRows) {
    if (m0 == 0) {
      dp_tile<R, kXRows, true>(a, n0, m0);
    } else {
      dp_tile<R, kXRows, false>(a, n0, m0);
    }
  }
  const bool first = m0 == 0;
  switch (a.m - m0) {
    case 1: first ? dp_tile<R, 1, true>(a, n0, m0) : dp_tile<R, 1, false>(a, n0, m0); break;
    case 2: first ? dp_tile<R, 2, true>(a, n0, m0) : dp_tile<R, 2, false>(a, n0, m0); break;
    case 3: first ? dp_tile<R, 3, true>(a, n0, m0) : dp_tile<R, 3, false>(a, n0, m0); break;
    default: break;
  }
}

HERON_GEMV_TARGET void dp_rows(const GemvArgs& a, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + kRows <= n1; n += kRows) dp_block<kRows>(a, n);
  for (; n < n1; ++n) dp_block<1>(a, n);
}

void rows_avx512(const void* ctx, int64_t n0, int64_t n1) {
  dp_rows(*static_cast<const GemvArgs*>(ctx), n0, n1);
}

// ---- AMX path ---------------------------------------------------------------------------------
// Tiles (palette 1): tmm0, tmm1 accumulate C = [16 weight rows][x rows] in fp32 for two 16-row
// blocks; tmm2, tmm3 hold the blocks' A tiles, 16 weight rows x 32 bf16 loaded in place (row
// stride K); tmm4 is the B tile, x packed as 16 rows of k pairs by (x rows x 2) bf16, which is
// the layout tdpbf16ps multiplies: C[r][i] += A[r][2p] * B[p][2i] + A[r][2p+1] * B[p][2i+1].
// Like dpbf16, tdpbf16ps treats bf16 denormal inputs as zero.
// The tile instructions and configuration layout come from amx_tile.h.

inline void tile_configure(int64_t x_rows) {
  AmxTileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  const uint16_t narrow = static_cast<uint16_t>(x_rows * 4);  // x_rows fp32, or x_rows bf16 pairs
  for (int t = 0; t < 5; ++t) cfg.rows[t] = kTileRows;
  cfg.colsb[0] = cfg.colsb[1] = narrow;  // C
  cfg.colsb[2] = cfg.colsb[3] = 64;      // A: 32 bf16 of each weight row
  cfg.colsb[4] = narrow;                 // B
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg) : "memory");
}

// One AMX job: x rows [m0, m0 + x_rows) of the call, x packed in pairs for the B tile.
struct AmxJob {
  GemvArgs sub;            // the call's arguments with x and out offset to row m0, m = x_rows
  const uint16_t* packed;  // [k / 2][x_rows][2]
};

// BLOCKS (1 or 2) blocks of 16 weight rows from n0 against all x rows of the job.
template <int BLOCKS>
HERON_GEMV_INLINE void amx_block(const AmxJob& job, int64_t n0) {
  const GemvArgs& a = job.sub;
  const int64_t k = a.k;
  const int64_t w_stride = k * 2;    // bytes between weight rows
  const int64_t b_stride = a.m * 4;  // bytes per packed row (one k pair of every x row)
  const char* w = reinterpret_cast<const char*>(a.weight + n0 * k);
  const char* b = reinterpret_cast<const char*>(job.packed);
  // The blocks are one contiguous range of memory, read column by column; the prefetches walk the
  // range ahead of them linearly instead (what DRAM pages and the L2 streamer like best), one line
  // per weight row and step, which covers the next range of the same size exactly once.
  const char* prefetch = w + HERON_GEMV_AMX_PREFETCH_ROWS * w_stride;
  HERON_AMX_ZERO(0);
  if (BLOCKS == 2) HERON_AMX_ZERO(1);
  for (int64_t j = 0; j < k; j += kTileK) {
    const char* wj = w + j * 2;
    for (int64_t r = 0; r < BLOCKS * kTileRows; ++r, prefetch += 64) {
      _mm_prefetch(prefetch, HERON_GEMV_PREFETCH_HINT);
    }
    HERON_AMX_LOAD(4, b + j * a.m * 2, b_stride);
    HERON_AMX_LOAD(2, wj, w_stride);
    HERON_AMX_DP(0, 2, 4);
    if (BLOCKS == 2) {
      HERON_AMX_LOAD(3, wj + kTileRows * w_stride, w_stride);
      HERON_AMX_DP(1, 3, 4);
    }
  }
  float c[kTileRows * kTileRows];  // [weight row][x row], row stride x_rows
  HERON_AMX_STORE(0, c, b_stride);
  store_sums(a, n0, kTileRows, 0, a.m, c, 1, a.m);
  if (BLOCKS == 2) {
    HERON_AMX_STORE(1, c, b_stride);
    store_sums(a, n0 + kTileRows, kTileRows, 0, a.m, c, 1, a.m);
  }
}

void rows_amx(const void* ctx, int64_t n0, int64_t n1) {
  const AmxJob& job = *static_cast<const AmxJob*>(ctx);
  tile_configure(job.sub.m);
  int64_t n = n0;
  for (; n + 2 * kTileRows <= n1; n += 2 * kTileRows) amx_block<2>(job, n);
  for (; n + kTileRows <= n1; n += kTileRows) amx_block<1>(job, n);
  // Release the tiles: the thread's AMX state goes back to init (cheap context switches again),
  // and oneDNN, which checks the loaded configuration before its own tile kernels, reloads its own.
  amx_release_tiles();
  if (n < n1) dp_rows(job.sub, n, n1);  // fewer than 16 rows left
}

// x rows [0, x_rows) of x as the B tile wants them: packed[p][i][e] = x[i][2p + e].
void pack_pairs(const uint16_t* x, int64_t x_stride, int64_t x_rows, int64_t k, uint16_t* packed) {
  for (int64_t p = 0; p < k / 2; ++p) {
    for (int64_t i = 0; i < x_rows; ++i) {
      std::memcpy(packed + (p * x_rows + i) * 2, x + i * x_stride + 2 * p, 4);
    }
  }
}

// Packs x 16 rows at a time and runs the AMX loop over all weight rows for each such chunk (decode
// calls have one chunk; more rows re-read the weight, as a general GEMM would do better anyway).
void linear_amx(const GemvArgs& a) {
  constexpr int64_t kStackBytes = int64_t{32} << 10;  // K = 1536 at 8 rows: 24 KiB
  alignas(64) uint16_t stack[kStackBytes / 2];
  for (int64_t m0 = 0; m0 < a.m; m0 += kTileRows) {
    const int64_t x_rows = min64(kTileRows, a.m - m0);
    const int64_t bytes = a.k * x_rows * 2;
    uint16_t* packed = bytes <= kStackBytes ? stack : static_cast<uint16_t*>(std::malloc(bytes));
    if (packed == nullptr) {  // out of memory: the slower loop needs no buffer
      GemvArgs rest = a;
      rest.x += m0 * a.x_stride;
      rest.out += m0 * a.out_stride;
      rest.m = a.m - m0;
      run(&rest, rows_avx512, a.n, a.k, a.num_threads, kRows);
      return;
    }
    AmxJob job{a, packed};
    job.sub.x += m0 * a.x_stride;
    job.sub.out += m0 * a.out_stride;
    job.sub.m = x_rows;
    pack_pairs(job.sub.x, a.x_stride, x_rows, a.k, packed);
    run(&job, rows_amx, a.n, a.k, a.num_threads, 2 * kTileRows);
    if (packed != stack) std::free(packed);
  }
}

bool cpu_has_avx512_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  const bool bf16 = (eax >> 5) & 1u;  // CPUID.(EAX=7,ECX=1):EAX[5] = AVX512_BF16
  // __builtin_cpu_supports also checks that the OS saves the AVX-512 register state.
  return bf16 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

#endif  // HERON_GEMV_X86

}  // namespace

bool avx512_bf16_supported() {
#if defined(HERON_GEMV_X86)
  static const bool supported = cpu_has_avx512_bf16();
  return supported;
#else
  return false;
#endif
}

bool amx_supported() {
#if defined(HERON_GEMV_X86)
  static const bool supported = amx_bf16_permitted();
  return supported;
#else
  return false;
#endif
}

void linear_bf16(const GemvArgs& args, Path path) {
  if (args.m <= 0 || args.n <= 0) return;
#if defined(HERON_GEMV_X86)
  // AMX tiles take 32 columns at a time (a K tail would need a second tile configuration), and the
  // AMX loop only beats dpbf16 once dpbf16 is compute-bound (see the top of the file).
  const bool amx_shape = args.k % kTileK == 0 && args.n >= kTileRows;
  const bool want_amx =
      path == Path::kAmx || (path == Path::kAuto && args.m >= HERON_GEMV_AMX_MIN_ROWS);
  if (want_amx && amx_shape && amx_supported()) {
    linear_amx(args);
    return;
  }
  if (path != Path::kPortable && avx512_bf16_supported()) {
    run(&args, rows_avx512, args.n, args.k, args.num_threads, kRows);
    return;
  }
#endif
  (void)path;  // unused where only the portable loop is built
  run(&args, rows_portable, args.n, args.k, args.num_threads, 1);
}

}  // namespace gemv
}  // namespace heron_cpu
