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
// (flash-decoding), which is what keeps single-sequence decode parallel.

#include <omp.h>

#include <cstring>

#include "kernels.h"

#ifndef HERON_ISA
#error "compile with -DHERON_ISA=<variant namespace>"
#endif

namespace heron_cpu {
namespace HERON_ISA {
namespace {

constexpr float kNegInf = -__builtin_inff();

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline float maxf(float a, float b) { return a > b ? a : b; }

inline float bf16_to_float(uint16_t x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even, keeping NaNs quiet; branch-free so that loops over it vectorise.
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// exp(x) for x <= 0 to about 2 ulp, in plain arithmetic so that `omp simd` loops vectorise it on
// every variant (libm's expf would be a scalar call). Cephes' polynomial; 2^n built in the exponent.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + shifter;
  const float n = t - shifter;
  int32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof t_bits);
  int32_t shifter_bits;
  std::memcpy(&shifter_bits, &shifter, sizeof shifter_bits);
  const int32_t n_int = t_bits - shifter_bits;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t scale_bits = (n_int + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return y * scale;
}

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

// Scores of R query rows against 16 keys of a transposed key tile ([head][block_size] floats):
// the keys lie along the vector lanes, so no horizontal sums are needed, each key vector loaded is
// shared by R rows, and P interleaved partial sums over the head dimension hide FMA latency when
// R is small. Lanes past a sequence's length hold garbage and are ignored by the caller.
template <int R>
inline void qk_tile(const float* q, int64_t hd, const float* kt, int64_t bs, float* s) {
  constexpr int P = R >= 4 ? 1 : 4 / R;
  float acc[P][R][16];
  for (int p = 0; p < P; ++p)
    for (int r = 0; r < R; ++r)
#pragma omp simd
      for (int j = 0; j < 16; ++j) acc[p][r][j] = 0.f;
  for (int64_t d = 0; d < hd; d += P) {
    for (int p = 0; p < P; ++p) {
      const float* k = kt + (d + p) * bs;
      for (int r = 0; r < R; ++r) {
        const float qv = q[r * hd + d + p];
#pragma omp simd
        for (int j = 0; j < 16; ++j) acc[p][r][j] += qv * k[j];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
#pragma omp simd
    for (int j = 0; j < 16; ++j) {
      float sum = 0.f;
      for (int p = 0; p < P; ++p) sum += acc[p][r][j];
      s[r * bs + j] = sum;
    }
  }
}

// Scores of rows [r_begin, r_end) against keys [0, keys) of the block, into p[row * bs + key].
inline void qk_rows(const float* qf, int64_t hd, const float* kt, int64_t bs, int64_t keys,
                    int64_t r_begin, int64_t r_end, float* p) {
  for (int64_t j = 0; j < keys; j += 16) {
    int64_t r = r_begin;
    for (; r + 4 <= r_end; r += 4) qk_tile<4>(qf + r * hd, hd, kt + j, bs, p + r * bs + j);
    for (; r + 2 <= r_end; r += 2) qk_tile<2>(qf + r * hd, hd, kt + j, bs, p + r * bs + j);
    for (; r < r_end; ++r) qk_tile<1>(qf + r * hd, hd, kt + j, bs, p + r * bs + j);
  }
}

// acc = acc * alpha + sum_j p[j] * v[j], four value rows per pass over acc.
inline void rescale_accumulate(float* acc, float alpha, const float* p, const float* v,
                               int64_t stride, int64_t count, int64_t n) {
  if (alpha != 1.0f) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) acc[i] *= alpha;
  }
  int64_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const float p0 = p[j], p1 = p[j + 1], p2 = p[j + 2], p3 = p[j + 3];
    const float* v0 = v + j * stride;
    const float* v1 = v0 + stride;
    const float* v2 = v1 + stride;
    const float* v3 = v2 + stride;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) acc[i] += p0 * v0[i] + p1 * v1[i] + p2 * v2[i] + p3 * v3[i];
  }
  for (; j < count; ++j) {
    const float pj = p[j];
    const float* vj = v + j * stride;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) acc[i] += pj * vj[i];
  }
}

// A cache block as float rows: float caches are used in place, bf16 ones converted into `buf`.
inline const float* block_rows(const float* src, float*, int64_t, int64_t) { return src; }

