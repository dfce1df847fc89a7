// Mixture of experts, steps 2-4: the experts' GEMMs over the expert-sorted rows, and the weighted
// sum per token.
//
// After moe_align (moe_align.cu) every tile of moe::kBlockM sorted rows belongs to one expert, so
// one grid covers all experts ("grouped GEMM"): block (tile, column tile) reads its expert from
// tile_experts and the entry of each row from sorted_slots, and exits when the tile is unused.
//  * gate_up: act[entry] = silu(x[token] . W_gate^T) * (x[token] . W_up^T): the gate and up
//    columns of the same intermediate features in one block, SiLU-and-multiply in the epilogue.
//  * down: expert_out[entry] = (act[entry] . W_down^T) * topk_weights[entry].
//  * reduce: out[token] = sum of its entries' expert_out rows, in ascending expert order.
// Intermediates are indexed by entry (token * top_k + slot), not by sorted row, so padding costs
// no memory. The arithmetic is float32 on CUDA cores (tiles staged through shared memory); the
// results are rounded to the model dtype exactly where heron_interfaces.kernel_ops.moe_reference
// rounds in eager torch (each GEMM's output, the SiLU, the gate product, the weighted output,
// each addition), so they differ from it only by the GEMMs' accumulation order.
#include "launch_utils.h"
#include "moe_logic.h"

namespace heron {
namespace {

constexpr int kThreads = 256;
constexpr int kTileN = 64;                          // output columns per block: one per thread
constexpr int kTileK = 32;                          // reduction depth staged per step
constexpr int kRowGroups = kThreads / kTileN;       // 4
constexpr int kRowsPerThread = moe::kBlockM / kRowGroups;  // 4
static_assert(moe::kBlockM % kRowGroups == 0, "rows must split evenly over the row groups");

// Stages rows of A (gathered by entry) and kTileN rows of each weight matrix into shared memory
// for reduction step k0, zero-filled past the edges; then every thread accumulates its
// kRowsPerThread rows of its column. NW weight matrices (gate and up: 2; down: 1) share the A tile.
template <typename T, int NW>
struct TileAccumulator {
  float a[moe::kBlockM][kTileK];
  float w[NW][kTileN][kTileK + 1];  // +1: the column reads of one warp hit distinct banks

