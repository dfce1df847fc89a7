// Causal paged attention for one flattened batch that mixes decodes and prefill chunks.
//
// Sequence s owns query rows query_start_loc[s] .. query_start_loc[s+1]; they are the last q_len of
// its seq_lens[s] context positions (already written to the cache), and row i sees positions
// 0 .. context - q_len + i. Query head h reads KV head h / (num_heads / num_kv_heads).
// Non-causal layers (encoders, heron_interfaces 1.7; causal == 0): every row sees all context
// positions. Only the prefill kernel differs: a one-token query already sees its whole context.
// Sliding window (heron_interfaces 1.9; window > 0): row i sees only positions > its own - window;
// both kernels start at the window, so blocks wholly before it (core frees them) are never read.
// Logit soft-capping (softcap > 0): scaled scores become softcap * tanh(score / softcap).
//
// Two kernels share the batch, each skipping the sequences that belong to the other:
//  * decode (q_len == 1): one thread block per (head, sequence, partition). Contexts longer than
//    kPartitionSize are split into partitions ("flash decoding"); each block writes its partial
//    softmax state and a reduction kernel merges the partitions. A batch whose longest context
//    fits one partition writes the output directly.
//  * prefill (q_len > 1): one thread block per (16-row query tile, head, sequence), walking the
//    context in 32-position key tiles with an online softmax (flash-attention style) on CUDA
//    cores.
// The math is float32 throughout; inputs and outputs are float16 or bfloat16.
#include <vector>

#include "launch_utils.h"

namespace heron {
namespace {

constexpr int kDecodeThreads = 128;
constexpr int kDecodeGroups = kDecodeThreads / kHeronGroup;

constexpr int kPrefillThreads = 128;
constexpr int kPrefillGroups = kPrefillThreads / kHeronGroup;
constexpr int kTileM = 16;  // query rows per block; group g owns rows g, g + 4, g + 8, g + 12
constexpr int kTileN = 32;  // key positions per tile; lane n of every group owns key n
constexpr int kRowsPerGroup = kTileM / kPrefillGroups;

__device__ __forceinline__ float soft_cap(float score, float softcap) {
  return softcap > 0.f ? softcap * tanhf(score / softcap) : score;
}

// Address of (position t, kv_head, feature 0) in one half of the paged cache.
template <typename T>
__device__ __forceinline__ const T* cache_row(const T* cache, const int* block_table, int t,
                                              int kv_head, int num_kv_heads, int block_size,
                                              int head_size) {
  const int64_t block = block_table[t / block_size];
  const int64_t offset = t % block_size;
  return cache + ((block * num_kv_heads + kv_head) * block_size + offset) * head_size;
}

template <typename T, int HEAD>
__global__ void __launch_bounds__(kDecodeThreads) paged_decode_kernel(
    T* __restrict__ out, int64_t out_stride, const T* __restrict__ query, int64_t query_stride,
    const T* __restrict__ key_cache, const T* __restrict__ value_cache,
    const int* __restrict__ query_start_loc, const int* __restrict__ seq_lens,
    const int* __restrict__ block_tables, int64_t block_table_stride, int num_heads,
    int num_kv_heads, int block_size, float scale, int max_partitions, float* __restrict__ tmp_out,
    float* __restrict__ max_logits, float* __restrict__ exp_sums, int window, float softcap) {
  constexpr int kPerLane = (HEAD + kHeronGroup - 1) / kHeronGroup;
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int partition = blockIdx.z;
  const int q_row = query_start_loc[seq];
  if (query_start_loc[seq + 1] - q_row != 1) return;  // a prefill chunk: not ours
  const int context = seq_lens[seq];
  const int partition_begin = partition * kPartitionSize;
  if (partition_begin >= context) return;  // this sequence has fewer partitions than the longest
  // Under a window the query (at context - 1) sees positions from context - window on.
  const int window_begin = window > 0 ? max(0, context - window) : 0;
  const int partition_end = min(context, partition_begin + kPartitionSize);
  if (partition_end <= window_begin) {  // wholly before the window: an empty partial state
    if (threadIdx.x == 0) {
      const int64_t state =
          (static_cast<int64_t>(seq) * num_heads + head) * max_partitions + partition;
      max_logits[state] = -INFINITY;
      exp_sums[state] = 0.f;
    }
    return;
  }
  const int t_begin = max(partition_begin, window_begin);
  const int count = partition_end - t_begin;

  const int group = threadIdx.x / kHeronGroup;
  const int lane = threadIdx.x % kHeronGroup;
  const int kv_head = head / (num_heads / num_kv_heads);
  const int* block_table = block_tables + seq * block_table_stride;

  __shared__ float q_s[HEAD];
  __shared__ float logits[kPartitionSize];
  __shared__ float partial[kDecodeGroups][HEAD];
  __shared__ float scratch[32];

  const T* q = query + q_row * query_stride + head * HEAD;
  for (int d = threadIdx.x; d < HEAD; d += blockDim.x) q_s[d] = to_float(q[d]) * scale;
  __syncthreads();

  // Scores: each lane group takes one position at a time, its lanes split the head dimension.
  float local_max = -INFINITY;
  for (int i = group; i < count; i += kDecodeGroups) {
    const T* k = cache_row(key_cache, block_table, t_begin + i, kv_head, num_kv_heads, block_size,
                           HEAD);
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int d = lane + j * kHeronGroup;
      if (d < HEAD) s += q_s[d] * to_float(k[d]);
    }
    s = soft_cap(group_sum(s), softcap);
    if (lane == 0) logits[i] = s;
    local_max = fmaxf(local_max, s);
  }
  const float max_logit = block_max(local_max, scratch);

