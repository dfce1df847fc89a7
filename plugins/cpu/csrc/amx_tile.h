// AMX tile plumbing for heron-cpu's kernels: the 64-byte tile configuration and the tile
// instructions as inline assembly.
//
// Inline assembly instead of <amxtileintrin.h>: those macros do not tell the compiler that
// tileloadd reads and tilestored writes memory, which lets it drop or move a kernel's own stores
// to packed operands or its loads of a stored result. Every statement here clobbers "memory".
// Whether the CPU and OS allow tiles (CPUID, XCR0, Linux's arch_prctl permission) is
// amx_bf16_permitted(), which each extension module asks once (gemv::amx_supported() in _C,
// quant::amx_supported() in _quant; asking twice is harmless); a kernel calls that before its
// first tile instruction. Everything here is header-only with internal linkage (see
// scalar_math.h's note).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HERON_AMX_TILE_X86 1
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace heron_cpu {
namespace {

struct alignas(64) AmxTileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes per row of each tile
  uint8_t rows[16];
};
static_assert(sizeof(AmxTileConfig) == 64, "ldtilecfg reads 64 bytes");

// All eight tiles 16 rows of 64 bytes: a 16 x 16 fp32 C, a 16 x 32 bf16 A, or a B of 16 rows of
// 16 bf16 pairs. The tile state is per thread, and oneDNN configures its own before each of its
// kernels, so a kernel configures at its start on every thread that runs tiles.
inline void amx_configure_full_tiles() {
  AmxTileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg) : "memory");
}

// AMX-BF16 with AVX512-BF16, AVX512F/BW/VL (the kernels' conversions and row tails), the OS's
// support for the tile state in XCR0 and, on Linux 5.16+, the process's permission, without
// which the first tile instruction raises SIGILL. Asks the kernel for that permission.
inline bool amx_bf16_permitted() {
#if defined(__linux__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  const bool avx512_bf16 = (eax >> 5) & 1u;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_bf16 = (edx >> 22) & 1u;
  const bool amx_tile = (edx >> 24) & 1u;
  // __builtin_cpu_supports also checks that the OS saves the AVX-512 register state.
  if (!avx512_bf16 || !amx_bf16 || !amx_tile || !__builtin_cpu_supports("avx512f") ||
      !__builtin_cpu_supports("avx512bw") || !__builtin_cpu_supports("avx512vl")) {
    return false;
  }
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0_lo & (3u << 17)) != (3u << 17)) return false;  // XTILECFG and XTILEDATA
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// The thread's tiles back to the init state (cheap context switches).
inline void amx_release_tiles() { __asm__ volatile("tilerelease" ::: "memory"); }

}  // namespace
}  // namespace heron_cpu

#define HERON_AMX_LOAD(tmm, base, stride)                        \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #tmm ::"r"(base), \
                   "r"(static_cast<int64_t>(stride))              \
                   : "memory")
#define HERON_AMX_STORE(tmm, base, stride)                           \
  __asm__ volatile("tilestored %%tmm" #tmm ", (%0,%1,1)" ::"r"(base), \
                   "r"(static_cast<int64_t>(stride))                  \
                   : "memory")
// c += a . b over bf16 pairs, accumulated in fp32.
#define HERON_AMX_DP(c, a, b) \
  __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::: "memory")
#define HERON_AMX_ZERO(tmm) __asm__ volatile("tilezero %%tmm" #tmm ::: "memory")

#endif  // x86-64 with GCC or Clang
