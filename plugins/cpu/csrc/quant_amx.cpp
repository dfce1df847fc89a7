// The many-row quantized linear layer: AMX-BF16 tiles over a weight panel dequantized in cache.
//
// Why: past a few rows of x the integer-dot loops of quant_i8.cpp are compute-bound (every extra
// row repeats the dot products of every weight block), and dequantizing the whole weight to a
// bf16 scratch matrix before a GEMM writes and re-reads 2 bytes per weight through DRAM on every
// call (~270 MB per step for SmolLM2-135M: W64 offline ran at half the bf16 speed). Here each
// thread dequantizes a strip of 32 weight rows over all of K into a buffer that stays in its L1/L2
// (32 x 1536 bf16 = 96 KiB at the largest SmolLM2 K), multiplies it with tdpbf16ps against every
// row of x, and moves on: each weight is decoded once per call, nothing is written to DRAM but
// the output, and the products run on the tile unit (16 x 16 x 32 multiply-adds per
// instruction), so the cost per call is the decode plus the quantized bytes, whatever the rows.
//
// The weight values are rounded to bf16 exactly as dequantize() (quant.cpp) and core's loader
// round them (d * q + m in fp32, no fused multiply-add, then to nearest even); x stays bf16 as
// given. The fp32 sums follow the order of the GEMM that --quantization none runs on the same
// bf16 weights (oneDNN's AMX brgemm, as torch 2.13 ships it: oneDNN 3.12), so that the two give
// the same bits and hence the same greedy text: over x rows 33 and more that GEMM splits K into
// equal chunks (at most 512 values from 33 to 36 rows, 384 from 37) whose tile sums start from
// zero and are added in fp32 in K order (k_chunk_blocks); up to 32 rows it runs K in one chunk.
// Measured against oneDNN 3.12 on the shapes of SmolLM2 (K 576 and 1536) for 1-512 rows: equal
// bits except where oneDNN's threading picks another split (seen at 2 threads for 256 x 1536 and
// 512 x 576 -> 960); tests/plugins/cpu/test_quant_amx_order.py holds the cases.
//
// Tiles (palette 1, every tile 16 rows x 64 bytes): tmm4, tmm5 are the A tiles, 16 weight rows x
// 32 bf16 (one quantization block) each from the strip buffer; tmm6, tmm7 the B tiles, 16 x rows
// packed in K pairs ([16 pairs][16 rows][2], the layout tdpbf16ps multiplies); tmm0..tmm3 the
// fp32 sums C[weight row][x row] of the four (A, B) pairs. C is transposed in registers on the
// way out (rows of out are x rows), the bias added in fp32 and rounded once to bf16.
//
// bfloat16 activations only (float32 ones would lose precision in the tiles: quant.cpp's loops
// serve them). The tile instructions come from amx_tile.h.

#include "quant.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>

#include "amx_tile.h"

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define HERON_QAMX_X86 1
#include <immintrin.h>
#endif

