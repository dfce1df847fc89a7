// Paged attention and KV-cache writes for Heron's CPU backend.
//
// This file is compiled once per ISA variant with different -m flags and -DHERON_ISA=<namespace>
// (see CMakeLists.txt). Everything except the two exported functions has internal linkage, and no
// C++ standard-library template is used: inline templates from headers would be emitted as weak
// symbols by every variant and the linker would keep one of them, possibly an AVX-512 copy that the
// portable variant then calls on a CPU without AVX-512.
//
// Attention uses online softmax (one pass over the context, flash-attention style): per query row
// a running max m, a running sum l and an unnormalised accumulator are rescaled block by block. The
// bindings plan work items of (sequence, KV head, query chunk, context part); long contexts with
// too few items to feed every thread are split into parts that a combine pass merges
// (flash-decoding), which is what keeps single-sequence decode parallel. Decode-sized items (at
// most kTwoPassRows rows, a few thousand keys) take a two-pass path instead: all scores, one
// softmax, then the values with register accumulators (see attend_two_pass).
//
// Items go to threads in guided chunks, not one by one: consecutive items are the KV heads of one
// sequence, whose tiles of a block lie next to each other, so one core reading them in a row lets
// the hardware prefetcher stream them (dynamic,1 scattered them over cores: ~15% slower).

#include <omp.h>

#include <cstring>

#include "kernels.h"
#include "scalar_math.h"

#if defined(__AVX2__)
#include <immintrin.h>  // always-inline functions only: no symbols shared between variants
#endif

#ifndef HERON_ISA
#error "compile with -DHERON_ISA=<variant namespace>"
#endif

namespace heron_cpu {
namespace HERON_ISA {
namespace {

constexpr float kNegInf = -__builtin_inff();

inline float maxf(float a, float b) { return a > b ? a : b; }

inline void load_row(const float* src, float* dst, int64_t n, float mul) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * mul;
}

inline void load_row(const uint16_t* src, float* dst, int64_t n, float mul) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]) * mul;
}

inline void store_row(const float* src, float* dst, int64_t n, float mul) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * mul;
}

inline void store_row(const float* src, uint16_t* dst, int64_t n, float mul) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = float_to_bf16(src[i] * mul);
}

// ---- Explicit 16-lane vectors -----------------------------------------------------------------
// GCC's vector extensions lower a 16-float vector to one AVX-512 register, two AVX2 ones or four
// SSE ones, so the same source is explicit SIMD on every variant (no intrinsics, no per-ISA code)
// and, unlike `omp simd` loops, keeps scores, accumulators and broadcast operands in registers
// across the whole block instead of round-tripping them through memory.
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));

#define HERON_INLINE inline __attribute__((always_inline))

HERON_INLINE v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// 16 bf16 values widened to float: a bf16 is the top half of a float's bits. GCC's generic
// lowering of the widening splits it into halves and reassembles them (four instructions on
// AVX-512), which was a large share of the score loop, so the x86 variants say what they want.
HERON_INLINE v16f load16(const uint16_t* p) {
#if defined(__AVX512BW__)
  // One permute puts each bf16 in the high half of a 32-bit lane; the mask zeroes the low halves.
  const __m512i upper = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7,
                                         0, 6, 0, 5, 0, 4, 0, 3, 0, 2, 0, 1, 0, 0, 0);
  const __m512i h = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return reinterpret_cast<v16f>(_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, upper, h));
#elif defined(__AVX2__)
  typedef float v8f __attribute__((vector_size(32)));
  const __m128i* h = reinterpret_cast<const __m128i*>(p);
  const v8f lo = reinterpret_cast<v8f>(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(h)), 16));
  const v8f hi =
      reinterpret_cast<v8f>(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(h + 1)), 16));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  v16h h;
  std::memcpy(&h, p, sizeof h);
  return reinterpret_cast<v16f>(__builtin_convertvector(h, v16u) << 16);
#endif
}

HERON_INLINE void store16(float* p, v16f v) { std::memcpy(p, &v, sizeof v); }

HERON_INLINE v16f splat(float x) { return v16f{} + x; }

