// AMX tile plumbing for heron-cpu's kernels: the 64-byte tile configuration and the tile
// instructions as inline assembly.
//
// Inline assembly instead of <amxtileintrin.h>: those macros do not tell the compiler that
// tileloadd reads and tilestored writes memory, which lets it drop or move a kernel's own stores
// to packed operands or its loads of a stored result. Every statement here clobbers "memory".
// Whether the CPU and OS allow tiles (CPUID, XCR0, Linux's arch_prctl permission) is asked once
// per process by gemv::amx_supported() (gemv.h); a kernel calls that before its first tile
// instruction. Everything here is header-only with internal linkage (see scalar_math.h's note).
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HERON_AMX_TILE_X86 1

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
