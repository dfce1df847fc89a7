// Host stand-ins for the CUDA names heron-cuda's MoE kernels use, so that the kernel sources
// themselves (plugins/cuda/csrc/moe_*.cu, unchanged) compile with g++ and run on a CPU.
//
// Why: no GPU is at hand where these kernels are written. The emulation runs a launch block by
// block; the threads of a block are real host threads, so __syncthreads() is a std::barrier, and
// __shared__ variables are function statics (one block runs at a time). A thread that returns
// leaves the barrier (arrive_and_drop), as an exited GPU thread stops counting. It checks the
// kernels' indexing, bounds, phase order and rounding; it says nothing about speed, memory
// coalescing or warp-level behaviour (the MoE kernels use no shuffles; heron_shfl_xor aborts).
// Only the names the MoE kernels and heron_gpu_compat.h need are provided.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#define HERON_EMULATED_DEVICE 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct CUstream_st;
using cudaStream_t = CUstream_st*;
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error (host emulation)"; }
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }

struct __half {
  _Float16 value;
};
inline float __half2float(__half h) { return static_cast<float>(h.value); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }  // RNE
inline float __uint_as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float __shfl_xor_sync(unsigned, float, int, int) {
  std::fprintf(stderr, "heron_host_shim: warp shuffles are not emulated\n");
  std::abort();
}

namespace heron_host {

inline thread_local dim3 thread_index, block_index, block_dim, grid_dim;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local void* dynamic_shared = nullptr;

template <typename Kernel>
struct Launch {
  Kernel* kernel;
  dim3 grid, block;
  size_t shared_bytes;

  template <typename... Args>
  void operator()(Args... args) const {
    std::vector<std::max_align_t> shared(shared_bytes / sizeof(std::max_align_t) + 1);
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz) {
      for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          std::barrier<> barrier(threads);
          std::vector<std::thread> pool;
          pool.reserve(threads);
          for (unsigned t = 0; t < threads; ++t) {
            pool.emplace_back([&, t, bx, by, bz] {
              thread_index = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
              block_index = dim3(bx, by, bz);
              block_dim = block;
              grid_dim = grid;
              block_barrier = &barrier;
              dynamic_shared = shared.data();
              kernel(args...);
              barrier.arrive_and_drop();
            });
          }
          for (auto& thread : pool) thread.join();
        }
      }
    }
  }
};

// One launch on the calling thread: the stream is not needed, since every launch completes in
// order before the next one starts.
template <typename Kernel>
Launch<Kernel> launch(Kernel* kernel, dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t) {
  return Launch<Kernel>{kernel, grid, block, shared_bytes};
}

}  // namespace heron_host

#define threadIdx ::heron_host::thread_index
#define blockIdx ::heron_host::block_index
#define blockDim ::heron_host::block_dim
#define gridDim ::heron_host::grid_dim

inline void __syncthreads() { ::heron_host::block_barrier->arrive_and_wait(); }

inline int atomicAdd(int* address, int value) {
  return std::atomic_ref<int>(*address).fetch_add(value);
}

#define HERON_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::heron_host::launch(kernel, grid, block, shared_bytes, stream)
#define HERON_DYNAMIC_SHARED(type, name) \
  type* name = static_cast<type*>(::heron_host::dynamic_shared)
