// Runs heron-cuda's MoE entry points (heron::fused_moe, heron::moe_topk_softmax from
// plugins/cuda/csrc/moe_*.cu, compiled for the host through host_shim/) on tensors that
// test_moe_kernels_emulated.py writes as raw files, and writes the results back.
//
//   moe_kernels_host fused DIR   DIR/meta: dtype tokens top_k hidden intermediate experts
//                                weights_float32 x_stride out_stride; DIR/{x,w13,w2,ids,weights}
//                                -> DIR/out (tokens rows of out_stride elements)
//   moe_kernels_host route DIR   DIR/meta: dtype tokens experts top_k renormalize; DIR/logits
//                                -> DIR/route_weights (float32), DIR/route_ids (int64)
// "Device" pointers are host addresses: the shim's kernels read and write host memory.
#include <cstdint>
#include <fstream>
#include <iostream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "heron_ops.h"

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

uintptr_t address(const void* p) { return reinterpret_cast<uintptr_t>(p); }

size_t element_size(int dtype) { return dtype == heron::kFloat32 ? 4 : 2; }

int fused(const std::string& dir) {
  std::ifstream meta(dir + "/meta");
  int dtype, top_k, hidden, intermediate, experts, weights_float32;
  int64_t tokens, x_stride, out_stride;
  meta >> dtype >> tokens >> top_k >> hidden >> intermediate >> experts >> weights_float32 >>
      x_stride >> out_stride;
  std::vector<char> x = read_file(dir + "/x"), w13 = read_file(dir + "/w13"),
                    w2 = read_file(dir + "/w2"), ids = read_file(dir + "/ids"),
                    weights = read_file(dir + "/weights");
  const int64_t slots = tokens * top_k;
  const std::vector<int64_t> size = heron::moe_workspace_size(slots, experts);
  std::vector<int32_t> workspace(size[0], 0x5a5a5a5a);  // garbage, as torch.empty leaves
  const size_t es = element_size(dtype);
  std::vector<char> act(slots * intermediate * es, 0x7f), expert_out(slots * hidden * es, 0x7f);
  std::vector<char> out(tokens * out_stride * es, 0);
  heron::fused_moe(address(out.data()), out_stride, address(x.data()), x_stride,
                   address(w13.data()), address(w2.data()), address(ids.data()),
                   address(weights.data()), weights_float32, tokens, top_k, hidden, intermediate,
                   experts, address(workspace.data()), static_cast<int64_t>(workspace.size()),
                   address(act.data()), address(expert_out.data()), dtype, 0, 0);
  write_file(dir + "/out", out.data(), out.size());
  return 0;
}

int route(const std::string& dir) {
  std::ifstream meta(dir + "/meta");
  int dtype, experts, top_k, renormalize;
  int64_t tokens;
  meta >> dtype >> tokens >> experts >> top_k >> renormalize;
  std::vector<char> logits = read_file(dir + "/logits");
  std::vector<float> weights(tokens * top_k, -1.f);
  std::vector<int64_t> ids(tokens * top_k, -1);
  heron::moe_topk_softmax(address(weights.data()), address(ids.data()), address(logits.data()),
                          experts, tokens, experts, top_k, renormalize, dtype, 0, 0);
  write_file(dir + "/route_weights", weights.data(), weights.size() * sizeof(float));
  write_file(dir + "/route_ids", ids.data(), ids.size() * sizeof(int64_t));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: moe_kernels_host {fused,route} DIR\n";
    return 2;
  }
  const std::string command = argv[1];
  try {
    if (command == "fused") return fused(argv[2]);
    if (command == "route") return route(argv[2]);
  } catch (const std::exception& err) {
    std::cerr << "error: " << err.what() << '\n';
    return 1;
  }
  std::cerr << "unknown command " << command << '\n';
  return 2;
}
