// Host-only driver of heron-cuda's mixture-of-experts bookkeeping (plugins/cuda/csrc/moe_logic.h).
//
// It runs the phases of the align, routing and reduce-order kernels exactly as the GPU runs them
// (every block, every thread of a phase before the next phase: the __syncthreads() between them),
// but on the host, so that test_moe_logic_host.py can compare the result with torch where no GPU
// exists. Reads one command from stdin and prints the results, one line per array:
//   align <num_slots> <num_experts> <topk_ids...>
//       -> layout <num_chunks> <max_tiles> <total>; offsets ...; slots ...; tiles ...; bases ...
//   route <num_tokens> <num_experts> <top_k> <renormalize> <logits...>
//       -> ids ...; weights ...
//   order <top_k> <num_experts> <ids...>
//       -> order ...
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "moe_logic.h"

namespace moe = heron::moe;

namespace {

template <typename T>
void print(const char* name, const std::vector<T>& values, int64_t begin, int64_t count) {
  std::cout << name;
  for (int64_t i = begin; i < begin + count; ++i) std::cout << ' ' << values[i];
  std::cout << '\n';
}

int align(int64_t num_slots, int num_experts) {
  std::vector<int64_t> ids(num_slots);
  for (auto& id : ids) std::cin >> id;
  const moe::Workspace w = moe::workspace_layout(num_slots, num_experts);
  std::vector<int> ws(w.total, 12345);  // garbage, as torch.empty would leave
  int* chunk_counts = ws.data() + w.chunk_counts;
  int* offsets = ws.data() + w.offsets;
  int* sorted_slots = ws.data() + w.sorted_slots;
  int* tile_experts = ws.data() + w.tile_experts;
  const int threads = moe::kChunk;

  // moe_count_kernel: <<<num_chunks, kChunk, num_experts ints of shared memory>>>
  for (int64_t chunk = 0; chunk < w.num_chunks; ++chunk) {
    std::vector<int> shared(num_experts, 777);
    for (int lane = 0; lane < threads; ++lane) moe::count_zero(shared.data(), num_experts, lane, threads);
    for (int lane = 0; lane < threads; ++lane) {
      moe::count_entry(ids.data(), num_slots, num_experts, chunk, lane, shared.data());
    }
    for (int lane = 0; lane < threads; ++lane) {
      moe::count_store(shared.data(), num_experts, chunk, lane, threads, chunk_counts);
    }
  }
  // moe_offsets_kernel: <<<1, kChunk>>>
  for (int lane = 0; lane < threads; ++lane) {
    for (int e = lane; e < num_experts; e += threads) {
      moe::chunk_prefix(chunk_counts, w.num_chunks, num_experts, e, offsets);
    }
  }
  moe::pad_scan(offsets, num_experts);
  for (int lane = 0; lane < threads; ++lane) {
    for (int64_t t = lane; t < w.max_tiles; t += threads) {
      tile_experts[t] = moe::tile_expert(offsets, num_experts, t);
    }
    for (int64_t r = lane; r < w.max_tiles * moe::kBlockM; r += threads) sorted_slots[r] = -1;
  }
  // moe_scatter_kernel: <<<num_chunks, kChunk>>>
  for (int64_t chunk = 0; chunk < w.num_chunks; ++chunk) {
    std::vector<int> chunk_experts(threads);
    for (int lane = 0; lane < threads; ++lane) {
      chunk_experts[lane] = moe::entry_expert(ids.data(), num_slots, num_experts, chunk, lane);
    }
    for (int lane = 0; lane < threads; ++lane) {
      moe::scatter_entry(chunk_experts.data(), chunk, lane, chunk_counts, offsets, num_experts,
                         sorted_slots);
    }
  }
  std::cout << "layout " << w.num_chunks << ' ' << w.max_tiles << ' ' << w.total << '\n';
  print("offsets", ws, w.offsets, num_experts + 1);
  print("slots", ws, w.sorted_slots, w.max_tiles * moe::kBlockM);
  print("tiles", ws, w.tile_experts, w.max_tiles);
  print("bases", ws, w.chunk_counts, w.num_chunks * num_experts);
  return 0;
}

int route(int64_t num_tokens, int num_experts, int top_k, int renormalize) {
  std::vector<float> logits(num_tokens * num_experts);
  for (auto& v : logits) std::cin >> v;
  std::vector<int64_t> ids(num_tokens * top_k);
  std::vector<float> weights(num_tokens * top_k);
  for (int64_t t = 0; t < num_tokens; ++t) {  // moe_topk_softmax_kernel: one thread per token
    const float* row = logits.data() + t * num_experts;
    moe::topk_softmax([row](int e) { return row[e]; }, num_experts, top_k, renormalize != 0,
                      weights.data() + t * top_k, ids.data() + t * top_k);
  }
  print("ids", ids, 0, num_tokens * top_k);
  std::cout.precision(9);
  print("weights", weights, 0, num_tokens * top_k);
  return 0;
}

int order(int top_k, int num_experts) {
  std::vector<int64_t> ids(top_k);
  for (auto& id : ids) std::cin >> id;
  std::vector<int> slots(moe::kMaxTopK, -1);
  const int n = moe::order_by_expert(ids.data(), top_k, num_experts, slots.data());
  print("order", slots, 0, n);
  return 0;
}

}  // namespace

int main() {
  std::string command;
  std::cin >> command;
  if (command == "align") {
    int64_t num_slots;
    int num_experts;
    std::cin >> num_slots >> num_experts;
    return align(num_slots, num_experts);
  }
  if (command == "route") {
    int64_t num_tokens;
    int num_experts, top_k, renormalize;
    std::cin >> num_tokens >> num_experts >> top_k >> renormalize;
    return route(num_tokens, num_experts, top_k, renormalize);
  }
  if (command == "order") {
    int top_k, num_experts;
    std::cin >> top_k >> num_experts;
    return order(top_k, num_experts);
  }
  std::cerr << "unknown command " << command << '\n';
  return 2;
}