  float local_sum = 0.f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const float e = expf(logits[i] - max_logit);
    logits[i] = e;
    local_sum += e;
  }
  const float exp_sum = block_sum(local_sum, scratch);

  // Weighted values: same split as the scores, then the groups' partial sums are added up.
  float acc[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) acc[j] = 0.f;
  for (int i = group; i < count; i += kDecodeGroups) {
    const T* v = cache_row(value_cache, block_table, t_begin + i, kv_head, num_kv_heads,
                           block_size, HEAD);
    const float p = logits[i];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int d = lane + j * kHeronGroup;
      if (d < HEAD) acc[j] += p * to_float(v[d]);
    }
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int d = lane + j * kHeronGroup;
    if (d < HEAD) partial[group][d] = acc[j];
  }
  __syncthreads();

  const float inv_sum = 1.f / exp_sum;
  const int64_t state = (static_cast<int64_t>(seq) * num_heads + head) * max_partitions + partition;
  for (int d = threadIdx.x; d < HEAD; d += blockDim.x) {
    float o = 0.f;
#pragma unroll
    for (int g = 0; g < kDecodeGroups; ++g) o += partial[g][d];
    if (max_partitions == 1) {
      out[q_row * out_stride + head * HEAD + d] = from_float<T>(o * inv_sum);
    } else {
      tmp_out[state * HEAD + d] = o * inv_sum;
    }
  }
  if (max_partitions > 1 && threadIdx.x == 0) {
    max_logits[state] = max_logit;
    exp_sums[state] = exp_sum;
  }
}

// Merges the partitions of each decode sequence: every partition's normalised output is weighted
// by its share exp_sum * exp(max_logit - global_max) of the full softmax denominator.
template <typename T>
__global__ void paged_decode_reduce_kernel(T* __restrict__ out, int64_t out_stride,
                                           const float* __restrict__ tmp_out,
                                           const float* __restrict__ max_logits,
                                           const float* __restrict__ exp_sums,
                                           const int* __restrict__ query_start_loc,
                                           const int* __restrict__ seq_lens, int num_heads,
                                           int head_size, int max_partitions) {
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int q_row = query_start_loc[seq];
  if (query_start_loc[seq + 1] - q_row != 1) return;
  const int partitions = min(max_partitions, (seq_lens[seq] + kPartitionSize - 1) / kPartitionSize);
  if (partitions <= 0) return;
  const int64_t state = (static_cast<int64_t>(seq) * num_heads + head) * max_partitions;
  float global_max = -INFINITY;
  for (int p = 0; p < partitions; ++p) global_max = fmaxf(global_max, max_logits[state + p]);
  float denominator = 0.f;
  for (int p = 0; p < partitions; ++p) {
    if (exp_sums[state + p] == 0.f) continue;  // before the sliding window: nothing written
    denominator += exp_sums[state + p] * expf(max_logits[state + p] - global_max);
  }
  const float inv_denominator = 1.f / denominator;
  for (int d = threadIdx.x; d < head_size; d += blockDim.x) {
    float o = 0.f;
    for (int p = 0; p < partitions; ++p) {
      if (exp_sums[state + p] == 0.f) continue;
      const float weight = exp_sums[state + p] * expf(max_logits[state + p] - global_max);
      o += weight * tmp_out[(state + p) * head_size + d];
    }
    out[q_row * out_stride + head * head_size + d] = from_float<T>(o * inv_denominator);
  }
}

