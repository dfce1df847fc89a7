// pybind11 module `_C` of heron_cuda / heron_rocm: the kernels' host entry points, nothing else.
//
// The module links neither libtorch nor Python-side tensor types: the wrappers in ops.py pass data
// pointers, sizes, a dtype code, the device ordinal and the current stream as integers. That keeps
// one wheel usable with many torch versions. The GIL is released around every call because a
// launch can block briefly (for example when the launch queue is full).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "heron_ops.h"
#include "moe_logic.h"

namespace py = pybind11;

#ifndef HERON_GPU_ARCHS
#define HERON_GPU_ARCHS ""
#endif
#ifndef HERON_GPU_RUNTIME
#define HERON_GPU_RUNTIME "cuda"
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "Heron GPU kernels (" HERON_GPU_RUNTIME "); see heron_ops.h for the conventions.";
  m.attr("RUNTIME") = HERON_GPU_RUNTIME;
  m.attr("ARCHS") = HERON_GPU_ARCHS;
  m.attr("PARTITION_SIZE") = heron::kPartitionSize;
  m.attr("HEAD_SIZES") = heron::attention_head_sizes();
  m.attr("DTYPE_FLOAT32") = static_cast<int>(heron::kFloat32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(heron::kFloat16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(heron::kBFloat16);
  m.attr("MOE_MAX_EXPERTS") = heron::moe::kMaxExperts;
  m.attr("MOE_MAX_TOP_K") = heron::moe::kMaxTopK;
  m.attr("MOE_BLOCK_M") = heron::moe::kBlockM;

  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("write_kv", &heron::write_kv, release, py::arg("key"), py::arg("key_stride"),
        py::arg("value"), py::arg("value_stride"), py::arg("key_cache"), py::arg("value_cache"),
        py::arg("slot_mapping"), py::arg("num_tokens"), py::arg("num_kv_heads"),
        py::arg("head_size"), py::arg("block_size"), py::arg("num_blocks"), py::arg("dtype"),
        py::arg("device"), py::arg("stream"));
  m.def("paged_attention", &heron::paged_attention, release, py::arg("out"),
        py::arg("out_stride"), py::arg("query"), py::arg("query_stride"), py::arg("key_cache"),
        py::arg("value_cache"), py::arg("query_start_loc"), py::arg("seq_lens"),
        py::arg("block_tables"), py::arg("block_table_stride"), py::arg("num_seqs"),
        py::arg("num_heads"), py::arg("num_kv_heads"), py::arg("head_size"),
        py::arg("block_size"), py::arg("scale"), py::arg("max_query_len"),
        py::arg("max_partitions"), py::arg("tmp_out"), py::arg("max_logits"),
        py::arg("exp_sums"), py::arg("dtype"), py::arg("device"), py::arg("stream"),
        py::arg("causal") = 1, py::arg("window") = 0, py::arg("softcap") = 0.f);
  m.def("rms_norm", &heron::rms_norm, release, py::arg("out"), py::arg("out_stride"),
        py::arg("x"), py::arg("x_stride"), py::arg("weight"), py::arg("num_tokens"),
        py::arg("hidden_size"), py::arg("eps"), py::arg("dtype"), py::arg("device"),
        py::arg("stream"));
  m.def("rotary_embedding", &heron::rotary_embedding, release, py::arg("positions"),
        py::arg("query"), py::arg("query_stride"), py::arg("key"), py::arg("key_stride"),
        py::arg("cos_sin_cache"), py::arg("max_position"), py::arg("rot_dim"),
        py::arg("num_tokens"), py::arg("num_heads"), py::arg("num_kv_heads"),
        py::arg("head_size"), py::arg("dtype"), py::arg("device"), py::arg("stream"));
  m.def("silu_and_mul", &heron::silu_and_mul, release, py::arg("out"), py::arg("out_stride"),
        py::arg("x"), py::arg("x_stride"), py::arg("num_tokens"), py::arg("d"), py::arg("dtype"),
        py::arg("device"), py::arg("stream"));
  m.def("moe_workspace_size", &heron::moe_workspace_size, py::arg("num_slots"),
        py::arg("num_experts"));
  m.def("moe_align", &heron::moe_align, release, py::arg("topk_ids"), py::arg("num_slots"),
        py::arg("num_experts"), py::arg("workspace"), py::arg("workspace_ints"),
        py::arg("device"), py::arg("stream"));
  m.def("fused_moe", &heron::fused_moe, release, py::arg("out"), py::arg("out_stride"),
        py::arg("x"), py::arg("x_stride"), py::arg("w13"), py::arg("w2"), py::arg("topk_ids"),
        py::arg("topk_weights"), py::arg("weights_float32"), py::arg("num_tokens"),
        py::arg("top_k"), py::arg("hidden"), py::arg("intermediate"), py::arg("num_experts"),
        py::arg("workspace"), py::arg("workspace_ints"), py::arg("act"), py::arg("expert_out"),
        py::arg("dtype"), py::arg("device"), py::arg("stream"));
  m.def("moe_topk_softmax", &heron::moe_topk_softmax, release, py::arg("weights"),
        py::arg("ids"), py::arg("logits"), py::arg("logits_stride"), py::arg("num_tokens"),
        py::arg("num_experts"), py::arg("top_k"), py::arg("renormalize"), py::arg("dtype"),
        py::arg("device"), py::arg("stream"));
}
