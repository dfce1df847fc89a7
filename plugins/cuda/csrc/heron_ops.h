// Host entry points of the kernels, in plain C++ types only.
//
// bindings.cpp includes this header with the ordinary host compiler, so nothing here may need the
// CUDA or HIP headers. Tensors arrive as device addresses (uintptr_t) plus explicit sizes and
// strides counted in elements; `dtype` is one of the DType codes; `device` is the device ordinal the
// tensors live on and `stream` the caller's cudaStream_t / hipStream_t as an integer. Every function
// launches asynchronously on that stream and throws std::runtime_error if the launch fails.
//
// Layouts (the Python wrappers in heron_*/ops.py check them before calling):
//   KV cache, one layer: [2, num_blocks, num_kv_heads, block_size, head_size]; key_cache and
//     value_cache point at its two halves.
//   query / out: [num_tokens, num_heads, head_size], head and feature dims contiguous, token stride
//     given; key / value likewise with num_kv_heads.
//   slot_mapping int64 [num_tokens]; query_start_loc int32 [num_seqs + 1]; seq_lens int32
//     [num_seqs]; block_tables int32 [num_seqs, block_table_stride].
#pragma once

#include <cstdint>
#include <vector>

namespace heron {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Context positions handled by one thread block of the split-context decode kernel.
constexpr int kPartitionSize = 512;

// Head sizes the attention kernels are instantiated for.
std::vector<int> attention_head_sizes();

void write_kv(uintptr_t key, int64_t key_stride, uintptr_t value, int64_t value_stride,
              uintptr_t key_cache, uintptr_t value_cache, uintptr_t slot_mapping,
              int64_t num_tokens, int num_kv_heads, int head_size, int block_size,
              int64_t num_blocks, int dtype, int device, uintptr_t stream);

// Causal paged attention over a batch that mixes decodes (query length 1) and prefill chunks.
// When max_partitions > 1 the decode kernel splits each context into kPartitionSize chunks and
// needs the float32 workspaces tmp_out [num_seqs, num_heads, max_partitions, head_size] and
// max_logits / exp_sums [num_seqs, num_heads, max_partitions]; with max_partitions == 1 they are
// not touched (pass 0).
void paged_attention(uintptr_t out, int64_t out_stride, uintptr_t query, int64_t query_stride,
                     uintptr_t key_cache, uintptr_t value_cache, uintptr_t query_start_loc,
                     uintptr_t seq_lens, uintptr_t block_tables, int64_t block_table_stride,
                     int num_seqs, int num_heads, int num_kv_heads, int head_size,
                     int block_size, float scale, int max_query_len, int max_partitions,
                     uintptr_t tmp_out, uintptr_t max_logits, uintptr_t exp_sums, int dtype,
                     int device, uintptr_t stream, int causal = 1, int window = 0,
                     float softcap = 0.f);

void rms_norm(uintptr_t out, int64_t out_stride, uintptr_t x, int64_t x_stride, uintptr_t weight,
              int64_t num_tokens, int hidden_size, float eps, int dtype, int device,
              uintptr_t stream);

// Neox-style rotary embedding, in place on query and key: within each head the first rot_dim
// features are rotated as two halves. cos_sin_cache is float32 [max_position, rot_dim], cos in the
// first half of each row and sin in the second. Tokens whose position lies outside
// [0, max_position) are left untouched.
void rotary_embedding(uintptr_t positions, uintptr_t query, int64_t query_stride, uintptr_t key,
                      int64_t key_stride, uintptr_t cos_sin_cache, int64_t max_position,
                      int rot_dim, int64_t num_tokens, int num_heads, int num_kv_heads,
                      int head_size, int dtype, int device, uintptr_t stream);

// out[t, i] = silu(x[t, i]) * x[t, d + i] for i < d.
void silu_and_mul(uintptr_t out, int64_t out_stride, uintptr_t x, int64_t x_stride,
                  int64_t num_tokens, int d, int dtype, int device, uintptr_t stream);

// Mixture of experts (moe_*.cu; the bookkeeping in moe_logic.h).
//   topk_ids int64 [num_tokens, top_k] (entries outside [0, num_experts) contribute nothing);
//   topk_weights [num_tokens, top_k], float32 (weights_float32 = 1) or the model dtype;
//   w13 [num_experts, 2 * intermediate, hidden] (gate rows, then up rows), w2 [num_experts,
//   hidden, intermediate], both contiguous; x / out [num_tokens, hidden] with a token stride.
// moe_workspace_size(num_slots = num_tokens * top_k, num_experts) gives {int32 values of the
// workspace, GEMM tiles of the grid}; fused_moe also needs act [num_slots, intermediate] and
// expert_out [num_slots, hidden] in the model dtype. Everything is sized from the shapes alone,
// never from the routing, so fused_moe never synchronises and can be captured in a graph.
std::vector<int64_t> moe_workspace_size(int64_t num_slots, int num_experts);

// Groups the entries of topk_ids by expert into the workspace (layout: moe_logic.h).
void moe_align(uintptr_t topk_ids, int64_t num_slots, int num_experts, uintptr_t workspace,
               int64_t workspace_ints, int device, uintptr_t stream);

// out[t] = sum_k topk_weights[t, k] * expert_{topk_ids[t, k]}(x[t]), each expert a SwiGLU MLP;
// rounded as heron_interfaces.kernel_ops.moe_reference rounds.
void fused_moe(uintptr_t out, int64_t out_stride, uintptr_t x, int64_t x_stride, uintptr_t w13,
               uintptr_t w2, uintptr_t topk_ids, uintptr_t topk_weights, int weights_float32,
               int64_t num_tokens, int top_k, int hidden, int intermediate, int num_experts,
               uintptr_t workspace, int64_t workspace_ints, uintptr_t act, uintptr_t expert_out,
               int dtype, int device, uintptr_t stream);

// Softmax routing: weights float32 [num_tokens, top_k] and ids int64 [num_tokens, top_k] of the
// top_k experts of each row of logits [num_tokens, num_experts] (row stride logits_stride);
// renormalize != 0 rescales each token's weights to sum to one.
void moe_topk_softmax(uintptr_t weights, uintptr_t ids, uintptr_t logits, int64_t logits_stride,
                      int64_t num_tokens, int num_experts, int top_k, int renormalize, int dtype,
                      int device, uintptr_t stream);

}  // namespace heron