template <typename T, int HEAD>
__global__ void __launch_bounds__(kPrefillThreads) paged_prefill_kernel(
    T* __restrict__ out, int64_t out_stride, const T* __restrict__ query, int64_t query_stride,
    const T* __restrict__ key_cache, const T* __restrict__ value_cache,
    const int* __restrict__ query_start_loc, const int* __restrict__ seq_lens,
    const int* __restrict__ block_tables, int64_t block_table_stride, int num_heads,
    int num_kv_heads, int block_size, float scale, bool causal, int window, float softcap) {
  constexpr int kPerLane = (HEAD + kHeronGroup - 1) / kHeronGroup;
  // HEAD % 4 == 0 makes the padded key row an odd number of 32-bit words, so the 32 lanes of a
  // group, each reading a different key row at the same feature, hit 32 different banks.
  static_assert(HEAD % 4 == 0, "head size must be a multiple of 4");
  constexpr int kKeyRow = HEAD + 2;

  const int tile = blockIdx.x;
  const int head = blockIdx.y;
  const int seq = blockIdx.z;
  const int q_begin = query_start_loc[seq];
  const int q_len = query_start_loc[seq + 1] - q_begin;
  if (q_len <= 1) return;  // decodes belong to the decode kernel
  const int m_begin = tile * kTileM;
  if (m_begin >= q_len) return;
  const int rows = min(kTileM, q_len - m_begin);
  const int context = seq_lens[seq];
  const int first_pos = context - q_len + m_begin;  // context position of this tile's row 0
  // One past the last position any row sees.
  const int kv_end = causal ? first_pos + rows : context;
  // The first position any row sees (the window of row 0); earlier blocks may be freed.
  const int kv_first = causal && window > 0 ? max(0, first_pos - window + 1) : 0;

  const int group = threadIdx.x / kHeronGroup;
  const int lane = threadIdx.x % kHeronGroup;
  const int kv_head = head / (num_heads / num_kv_heads);
  const int* block_table = block_tables + seq * block_table_stride;

  __shared__ T q_s[kTileM][HEAD];
  __shared__ T k_s[kTileN][kKeyRow];
  __shared__ T v_s[kTileN][HEAD];
  __shared__ float p_s[kTileM][kTileN];

  for (int idx = threadIdx.x; idx < kTileM * HEAD; idx += blockDim.x) {
    const int r = idx / HEAD;
    const int d = idx % HEAD;
    q_s[r][d] = r < rows ? query[(q_begin + m_begin + r) * query_stride + head * HEAD + d]
                         : from_float<T>(0.f);
  }

  float row_max[kRowsPerGroup];
  float row_sum[kRowsPerGroup];
  float acc[kRowsPerGroup][kPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerGroup; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) acc[r][j] = 0.f;
  }

  for (int kv_begin = kv_first; kv_begin < kv_end; kv_begin += kTileN) {
    __syncthreads();  // the previous tile's k_s / v_s / p_s are no longer read
    for (int idx = threadIdx.x; idx < kTileN * HEAD; idx += blockDim.x) {
      const int n = idx / HEAD;
      const int d = idx % HEAD;
      const int t = kv_begin + n;
      if (t < kv_end) {
        k_s[n][d] = cache_row(key_cache, block_table, t, kv_head, num_kv_heads, block_size,
                              HEAD)[d];
        v_s[n][d] = cache_row(value_cache, block_table, t, kv_head, num_kv_heads, block_size,
                              HEAD)[d];
      } else {
        // Zeros, not stale data: a masked position has probability 0, and 0 * NaN would be NaN.
        k_s[n][d] = from_float<T>(0.f);
        v_s[n][d] = from_float<T>(0.f);
      }
    }
    __syncthreads();

    // Scores of this group's rows against key `lane`, then the online-softmax update per row.
    float s[kRowsPerGroup];
#pragma unroll
    for (int r = 0; r < kRowsPerGroup; ++r) s[r] = 0.f;
    for (int d = 0; d < HEAD; ++d) {
      const float k = to_float(k_s[lane][d]);
#pragma unroll
      for (int r = 0; r < kRowsPerGroup; ++r) {
        s[r] += to_float(q_s[group + r * kPrefillGroups][d]) * k;
      }
    }
    const int key_pos = kv_begin + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerGroup; ++r) {
      const int row = group + r * kPrefillGroups;
      const bool visible = row < rows && key_pos < kv_end &&
                           (!causal || key_pos <= first_pos + row) &&
                           (window <= 0 || key_pos > first_pos + row - window);
      const float score = visible ? soft_cap(s[r] * scale, softcap) : -INFINITY;
      const float new_max = fmaxf(row_max[r], group_max(score));
      // A row that has seen no visible key yet keeps max -inf: guard exp(-inf - -inf).
      const float p = new_max == -INFINITY ? 0.f : expf(score - new_max);
      const float correction = new_max == -INFINITY ? 1.f : expf(row_max[r] - new_max);
      row_sum[r] = row_sum[r] * correction + group_sum(p);
      row_max[r] = new_max;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) acc[r][j] *= correction;
      p_s[row][lane] = p;
    }
    __syncthreads();

    for (int n = 0; n < kTileN; ++n) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int d = lane + j * kHeronGroup;
        if (d < HEAD) {
          const float v = to_float(v_s[n][d]);
#pragma unroll
          for (int r = 0; r < kRowsPerGroup; ++r) {
            acc[r][j] += p_s[group + r * kPrefillGroups][n] * v;
          }
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerGroup; ++r) {
    const int row = group + r * kPrefillGroups;
    if (row >= rows) continue;
    const float inv_sum = 1.f / row_sum[r];
    T* o = out + (q_begin + m_begin + row) * out_stride + head * HEAD;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int d = lane + j * kHeronGroup;
      if (d < HEAD) o[d] = from_float<T>(acc[r][j] * inv_sum);
    }
  }
}

