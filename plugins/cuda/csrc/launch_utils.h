// Host-side helpers shared by the kernel launchers: launch checks, the device guard and the dtype
// switch. Included only by .cu files.
#pragma once

#include <stdexcept>
#include <string>

#include "heron_gpu_compat.h"
#include "heron_ops.h"

namespace heron {

inline void check_gpu(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

// Makes `device` current for the launch and restores the previous device afterwards. The caller's
// tensors may live on a device other than the thread's current one; launching there would hand the
// kernel foreign pointers.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    int current = 0;
    check_gpu(cudaGetDevice(&current), "cudaGetDevice");
    if (current != device) {
      check_gpu(cudaSetDevice(device), "cudaSetDevice");
      previous_ = current;
    }
  }
  ~DeviceGuard() {
    // A destructor must not throw; a failure to switch back surfaces at the next runtime call.
    if (previous_ >= 0) static_cast<void>(cudaSetDevice(previous_));
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

inline cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

template <typename T>
inline T* as_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

inline void check_launch(const char* kernel) { check_gpu(cudaGetLastError(), kernel); }

[[noreturn]] inline void unsupported_dtype(int dtype, const char* op) {
  throw std::invalid_argument(std::string(op) + ": unsupported dtype code " +
                              std::to_string(dtype));
}

}  // namespace heron

// Runs the statement with `scalar_t` bound to the storage type of `dtype`.
#define HERON_DISPATCH_FLOATING(dtype, op, ...)          \
  switch (dtype) {                                      \
    case ::heron::kFloat32: {                           \
      using scalar_t = float;                           \
      __VA_ARGS__;                                      \
      break;                                            \
    }                                                   \
    case ::heron::kFloat16: {                           \
      using scalar_t = ::heron::f16;                    \
      __VA_ARGS__;                                      \
      break;                                            \
    }                                                   \
    case ::heron::kBFloat16: {                          \
      using scalar_t = ::heron::bf16;                   \
      __VA_ARGS__;                                      \
      break;                                            \
    }                                                   \
    default:                                            \
      ::heron::unsupported_dtype(dtype, op);            \
  }

// The attention kernels exist for the 16-bit types only (see paged_attention.cu).
#define HERON_DISPATCH_HALF(dtype, op, ...)              \
  switch (dtype) {                                      \
    case ::heron::kFloat16: {                           \
      using scalar_t = ::heron::f16;                    \
      __VA_ARGS__;                                      \
      break;                                            \
    }                                                   \
    case ::heron::kBFloat16: {                          \
      using scalar_t = ::heron::bf16;                   \
      __VA_ARGS__;                                      \
      break;                                            \
    }                                                   \
    default:                                            \
      ::heron::unsupported_dtype(dtype, op);            \
  }
