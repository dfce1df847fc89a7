// Mixture of experts, step 1: group the (token, slot) entries of topk_ids by expert.
//
// Three kernels, all sized from the number of entries alone so that a captured graph replays for
// any routing: count (one block per chunk of entries: per-expert counts of the chunk), offsets
// (one block: each chunk's base per expert, each expert's padded first row, each GEMM tile's
// expert, padding rows set to -1) and scatter (one block per chunk: each entry to its row, in a
// stable order). The per-thread work of every phase is in moe_logic.h, where a host test checks
// it; see there for the layout of the result.
#include "launch_utils.h"
#include "moe_logic.h"

namespace heron {
namespace {

__global__ void __launch_bounds__(moe::kChunk)
    moe_count_kernel(const int64_t* __restrict__ topk_ids, int64_t num_slots, int num_experts,
                     int* __restrict__ chunk_counts) {
  HERON_DYNAMIC_SHARED(int, counts);
  moe::count_zero(counts, num_experts, threadIdx.x, blockDim.x);
  __syncthreads();
  moe::count_entry(topk_ids, num_slots, num_experts, blockIdx.x, threadIdx.x, counts);
  __syncthreads();
  moe::count_store(counts, num_experts, blockIdx.x, threadIdx.x, blockDim.x, chunk_counts);
}

__global__ void __launch_bounds__(moe::kChunk)
    moe_offsets_kernel(int* __restrict__ chunk_counts, int64_t num_chunks, int num_experts,
                       int* __restrict__ offsets, int* __restrict__ sorted_slots,
                       int* __restrict__ tile_experts, int64_t max_tiles) {
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    moe::chunk_prefix(chunk_counts, num_chunks, num_experts, e, offsets);
  }
  __syncthreads();
  if (threadIdx.x == 0) moe::pad_scan(offsets, num_experts);
  __syncthreads();
  for (int64_t t = threadIdx.x; t < max_tiles; t += blockDim.x) {
    tile_experts[t] = moe::tile_expert(offsets, num_experts, t);
  }
  for (int64_t r = threadIdx.x; r < max_tiles * moe::kBlockM; r += blockDim.x) sorted_slots[r] = -1;
}

__global__ void __launch_bounds__(moe::kChunk)
    moe_scatter_kernel(const int64_t* __restrict__ topk_ids, int64_t num_slots, int num_experts,
                       const int* __restrict__ chunk_counts, const int* __restrict__ offsets,
                       int* __restrict__ sorted_slots) {
  __shared__ int chunk_experts[moe::kChunk];
  chunk_experts[threadIdx.x] =
      moe::entry_expert(topk_ids, num_slots, num_experts, blockIdx.x, threadIdx.x);
  __syncthreads();
  moe::scatter_entry(chunk_experts, blockIdx.x, threadIdx.x, chunk_counts, offsets, num_experts,
                     sorted_slots);
}

}  // namespace

std::vector<int64_t> moe_workspace_size(int64_t num_slots, int num_experts) {
  if (num_experts <= 0 || num_experts > moe::kMaxExperts) {
    throw std::invalid_argument("moe: num_experts must be in [1, " +
                                std::to_string(moe::kMaxExperts) + "], got " +
                                std::to_string(num_experts));
  }
  if (num_slots < 0) throw std::invalid_argument("moe: num_slots must be >= 0");
  const moe::Workspace w = moe::workspace_layout(num_slots, num_experts);
  return {w.total, w.max_tiles};
}

void moe_align(uintptr_t topk_ids, int64_t num_slots, int num_experts, uintptr_t workspace,
               int64_t workspace_ints, int device, uintptr_t stream) {
  const std::vector<int64_t> size = moe_workspace_size(num_slots, num_experts);
  if (workspace_ints < size[0]) {
    throw std::invalid_argument("moe_align: the workspace holds " +
                                std::to_string(workspace_ints) + " int32 values, " +
                                std::to_string(size[0]) + " are needed");
  }
  if (num_slots == 0) return;
  DeviceGuard guard(device);
  const moe::Workspace w = moe::workspace_layout(num_slots, num_experts);
  int* base = as_ptr<int>(workspace);
  const int64_t* ids = as_ptr<const int64_t>(topk_ids);
  cudaStream_t s = as_stream(stream);
  const unsigned chunks = static_cast<unsigned>(w.num_chunks);
  HERON_LAUNCH(moe_count_kernel, chunks, moe::kChunk, num_experts * sizeof(int), s)(
      ids, num_slots, num_experts, base + w.chunk_counts);
  check_launch("moe_count_kernel");
  HERON_LAUNCH(moe_offsets_kernel, 1, moe::kChunk, 0, s)(
      base + w.chunk_counts, w.num_chunks, num_experts, base + w.offsets, base + w.sorted_slots,
      base + w.tile_experts, w.max_tiles);
  check_launch("moe_offsets_kernel");
  HERON_LAUNCH(moe_scatter_kernel, chunks, moe::kChunk, 0, s)(
      ids, num_slots, num_experts, base + w.chunk_counts, base + w.offsets, base + w.sorted_slots);
  check_launch("moe_scatter_kernel");
}

}  // namespace heron