namespace heron_cpu {
namespace quant {
namespace {

constexpr int64_t kTile = 16;   // rows of a tile; x rows and weight rows per tile
constexpr int64_t kStrip = 32;  // weight rows dequantized together (two A tiles)
// Below this many weight bytes one thread is faster than waking a team (as quant.cpp): the cost
// of a call is mostly decoding the weight, whatever the rows.
constexpr int64_t kMinParallelBytes = int64_t{48} << 10;

#if defined(HERON_QAMX_X86)
#define HERON_QAMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))
#define HERON_QAMX_INLINE inline __attribute__((always_inline))

// Transposes the 16 x 16 matrix of 32-bit elements r[row][lane] in place: three rounds of
// shuffles (pairs of elements, pairs of pairs, then 128-bit quarters), 64 instructions.
HERON_QAMX_TARGET HERON_QAMX_INLINE void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // s[4 i + c] quarter L: column 4 L + c of rows 4 i .. 4 i + 3.
  __m512i s[16];
  for (int i = 0; i < 4; ++i) {
    s[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    s[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    s[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    s[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {  // a 4 x 4 transpose of quarters across s[c], s[4 + c], ...
    const __m512i w0 = _mm512_shuffle_i32x4(s[c], s[4 + c], 0x44);
    const __m512i w1 = _mm512_shuffle_i32x4(s[c], s[4 + c], 0xee);
    const __m512i w2 = _mm512_shuffle_i32x4(s[8 + c], s[12 + c], 0x44);
    const __m512i w3 = _mm512_shuffle_i32x4(s[8 + c], s[12 + c], 0xee);
    r[c] = _mm512_shuffle_i32x4(w0, w2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(w0, w2, 0xdd);
    r[8 + c] = _mm512_shuffle_i32x4(w1, w3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(w1, w3, 0xdd);
  }
}

struct AmxJob {
  const QuantArgs* a;
  const uint16_t* xp;  // x packed: [x tile][block][16 K pairs][16 x rows][2] bf16, zero past m
  int64_t tiles;       // x tiles, ceil(m / 16)
  int64_t nb;          // blocks per row
  int64_t row_bytes;   // quantized bytes per weight row
  int64_t k_chunk;     // blocks per K chunk whose sums start from zero (k_chunk_blocks)
};

// Blocks of K that oneDNN 3.12's AMX brgemm sums in one chunk for a product of `rows` rows of x
// (see the top of this file): its K block is at most 512 values (33-36 rows) or 384 (37 rows and
// more), and K is cut into the fewest chunks of that size, as equal as whole blocks allow (the
// last one shorter): K 1024 at 40 rows is 352 + 352 + 320.
int64_t k_chunk_blocks(int64_t rows, int64_t nb) {
  if (rows <= 32) return nb;
  const int64_t most = rows <= 36 ? 512 / kBlock : 384 / kBlock;
  const int64_t chunks = (nb + most - 1) / most;
  return (nb + chunks - 1) / chunks;
}

// x rows of tile t as B tiles, one 1 KiB tile per block: a 16 x 16 transpose of K pairs.
HERON_QAMX_TARGET void pack_x(const QuantArgs& a, int64_t nb, int64_t t, uint16_t* xp) {
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  for (int64_t b = 0; b < nb; ++b) {
    __m512i r[16];
    for (int64_t i = 0; i < kTile; ++i) {
      const int64_t mi = t * kTile + i;
      r[i] = mi < a.m ? _mm512_loadu_si512(x + mi * a.x_stride + b * kBlock) : _mm512_setzero_si512();
    }
    transpose16(r);
    uint16_t* dst = xp + (t * nb + b) * kTile * kBlock;
    for (int p = 0; p < 16; ++p) _mm512_store_si512(dst + p * kBlock, r[p]);
  }
}

// Weight rows [n0, n0 + 32) dequantized to bf16 as strip[block][32 rows][32], zero past n.
template <Format F>
HERON_QAMX_TARGET void dequantize_strip(const AmxJob& j, int64_t n0, uint16_t* strip) {
  const QuantArgs& a = *j.a;
  for (int64_t r = 0; r < kStrip; ++r) {
    uint16_t* dst = strip + r * kBlock;
    if (n0 + r >= a.n) {
      for (int64_t b = 0; b < j.nb; ++b) _mm512_store_si512(dst + b * kStrip * kBlock, _mm512_setzero_si512());
      continue;
    }
    const uint8_t* q = a.qs + (n0 + r) * j.row_bytes;
    const float* d = a.d + (n0 + r) * j.nb;
    const float* mn = F == Format::kQ4 ? a.mins + (n0 + r) * j.nb : nullptr;
    for (int64_t b = 0; b < j.nb; ++b) {
      const __m512 dv = _mm512_set1_ps(d[b]);
      __m512i w;
      if (F == Format::kQ4) {
        // The block's 16 possible values d * j + m (two roundings, as quant.cpp's dequantize,
        // compiled -ffp-contract=off), rounded to bf16 once, then looked up per nibble (vpermw):
        // fewer instructions per block than converting all 32 values.
        const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512 values = _mm512_add_ps(_mm512_mul_ps(iota, dv), _mm512_set1_ps(mn[b]));
        const __m512i table = _mm512_castsi256_si512(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(values)));
        const __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + b * 16)));
        const __m256i nib = _mm256_set1_epi16(15);
        const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(bytes, nib)),
                                               _mm256_srli_epi16(bytes, 4), 1);  // values 0-15, 16-31
        w = _mm512_permutexvar_epi16(idx, table);
      } else {
        const __m128i* p = reinterpret_cast<const __m128i*>(q + b * kBlock);
        const __m512 lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p))), dv);
        const __m512 hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p + 1))), dv);
        w = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));  // values 0-15 from lo
      }
      _mm512_store_si512(dst + b * kStrip * kBlock, w);
    }
  }
}