inline const float* block_rows(const uint16_t* src, float* buf, int64_t rows, int64_t head) {
  load_row(src, buf, rows * head, 1.0f);
  return buf;
}

template <typename T>
void attend(const AttentionArgs& a, const WorkItem& it, float* scratch) {
  const int64_t hd = a.head_size;
  const int64_t bs = a.block_size;
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t rows = it.q_count * group;
  float* qf = scratch;
  float* acc = qf + a.max_rows * hd;
  float* m = acc + a.max_rows * hd;
  float* l = m + a.max_rows;
  float* kbuf = l + a.max_rows;
  float* vbuf = kbuf + bs * hd;
  float* p = vbuf + bs * hd;  // scores, then probabilities: [rows][bs]

  const T* query = static_cast<const T*>(a.query);
  const int64_t token0 = a.query_start_loc[it.seq] + it.q_begin;
  for (int64_t t = 0; t < it.q_count; ++t) {
    for (int64_t g = 0; g < group; ++g) {
      const T* src = query + (token0 + t) * a.query_stride_token +
                     (it.kv_head * group + g) * a.query_stride_head;
      load_row(src, qf + (t * group + g) * hd, hd, a.scale);
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    m[r] = kNegInf;
    l[r] = 0.f;
  }
  std::memset(acc, 0, sizeof(float) * rows * hd);

  const int64_t context = a.seq_lens[it.seq];
  const int64_t q_len = a.query_start_loc[it.seq + 1] - a.query_start_loc[it.seq];
  const int64_t pos0 = context - q_len + it.q_begin;  // context position of the first query
  const int32_t* table = a.block_tables + it.seq * a.block_table_stride;
  const T* key_cache = static_cast<const T*>(a.key_cache);
  const T* value_cache = static_cast<const T*>(a.value_cache);
  const int64_t head_block = bs * hd;

  for (int64_t kb = it.key_begin; kb < it.key_end; kb += bs) {
    const int64_t n = min64(bs, it.key_end - kb);
    const int64_t offset = (static_cast<int64_t>(table[kb / bs]) * a.num_kv_heads + it.kv_head) * head_block;
    const float* k = block_rows(key_cache + offset, kbuf, bs, hd);  // transposed [hd][bs]
    const float* v = block_rows(value_cache + offset, vbuf, n, hd);
    // Query t sees positions <= pos0 + t; earlier queries may not reach this block at all.
    const int64_t first_t = kb > pos0 ? kb - pos0 : 0;
    if (first_t >= it.q_count) continue;
    const int64_t widest = min64(n, pos0 + it.q_count - 1 - kb + 1);
    qk_rows(qf, hd, k, bs, widest, first_t * group, rows, p);
    for (int64_t t = first_t; t < it.q_count; ++t) {
      const int64_t visible = min64(n, pos0 + t - kb + 1);
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = t * group + g;
        float* pr = p + r * bs;
        float block_max = kNegInf;
        for (int64_t j = 0; j < visible; ++j) block_max = maxf(block_max, pr[j]);
        const float m_new = maxf(m[r], block_max);
        const float alpha = m[r] == kNegInf ? 0.f : exp_nonpositive(m[r] - m_new);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < visible; ++j) {
          pr[j] = exp_nonpositive(pr[j] - m_new);
          sum += pr[j];
        }
        l[r] = l[r] * alpha + sum;
        m[r] = m_new;
        rescale_accumulate(acc + r * hd, alpha, pr, v, hd, visible, hd);
      }
    }
  }

  if (it.num_parts == 1) {
    T* out = static_cast<T*>(a.out);
    for (int64_t t = 0; t < it.q_count; ++t) {
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = t * group + g;
        T* dst = out + (token0 + t) * a.out_stride_token + (it.kv_head * group + g) * a.out_stride_head;
        store_row(acc + r * hd, dst, hd, l[r] > 0.f ? 1.0f / l[r] : 0.f);
      }
    }
    return;
  }
  float* partial = a.partials + it.partial_offset;
  std::memcpy(partial, acc, sizeof(float) * rows * hd);
  std::memcpy(partial + rows * hd, m, sizeof(float) * rows);
  std::memcpy(partial + rows * hd + rows, l, sizeof(float) * rows);
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
      const float w = exp_nonpositive(m_i - m_max);
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
#pragma omp for schedule(dynamic, 1)
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
