// pybind11 module heron_cpu._quant: the block-quantized linear kernels of quant.cpp. Its own
// module (not part of _C) so that the quantized kernels build and load independently of the
// other kernels' bindings. Raw data pointers (uintptr_t) and sizes in, the caller's output
// written; heron_cpu/quant.py checks the tensors, this file only the integers.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "quant.h"
#include "replay.h"

namespace py = pybind11;
namespace hq = heron_cpu::quant;

namespace {

hq::QuantArgs make_args(const char* name, uintptr_t out, uintptr_t x, uintptr_t qs, uintptr_t d,
                        uintptr_t mins, uintptr_t bias, int64_t m, int64_t n, int64_t k,
                        int64_t x_stride, int format, int dtype, int num_threads) {
  const std::string who(name);
  if (m < 0 || n < 0 || k < 0) throw py::value_error(who + ": negative size");
  if (k % hq::kBlock) throw py::value_error(who + ": k must be a multiple of 32");
  if (m > 1 && x_stride < k) throw py::value_error(who + ": x rows overlap (stride < k)");
  if (format != 0 && format != 1) throw py::value_error(who + ": unknown format");
  if (dtype != 0 && dtype != 1) throw py::value_error(who + ": unknown dtype");
  if (format == 1 && mins == 0) throw py::value_error(who + ": Q4 needs its minimums");
  return hq::QuantArgs{reinterpret_cast<void*>(out),
                       reinterpret_cast<const void*>(x),
                       reinterpret_cast<const uint8_t*>(qs),
                       reinterpret_cast<const float*>(d),
                       reinterpret_cast<const float*>(mins),
                       reinterpret_cast<const void*>(bias),
                       m,
                       n,
                       k,
                       x_stride,
                       static_cast<hq::Format>(format),
                       static_cast<hq::DType>(dtype),
                       num_threads > 0 ? num_threads : 1};
}

void quant_linear(uintptr_t out, uintptr_t x, uintptr_t qs, uintptr_t d, uintptr_t mins,
                  uintptr_t bias, int64_t m, int64_t n, int64_t k, int64_t x_stride, int format,
                  int dtype, int num_threads, int path, uintptr_t d16, uintptr_t mins16) {
  auto args = make_args("quant_linear", out, x, qs, d, mins, bias, m, n, k, x_stride, format,
                        dtype, num_threads);
  if (path < 0 || path > 6) throw py::value_error("quant_linear: unknown path");
  if (format == 1 && (d16 == 0) != (mins16 == 0)) {
    throw py::value_error("quant_linear: Q4 f16 scales need their f16 minimums (d16, mins16)");
  }
  args.d16 = reinterpret_cast<const uint16_t*>(d16);
  args.mins16 = reinterpret_cast<const uint16_t*>(mins16);
  heron_cpu::replay::GilRelease release;
  hq::linear(args, static_cast<hq::Path>(path));
}

void quant_dequantize(uintptr_t out, uintptr_t qs, uintptr_t d, uintptr_t mins, int64_t n,
                      int64_t k, int format, int dtype, int num_threads) {
  const auto args = make_args("quant_dequantize", 0, 0, qs, d, mins, 0, 0, n, k, k, format, dtype,
                              num_threads);
  heron_cpu::replay::GilRelease release;
  hq::dequantize(args, reinterpret_cast<void*>(out));
}

py::dict quant_paths() {
  py::dict paths;
  paths["avx512"] = hq::avx512_supported();
  paths["avx2"] = hq::avx2_supported();
  paths["portable"] = true;
  paths["vnni512"] = hq::vnni512_supported();
  paths["avxvnni"] = hq::avxvnni_supported();
  paths["amx"] = hq::amx_supported();
  return paths;
}

}  // namespace

PYBIND11_MODULE(_quant, m) {
  m.doc() = "heron-cpu linear layers over block-quantized weights (csrc/quant.cpp)";
  m.def("quant_linear", &quant_linear, py::arg("out"), py::arg("x"), py::arg("qs"), py::arg("d"),
        py::arg("mins"), py::arg("bias"), py::arg("m"), py::arg("n"), py::arg("k"),
        py::arg("x_stride"), py::arg("format"), py::arg("dtype"), py::arg("num_threads"),
        py::arg("path"), py::arg("d16") = 0, py::arg("mins16") = 0,
        "out[m, n] = x[m, k] @ W^T (+ bias) for W in repacked blocks; format 0 Q8, 1 Q4; dtype 0 "
        "float32, 1 bfloat16; path 0 auto, 1 AVX-512, 2 AVX2, 3 portable (fp32), 4 AVX-512 VNNI, 5 AVX-VNNI (int8 x), 6 AMX-BF16 (bf16 x, many rows). "
        "d16 / mins16: the same scales and minimums in float16 (0: none), read by the AVX-512 VNNI loop.");
  m.def("quant_dequantize", &quant_dequantize, py::arg("out"), py::arg("qs"), py::arg("d"),
        py::arg("mins"), py::arg("n"), py::arg("k"), py::arg("format"), py::arg("dtype"),
        py::arg("num_threads"), "out[n, k] = W dequantized to dtype.");
  m.def("quant_paths", &quant_paths, "Which quant_linear paths this CPU runs.");
  // Raw entries of the recorded launches, for heron_cpu._C.ReplayProgram (replay.h).
  heron_cpu::replay::add_raw<&quant_linear>(m, "quant_linear");
  heron_cpu::replay::add_raw<&quant_dequantize>(m, "quant_dequantize");
}