// C[16 weight rows from n0][16 x rows from m0] (row stride 16 fp32) into out, bias added.
HERON_QAMX_TARGET void store_tile(const QuantArgs& a, const float* c, int64_t n0, int64_t m0) {
  if (n0 >= a.n || m0 >= a.m) return;
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_load_si512(c + i * kTile);
  transpose16(r);  // r[x row][weight row]
  const int64_t cols = a.n - n0 < kTile ? a.n - n0 : kTile;
  const __mmask16 mask = static_cast<__mmask16>((1u << cols) - 1);
  __m512 bias = _mm512_setzero_ps();
  if (a.bias) {
    const __m256i raw = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(a.bias) + n0);
    bias = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  }
  uint16_t* out = static_cast<uint16_t*>(a.out);
  const int64_t rows = a.m - m0 < kTile ? a.m - m0 : kTile;
  for (int64_t i = 0; i < rows; ++i) {
    const __m512 v = _mm512_add_ps(_mm512_castsi512_ps(r[i]), bias);
    const __m256i h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
    _mm256_mask_storeu_epi16(out + (m0 + i) * a.n + n0, mask, h);
  }
}

// sum += part, 16 x 16 fp32.
HERON_QAMX_TARGET HERON_QAMX_INLINE void add_tile(float* sum, const float* part) {
  for (int i = 0; i < kTile; ++i) {
    const __m512 v = _mm512_add_ps(_mm512_load_ps(sum + i * kTile), _mm512_load_ps(part + i * kTile));
    _mm512_store_ps(sum + i * kTile, v);
  }
}

// The strip's 32 weight rows against x tiles t (and t + 1 when XT is 2), over all of K: each K
// chunk in tiles from zero, the chunks' sums added in fp32 (the order of oneDNN's GEMM).
template <int XT>
HERON_QAMX_TARGET void strip_tiles(const AmxJob& j, const uint16_t* strip, int64_t n0, int64_t t) {
  const int64_t tile_elems = kTile * kBlock;  // bf16 per 1 KiB tile
  const uint16_t* b0 = j.xp + t * j.nb * tile_elems;
  const uint16_t* b1 = b0 + j.nb * tile_elems;
  alignas(64) float sum[4][kTile * kTile];
  alignas(64) float part[kTile * kTile];
  for (int64_t k0 = 0; k0 < j.nb; k0 += j.k_chunk) {
    const int64_t k1 = k0 + j.k_chunk < j.nb ? k0 + j.k_chunk : j.nb;
    HERON_AMX_ZERO(0);
    HERON_AMX_ZERO(1);
    if (XT == 2) {
      HERON_AMX_ZERO(2);
      HERON_AMX_ZERO(3);
    }
    for (int64_t b = k0; b < k1; ++b) {
      const uint16_t* a0 = strip + b * kStrip * kBlock;
      HERON_AMX_LOAD(4, a0, 64);
      HERON_AMX_LOAD(5, a0 + tile_elems, 64);
      HERON_AMX_LOAD(6, b0 + b * tile_elems, 64);
      HERON_AMX_DP(0, 4, 6);
      HERON_AMX_DP(1, 5, 6);
      if (XT == 2) {
        HERON_AMX_LOAD(7, b1 + b * tile_elems, 64);
        HERON_AMX_DP(2, 4, 7);
        HERON_AMX_DP(3, 5, 7);
      }
    }
    if (k0 == 0) {  // the first chunk's sums are stored as they are
      HERON_AMX_STORE(0, sum[0], 64);
      HERON_AMX_STORE(1, sum[1], 64);
      if (XT == 2) {
        HERON_AMX_STORE(2, sum[2], 64);
        HERON_AMX_STORE(3, sum[3], 64);
      }
      continue;
    }
    HERON_AMX_STORE(0, part, 64);
    add_tile(sum[0], part);
    HERON_AMX_STORE(1, part, 64);
    add_tile(sum[1], part);
    if (XT == 2) {
      HERON_AMX_STORE(2, part, 64);
      add_tile(sum[2], part);
      HERON_AMX_STORE(3, part, 64);
      add_tile(sum[3], part);
    }
  }
  const QuantArgs& a = *j.a;
  store_tile(a, sum[0], n0, t * kTile);
  store_tile(a, sum[1], n0 + kTile, t * kTile);
  if (XT == 2) {
    store_tile(a, sum[2], n0, (t + 1) * kTile);
    store_tile(a, sum[3], n0 + kTile, (t + 1) * kTile);
  }
}

