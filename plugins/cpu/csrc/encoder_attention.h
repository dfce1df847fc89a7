// Bidirectional (non-causal) attention of whole prompts, read in place from a fused q/k/v
// projection: the attention of encoder models (BERT and its kin) in a pooling step.
//
// A pooled prompt is attended once, whole, and never again, so nothing goes through the paged KV
// cache: the kernel reads q, k and v rows straight out of the projection's output (strided, no
// copies by the caller), with no padding between prompts of different lengths. Like kernels.h,
// nothing here depends on libtorch: raw pointers, element strides, caller-allocated output.
#pragma once

#include <cstdint>

namespace heron_cpu {
namespace encoder {

struct EncoderAttentionArgs {
  const void* qkv;        // [tokens, row], row stride qkv_stride; q of head h at h * head_size,
                          // k at k_offset + h * head_size, v at v_offset + h * head_size
  void* out;              // [tokens, num_heads * head_size], row stride out_stride
  const int32_t* starts;  // [num_seqs + 1]: sequence s is tokens [starts[s], starts[s + 1])
  int64_t num_seqs;
  int64_t num_heads;
  int64_t head_size;
  int64_t qkv_stride;  // all strides and offsets in elements
  int64_t k_offset;
  int64_t v_offset;
  int64_t out_stride;
  float scale;
  bool bf16;  // false: float32 elements; true: bfloat16 bit patterns (uint16)
  int num_threads;
};

// kAuto takes the AMX-BF16 loops for bfloat16 inputs with head_size % 32 == 0 where the CPU and OS
// allow tiles, else the AVX-512 loops where the CPU has them and head_size % 16 == 0; kPortable is
// the plain C++ loop (any CPU, any head size). kAmx falls back like kAuto where it cannot run (float32
// inputs, other head sizes, no AMX). Tests run each.
enum class Path : int { kAuto = 0, kAvx512 = 1, kPortable = 2, kAmx = 3 };

// Whether this CPU (and its OS) runs the AVX-512 loops.
bool avx512_supported();
// Whether this CPU runs the AMX-BF16 loops (asks Linux for the tile state once per process).
bool amx_supported();

// out[t, h*D:(h+1)*D] = softmax(q_t k_S^T * scale) v_S over the tokens S of t's own sequence.
// Returns the path that ran (kAvx512 or kPortable); std::bad_alloc when scratch memory is short.
Path encoder_attention(const EncoderAttentionArgs& args, Path path);

// The float32 mean of each sequence's rows of a pooling step (KernelOps.mean_pool, API 1.15):
// sums in float32 from the rows as they are, then divided by the row count.
struct MeanPoolArgs {
  const void* hidden;     // [tokens, width], row stride `stride` elements
  float* out;             // [num_seqs, width], contiguous
  const int32_t* starts;  // [num_seqs + 1]: sequence s is rows [starts[s], starts[s + 1])
  int64_t num_seqs;
  int64_t width;
  int64_t stride;
  bool bf16;  // false: float32 elements; true: bfloat16 bit patterns (uint16)
  int num_threads;
  bool portable;  // the plain C++ loop even where the CPU has AVX-512 (HERON_CPU_ISA=portable)
};

void mean_pool(const MeanPoolArgs& args);

}  // namespace encoder
}  // namespace heron_cpu