  // row_base[r]: address of row r's first element in A, or nullptr for a padding row.
  // weights[m]: first row of this block's column tile in weight matrix m, `rows_left` of them
  // valid, each `depth` long.
  __device__ void accumulate(const T* const* row_base, const T* const* weights, int rows_left,
                             int depth, float (&acc)[NW][kRowsPerThread]) {
    const int column = threadIdx.x % kTileN;
    const int group = threadIdx.x / kTileN;
    for (int k0 = 0; k0 < depth; k0 += kTileK) {
      for (int i = threadIdx.x; i < moe::kBlockM * kTileK; i += kThreads) {
        const int r = i / kTileK, k = i % kTileK;
        a[r][k] = row_base[r] != nullptr && k0 + k < depth ? to_float(row_base[r][k0 + k]) : 0.f;
      }
#pragma unroll
      for (int m = 0; m < NW; ++m) {
        for (int i = threadIdx.x; i < kTileN * kTileK; i += kThreads) {
          const int n = i / kTileK, k = i % kTileK;
          w[m][n][k] = n < rows_left && k0 + k < depth
                           ? to_float(weights[m][static_cast<int64_t>(n) * depth + k0 + k])
                           : 0.f;
        }
      }
      __syncthreads();
#pragma unroll 8
      for (int k = 0; k < kTileK; ++k) {
#pragma unroll
        for (int m = 0; m < NW; ++m) {
          const float wv = w[m][column][k];
#pragma unroll
          for (int r = 0; r < kRowsPerThread; ++r) {
            acc[m][r] += a[group * kRowsPerThread + r][k] * wv;
          }
        }
      }
      __syncthreads();
    }
  }
};

// Grid: (tiles, intermediate / kTileN). act is [num_slots, intermediate].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    moe_gate_up_kernel(T* __restrict__ act, const T* __restrict__ x, int64_t x_stride,
                       const T* __restrict__ w13, const int* __restrict__ sorted_slots,
                       const int* __restrict__ tile_experts, int top_k, int hidden,
                       int intermediate) {
  const int64_t tile = blockIdx.x;
  const int expert = tile_experts[tile];
  if (expert < 0) return;
  const int n0 = blockIdx.y * kTileN;
  __shared__ const T* rows[moe::kBlockM];
  __shared__ TileAccumulator<T, 2> tiles;
  if (threadIdx.x < moe::kBlockM) {
    const int entry = sorted_slots[tile * moe::kBlockM + threadIdx.x];
    rows[threadIdx.x] = entry < 0 ? nullptr : x + static_cast<int64_t>(entry / top_k) * x_stride;
  }
  __syncthreads();
  const T* expert_w = w13 + static_cast<int64_t>(expert) * 2 * intermediate * hidden;
  const T* weights[2] = {expert_w + static_cast<int64_t>(n0) * hidden,
                         expert_w + static_cast<int64_t>(intermediate + n0) * hidden};
  float acc[2][kRowsPerThread] = {};
  tiles.accumulate(rows, weights, intermediate - n0, hidden, acc);

  const int column = n0 + threadIdx.x % kTileN;
  const int group = threadIdx.x / kTileN;
  if (column >= intermediate) return;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int entry = sorted_slots[tile * moe::kBlockM + group * kRowsPerThread + r];
    if (entry < 0) continue;
    const float gate = round_to<T>(acc[0][r]);
    const float up = round_to<T>(acc[1][r]);
    const float silu = round_to<T>(gate / (1.f + expf(-gate)));
    act[static_cast<int64_t>(entry) * intermediate + column] = from_float<T>(silu * up);
  }
}

// Grid: (tiles, hidden / kTileN). expert_out is [num_slots, hidden]; topk_weights [num_slots],
// float32 when weights_float32, else T.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    moe_down_kernel(T* __restrict__ expert_out, const T* __restrict__ act,
                    const T* __restrict__ w2, const void* __restrict__ topk_weights,
                    bool weights_float32, const int* __restrict__ sorted_slots,
                    const int* __restrict__ tile_experts, int hidden, int intermediate) {
  const int64_t tile = blockIdx.x;
  const int expert = tile_experts[tile];
  if (expert < 0) return;
  const int n0 = blockIdx.y * kTileN;
  __shared__ const T* rows[moe::kBlockM];
  __shared__ TileAccumulator<T, 1> tiles;
  if (threadIdx.x < moe::kBlockM) {
    const int entry = sorted_slots[tile * moe::kBlockM + threadIdx.x];
    rows[threadIdx.x] = entry < 0 ? nullptr : act + static_cast<int64_t>(entry) * intermediate;
  }
  __syncthreads();
  const T* weights[1] = {w2 + (static_cast<int64_t>(expert) * hidden + n0) * intermediate};
  float acc[1][kRowsPerThread] = {};
  tiles.accumulate(rows, weights, hidden - n0, intermediate, acc);

  const int column = n0 + threadIdx.x % kTileN;
  const int group = threadIdx.x / kTileN;
  if (column >= hidden) return;
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const int entry = sorted_slots[tile * moe::kBlockM + group * kRowsPerThread + r];
    if (entry < 0) continue;
    // torch multiplies in the wider dtype: float32 weights promote, T weights stay T; either way
    // the exact product rounded once to T.
    const float scale = weights_float32 ? static_cast<const float*>(topk_weights)[entry]
                                        : to_float(static_cast<const T*>(topk_weights)[entry]);
    expert_out[static_cast<int64_t>(entry) * hidden + column] =
        from_float<T>(round_to<T>(acc[0][r]) * scale);
  }
}