// Strips [s0, s1) of the weight: each dequantized once, then multiplied with every x tile.
template <Format F>
void strips_amx(const AmxJob& j, int64_t s0, int64_t s1, uint16_t* strip) {
  amx_configure_full_tiles();
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t n0 = s * kStrip;
    dequantize_strip<F>(j, n0, strip);
    int64_t t = 0;
    for (; t + 2 <= j.tiles; t += 2) strip_tiles<2>(j, strip, n0, t);
    if (t < j.tiles) strip_tiles<1>(j, strip, n0, t);
  }
  amx_release_tiles();
}
#endif  // HERON_QAMX_X86

}  // namespace

// AMX-BF16 and the tile permission (amx_tile.h), and the AVX-512 subsets this file uses.
bool amx_supported() {
#if defined(HERON_QAMX_X86)
  static const bool ok = amx_bf16_permitted() && avx512_supported();
  return ok;
#else
  return false;
#endif
}

#if defined(HERON_QAMX_X86)
// Rows [0, a.m) of x, packed at once and multiplied with every strip of the weight, K summed in
// chunks of k_chunk blocks (k_chunk_blocks of the whole call's rows).
bool chunk_amx(const QuantArgs& a, int64_t k_chunk) {
  const int64_t nb = a.k / kBlock;
  const int64_t tiles = (a.m + kTile - 1) / kTile;
  const int64_t tile_bytes = kTile * kBlock * 2;
  uint16_t* xp = static_cast<uint16_t*>(std::aligned_alloc(64, static_cast<size_t>(tiles * nb * tile_bytes)));
  if (xp == nullptr) return false;
  for (int64_t t = 0; t < tiles; ++t) pack_x(a, nb, t, xp);
  const AmxJob job{&a, xp, tiles, nb, nb * block_bytes(a.format), k_chunk};
  const int64_t strips = (a.n + kStrip - 1) / kStrip;
  const size_t strip_bytes = static_cast<size_t>(nb * kStrip * kBlock * 2);
  const bool small = a.n * nb * block_bytes(a.format) < kMinParallelBytes || strips < 2;
  const int threads = small || a.num_threads < 1 ? 1 : static_cast<int>(strips < a.num_threads ? strips : a.num_threads);
  const auto fn = a.format == Format::kQ4 ? strips_amx<Format::kQ4> : strips_amx<Format::kQ8>;
  bool ok = true;
#pragma omp parallel num_threads(threads) reduction(&& : ok)
  {
    const int64_t t = omp_get_thread_num();
    const int64_t count = omp_get_num_threads();
    const int64_t begin = strips * t / count;
    const int64_t end = strips * (t + 1) / count;
    uint16_t* strip = static_cast<uint16_t*>(std::aligned_alloc(64, strip_bytes));
    if (strip == nullptr) {
      ok = false;
    } else {
      if (begin < end) fn(job, begin, end, strip);
      std::free(strip);
    }
  }
  std::free(xp);
  return ok;
}
#endif  // HERON_QAMX_X86

bool linear_amx(const QuantArgs& a) {
#if defined(HERON_QAMX_X86)
  if (a.dtype != DType::kBFloat16 || !amx_supported()) return false;
  if (a.m == 0 || a.n == 0) return true;
  // x in chunks whose packed tiles stay in L2 (1 MiB) while every strip passes over them: past
  // that each strip would stream x from L3 again (measured: 768 rows at K = 1536 took 3.6x the
  // time of 512). Each chunk decodes the weight again, so very many rows are better served by
  // one dequantize and a GEMM (heron_cpu.quant.AMX_MAX_ROWS).
  const int64_t fit = ((int64_t{1} << 20) / (a.k * 2)) / kTile * kTile;
  const int64_t chunk = fit < kTile ? kTile : fit;
  for (int64_t m0 = 0; m0 < a.m; m0 += chunk) {
    QuantArgs sub = a;
    sub.x = static_cast<const uint16_t*>(a.x) + m0 * a.x_stride;
    sub.out = static_cast<uint16_t*>(a.out) + m0 * a.n;
    sub.m = a.m - m0 < chunk ? a.m - m0 : chunk;
    // Out of memory: false, and the caller's loop writes every output again.
    if (!chunk_amx(sub, k_chunk_blocks(a.m, a.k / kBlock))) return false;
  }
  return true;
#else
  (void)a;
  return false;
#endif
}

}  // namespace quant
}  // namespace heron_cpu
