// Portability layer that lets one kernel source tree build as CUDA (nvcc) and as HIP (clang/hipcc).
//
// The kernels are written against the CUDA runtime names; when the HIP compiler builds them
// (plugins/rocm compiles these same .cu files with LANGUAGE HIP) the names below map onto their HIP
// twins. Only what the kernels use is mapped, so a new CUDA call fails to compile on ROCm instead of
// silently doing something else.
//
// Two things differ in substance, not just in name:
//  * Warp width. NVIDIA warps are 32 lanes, AMD CDNA wavefronts are 64. The kernels never assume the
//    hardware width: they reduce over *lane groups* of kHeronGroup = 32 threads with width-32
//    shuffles (a 64-wide wavefront simply holds two groups) and use __syncthreads() for every
//    cross-lane exchange through shared memory.
//  * bfloat16. The HIP headers of older ROCm releases (Debian ships 5.2) have no __hip_bfloat16, so
//    bfloat16 is a 16-bit storage type of our own with explicit round-to-nearest-even conversions;
//    every kernel computes in float anyway.
#pragma once

#include <cstdint>

#if defined(__HIP_PLATFORM_AMD__) || defined(__HIPCC__) || defined(HERON_GPU_HIP)
#include <hip/hip_fp16.h>
#include <hip/hip_runtime.h>

#define HERON_GPU_HIP 1
#define cudaStream_t hipStream_t
#define cudaError_t hipError_t
#define cudaSuccess hipSuccess
#define cudaGetLastError hipGetLastError
#define cudaGetErrorString hipGetErrorString
#define cudaGetDevice hipGetDevice
#define cudaSetDevice hipSetDevice

__device__ __forceinline__ float heron_shfl_xor(float value, int lane_mask) {
  return __shfl_xor(value, lane_mask, 32);
}
#else
#include <cuda_fp16.h>
#include <cuda_runtime.h>

__device__ __forceinline__ float heron_shfl_xor(float value, int lane_mask) {
  return __shfl_xor_sync(0xffffffffu, value, lane_mask, 32);
}
#endif

namespace heron {

// Threads that cooperate through shuffles; a divisor of both hardware warp widths.
constexpr int kHeronGroup = 32;

// bfloat16 storage: the upper half of an IEEE float.
struct bf16 {
  uint16_t bits;
};

using f16 = __half;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(f16 x) { return __half2float(x); }
__device__ __forceinline__ float to_float(bf16 x) {
  return __uint_as_float(static_cast<uint32_t>(x.bits) << 16);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);

template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ f16 from_float<f16>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
  uint32_t u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it a (quiet) NaN after truncation
    return bf16{static_cast<uint16_t>((u >> 16) | 0x0040u)};
  }
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// `x` rounded to T's precision, kept as a float. Where Hugging Face's eager PyTorch stores an
// intermediate in the model dtype (RMSNorm before its weight, SiLU before the gate product, each
// rotary product), the elementwise kernels round there too: results then equal the reference bit
// for bit in nearly every element, so half-precision greedy decoding follows HF's token choices
// instead of drifting one rounding away at near-ties.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

// Sum / max over the 32 lanes of a lane group; every lane receives the result.
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int mask = kHeronGroup / 2; mask > 0; mask >>= 1) v += heron_shfl_xor(v, mask);
  return v;
}

__device__ __forceinline__ float group_max(float v) {
#pragma unroll
  for (int mask = kHeronGroup / 2; mask > 0; mask >>= 1) v = fmaxf(v, heron_shfl_xor(v, mask));
  return v;
}

// Block-wide reductions; blockDim.x must be a multiple of 32 (at most 1024) and every thread of the
// block must call them. `scratch` holds 32 floats of shared memory; the leading barrier makes it
// safe to call these back to back with the same scratch.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int group = threadIdx.x / kHeronGroup;
  const int lane = threadIdx.x % kHeronGroup;
  const int num_groups = blockDim.x / kHeronGroup;
  v = group_sum(v);
  __syncthreads();
  if (lane == 0) scratch[group] = v;
  __syncthreads();
  float total = 0.f;
  for (int g = 0; g < num_groups; ++g) total += scratch[g];
  return total;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int group = threadIdx.x / kHeronGroup;
  const int lane = threadIdx.x % kHeronGroup;
  const int num_groups = blockDim.x / kHeronGroup;
  v = group_max(v);
  __syncthreads();
  if (lane == 0) scratch[group] = v;
  __syncthreads();
  float result = -INFINITY;
  for (int g = 0; g < num_groups; ++g) result = fmaxf(result, scratch[g]);
  return result;
}

}  // namespace heron