// Grid: one block per token. Adds the token's expert outputs in ascending expert order, rounding
// each sum to T, as the reference's index_add_ in expert order does.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    moe_reduce_kernel(T* __restrict__ out, int64_t out_stride, const T* __restrict__ expert_out,
                      const int64_t* __restrict__ topk_ids, int top_k, int num_experts,
                      int hidden) {
  const int64_t token = blockIdx.x;
  int order[moe::kMaxTopK];
  const int n = moe::order_by_expert(topk_ids + token * top_k, top_k, num_experts, order);
  T* out_row = out + token * out_stride;
  for (int h = threadIdx.x; h < hidden; h += blockDim.x) {
    float sum = 0.f;
    for (int j = 0; j < n; ++j) {
      sum = round_to<T>(sum + to_float(expert_out[(token * top_k + order[j]) * hidden + h]));
    }
    out_row[h] = from_float<T>(sum);
  }
}

}  // namespace

void fused_moe(uintptr_t out, int64_t out_stride, uintptr_t x, int64_t x_stride, uintptr_t w13,
               uintptr_t w2, uintptr_t topk_ids, uintptr_t topk_weights, int weights_float32,
               int64_t num_tokens, int top_k, int hidden, int intermediate, int num_experts,
               uintptr_t workspace, int64_t workspace_ints, uintptr_t act, uintptr_t expert_out,
               int dtype, int device, uintptr_t stream) {
  if (top_k <= 0 || top_k > moe::kMaxTopK) {
    throw std::invalid_argument("fused_moe: top_k must be in [1, " +
                                std::to_string(moe::kMaxTopK) + "], got " +
                                std::to_string(top_k));
  }
  if (hidden <= 0 || intermediate <= 0) {
    throw std::invalid_argument("fused_moe: hidden and intermediate sizes must be positive");
  }
  const int64_t num_slots = num_tokens * top_k;
  moe_align(topk_ids, num_slots, num_experts, workspace, workspace_ints, device, stream);
  if (num_tokens == 0) return;
  DeviceGuard guard(device);
  const moe::Workspace w = moe::workspace_layout(num_slots, num_experts);
  const int* base = as_ptr<const int>(workspace);
  const int* sorted_slots = base + w.sorted_slots;
  const int* tile_experts = base + w.tile_experts;
  cudaStream_t s = as_stream(stream);
  const unsigned tiles = static_cast<unsigned>(w.max_tiles);
  const dim3 gate_up_grid(tiles, static_cast<unsigned>(moe::ceil_div(intermediate, kTileN)));
  const dim3 down_grid(tiles, static_cast<unsigned>(moe::ceil_div(hidden, kTileN)));
  const int reduce_threads = hidden < kThreads ? ((hidden + 31) / 32) * 32 : kThreads;
  HERON_DISPATCH_FLOATING(dtype, "fused_moe", {
    HERON_LAUNCH(moe_gate_up_kernel<scalar_t>, gate_up_grid, kThreads, 0, s)(
        as_ptr<scalar_t>(act), as_ptr<const scalar_t>(x), x_stride, as_ptr<const scalar_t>(w13),
        sorted_slots, tile_experts, top_k, hidden, intermediate);
    check_launch("moe_gate_up_kernel");
    HERON_LAUNCH(moe_down_kernel<scalar_t>, down_grid, kThreads, 0, s)(
        as_ptr<scalar_t>(expert_out), as_ptr<const scalar_t>(act), as_ptr<const scalar_t>(w2),
        as_ptr<const void>(topk_weights), weights_float32 != 0, sorted_slots, tile_experts, hidden,
        intermediate);
    check_launch("moe_down_kernel");
    const unsigned token_blocks = static_cast<unsigned>(num_tokens);
    HERON_LAUNCH(moe_reduce_kernel<scalar_t>, token_blocks, reduce_threads, 0, s)(
        as_ptr<scalar_t>(out), out_stride, as_ptr<const scalar_t>(expert_out),
        as_ptr<const int64_t>(topk_ids), top_k, num_experts, hidden);
    check_launch("moe_reduce_kernel");
  });
}

}  // namespace heron
