// Mixture-of-experts bookkeeping shared by the GPU kernels (moe_align.cu, moe_routing.cu,
// moe_experts.cu) and a host-only test.
//
// Why a header of plain functions: there is no GPU where this code is written, so everything the
// kernels decide that is not floating-point GEMM work (which expert a token goes to, where each
// (token, slot) entry lands in the expert-sorted order, which expert a GEMM tile belongs to, in
// which order a token's expert outputs are summed) lives here as `__host__ __device__` functions.
// Each kernel is a sequence of phases separated by __syncthreads(); each phase is one call per
// thread of a function below. tests/plugins/cuda/moe_host_check.cpp, compiled with the ordinary
// host compiler, runs the same phases over every (block, thread) in the same order and the pytest
// around it compares the result with torch. No CUDA or HIP header is needed here.
//
// The sorted order ("alignment", as vLLM calls it): the S = tokens * top_k entries of topk_ids
// (entry i is token i / top_k, slot i % top_k) are grouped by expert; expert e owns rows
// offsets[e] .. offsets[e + 1] of the sorted order, its count padded to a multiple of kBlockM so
// that every GEMM tile of kBlockM rows belongs to one expert; within an expert the entries keep
// their order (a stable sort). Padding rows hold -1. Entries naming no expert (outside
// [0, num_experts)) are left out: they contribute nothing, since a kernel cannot raise.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define HERON_HD __host__ __device__ __forceinline__
#else
#define HERON_HD inline
#endif

// Kernel launches and dynamic shared memory in the moe_*.cu files are spelled through these two
// macros, so that tests/plugins/cuda/test_moe_kernels_emulated.py can compile those same files
// with the host compiler (its shim runs each block's threads as host threads).
#ifndef HERON_LAUNCH
#define HERON_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  kernel<<<grid, block, shared_bytes, stream>>>
#endif
#ifndef HERON_DYNAMIC_SHARED
#define HERON_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace heron {
namespace moe {

constexpr int kBlockM = 16;          // rows of one GEMM tile; each expert's rows padded to this
constexpr int kChunk = 256;          // entries per block of the align kernels (= their blockDim)
constexpr int kMaxExperts = 1024;    // the count kernel keeps a counter per expert in shared memory
constexpr int kMaxTopK = 32;         // the reduce kernel orders a token's slots in registers

HERON_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

HERON_HD bool valid_expert(int64_t id, int num_experts) { return id >= 0 && id < num_experts; }

// Offsets (in int32 elements) of the parts of the one int32 workspace the align kernels use.
struct Workspace {
  int64_t num_chunks;    // blocks of the count and scatter kernels
  int64_t max_tiles;     // upper bound of GEMM tiles: the grid size, fixed before the counts exist
  int64_t chunk_counts;  // [num_chunks, num_experts]: counts, then each chunk's base per expert
  int64_t offsets;       // [num_experts + 1]: expert e's rows begin at offsets[e]
  int64_t sorted_slots;  // [max_tiles * kBlockM]: entry index of each sorted row, -1 for padding
  int64_t tile_experts;  // [max_tiles]: the expert of each tile, -1 past the last used tile
  int64_t total;         // int32 elements in all
};

// The grid must be sized on the host before the counts exist (and stay fixed for graph replay):
// at most min(S, E) experts have entries and each pads by at most kBlockM - 1 rows.
HERON_HD int64_t max_tiles(int64_t num_slots, int num_experts) {
  const int64_t used = num_slots < num_experts ? num_slots : num_experts;
  return (num_slots + used * (kBlockM - 1)) / kBlockM;
}

HERON_HD Workspace workspace_layout(int64_t num_slots, int num_experts) {
  Workspace w{};
  w.num_chunks = ceil_div(num_slots, kChunk);
  w.max_tiles = max_tiles(num_slots, num_experts);
  w.chunk_counts = 0;
  w.offsets = w.chunk_counts + w.num_chunks * num_experts;
  w.sorted_slots = w.offsets + num_experts + 1;
  w.tile_experts = w.sorted_slots + w.max_tiles * kBlockM;
  w.total = w.tile_experts + w.max_tiles;
  return w;
}

// Adds one to a counter: atomically in device code (threads of a block share the counters).
HERON_HD void increment(int* counter) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__) || defined(HERON_EMULATED_DEVICE)
  atomicAdd(counter, 1);
#else
  ++*counter;
#endif
}

// --- count kernel: one block per chunk of kChunk entries ---------------------------------------
// Phase 1: zero the block's per-expert counters (threads stride over experts).
HERON_HD void count_zero(int* counts, int num_experts, int lane, int threads) {
  for (int e = lane; e < num_experts; e += threads) counts[e] = 0;
}

// Phase 2: count this thread's entry.
HERON_HD void count_entry(const int64_t* topk_ids, int64_t num_slots, int num_experts,
                          int64_t chunk, int lane, int* counts) {
  const int64_t i = chunk * kChunk + lane;
  if (i < num_slots && valid_expert(topk_ids[i], num_experts)) {
    increment(&counts[topk_ids[i]]);
  }
}

