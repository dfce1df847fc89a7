// pybind11 bindings of the bf16 linear kernels (gemv.cpp: few rows, plain weight; gemm.cpp: any
// rows, packed weight), registered into heron_cpu._C by bindings.cpp. Like the other bindings: raw data pointers (uintptr_t) and sizes
// in, the caller's output written; the Python wrapper (heron_cpu/gemv.py) checks the tensors.
// This runs ~120 times per decode step, so the binding only checks the integers it is given.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "gemm.h"
#include "gemv.h"
#include "replay.h"

namespace py = pybind11;

namespace {

using heron_cpu::gemv::GemvArgs;
using heron_cpu::gemv::Path;

// The size checks and the argument struct both bindings share (GemvArgs and GemmArgs have the same
// fields; only what `weight` points at differs: a plain [n, k] weight or a packed one).
template <typename Args>
Args matmul_args(const char* name, uintptr_t out, uintptr_t x, uintptr_t weight, uintptr_t bias,
                 int64_t m, int64_t n, int64_t k, int64_t x_stride, int num_threads) {
  if (m < 0 || n < 0 || k < 0) throw py::value_error(std::string(name) + ": negative size");
  if (m > 1 && x_stride < k) {
    throw py::value_error(std::string(name) + ": x rows overlap (stride < k)");
  }
  return Args{reinterpret_cast<uint16_t*>(out),
              reinterpret_cast<const uint16_t*>(x),
              reinterpret_cast<const uint16_t*>(weight),
              reinterpret_cast<const uint16_t*>(bias),
              m,
              n,
              k,
              x_stride,
              n,
              num_threads > 0 ? num_threads : 1};
}

void linear_bf16(uintptr_t out, uintptr_t x, uintptr_t weight, uintptr_t bias, int64_t m, int64_t n,
                 int64_t k, int64_t x_stride, int num_threads, int path) {
  const auto args = matmul_args<GemvArgs>("linear_bf16", out, x, weight, bias, m, n, k, x_stride,
                                          num_threads);
  if (path < static_cast<int>(Path::kAuto) || path > static_cast<int>(Path::kPortable)) {
    throw py::value_error("linear_bf16: unknown path " + std::to_string(path));
  }
  heron_cpu::replay::GilRelease release;
  heron_cpu::gemv::linear_bf16(args, static_cast<Path>(path));
}

void linear_bf16_packed(uintptr_t out, uintptr_t x, uintptr_t packed, uintptr_t bias, int64_t m,
                        int64_t n, int64_t k, int64_t x_stride, int num_threads) {
  if (!heron_cpu::gemm::supported()) {
    throw py::value_error("linear_bf16_packed: this CPU has no AVX512-BF16");
  }
  const auto args = matmul_args<heron_cpu::gemm::GemmArgs>("linear_bf16_packed", out, x, packed,
                                                           bias, m, n, k, x_stride, num_threads);
  heron_cpu::replay::GilRelease release;
  heron_cpu::gemm::linear_bf16_packed(args);
}

py::dict gemv_paths() {
  py::dict paths;
  paths["avx512_bf16"] = heron_cpu::gemv::avx512_bf16_supported();
  paths["amx"] = heron_cpu::gemv::amx_supported();
  paths["portable"] = true;
  paths["packed"] = heron_cpu::gemm::supported();
  return paths;
}

}  // namespace

void heron_cpu_register_gemv(py::module_& m) {
  m.def("linear_bf16", &linear_bf16, py::arg("out"), py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("x_stride"),
        py::arg("num_threads"), py::arg("path"),
        "out[m, n] = x[m, k] @ weight[n, k]^T (+ bias[n]) in bf16 with fp32 accumulation; bias 0 = "
        "none; path 0 auto, 1 AVX512-BF16, 2 AMX, 3 portable (unsupported ones fall back).");
  m.def("linear_bf16_packed", &linear_bf16_packed, py::arg("out"), py::arg("x"), py::arg("packed"),
        py::arg("bias"), py::arg("m"), py::arg("n"), py::arg("k"), py::arg("x_stride"),
        py::arg("num_threads"),
        "out[m, n] = x[m, k] @ weight[n, k]^T (+ bias[n]) from the weight packed in panels "
        "(heron_cpu/gemm.py); bias 0 = none.");
  m.def("packed_panel_columns", [] { return heron_cpu::gemm::kPanel; },
        "Output columns per panel of the packed weight layout.");
  m.def("gemv_paths", &gemv_paths,
        "Which linear_bf16 paths this CPU runs (asking Linux for the AMX tile state once).");
  heron_cpu::replay::add_raw<&linear_bf16>(m, "linear_bf16");
  heron_cpu::replay::add_raw<&linear_bf16_packed>(m, "linear_bf16_packed");
}
