// Heron CPU kernels: the ABI between the ISA variants and the pybind11 bindings.
//
// kernels.cpp is compiled once per ISA variant (portable, avx2, avx512) into its own namespace;
// bindings.cpp picks one variant at run time from the CPU's features. Nothing here depends on
// libtorch: tensors arrive as raw pointers with element strides, and outputs are preallocated.
#pragma once

#include <cstdint>

namespace heron_cpu {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1 };

// Cache layout: one tile of block_size * head_size elements per (block, KV head). Value tiles are
// row-major [block_size][head_size]; key tiles are transposed, [head_size][block_size], so that
// the scores of one query against 16 keys are a vector FMA per head element (see qk_tile).
//
// write_kv stores the key/value rows of each token at its slot; slots < 0 are skipped.
struct WriteKvArgs {
  const void* key;
  const void* value;
  void* key_cache;
  void* value_cache;
  const int64_t* slot_mapping;
  int64_t num_tokens;
  int64_t num_kv_heads;
  int64_t head_size;
  int64_t block_size;
  int64_t key_stride_token, key_stride_head;  // in elements; the head dimension is contiguous
  int64_t value_stride_token, value_stride_head;
  DType dtype;
  int num_threads;
};

// One unit of attention work: query tokens [q_begin, q_begin + q_count) of a sequence, all query
// heads that share KV head kv_head, against context positions [key_begin, key_end). When a
// sequence's context is split over several items (num_parts > 1, consecutive in the plan), each
// writes unnormalised partial results at partial_offset and a combine pass merges them.
struct WorkItem {
  int32_t seq;
  int32_t kv_head;
  int32_t q_begin;
  int32_t q_count;
  int32_t key_begin;
  int32_t key_end;
  int32_t part;
  int32_t num_parts;
  int64_t partial_offset;
};

struct AttentionArgs {
  void* out;          // like query
  const void* query;  // [num_tokens, num_heads, head_size], strided tokens and heads
  const void* key_cache;
  const void* value_cache;
  const int32_t* query_start_loc;
  const int32_t* seq_lens;
  const int32_t* block_tables;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_size;
  int64_t block_size;
  int64_t block_table_stride;
  int64_t query_stride_token, query_stride_head;
  int64_t out_stride_token, out_stride_head;
  float scale;
  // Sliding window (0: none): the query at position p sees positions > p - window only. The
  // planner starts every item at the block holding its first query's window start, so blocks
  // wholly before it (which core may have freed) are never read.
  int64_t window;
  // Logit soft-capping (0: none): scores become softcap * tanh(score / softcap).
  float softcap;
  DType dtype;
  int num_threads;
  const WorkItem* items;
  int64_t num_items;
  int64_t max_rows;          // largest q_count * (num_heads / num_kv_heads) of any item
  float* partials;           // scratch for split items
  float* thread_scratch;     // num_threads * scratch_floats
  int64_t scratch_floats;    // per thread
  // Items of at most kTwoPassRows rows whose key range fits this many keys take the two-pass
  // path (all scores first, then one softmax, then values); 0 turns it off.
  int64_t two_pass_keys;
};

// Decode-sized items (one query token's heads of a GQA group) take the two-pass path when their
// context is at most kTwoPassMaxKeys long; longer ones, and prefill chunks, stream blocks with an
// online softmax.
constexpr int64_t kTwoPassRows = 4;
constexpr int64_t kTwoPassMaxKeys = 4096;

// The scores an item needs on the two-pass path (its key range rounded up to whole blocks), or 0
// when it takes the online path. The planner sizes scratch with it, the kernel branches on it.
inline int64_t two_pass_span(const WorkItem& it, int64_t group, int64_t block_size) {
  const int64_t span =
      (int64_t{it.key_end} - it.key_begin + block_size - 1) / block_size * block_size;
  return it.q_count * group <= kTwoPassRows && span <= kTwoPassMaxKeys ? span : 0;
}

// Floats of per-thread scratch that paged_attention needs for this shape.
inline int64_t attention_scratch_floats(int64_t max_rows, int64_t head_size, int64_t block_size,
                                        int64_t two_pass_keys) {
  return 2 * max_rows * head_size + 2 * max_rows + 2 * block_size * head_size +
         max_rows * block_size + kTwoPassRows * two_pass_keys + 64;
}

// Fused per-token kernels (elementwise.cpp). Rows have a row stride in elements and a contiguous
// last dimension; outputs are contiguous and preallocated.
//
// RMSNorm of x (or of x + residual, which is also written to residual_out when residual is set).
struct RmsNormArgs {
  const void* x;
  const void* residual;  // nullable
  const void* weight;    // [hidden]
  void* out;             // [rows, hidden]
  void* residual_out;    // [rows, hidden]; used only with residual
  int64_t rows, hidden;
  int64_t x_stride, residual_stride;
  float eps;
  DType dtype;
  int num_threads;
};

// out[r] = silu(x[r, :width]) * x[r, width:].
struct SiluAndMulArgs {
  const void* x;  // [rows, 2 * width]
  void* out;      // [rows, width]
  int64_t rows, width, x_stride;
  DType dtype;
  int num_threads;
};

// GPT-NeoX rotary embedding of heads [tokens, heads, head_size] (strided tokens and heads) by
// positions (checked to lie inside the cache by the caller) into out [tokens, heads, head_size].
struct RotaryArgs {
  const void* heads;
  const void* cos_sin_cache;  // [max_position, rotary_dim]: cos then sin
  const int64_t* positions;
  void* out;
  int64_t num_tokens, num_heads, head_size, rotary_dim;
  int64_t token_stride, head_stride;
  DType dtype;
  int num_threads;
};

// LayerNorm of x, or of x + residual (the sum rounded to the dtype first, as torch's add rounds),
// over each row's hidden values with weight and bias: an encoder layer's post-norm. out may be x
// (or residual) itself: a row is read whole before it is written.
struct LayerNormArgs {
  const void* x;
  const void* residual;  // nullable
  const void* weight;    // [hidden]
  const void* bias;      // [hidden]
  void* out;             // [rows, hidden], row stride out_stride
  int64_t rows, hidden;
  int64_t x_stride, residual_stride, out_stride;
  float eps;
  DType dtype;
  int num_threads;
};

// out = gelu(x), erf form or (tanh_approximation) the tanh form, bfloat16 only (float32 stays
// with torch's kernel, which a polynomial here did not beat); out may be x itself.
struct GeluArgs {
  const void* x;  // [rows, width]
  void* out;      // [rows, width], row stride out_stride
  int64_t rows, width, x_stride, out_stride;
  int tanh_approximation;
  DType dtype;
  int num_threads;
};

#define HERON_CPU_DECLARE_VARIANT(isa)                  \
  namespace isa {                                       \
  void write_kv(const WriteKvArgs& args);               \
  void paged_attention(const AttentionArgs& args);      \
  void rms_norm(const RmsNormArgs& args);               \
  void silu_and_mul(const SiluAndMulArgs& args);        \
  void rotary(const RotaryArgs& args);                  \
  void layer_norm(const LayerNormArgs& args);           \
  void gelu(const GeluArgs& args);                      \
  }

HERON_CPU_DECLARE_VARIANT(portable)
#if defined(HERON_CPU_X86_VARIANTS)
HERON_CPU_DECLARE_VARIANT(avx2)
HERON_CPU_DECLARE_VARIANT(avx512)
#endif

}  // namespace heron_cpu