struct AttentionArgs {
  uintptr_t out;
  int64_t out_stride;
  uintptr_t query;
  int64_t query_stride;
  uintptr_t key_cache;
  uintptr_t value_cache;
  uintptr_t query_start_loc;
  uintptr_t seq_lens;
  uintptr_t block_tables;
  int64_t block_table_stride;
  int num_seqs;
  int num_heads;
  int num_kv_heads;
  int block_size;
  float scale;
  int max_query_len;
  int max_partitions;
  uintptr_t tmp_out;
  uintptr_t max_logits;
  uintptr_t exp_sums;
  bool causal;
  int window;
  float softcap;
  cudaStream_t stream;
};

template <typename T, int HEAD>
void launch_attention(const AttentionArgs& a) {
  T* out = as_ptr<T>(a.out);
  const T* query = as_ptr<const T>(a.query);
  const T* key_cache = as_ptr<const T>(a.key_cache);
  const T* value_cache = as_ptr<const T>(a.value_cache);
  const int* query_start_loc = as_ptr<const int>(a.query_start_loc);
  const int* seq_lens = as_ptr<const int>(a.seq_lens);
  const int* block_tables = as_ptr<const int>(a.block_tables);

  // Decode blocks exit at once for prefill sequences (and vice versa), so both kernels can cover
  // the whole batch without a host-side split.
  const dim3 decode_grid(a.num_heads, a.num_seqs, a.max_partitions);
  paged_decode_kernel<T, HEAD><<<decode_grid, kDecodeThreads, 0, a.stream>>>(
      out, a.out_stride, query, a.query_stride, key_cache, value_cache, query_start_loc, seq_lens,
      block_tables, a.block_table_stride, a.num_heads, a.num_kv_heads, a.block_size, a.scale,
      a.max_partitions, as_ptr<float>(a.tmp_out), as_ptr<float>(a.max_logits),
      as_ptr<float>(a.exp_sums), a.window, a.softcap);
  check_launch("paged_decode_kernel");
  if (a.max_partitions > 1) {
    const dim3 reduce_grid(a.num_heads, a.num_seqs);
    paged_decode_reduce_kernel<T><<<reduce_grid, kDecodeThreads, 0, a.stream>>>(
        out, a.out_stride, as_ptr<const float>(a.tmp_out), as_ptr<const float>(a.max_logits),
        as_ptr<const float>(a.exp_sums), query_start_loc, seq_lens, a.num_heads, HEAD,
        a.max_partitions);
    check_launch("paged_decode_reduce_kernel");
  }
  if (a.max_query_len > 1) {
    const dim3 prefill_grid((a.max_query_len + kTileM - 1) / kTileM, a.num_heads, a.num_seqs);
    paged_prefill_kernel<T, HEAD><<<prefill_grid, kPrefillThreads, 0, a.stream>>>(
        out, a.out_stride, query, a.query_stride, key_cache, value_cache, query_start_loc,
        seq_lens, block_tables, a.block_table_stride, a.num_heads, a.num_kv_heads, a.block_size,
        a.scale, a.causal, a.window, a.softcap);
    check_launch("paged_prefill_kernel");
  }
}

