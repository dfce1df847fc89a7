// Neox-style rotary position embedding applied in place to query and key.
#include "launch_utils.h"

namespace heron {
namespace {

// One thread block per token. Each thread owns (head, i) pairs with i < rot_dim / 2 and rotates
// features i and i + rot_dim / 2 of that head; features past rot_dim are left as they are.
template <typename T>
__global__ void rotary_neox_kernel(const int64_t* __restrict__ positions, T* __restrict__ query,
                                   int64_t query_stride, T* __restrict__ key, int64_t key_stride,
                                   const float* __restrict__ cos_sin_cache, int64_t max_position,
                                   int rot_dim, int num_heads, int num_kv_heads, int head_size) {
  const int64_t token = blockIdx.x;
  const int64_t pos = positions[token];
  // Out-of-range positions cannot be reported without a device sync; leaving the token untouched
  // keeps the read inside the cache.
  if (pos < 0 || pos >= max_position) return;
  const int half = rot_dim / 2;
  const float* cos = cos_sin_cache + pos * rot_dim;
  const float* sin = cos + half;
  const int query_pairs = num_heads * half;
  const int total_pairs = (num_heads + num_kv_heads) * half;
  for (int p = threadIdx.x; p < total_pairs; p += blockDim.x) {
    const bool is_query = p < query_pairs;
    const int local = is_query ? p : p - query_pairs;
    const int head = local / half;
    const int i = local % half;
    T* base = is_query ? query + token * query_stride + head * head_size
                       : key + token * key_stride + head * head_size;
    const float x1 = to_float(base[i]);
    const float x2 = to_float(base[i + half]);
    const float c = cos[i];
    const float s = sin[i];
    // Each product rounded on its own (and never fused into an FMA), as eager PyTorch does.
    base[i] = from_float<T>(round_to<T>(__fmul_rn(x1, c)) - round_to<T>(__fmul_rn(x2, s)));
    base[i + half] = from_float<T>(round_to<T>(__fmul_rn(x2, c)) + round_to<T>(__fmul_rn(x1, s)));
  }
}

}  // namespace

void rotary_embedding(uintptr_t positions, uintptr_t query, int64_t query_stride, uintptr_t key,
                      int64_t key_stride, uintptr_t cos_sin_cache, int64_t max_position,
                      int rot_dim, int64_t num_tokens, int num_heads, int num_kv_heads,
                      int head_size, int dtype, int device, uintptr_t stream) {
  if (num_tokens == 0) return;
  DeviceGuard guard(device);
  const int pairs = (num_heads + num_kv_heads) * (rot_dim / 2);
  const int threads = pairs < 512 ? ((pairs + 31) / 32) * 32 : 512;
  HERON_DISPATCH_FLOATING(dtype, "rotary_embedding", {
    rotary_neox_kernel<scalar_t>
        <<<static_cast<unsigned>(num_tokens), threads, 0, as_stream(stream)>>>(
            as_ptr<const int64_t>(positions), as_ptr<scalar_t>(query), query_stride,
            as_ptr<scalar_t>(key), key_stride, as_ptr<const float>(cos_sin_cache), max_position,
            rot_dim, num_heads, num_kv_heads, head_size);
  });
  check_launch("rotary_neox_kernel");
}

}  // namespace heron