// Phase 3: store the block's counts as row `chunk` of chunk_counts.
HERON_HD void count_store(const int* counts, int num_experts, int64_t chunk, int lane, int threads,
                          int* chunk_counts) {
  for (int e = lane; e < num_experts; e += threads) {
    chunk_counts[chunk * num_experts + e] = counts[e];
  }
}

// --- offsets kernel: one block ----------------------------------------------------------------
// Phase 1, per expert e: column e of chunk_counts becomes each chunk's exclusive prefix (where its
// entries of e begin within e's rows); e's total goes to offsets[e + 1] for phase 2.
HERON_HD void chunk_prefix(int* chunk_counts, int64_t num_chunks, int num_experts, int e,
                           int* offsets) {
  int running = 0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int count = chunk_counts[c * num_experts + e];
    chunk_counts[c * num_experts + e] = running;
    running += count;
  }
  offsets[e + 1] = running;
}

// Phase 2, one thread: offsets[e + 1] (expert e's count) becomes the end of e's padded rows.
// Returns the number of rows in use (a multiple of kBlockM).
HERON_HD int pad_scan(int* offsets, int num_experts) {
  offsets[0] = 0;
  for (int e = 0; e < num_experts; ++e) {
    offsets[e + 1] = offsets[e] + static_cast<int>(ceil_div(offsets[e + 1], kBlockM) * kBlockM);
  }
  return offsets[num_experts];
}

// Phase 3, per tile: the expert whose rows hold tile `tile`, or -1 past the rows in use. Experts
// without entries own no rows, so the search finds the one expert with offsets[e] <= row <
// offsets[e + 1].
HERON_HD int tile_expert(const int* offsets, int num_experts, int64_t tile) {
  const int64_t row = tile * kBlockM;
  if (row >= offsets[num_experts]) return -1;
  int lo = 0, hi = num_experts - 1;  // the last e with offsets[e] <= row
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= row) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// --- scatter kernel: one block per chunk ------------------------------------------------------
// Phase 1: this thread's entry's expert, or -1 (no entry, or an id naming no expert).
HERON_HD int entry_expert(const int64_t* topk_ids, int64_t num_slots, int num_experts,
                          int64_t chunk, int lane) {
  const int64_t i = chunk * kChunk + lane;
  if (i >= num_slots || !valid_expert(topk_ids[i], num_experts)) return -1;
  return static_cast<int>(topk_ids[i]);
}

// Phase 2: place this thread's entry. Its row is its expert's first row, plus the entries of that
// expert in earlier chunks (chunk_counts after chunk_prefix), plus those earlier in this chunk:
// the order of the entries within an expert is theirs in topk_ids.
HERON_HD void scatter_entry(const int* chunk_experts, int64_t chunk, int lane,
                            const int* chunk_counts, const int* offsets, int num_experts,
                            int* sorted_slots) {
  const int e = chunk_experts[lane];
  if (e < 0) return;
  int rank = 0;
  for (int j = 0; j < lane; ++j) rank += chunk_experts[j] == e;
  const int64_t row = offsets[e] + chunk_counts[chunk * num_experts + e] + rank;
  sorted_slots[row] = static_cast<int>(chunk * kChunk + lane);
}

// --- reduce kernel: one block per token -------------------------------------------------------
// The token's slots in ascending expert order (the order the reference adds expert outputs in;
// with three or more experts per token the rounding depends on it). Slots naming no expert are
// left out; returns how many remain. `order` holds at least top_k entries.
HERON_HD int order_by_expert(const int64_t* token_ids, int top_k, int num_experts, int* order) {
  int n = 0;
  for (int j = 0; j < top_k; ++j) {
    if (!valid_expert(token_ids[j], num_experts)) continue;
    int at = n++;
    while (at > 0 && token_ids[order[at - 1]] > token_ids[j]) {
      order[at] = order[at - 1];
      --at;
    }
    order[at] = j;
  }
  return n;
}

// --- routing: one thread per token ------------------------------------------------------------
// Softmax over the token's router logits in float32, then the top_k probabilities (the highest
// first; equal ones by ascending expert id), optionally rescaled to sum to one, as core's
// route_top_k does with torch. `logit(e)` reads logit e as a float.
template <typename Load>
HERON_HD void topk_softmax(Load logit, int num_experts, int top_k, bool renormalize,
                           float* weights, int64_t* ids) {
  float max_logit = -INFINITY;
  for (int e = 0; e < num_experts; ++e) max_logit = fmaxf(max_logit, logit(e));
  float sum = 0.f;
  for (int e = 0; e < num_experts; ++e) sum += expf(logit(e) - max_logit);
  float chosen_sum = 0.f;
  for (int j = 0; j < top_k; ++j) {
    int best = -1;
    float best_p = -1.f;
    for (int e = 0; e < num_experts; ++e) {
      bool taken = false;
      for (int q = 0; q < j; ++q) taken = taken || ids[q] == e;
      if (taken) continue;
      const float p = expf(logit(e) - max_logit) / sum;
      if (p > best_p) {
        best_p = p;
        best = e;
      }
    }
    ids[j] = best;
    weights[j] = best_p;
    chosen_sum += best_p;
  }
  if (renormalize) {
    for (int j = 0; j < top_k; ++j) weights[j] /= chosen_sum;
  }
}

}  // namespace moe
}  // namespace heron
