// RMSNorm: out = round(x / sqrt(mean(x^2) + eps)) * weight, with the statistics in float32 and the
// normalised row rounded to the model dtype before the weight multiply, as Hugging Face does.
#include "launch_utils.h"

namespace heron {
namespace {

// One thread block per row: a block-wide sum of squares, then a second pass that scales the row.
template <typename T>
__global__ void rms_norm_kernel(T* __restrict__ out, int64_t out_stride, const T* __restrict__ x,
                                int64_t x_stride, const T* __restrict__ weight, int hidden_size,
                                float eps) {
  __shared__ float scratch[32];
  const T* row = x + blockIdx.x * x_stride;
  T* out_row = out + blockIdx.x * out_stride;
  float sum_squares = 0.f;
  for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    const float v = to_float(row[i]);
    sum_squares += v * v;
  }
  sum_squares = block_sum(sum_squares, scratch);
  // 1 / sqrtf, both correctly rounded, rather than the approximate rsqrtf.
  const float inv_rms = 1.f / sqrtf(sum_squares / static_cast<float>(hidden_size) + eps);
  for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) {
    out_row[i] = from_float<T>(round_to<T>(to_float(row[i]) * inv_rms) * to_float(weight[i]));
  }
}

}  // namespace

void rms_norm(uintptr_t out, int64_t out_stride, uintptr_t x, int64_t x_stride, uintptr_t weight,
              int64_t num_tokens, int hidden_size, float eps, int dtype, int device,
              uintptr_t stream) {
  if (num_tokens == 0) return;
  DeviceGuard guard(device);
  const int threads = hidden_size < 1024 ? ((hidden_size + 31) / 32) * 32 : 1024;
  HERON_DISPATCH_FLOATING(dtype, "rms_norm", {
    rms_norm_kernel<scalar_t><<<static_cast<unsigned>(num_tokens), threads, 0, as_stream(stream)>>>(
        as_ptr<scalar_t>(out), out_stride, as_ptr<const scalar_t>(x), x_stride,
        as_ptr<const scalar_t>(weight), hidden_size, eps);
  });
  check_launch("rms_norm_kernel");
}

}  // namespace heron
