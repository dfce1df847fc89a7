// Mixture of experts, routing: softmax over each token's router logits, the top_k experts and
// their weights (float32), optionally renormalised to sum to one (Mixtral; Qwen-MoE with
// norm_topk_prob). One thread per token runs moe::topk_softmax (moe_logic.h, host-tested): the
// work per token is num_experts * top_k comparisons, small beside the experts' GEMMs.
#include "launch_utils.h"
#include "moe_logic.h"

namespace heron {
namespace {

constexpr int kRoutingThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kRoutingThreads)
    moe_topk_softmax_kernel(float* __restrict__ weights, int64_t* __restrict__ ids,
                            const T* __restrict__ logits, int64_t logits_stride,
                            int64_t num_tokens, int num_experts, int top_k, bool renormalize) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (token >= num_tokens) return;
  const T* row = logits + token * logits_stride;
  moe::topk_softmax([row](int e) { return to_float(row[e]); }, num_experts, top_k, renormalize,
                    weights + token * top_k, ids + token * top_k);
}

}  // namespace

void moe_topk_softmax(uintptr_t weights, uintptr_t ids, uintptr_t logits, int64_t logits_stride,
                      int64_t num_tokens, int num_experts, int top_k, int renormalize, int dtype,
                      int device, uintptr_t stream) {
  if (num_experts <= 0 || top_k <= 0 || top_k > num_experts) {
    throw std::invalid_argument("moe_topk_softmax: top_k must be in [1, num_experts=" +
                                std::to_string(num_experts) + "], got " + std::to_string(top_k));
  }
  if (num_tokens == 0) return;
  DeviceGuard guard(device);
  const unsigned blocks = static_cast<unsigned>(moe::ceil_div(num_tokens, kRoutingThreads));
  HERON_DISPATCH_FLOATING(dtype, "moe_topk_softmax", {
    HERON_LAUNCH(moe_topk_softmax_kernel<scalar_t>, blocks, kRoutingThreads, 0, as_stream(stream))(
        as_ptr<float>(weights), as_ptr<int64_t>(ids), as_ptr<const scalar_t>(logits),
        logits_stride, num_tokens, num_experts, top_k, renormalize != 0);
  });
  check_launch("moe_topk_softmax_kernel");
}

}  // namespace heron
