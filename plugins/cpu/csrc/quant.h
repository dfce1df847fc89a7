// Linear layers over weights kept in 8- and 4-bit blocks (GGUF Q8_0 / Q4_0 / Q4_1, and int8 with
// per-output-channel scales): out = x @ dequant(W)^T (+ bias), dequantizing in registers.
//
// Why: a single decode stream reads every weight once per token, so its speed is bytes per token.
// A 4-bit block is 0.75 bytes per weight here instead of bf16's 2, so the product streams 2.7x
// fewer bytes for the same arithmetic. The weight is repacked once at load (heron_cpu/quant.py)
// into the layout below: quantized values of a row contiguous, the per-block scales (and
// minimums) in their own fp32 arrays, so that the loop reads three plain streams and never
// converts a float16 scale per block.
//
// Like gemv.h: raw pointers and sizes only, no libtorch; outputs allocated by the caller.
#pragma once

#include <cstdint>

namespace heron_cpu {
namespace quant {

constexpr int64_t kBlock = 32;  // weights per quantization block (every format here)

// How a block's 32 values are stored.
enum class Format : int {
  kQ8 = 0,  // 32 int8 values q; weight = d * q                       (Q8_0, int8 per channel)
  kQ4 = 1,  // 16 bytes, value j in the low nibble of byte j and value j + 16 in the high one
            // (llama.cpp's order); weight = d * q + m with q in 0..15  (Q4_1; Q4_0: m = -8 d)
};

// Activation dtypes (x, bias and out share one).
enum class DType : int { kFloat32 = 0, kBFloat16 = 1 };

// Which loop runs; a path this CPU lacks falls back to the next simpler one. kAuto..kPortable
// widen the weights to fp32 (quant.cpp); kVnni512 and kAvxVnni quantize x to int8 per block and
// take integer dot products (quant_i8.cpp), within llama.cpp's error for Q8 activations. kAmx
// (bf16 activations only, else kAuto) decodes a strip of weight rows to bf16 in cache and runs
// AMX-BF16 tiles against every x row (quant_amx.cpp): the many-row loop.
enum class Path : int {
  kAuto = 0, kAvx512 = 1, kAvx2 = 2, kPortable = 3, kVnni512 = 4, kAvxVnni = 5, kAmx = 6
};

struct QuantArgs {
  void* out;              // [m, n] contiguous, dtype
  const void* x;          // [m, k], row stride x_stride (elements), rows contiguous, dtype
  const uint8_t* qs;      // [n, k / 32 * block_bytes]: the quantized values of each row
  const float* d;         // [n, k / 32] block scales
  const float* mins;      // [n, k / 32] block minimums (kQ4), else nullptr
  const void* bias;       // [n] or nullptr, dtype
  int64_t m, n, k;        // k is a multiple of 32
  int64_t x_stride;
  Format format;
  DType dtype;
  int num_threads;
  // The same scales (and Q4 minimums) in float16, [n, k / 32] each, where they are exactly the
  // fp32 ones (GGUF Q8_0 / Q4_0 / Q4_1: the file's own f16), else nullptr. The one-row VNNI loop
  // reads these instead: 2 bytes less per block and value (Q4: 20 bytes per block instead of 24,
  // as in the file), the same arithmetic. The other loops read d / mins.
  const uint16_t* d16 = nullptr;
  const uint16_t* mins16 = nullptr;
};

// Bytes of quantized values per block of a format (the scales are separate).
int64_t block_bytes(Format format);

bool avx512_supported();
bool avx2_supported();
bool vnni512_supported();  // AVX-512 with VNNI (vpdpbusd on 512 bits)
bool avxvnni_supported();  // AVX-VNNI (the VEX vpdpbusd on 256 bits)
bool amx_supported();      // AMX-BF16 tiles with AVX512-BF16, and the OS's permission for them

// out = x @ W^T (+ bias): fp32 accumulation, one rounding to dtype at the end.
void linear(const QuantArgs& args, Path path);

// The int8-activation loop of `path` (kVnni512 or kAvxVnni); false where this CPU lacks it.
bool linear_i8(const QuantArgs& args, Path path);

// The AMX-BF16 loop (quant_amx.cpp); false where this CPU lacks it or x is not bfloat16.
bool linear_amx(const QuantArgs& args);

// The weight, dequantized to dtype, into out [n, k] contiguous (the prefill path: then a GEMM).
// Only qs/d/mins/n/k/format/dtype/num_threads of args are read.
void dequantize(const QuantArgs& args, void* out);

}  // namespace quant
}  // namespace heron_cpu
