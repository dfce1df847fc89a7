// pybind11 binding of the encoder attention kernel (encoder_attention.cpp), registered into
// heron_cpu._C by bindings.cpp. Raw data pointers (uintptr_t) and sizes in, the caller's output
// written; the Python wrapper (heron_cpu/encoder_attention.py) checks the tensors. This binding
// checks the integer metadata the kernel indexes memory with: the sequence bounds.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "encoder_attention.h"
#include "replay.h"

namespace py = pybind11;

namespace {

using heron_cpu::encoder::EncoderAttentionArgs;
using heron_cpu::encoder::Path;

// The sequence bounds a kernel indexes rows with: within the tensor's rows and not decreasing.
const int32_t* checked_bounds(const std::string& kernel, uintptr_t starts, int64_t num_seqs,
                              int64_t num_rows, const std::string& tensor) {
  const auto* bounds = reinterpret_cast<const int32_t*>(starts);
  if (bounds[0] < 0 || bounds[num_seqs] > num_rows) {
    throw py::value_error(kernel + ": query_start_loc spans rows outside " + tensor);
  }
  for (int64_t s = 0; s < num_seqs; ++s) {
    if (bounds[s + 1] < bounds[s]) {
      throw py::value_error(kernel + ": query_start_loc decreases at sequence " +
                            std::to_string(s));
    }
  }
  return bounds;
}

int encoder_attention(uintptr_t out, uintptr_t qkv, uintptr_t starts, int64_t num_tokens,
                      int64_t num_seqs, int64_t num_heads, int64_t head_size, int64_t qkv_stride,
                      int64_t k_offset, int64_t v_offset, int64_t out_stride, double scale,
                      int dtype, int num_threads, int path) {
  if (num_seqs < 0 || num_tokens < 0) throw py::value_error("encoder_attention: negative size");
  if (num_heads < 1 || head_size < 1) {
    throw py::value_error("encoder_attention: num_heads and head_size must be >= 1");
  }
  const int64_t width = num_heads * head_size;
  if (k_offset < width || v_offset < k_offset + width || qkv_stride < v_offset + width) {
    throw py::value_error("encoder_attention: q, k and v parts overlap or exceed the qkv row");
  }
  if (out_stride < width) throw py::value_error("encoder_attention: out rows overlap");
  if (dtype != 0 && dtype != 1) {
    throw py::value_error("encoder_attention: dtype code must be 0 (float32) or 1 (bfloat16)");
  }
  if (path < static_cast<int>(Path::kAuto) || path > static_cast<int>(Path::kAmx)) {
    throw py::value_error("encoder_attention: unknown path " + std::to_string(path));
  }
  const int32_t* bounds = checked_bounds("encoder_attention", starts, num_seqs, num_tokens, "qkv");
  const EncoderAttentionArgs args{reinterpret_cast<const void*>(qkv),
                                  reinterpret_cast<void*>(out),
                                  bounds,
                                  num_seqs,
                                  num_heads,
                                  head_size,
                                  qkv_stride,
                                  k_offset,
                                  v_offset,
                                  out_stride,
                                  static_cast<float>(scale),
                                  dtype == 1,
                                  num_threads > 0 ? num_threads : 1};
  heron_cpu::replay::GilRelease release;
  return static_cast<int>(heron_cpu::encoder::encoder_attention(args, static_cast<Path>(path)));
}

// Checks the sequence bounds like encoder_attention; the Python wrapper checks the tensors.
void mean_pool(uintptr_t out, uintptr_t hidden, uintptr_t starts, int64_t num_tokens,
               int64_t num_seqs, int64_t width, int64_t stride, int dtype, int num_threads,
               bool portable) {
  if (num_seqs < 0 || num_tokens < 0 || width < 0) throw py::value_error("mean_pool: negative size");
  if (stride < width) throw py::value_error("mean_pool: hidden rows overlap");
  if (dtype != 0 && dtype != 1) {
    throw py::value_error("mean_pool: dtype code must be 0 (float32) or 1 (bfloat16)");
  }
  const int32_t* bounds = checked_bounds("mean_pool", starts, num_seqs, num_tokens, "hidden");
  const heron_cpu::encoder::MeanPoolArgs args{reinterpret_cast<const void*>(hidden),
                                              reinterpret_cast<float*>(out),
                                              bounds,
                                              num_seqs,
                                              width,
                                              stride,
                                              dtype == 1,
                                              num_threads > 0 ? num_threads : 1,
                                              portable};
  heron_cpu::replay::GilRelease release;
  heron_cpu::encoder::mean_pool(args);
}

}  // namespace

void heron_cpu_register_encoder_attention(py::module_& m) {
  m.def("encoder_attention", &encoder_attention, py::arg("out"), py::arg("qkv"),
        py::arg("starts"), py::arg("num_tokens"), py::arg("num_seqs"), py::arg("num_heads"),
        py::arg("head_size"), py::arg("qkv_stride"), py::arg("k_offset"), py::arg("v_offset"),
        py::arg("out_stride"), py::arg("scale"), py::arg("dtype"), py::arg("num_threads"),
        py::arg("path"),
        "Bidirectional attention of whole sequences from a fused qkv projection, in place; path 0 "
        "auto, 1 AVX-512, 2 portable, 3 AMX-BF16. Returns the path that ran.");
  m.def("encoder_attention_avx512", &heron_cpu::encoder::avx512_supported,
        "Whether this CPU runs encoder_attention's AVX-512 loops.");
  m.def("encoder_attention_amx", &heron_cpu::encoder::amx_supported,
        "Whether this CPU runs encoder_attention's AMX-BF16 loops (bfloat16, head_size % 32 == 0).");
  heron_cpu::replay::add_raw<&encoder_attention>(m, "encoder_attention");
  m.def("mean_pool", &mean_pool, py::arg("out"), py::arg("hidden"), py::arg("starts"),
        py::arg("num_tokens"), py::arg("num_seqs"), py::arg("width"), py::arg("stride"),
        py::arg("dtype"), py::arg("num_threads"), py::arg("portable"),
        "The float32 mean of each sequence's rows (sums in float32), into out [num_seqs, width].");
}
