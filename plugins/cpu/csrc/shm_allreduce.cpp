// The shared-memory all-reduce of heron_cpu.shm_allreduce, in one compiled call.
//
// A tensor-parallel decode step runs two all-reduces per layer. Done in Python (two slot views,
// a copy, a spinning barrier, a torch add), each cost ~30-60 us of interpreter work on both
// ranks, and a rank waiting at the barrier also waited for its peer's interpreter. Here the copy
// into this rank's slot, the barrier and the sum are one call with the GIL released, taking only
// addresses and sizes, so heron_cpu.launch can record it in a step graph like any kernel.
//
// The segment's layout is the Python module's: world flag lines of 64 bytes (an int64 round
// number each), then world slots of slot_bytes, each split into two halves used in turn. The
// round counter lives in the caller's memory (an int64 tensor) and is shared with the Python
// code that uses the same segment (all_gather), so both advance one sequence of rounds.

#include <pybind11/pybind11.h>
#include <sched.h>
#include <signal.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "scalar_math.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define HERON_SHM_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HERON_SHM_CLONES
#endif

namespace py = pybind11;

namespace {

constexpr int64_t kFlagBytes = 64;
constexpr int64_t kChunk = 512;  // elements summed through an fp32 scratch at a time

struct Group {
  uint8_t* base;
  int64_t rank;
  int64_t world;
  int64_t slot_bytes;
  int64_t* round;
  const int64_t* pids;  // each rank's process id (0: unknown)
  double timeout_s;
};

int64_t* flag_of(const Group& g, int64_t rank) {
  return reinterpret_cast<int64_t*>(g.base + rank * kFlagBytes);
}

uint8_t* slot_of(const Group& g, int64_t rank, int64_t half) {
  return g.base + g.world * kFlagBytes + rank * g.slot_bytes + half * (g.slot_bytes / 2);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// Raises (as Python's RuntimeError) when `rank` is gone or the wait passed the timeout: shared
// memory, unlike gloo's sockets, does not tell that a peer died.
void check_peer(const Group& g, int64_t rank, double waited_s) {
  const int64_t pid = g.pids[rank];
  if (pid > 0 && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
    throw std::runtime_error("shared-memory all-reduce: rank " + std::to_string(rank) + " (pid " +
                             std::to_string(pid) + ") exited");
  }
  if (waited_s > g.timeout_s) {
    throw std::runtime_error("shared-memory all-reduce: rank " + std::to_string(rank) +
                             " did not arrive within " + std::to_string(g.timeout_s) +
                             " s (HERON_DIST_TIMEOUT)");
  }
}

// Announce this rank's round, then wait for every rank's. The release store publishes this rank's
// slot before its flag; the acquire loads make the peers' slots visible after theirs.
void barrier(const Group& g) {
  const int64_t target = ++*g.round;
  __atomic_store_n(flag_of(g, g.rank), target, __ATOMIC_RELEASE);
  for (int64_t r = 0; r < g.world; ++r) {
    const int64_t* word = flag_of(g, r);
    uint64_t spins = 0;
    std::chrono::steady_clock::time_point started;
    while (__atomic_load_n(word, __ATOMIC_ACQUIRE) < target) {
      ++spins;
      if (spins < 4096) {
        cpu_relax();
        continue;
      }
      sched_yield();  // ranks may share cores: let the peer run
      if (spins == 4096) started = std::chrono::steady_clock::now();
      if ((spins & 1023) == 0) {
        const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - started;
        check_peer(g, r, waited.count());
      }
    }
  }
}

// out = slot 0 + slot 1 + ..., in rank order on every rank, so every rank gets the same bits.
HERON_SHM_CLONES void sum_f32(float* out, const float* const* src, int64_t world, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = src[0][i] + src[1][i];
  for (int64_t r = 2; r < world; ++r) {
    const float* s = src[r];
    for (int64_t i = 0; i < n; ++i) out[i] += s[i];
  }
}

// bfloat16 slots summed in float32 and rounded once (for two ranks: exactly torch's bf16 add).
HERON_SHM_CLONES void sum_bf16(uint16_t* out, const uint16_t* const* src, int64_t world,
                               int64_t n) {
  float acc[kChunk];
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t len = n - start < kChunk ? n - start : kChunk;
    const uint16_t* a = src[0] + start;
    const uint16_t* b = src[1] + start;
    for (int64_t i = 0; i < len; ++i) {
      acc[i] = heron_cpu::bf16_to_float(a[i]) + heron_cpu::bf16_to_float(b[i]);
    }
    for (int64_t r = 2; r < world; ++r) {
      const uint16_t* s = src[r] + start;
      for (int64_t i = 0; i < len; ++i) acc[i] += heron_cpu::bf16_to_float(s[i]);
    }
    for (int64_t i = 0; i < len; ++i) out[start + i] = heron_cpu::float_to_bf16(acc[i]);
  }
}

constexpr int kMaxWorld = 64;

void shm_all_reduce(uintptr_t segment, int64_t rank, int64_t world, int64_t slot_bytes,
                    uintptr_t round, uintptr_t pids, double timeout_s, uintptr_t x, uintptr_t out,
                    int64_t numel, int64_t element_size) {
  if (world < 2 || world > kMaxWorld || rank < 0 || rank >= world) {
    throw py::value_error("shm_all_reduce: rank " + std::to_string(rank) + " of world " +
                          std::to_string(world) + " (2 to " + std::to_string(kMaxWorld) + ")");
  }
  if (element_size != 2 && element_size != 4) {
    throw py::value_error("shm_all_reduce: element_size must be 2 (bfloat16) or 4 (float32)");
  }
  if (numel < 0 || slot_bytes < 2 * element_size) {
    throw py::value_error("shm_all_reduce: negative size or slot smaller than two elements");
  }
  const Group g{reinterpret_cast<uint8_t*>(segment), rank, world, slot_bytes,
                reinterpret_cast<int64_t*>(round), reinterpret_cast<const int64_t*>(pids),
                timeout_s};
  const auto* in = reinterpret_cast<const uint8_t*>(x);
  auto* dst = reinterpret_cast<uint8_t*>(out);
  const int64_t per_piece = (slot_bytes / 2) / element_size;
  py::gil_scoped_release release;
  for (int64_t start = 0; start < numel; start += per_piece) {
    const int64_t n = numel - start < per_piece ? numel - start : per_piece;
    // Double buffering: this round writes the half each rank finished reading before it arrived
    // at the previous round's barrier, so one barrier per piece is enough.
    const int64_t half = (*g.round + 1) % 2;
    std::memcpy(slot_of(g, rank, half), in + start * element_size, n * element_size);
    barrier(g);
    if (element_size == 4) {
      const float* src[kMaxWorld];
      for (int64_t r = 0; r < world; ++r) src[r] = reinterpret_cast<float*>(slot_of(g, r, half));
      sum_f32(reinterpret_cast<float*>(dst) + start, src, world, n);
    } else {
      const uint16_t* src[kMaxWorld];
      for (int64_t r = 0; r < world; ++r) src[r] = reinterpret_cast<uint16_t*>(slot_of(g, r, half));
      sum_bf16(reinterpret_cast<uint16_t*>(dst) + start, src, world, n);
    }
  }
}

}  // namespace

void heron_cpu_register_shm_allreduce(py::module_& m) {
  m.def("shm_all_reduce", &shm_all_reduce, py::arg("segment"), py::arg("rank"), py::arg("world"),
        py::arg("slot_bytes"), py::arg("round"), py::arg("pids"), py::arg("timeout_s"),
        py::arg("x"), py::arg("out"), py::arg("numel"), py::arg("element_size"),
        "out[:numel] = the sum over ranks of each rank's x, through the shared segment (layout of "
        "heron_cpu.shm_allreduce); float32 (element_size 4) or bfloat16 (2). Raises RuntimeError "
        "when a peer exited or did not arrive within timeout_s.");
}
