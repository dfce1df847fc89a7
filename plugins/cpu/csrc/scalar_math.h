// Scalar helpers every kernel file uses: bf16 <-> float and a vectorisable exp.
//
// They live in an unnamed namespace, so each translation unit — whatever its -m flags (the ISA
// variants of kernels.cpp and elementwise.cpp, the baseline gemv.cpp) — gets its own internal copy
// and the linker can never hand one variant another's instructions (see kernels.cpp's header).
#pragma once

#include <cstdint>
#include <cstring>

namespace heron_cpu {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline float bf16_to_float(uint16_t x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Round to nearest even, keeping NaNs quiet (torch's rule); branch-free so that loops over it
// vectorise. Not vcvtneps2bf16, which would also flush denormal results to zero.
inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x40u;
  return static_cast<uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// a * b + c, fused where the variant has FMA (one rounding), plain elsewhere.
#if defined(__FMA__)
#define HERON_FMA(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define HERON_FMA(a, b, c) ((a) * (b) + (c))
#endif

// exp(x) to about 2 ulp for x in [-87, 88] (clamped outside), in plain arithmetic so that `omp
// simd` loops vectorise it on every variant (libm's expf is a scalar call). Cephes' polynomial;
// 2^n is built in the exponent field: with the clamp, n = round(x / ln 2) stays in [-126, 127],
// a normal power of two, so one scaling is exact.
inline float exp_clamped(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = HERON_FMA(x, 1.44269504088896341f, shifter);
  const float n = t - shifter;
  int32_t t_bits, shifter_bits;
  std::memcpy(&t_bits, &t, sizeof t_bits);
  std::memcpy(&shifter_bits, &shifter, sizeof shifter_bits);
  float r = HERON_FMA(n, -0.693359375f, x);
  r = HERON_FMA(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = HERON_FMA(p, r, 1.3981999507e-3f);
  p = HERON_FMA(p, r, 8.3334519073e-3f);
  p = HERON_FMA(p, r, 4.1665795894e-2f);
  p = HERON_FMA(p, r, 1.6666665459e-1f);
  p = HERON_FMA(p, r, 5.0000001201e-1f);
  const float y = HERON_FMA(p, r * r, r) + 1.0f;
  const int32_t scale_bits = (t_bits - shifter_bits + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return y * scale;
}

}  // namespace
}  // namespace heron_cpu
