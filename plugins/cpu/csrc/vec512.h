// Sixteen-lane AVX-512 helpers for the per-ISA elementwise loops: bf16 <-> fp32 with
// float_to_bf16's rounding rule (scalar_math.h), masked for row tails.
//
// Included only where the translation unit is compiled with AVX-512 F/BW/VL (the avx512 variant of
// elementwise.cpp); like scalar_math.h the functions have internal linkage, so no other variant can
// be handed these instructions by the linker.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace heron_cpu {
namespace {

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xffff)
                         : static_cast<__mmask16>((1u << remaining) - 1u);
}

inline __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }

inline __m512 load16(const uint16_t* p, __mmask16 m) {
  const __m256i raw = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// Round to nearest even, NaNs kept quiet: float_to_bf16 on sixteen lanes.
inline __m256i to_bf16_bits(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(
      _mm512_and_si512(bits, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(rounded, nan, quiet));
}

// to_bf16_bits by vcvtneps2bf16 (AVX512-BF16), for CPUs that have it (cpu_has_avx512_bf16()):
// one instruction instead of ten, which made a bfloat16 LayerNorm of MiniLM's rows 22 % faster.
// Inline assembly, so that this variant, built for every AVX-512 CPU, can carry the instruction for
// those that have it. The instruction rounds to nearest even and quiets NaNs as to_bf16_bits does,
// but flushes denormal inputs to zero; such lanes (|v| < 2^-126, which never come out of a real
// norm) are redone by to_bf16_bits, so the bits are always the same as its.
inline __m256i to_bf16_bits_native(__m512 v) {
  __m256i bits;
  __asm__("vcvtneps2bf16 %1, %0" : "=v"(bits) : "v"(v));
  const __mmask16 denormal = _mm512_fpclass_ps_mask(v, 0x20);
  if (__builtin_expect(denormal != 0, 0)) {
    bits = _mm256_mask_mov_epi16(bits, denormal, to_bf16_bits(v));
  }
  return bits;
}

inline bool cpu_has_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
}

// Either conversion (kNative: to_bf16_bits_native, for CPUs with AVX512-BF16; the same bits).
template <bool kNative>
inline __m256i bf16_bits(__m512 v) {
  return kNative ? to_bf16_bits_native(v) : to_bf16_bits(v);
}

template <bool kNative = false>
inline void store16(float* p, __m512 v, __mmask16 m) {
  _mm512_mask_storeu_ps(p, m, v);
}

template <bool kNative = false>
inline void store16(uint16_t* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, bf16_bits<kNative>(v));
}

// What a torch op with output dtype T stores for v, back in fp32 (identity for float).
template <bool kNative = false>
inline __m512 round_as16(__m512 v, const float*) {
  return v;
}

template <bool kNative = false>
inline __m512 round_as16(__m512 v, const uint16_t*) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16_bits<kNative>(v)), 16));
}

}  // namespace
}  // namespace heron_cpu