HERON_INLINE v16f vmax(v16f a, v16f b) { return a > b ? a : b; }

HERON_INLINE float hmax(v16f v) {
  v = vmax(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  v = vmax(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3));
  v = vmax(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1));
  v = vmax(v, __builtin_shufflevector(v, v, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0));
  return v[0];
}

HERON_INLINE float hsum(v16f v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
  v += __builtin_shufflevector(v, v, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
  return v[0];
}

// exp_clamped (scalar_math.h) for x <= 0 on 16 lanes: the same polynomial, so both give identical
// results.
HERON_INLINE v16f exp_nonpositive(v16f x) {
  x = vmax(x, splat(-87.0f));
  const float shifter = 12582912.0f;
  const v16f t = x * 1.44269504088896341f + shifter;
  const v16f n = t - shifter;
  int32_t shifter_bits;
  std::memcpy(&shifter_bits, &shifter, sizeof shifter_bits);
  const v16i n_int = reinterpret_cast<v16i>(t) - shifter_bits;
  const v16f r = x - n * 0.693359375f + n * 2.12194440e-4f;
  v16f p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const v16f y = p * r * r + r + 1.0f;
  return y * reinterpret_cast<v16f>((n_int + 127) << 23);
}

constexpr v16i kLane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// Gemma 2's logit soft-capping, cap * tanh(s / cap), on 16 lanes (cap > 0): tanh|x| =
// (1 - e) / (1 + e) with e = exp(-2|x|), so the exp above serves (its argument is nonpositive).
HERON_INLINE v16f soft_cap16(v16f s, float cap) {
  const v16f x = s * (1.0f / cap);
  const v16f neg = -x;
  const v16f ax = x < v16f{} ? neg : x;
  const v16f e = exp_nonpositive(-2.0f * ax);
  const v16f t = (1.0f - e) / (1.0f + e);
  return (x < v16f{} ? -t : t) * cap;
}

// Lanes j0 .. j0 + 15 of a block that a row sees: keys [first, visible) of the block.
HERON_INLINE v16i visible_lanes(int64_t j0, int64_t first, int64_t visible) {
  const v16i lane = kLane + static_cast<int32_t>(j0);
  return (lane < static_cast<int32_t>(visible)) & (lane >= static_cast<int32_t>(first));
}

// Rows of queries that one pass over a block serves: their scores and accumulators stay in
// registers (R * P score partials, R * C accumulator vectors), and each key or value vector loaded
// is shared by all R rows.
constexpr int kMaxRows = 4;

// Independent FMA chains (16-lane vectors) to keep in flight: 2 FMA ports x 4 cycles of latency
// need 8+. AVX-512 has 32 registers, so 12 chains of one register each fit with their operands;
// elsewhere a 16-lane vector takes two (AVX2, 16 registers) or four (SSE) registers, so 6 vectors
// already make 12+ chains and more would spill.
#if defined(__AVX512F__)
constexpr int kChains = 12;
#else
constexpr int kChains = 6;
#endif

// Scores of R rows against keys [j0, j0 + 16) of a transposed key tile ([head][bs]): the keys lie
// along the lanes, so there are no horizontal sums; P partial sums per row over interleaved head
// elements keep at least 8 independent FMA chains in flight whatever R is.
// Software prefetch spread over a loop: a few lines of two tiles per iteration. Issued as one
// burst per block (32-64 prefetches of a 2 KiB tile pair), the prefetches wait for the core's
// ~16 line-fill buffers and stall the block's arithmetic behind them, so the cold-cache time was
// compute + memory; a few per iteration let the arithmetic run while the lines arrive.
struct Trickle {
  const char* a = nullptr;  // nullptr: nothing to prefetch
  const char* b = nullptr;
  int64_t per_step = 0;  // bytes of each tile per iteration, a multiple of 64

  HERON_INLINE void step(int64_t i) const {
    if (a == nullptr) return;
    for (int64_t o = i * per_step; o < (i + 1) * per_step; o += 64) {
      __builtin_prefetch(a + o, 0, 3);
      __builtin_prefetch(b + o, 0, 3);
    }
  }
};

// Partial sums per row in qk16 (a divisor of 16: every head size is a multiple of 16); qk16's
// loop over the head takes hd / P iterations.
template <int R>
constexpr int qk_partials() {
  return kChains / R >= 8 ? 8 : kChains / R >= 4 ? 4 : kChains / R >= 2 ? 2 : 1;
}

template <int R, typename T>
HERON_INLINE void qk16(const float* q, int64_t hd, const T* kt, int64_t bs, v16f* s,
                       const Trickle& pf = Trickle{}) {
  constexpr int P = qk_partials<R>();
  v16f acc[R][P];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < P; ++p) acc[r][p] = v16f{};
  for (int64_t d = 0; d < hd; d += P) {  // every head size is a multiple of 16
    pf.step(d / P);
    for (int p = 0; p < P; ++p) {
      const v16f k = load16(kt + (d + p) * bs);
      for (int r = 0; r < R; ++r) acc[r][p] += q[r * hd + d + p] * k;
    }
  }
  for (int r = 0; r < R; ++r) {
    v16f sum = acc[r][0];
    for (int p = 1; p < P; ++p) sum += acc[r][p];
    s[r] = sum;
  }
}

