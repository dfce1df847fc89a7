// SiLU-and-multiply, the gate of SwiGLU MLPs: out = silu(x[:, :d]) * x[:, d:].
#include "launch_utils.h"

namespace heron {
namespace {

template <typename T>
__global__ void silu_and_mul_kernel(T* __restrict__ out, int64_t out_stride,
                                    const T* __restrict__ x, int64_t x_stride, int d) {
  const T* gate = x + blockIdx.x * x_stride;
  const T* up = gate + d;
  T* out_row = out + blockIdx.x * out_stride;
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    const float g = to_float(gate[i]);
    out_row[i] = from_float<T>(round_to<T>(g / (1.f + expf(-g))) * to_float(up[i]));
  }
}

}  // namespace

void silu_and_mul(uintptr_t out, int64_t out_stride, uintptr_t x, int64_t x_stride,
                  int64_t num_tokens, int d, int dtype, int device, uintptr_t stream) {
  if (num_tokens == 0 || d == 0) return;
  DeviceGuard guard(device);
  const int threads = d < 1024 ? ((d + 31) / 32) * 32 : 1024;
  HERON_DISPATCH_FLOATING(dtype, "silu_and_mul", {
    silu_and_mul_kernel<scalar_t>
        <<<static_cast<unsigned>(num_tokens), threads, 0, as_stream(stream)>>>(
            as_ptr<scalar_t>(out), out_stride, as_ptr<const scalar_t>(x), x_stride, d);
  });
  check_launch("silu_and_mul_kernel");
}

}  // namespace heron
