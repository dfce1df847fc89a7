// Stores each token's key and value at its slot of the paged KV cache.
#include "launch_utils.h"

namespace heron {
namespace {

// One thread block per token; threads walk the token's num_kv_heads * head_size features, which are
// contiguous in the source and split per head in the cache ([blocks, kv_heads, block_size, head]).
template <typename T>
__global__ void write_kv_kernel(const T* __restrict__ key, int64_t key_stride,
                                const T* __restrict__ value, int64_t value_stride,
                                T* __restrict__ key_cache, T* __restrict__ value_cache,
                                const int64_t* __restrict__ slot_mapping, int num_kv_heads,
                                int head_size, int block_size, int64_t num_slots) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  // Negative slots are padding. Slots past the cache cannot be checked on the host without a
  // device sync; skipping them keeps a bad slot mapping from writing outside the cache.
  if (slot < 0 || slot >= num_slots) return;
  const int64_t block = slot / block_size;
  const int64_t offset = slot % block_size;
  const int features = num_kv_heads * head_size;
  for (int i = threadIdx.x; i < features; i += blockDim.x) {
    const int head = i / head_size;
    const int d = i % head_size;
    const int64_t dst = ((block * num_kv_heads + head) * block_size + offset) * head_size + d;
    key_cache[dst] = key[token * key_stride + i];
    value_cache[dst] = value[token * value_stride + i];
  }
}

}  // namespace

void write_kv(uintptr_t key, int64_t key_stride, uintptr_t value, int64_t value_stride,
              uintptr_t key_cache, uintptr_t value_cache, uintptr_t slot_mapping,
              int64_t num_tokens, int num_kv_heads, int head_size, int block_size,
              int64_t num_blocks, int dtype, int device, uintptr_t stream) {
  if (num_tokens == 0) return;
  DeviceGuard guard(device);
  const int features = num_kv_heads * head_size;
  const int threads = features < 512 ? ((features + 31) / 32) * 32 : 512;
  const int64_t num_slots = num_blocks * block_size;
  HERON_DISPATCH_FLOATING(dtype, "write_kv", {
    write_kv_kernel<scalar_t><<<static_cast<unsigned>(num_tokens), threads, 0, as_stream(stream)>>>(
        as_ptr<const scalar_t>(key), key_stride, as_ptr<const scalar_t>(value), value_stride,
        as_ptr<scalar_t>(key_cache), as_ptr<scalar_t>(value_cache),
        as_ptr<const int64_t>(slot_mapping), num_kv_heads, head_size, block_size, num_slots);
  });
  check_launch("write_kv_kernel");
}

}  // namespace heron