// acc[r][c0, c0 + 16 * C) = acc * alpha[r] + sum_{j < keys} p[r][j] * v[j][c0, ...) for R rows.
// Probabilities past a row's visible keys are zero, so rows may share the widest key count.
template <int R, int C, typename T>
HERON_INLINE void pv_cols(float* acc, int64_t hd, const float* alpha, const float* p, int64_t bs,
                          const T* v, int64_t keys, int64_t c0) {
  v16f a[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) a[r][c] = load16(acc + r * hd + c0 + 16 * c) * alpha[r];
  for (int64_t j = 0; j < keys; ++j) {
    v16f vj[C];
    for (int c = 0; c < C; ++c) vj[c] = load16(v + j * hd + c0 + 16 * c);
    for (int r = 0; r < R; ++r) {
      const float pj = p[r * bs + j];
      for (int c = 0; c < C; ++c) a[r][c] += pj * vj[c];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) store16(acc + r * hd + c0 + 16 * c, a[r][c]);
}

// One block for R consecutive query rows (online softmax): rows see keys [first[r], visible[r])
// of the block (first[r] > 0 only under a sliding window), at least one each; both bounds are
// nondecreasing in r. Scores are soft-capped first when softcap > 0. m, l and acc are the rows'
// running max, running sum and unnormalised output; p is [R][bs] scratch.
template <int R, typename T>
HERON_INLINE void block_step(const float* q, int64_t hd, const T* kt, const T* v, int64_t bs,
                             const int64_t* first, const int64_t* visible, float softcap, float* m,
                             float* l, float* acc, float* p) {
  const int64_t widest = visible[R - 1];
  float alpha[R];
  v16f block_max[R];
  for (int r = 0; r < R; ++r) block_max[r] = splat(kNegInf);
  for (int64_t j0 = 0; j0 < widest; j0 += 16) {
    v16f s[R];
    qk16<R>(q, hd, kt + j0, bs, s);
    for (int r = 0; r < R; ++r) {
      if (softcap > 0.f) s[r] = soft_cap16(s[r], softcap);
      // Lanes outside the visible keys (causality, the window, or the tile's unused tail, which
      // may hold any bits) are selected away, never computed with.
      s[r] = visible_lanes(j0, first[r], visible[r]) ? s[r] : splat(kNegInf);
      block_max[r] = vmax(block_max[r], s[r]);
      store16(p + r * bs + j0, s[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const float m_new = maxf(m[r], hmax(block_max[r]));  // finite: each row sees a key
    alpha[r] = m[r] == kNegInf ? 0.f : exp_clamped(m[r] - m_new);
    m[r] = m_new;
    v16f sum = v16f{};
    for (int64_t j0 = 0; j0 < widest; j0 += 16) {
      const v16f s = load16(p + r * bs + j0);
      const v16f e = visible_lanes(j0, first[r], visible[r]) ? exp_nonpositive(s - m_new)
                                                            : v16f{};
      sum += e;
      store16(p + r * bs + j0, e);
    }
    l[r] = l[r] * alpha[r] + hsum(sum);
  }
  // Accumulator vectors per row (C * 16 columns per pass over the values).
  constexpr int C = kChains / R >= 4 ? 4 : kChains / R >= 2 ? 2 : 1;
  int64_t c0 = 0;
  for (; c0 + 16 * C <= hd; c0 += 16 * C) pv_cols<R, C>(acc, hd, alpha, p, bs, v, widest, c0);
  for (; c0 < hd; c0 += 16) pv_cols<R, 1>(acc, hd, alpha, p, bs, v, widest, c0);
}

template <typename T>
HERON_INLINE void block_rows_dispatch(int64_t rows, const float* q, int64_t hd, const T* kt,
                                      const T* v, int64_t bs, const int64_t* first,
                                      const int64_t* visible, float softcap, float* m, float* l,
                                      float* acc, float* p) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    block_step<4>(q + r * hd, hd, kt, v, bs, first + r, visible + r, softcap, m + r, l + r,
                  acc + r * hd, p);
  switch (rows - r) {
    case 3:
      block_step<3>(q + r * hd, hd, kt, v, bs, first + r, visible + r, softcap, m + r, l + r,
                    acc + r * hd, p);
      break;
    case 2:
      block_step<2>(q + r * hd, hd, kt, v, bs, first + r, visible + r, softcap, m + r, l + r,
                    acc + r * hd, p);
      break;
    case 1:
      block_step<1>(q + r * hd, hd, kt, v, bs, first + r, visible + r, softcap, m + r, l + r,
                    acc + r * hd, p);
      break;
    default:
      break;
  }
}

// Cache lines of a tile worth prefetching: the start of large tiles is enough for the hardware
// prefetcher to take over the rest; small ones (decode's 2 KiB bf16 tiles) are fetched whole.
constexpr int64_t kPrefetchTileBytes = 4096;

inline void prefetch_tile(const void* tile, int64_t bytes) {
  const char* c = static_cast<const char*>(tile);
  const int64_t n = min64(bytes, kPrefetchTileBytes);
  for (int64_t i = 0; i < n; i += 64) __builtin_prefetch(c + i, 0, 3);
}

// Where an item's KV head tiles lie, and the software prefetch both attention paths issue:
// blocks are scattered over the cache, so the hardware prefetcher cannot see the next one coming;
// fetching two blocks ahead covers a memory latency at decode's per-block cost.
template <typename T>
struct KvTiles {
  const T* keys;
  const T* values;
  const int32_t* table;
  int64_t kv_head, num_kv_heads, bs, tile_elems, key_end;

  KvTiles(const AttentionArgs& a, const WorkItem& it)
      : keys(static_cast<const T*>(a.key_cache)),
        values(static_cast<const T*>(a.value_cache)),
        table(a.block_tables + it.seq * a.block_table_stride),
        kv_head(it.kv_head),
        num_kv_heads(a.num_kv_heads),
        bs(a.block_size),
        tile_elems(a.block_size * a.head_size),
        key_end(it.key_end) {}

  static constexpr int64_t kAhead = 2;

  // Element offset of the tiles holding context position kb (a block start).
  int64_t offset(int64_t kb) const {
    return (static_cast<int64_t>(table[kb / bs]) * num_kv_heads + kv_head) * tile_elems;
  }
  const T* key_tile(int64_t kb) const { return keys + offset(kb); }  // transposed [hd][bs]
  const T* value_tile(int64_t kb) const { return values + offset(kb); }  // [bs][hd]

  void prefetch(int64_t kb) const {
    const int64_t o = offset(kb);
    const int64_t bytes = tile_elems * static_cast<int64_t>(sizeof(T));
    prefetch_tile(keys + o, bytes);
    prefetch_tile(values + o, bytes);
  }
  // Before the first block: the first kAhead blocks.
  void prefetch_start(int64_t key_begin) const {
    for (int64_t b = 0; b < kAhead && key_begin + b * bs < key_end; ++b) prefetch(key_begin + b * bs);
  }
  // At block kb: the block kAhead further on.
  void prefetch_ahead(int64_t kb) const {
    if (kb + kAhead * bs < key_end) prefetch(kb + kAhead * bs);
  }
  // The same lines as prefetch_ahead, handed out over `steps` iterations of a loop instead.
  Trickle trickle_ahead(int64_t kb, int64_t steps) const {
    Trickle t;
    if (kb + kAhead * bs >= key_end) return t;
    const int64_t o = offset(kb + kAhead * bs);
    const int64_t bytes = min64(tile_elems * static_cast<int64_t>(sizeof(T)), kPrefetchTileBytes);
    t.a = reinterpret_cast<const char*>(keys + o);
    t.b = reinterpret_cast<const char*>(values + o);
    t.per_step = (bytes / steps + 63) / 64 * 64;
    return t;
  }
};

// ---- Two-pass path for decode-sized items ----------------------------------------------------
// One query token's heads (R <= kTwoPassRows rows) against a few hundred keys: the online
// softmax's per-block work (horizontal max and sum, a scalar exp, reloading and rescaling the
// accumulators) costs more than the block's multiply-adds there. So: every score first (pass 1,
// with a running vector max), then one softmax per row over all of them (pass 2), then the values
// with the accumulators held in registers across all blocks (pass 3). Scores for keys a row cannot
// see are -inf in pass 1 and exactly 0 after pass 2, so pass 3 never multiplies the unused tail
// of a tile (which may hold any bits).

// Pass 3 for columns [c0, c0 + 16 * C): acc[r] = sum over the item's keys of p[r][k] * v[k].
template <int R, int C, typename T>
HERON_INLINE void pv_all_blocks(const AttentionArgs& a, const WorkItem& it, const KvTiles<T>& tiles,
                                const float* p, int64_t stride, float* acc, int64_t c0) {
  const int64_t hd = a.head_size;
  const int64_t bs = a.block_size;
  v16f sum[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) sum[r][c] = v16f{};
  for (int64_t kb = it.key_begin; kb < it.key_end; kb += bs) {
    const int64_t n = min64(bs, it.key_end - kb);
    const T* v = tiles.value_tile(kb) + c0;
    const float* pk = p + (kb - it.key_begin);
    for (int64_t j = 0; j < n; ++j) {
      v16f vj[C];
      for (int c = 0; c < C; ++c) vj[c] = load16(v + j * hd + 16 * c);
      for (int r = 0; r < R; ++r) {
        const float pj = pk[r * stride + j];
        for (int c = 0; c < C; ++c) sum[r][c] += pj * vj[c];
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) store16(acc + r * hd + c0 + 16 * c, sum[r][c]);
}

// Rows [0, R) of the item; q holds their scaled queries, and m, l, acc receive the same running
// max, sum and unnormalised output as the online path leaves. p is [R][two_pass_keys] scratch.
template <int R, typename T>
void attend_two_pass(const AttentionArgs& a, const WorkItem& it, const float* q, int64_t pos0,
                     float* m, float* l, float* acc, float* p) {
  const int64_t hd = a.head_size;
  const int64_t bs = a.block_size;
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t stride = a.two_pass_keys;
  const KvTiles<T> tiles(a, it);
  tiles.prefetch_start(it.key_begin);
  v16f row_max[R];
  for (int r = 0; r < R; ++r) row_max[r] = splat(kNegInf);
  for (int64_t kb = it.key_begin; kb < it.key_end; kb += bs) {
    const int64_t n = min64(bs, it.key_end - kb);
    // The first 16 keys of the block carry the prefetch of the block kAhead on.
    const Trickle ahead = tiles.trickle_ahead(kb, hd / qk_partials<R>());
    const T* kt = tiles.key_tile(kb);
    int64_t visible[R];  // keys [first[r], visible[r]) of this block that row r sees
    int64_t first[R];    // (an empty range for a row whose window this block misses)
    for (int r = 0; r < R; ++r) {
      visible[r] = min64(n, pos0 + r / group - kb + 1);
      first[r] = a.window > 0 ? pos0 + r / group - a.window + 1 - kb : 0;
    }
    float* pk = p + (kb - it.key_begin);
    for (int64_t j0 = 0; j0 < n; j0 += 16) {
      v16f s[R];
      qk16<R>(q, hd, kt + j0, bs, s, j0 == 0 ? ahead : Trickle{});
      for (int r = 0; r < R; ++r) {
        if (a.softcap > 0.f) s[r] = soft_cap16(s[r], a.softcap);
        s[r] = visible_lanes(j0, first[r], visible[r]) ? s[r] : splat(kNegInf);
        row_max[r] = vmax(row_max[r], s[r]);
        store16(pk + r * stride + j0, s[r]);
      }
    }
  }
  const int64_t span = it.key_end - it.key_begin;
  for (int r = 0; r < R; ++r) {
    float* pr = p + r * stride;
    const float mr = hmax(row_max[r]);
    m[r] = mr;
    v16f total = v16f{};
    for (int64_t j0 = 0; j0 < span; j0 += 16) {
      const v16f s = load16(pr + j0);
      // -inf scores (and every score of a row with no visible key) become exactly zero.
      const v16f e = s > splat(kNegInf) ? exp_nonpositive(s - mr) : v16f{};
      total += e;
      store16(pr + j0, e);
    }
    l[r] = hsum(total);
  }
  constexpr int C = kChains / R >= 4 ? 4 : kChains / R >= 2 ? 2 : 1;
  int64_t c0 = 0;
  for (; c0 + 16 * C <= hd; c0 += 16 * C)
    pv_all_blocks<R, C>(a, it, tiles, p, stride, acc, c0);
  for (; c0 < hd; c0 += 16) pv_all_blocks<R, 1>(a, it, tiles, p, stride, acc, c0);
}

template <typename T>
void attend_two_pass_rows(int64_t rows, const AttentionArgs& a, const WorkItem& it,
                          const float* q, int64_t pos0, float* m, float* l, float* acc, float* p) {
  switch (rows) {
    case 4:
      attend_two_pass<4, T>(a, it, q, pos0, m, l, acc, p);
      break;
    case 3:
      attend_two_pass<3, T>(a, it, q, pos0, m, l, acc, p);
      break;
    case 2:
      attend_two_pass<2, T>(a, it, q, pos0, m, l, acc, p);
      break;
    default:
      attend_two_pass<1, T>(a, it, q, pos0, m, l, acc, p);
      break;
  }
}

// Per-thread scratch: [max_rows][hd] scaled queries, [max_rows][hd] accumulators, max_rows running
// maxima and sums, two [bs][hd] widening buffers, [kMaxRows][bs] block scores, then the two-pass
// path's [kTwoPassRows][two_pass_keys] scores.
struct Scratch {
  float* q;
  float* acc;
  float* m;
  float* l;
  float* kbuf;
  float* vbuf;
  float* p;
  float* p_all;
};

inline Scratch carve(const AttentionArgs& a, float* scratch) {
  Scratch s;
  s.q = scratch;
  s.acc = s.q + a.max_rows * a.head_size;
  s.m = s.acc + a.max_rows * a.head_size;
  s.l = s.m + a.max_rows;
  s.kbuf = s.l + a.max_rows;
  s.vbuf = s.kbuf + a.block_size * a.head_size;
  s.p = s.vbuf + a.block_size * a.head_size;
  s.p_all = s.p + a.max_rows * a.block_size;
  return s;
}

// The online-softmax path: blocks streamed once, rows in passes of kMaxRows per block.
template <typename T>
void attend_online(const AttentionArgs& a, const WorkItem& it, int64_t pos0, const Scratch& w) {
  const int64_t hd = a.head_size;
  const int64_t bs = a.block_size;
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t rows = it.q_count * group;
  int64_t visible[kMaxRows];  // per row of a pass: the block's keys [first, visible) it sees
  int64_t first[kMaxRows];
  const KvTiles<T> tiles(a, it);
  tiles.prefetch_start(it.key_begin);
  // With more than one pass of rows per block (prefill chunks), widen the block to float once
  // instead of converting it again in every pass.
  const bool widen = sizeof(T) != sizeof(float) && rows > kMaxRows;

  for (int64_t kb = it.key_begin; kb < it.key_end; kb += bs) {
    const int64_t n = min64(bs, it.key_end - kb);
    tiles.prefetch_ahead(kb);
    // Query t sees positions <= pos0 + t; earlier queries may not reach this block at all, and
    // under a window, later ones may have left it behind: queries [first_t, end_t) see it.
    const int64_t first_t = kb > pos0 ? kb - pos0 : 0;
    const int64_t end_t =
        a.window > 0 ? min64(it.q_count, kb + n + a.window - 1 - pos0) : it.q_count;
    if (first_t >= end_t) continue;
    const T* kt = tiles.key_tile(kb);
    const T* v = tiles.value_tile(kb);
    if (widen) {
      load_row(kt, w.kbuf, bs * hd, 1.0f);
      load_row(v, w.vbuf, n * hd, 1.0f);
    }
    const int64_t end_row = end_t * group;
    for (int64_t r0 = first_t * group; r0 < end_row; r0 += kMaxRows) {
      const int64_t count = min64(kMaxRows, end_row - r0);
      for (int64_t i = 0; i < count; ++i) {
        const int64_t pos = pos0 + (r0 + i) / group;
        visible[i] = min64(n, pos - kb + 1);
        first[i] = a.window > 0 && pos - a.window + 1 > kb ? pos - a.window + 1 - kb : 0;
      }
      if (widen) {
        block_rows_dispatch(count, w.q + r0 * hd, hd, w.kbuf, w.vbuf, bs, first, visible,
                            a.softcap, w.m + r0, w.l + r0, w.acc + r0 * hd, w.p);
      } else {
        block_rows_dispatch(count, w.q + r0 * hd, hd, kt, v, bs, first, visible, a.softcap,
                            w.m + r0, w.l + r0, w.acc + r0 * hd, w.p);
      }
    }
  }
}

template <typename T>
void attend(const AttentionArgs& a, const WorkItem& it, float* scratch) {
  const int64_t hd = a.head_size;
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t rows = it.q_count * group;
  const Scratch w = carve(a, scratch);

  const T* query = static_cast<const T*>(a.query);
  const int64_t token0 = a.query_start_loc[it.seq] + it.q_begin;
  for (int64_t t = 0; t < it.q_count; ++t) {
    for (int64_t g = 0; g < group; ++g) {
      const T* src = query + (token0 + t) * a.query_stride_token +
                     (it.kv_head * group + g) * a.query_stride_head;
      load_row(src, w.q + (t * group + g) * hd, hd, a.scale);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    w.m[r] = kNegInf;
    w.l[r] = 0.f;
  }
  std::memset(w.acc, 0, sizeof(float) * rows * hd);

  const int64_t context = a.seq_lens[it.seq];
  const int64_t q_len = a.query_start_loc[it.seq + 1] - a.query_start_loc[it.seq];
  const int64_t pos0 = context - q_len + it.q_begin;  // context position of the first query
  if (two_pass_span(it, group, a.block_size) > 0) {
    attend_two_pass_rows<T>(rows, a, it, w.q, pos0, w.m, w.l, w.acc, w.p_all);
  } else {
    attend_online<T>(a, it, pos0, w);
  }

  if (it.num_parts == 1) {
    T* out = static_cast<T*>(a.out);
    for (int64_t t = 0; t < it.q_count; ++t) {
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = t * group + g;
        T* dst = out + (token0 + t) * a.out_stride_token + (it.kv_head * group + g) * a.out_stride_head;
        store_row(w.acc + r * hd, dst, hd, w.l[r] > 0.f ? 1.0f / w.l[r] : 0.f);
      }
    }
    return;
  }
  float* partial = a.partials + it.partial_offset;
  std::memcpy(partial, w.acc, sizeof(float) * rows * hd);
  std::memcpy(partial + rows * hd, w.m, sizeof(float) * rows);
  std::memcpy(partial + rows * hd + rows, w.l, sizeof(float) * rows);
}

// Merge the parts of a split item (the leader and the num_parts - 1 items after it).
template <typename T>
void combine(const AttentionArgs& a, const WorkItem* parts, float* scratch) {
  const WorkItem& it = parts[0];
  const int64_t hd = a.head_size;
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t rows = it.q_count * group;
  const int64_t token0 = a.query_start_loc[it.seq] + it.q_begin;
  T* out = static_cast<T*>(a.out);
  float* acc = scratch;
  for (int64_t r = 0; r < rows; ++r) {
    float m_max = kNegInf;
    for (int32_t i = 0; i < it.num_parts; ++i) {
      const float* partial = a.partials + parts[i].partial_offset;
      m_max = maxf(m_max, partial[rows * hd + r]);
    }
    std::memset(acc, 0, sizeof(float) * hd);
    float total = 0.f;
    for (int32_t i = 0; i < it.num_parts; ++i) {
      const float* partial = a.partials + parts[i].partial_offset;
      const float m_i = partial[rows * hd + r];
      if (m_i == kNegInf) continue;  // this part held no visible key for the row
      const float w = exp_clamped(m_i - m_max);
      total += partial[rows * hd + rows + r] * w;
      const float* src = partial + r * hd;
#pragma omp simd
      for (int64_t d = 0; d < hd; ++d) acc[d] += w * src[d];
    }
    const int64_t t = r / group;
    const int64_t head = it.kv_head * group + r % group;
    store_row(acc, out + (token0 + t) * a.out_stride_token + head * a.out_stride_head, hd,
              total > 0.f ? 1.0f / total : 0.f);
  }
}

template <typename T>
void paged_attention_impl(const AttentionArgs& a) {
#pragma omp parallel num_threads(a.num_threads)
  {
    float* scratch = a.thread_scratch + omp_get_thread_num() * a.scratch_floats;
#pragma omp for schedule(guided)
    for (int64_t i = 0; i < a.num_items; ++i) attend<T>(a, a.items[i], scratch);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < a.num_items; ++i) {
      if (a.items[i].num_parts > 1 && a.items[i].part == 0) combine<T>(a, a.items + i, scratch);
    }
  }
}

template <typename T>
void write_kv_impl(const WriteKvArgs& a) {
  const T* key = static_cast<const T*>(a.key);
  const T* value = static_cast<const T*>(a.value);
  T* key_cache = static_cast<T*>(a.key_cache);
  T* value_cache = static_cast<T*>(a.value_cache);
  const int64_t rows = a.num_tokens * a.num_kv_heads;
  const int64_t bytes = a.head_size * static_cast<int64_t>(sizeof(T));
  // Decode steps write a few rows: waking a thread team would cost more than the copy.
  const bool parallel = a.num_threads > 1 && rows * a.head_size >= (int64_t{1} << 16);
#pragma omp parallel for num_threads(a.num_threads) if (parallel) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t t = row / a.num_kv_heads;
    const int64_t h = row % a.num_kv_heads;
    const int64_t slot = a.slot_mapping[t];
    if (slot < 0) continue;
    const int64_t offset = slot % a.block_size;
    const int64_t tile = (slot / a.block_size * a.num_kv_heads + h) * a.block_size * a.head_size;
    const T* k = key + t * a.key_stride_token + h * a.key_stride_head;
    T* kt = key_cache + tile + offset;  // keys are stored transposed: [head][block_size]
    for (int64_t d = 0; d < a.head_size; ++d) kt[d * a.block_size] = k[d];
    std::memcpy(value_cache + tile + offset * a.head_size,
                value + t * a.value_stride_token + h * a.value_stride_head, bytes);
  }
}

}  // namespace

void write_kv(const WriteKvArgs& args) {
  if (args.dtype == DType::kBFloat16) {
    write_kv_impl<uint16_t>(args);
  } else {
    write_kv_impl<float>(args);
  }
}

void paged_attention(const AttentionArgs& args) {
  if (args.dtype == DType::kBFloat16) {
    paged_attention_impl<uint16_t>(args);
  } else {
    paged_attention_impl<float>(args);
  }
}

}  // namespace HERON_ISA
}  // namespace heron_cpu