// The head sizes below are the only ones compiled; adding one costs three kernels per dtype and
// architecture. HEAD must be a multiple of 4 (see paged_prefill_kernel).
#define HERON_FOR_EACH_HEAD_SIZE(X) X(64) X(80) X(96) X(112) X(128) X(192) X(256)

template <typename T>
void dispatch_head_size(int head_size, const AttentionArgs& args) {
  switch (head_size) {
#define HERON_HEAD_CASE(H)           \
  case H:                            \
    launch_attention<T, H>(args);    \
    return;
    HERON_FOR_EACH_HEAD_SIZE(HERON_HEAD_CASE)
#undef HERON_HEAD_CASE
    default:
      throw std::invalid_argument("paged_attention: unsupported head size " +
                                  std::to_string(head_size));
  }
}

}  // namespace

std::vector<int> attention_head_sizes() {
  std::vector<int> sizes;
#define HERON_HEAD_PUSH(H) sizes.push_back(H);
  HERON_FOR_EACH_HEAD_SIZE(HERON_HEAD_PUSH)
#undef HERON_HEAD_PUSH
  return sizes;
}

void paged_attention(uintptr_t out, int64_t out_stride, uintptr_t query, int64_t query_stride,
                     uintptr_t key_cache, uintptr_t value_cache, uintptr_t query_start_loc,
                     uintptr_t seq_lens, uintptr_t block_tables, int64_t block_table_stride,
                     int num_seqs, int num_heads, int num_kv_heads, int head_size,
                     int block_size, float scale, int max_query_len, int max_partitions,
                     uintptr_t tmp_out, uintptr_t max_logits, uintptr_t exp_sums, int dtype,
                     int device, uintptr_t stream, int causal, int window, float softcap) {
  if (num_seqs == 0) return;
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0) {
    throw std::invalid_argument("paged_attention: num_heads must be a multiple of num_kv_heads");
  }
  if (max_partitions < 1) {
    throw std::invalid_argument("paged_attention: max_partitions must be at least 1");
  }
  if (window < 0 || softcap < 0.f) {
    throw std::invalid_argument("paged_attention: window and softcap must be >= 0 (0: off)");
  }
  DeviceGuard guard(device);
  const AttentionArgs args{out,          out_stride,         query,          query_stride,
                           key_cache,    value_cache,        query_start_loc, seq_lens,
                           block_tables, block_table_stride, num_seqs,       num_heads,
                           num_kv_heads, block_size,         scale,          max_query_len,
                           max_partitions, tmp_out,          max_logits,     exp_sums,
                           causal != 0,    window,           softcap,        as_stream(stream)};
  HERON_DISPATCH_HALF(dtype, "paged_attention", dispatch_head_size<scalar_t>(head_size, args));
}

}  // namespace heron
