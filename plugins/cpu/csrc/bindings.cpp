// pybind11 bindings of heron_cpu._C: ISA selection, argument checks and work planning.
//
// Functions take raw data pointers (uintptr_t), sizes and element strides; the Python wrappers in
// heron_cpu/ops.py check devices, dtypes and shapes and pass tensor.data_ptr(). This file is compiled
// once, for the baseline ISA; it chooses which kernels.cpp variant runs.

#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels.h"
#include "replay.h"

#if defined(HERON_CPU_X86_VARIANTS)
#include <cpuid.h>
#endif

namespace py = pybind11;
using heron_cpu::AttentionArgs;
using heron_cpu::DType;
using heron_cpu::GeluArgs;
using heron_cpu::LayerNormArgs;
using heron_cpu::RmsNormArgs;
using heron_cpu::RotaryArgs;
using heron_cpu::SiluAndMulArgs;
using heron_cpu::WorkItem;
using heron_cpu::WriteKvArgs;

namespace {

struct Variant {
  const char* name;
  void (*write_kv)(const WriteKvArgs&);
  void (*paged_attention)(const AttentionArgs&);
  void (*rms_norm)(const RmsNormArgs&);
  void (*silu_and_mul)(const SiluAndMulArgs&);
  void (*rotary)(const RotaryArgs&);
  void (*layer_norm)(const LayerNormArgs&);
  void (*gelu)(const GeluArgs&);
  bool (*supported)();
};

#if defined(HERON_CPU_X86_VARIANTS)
bool has_avx512_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) return false;
  return (eax >> 5) & 1u;  // CPUID.(EAX=7,ECX=1):EAX[5] = AVX512_BF16
}
// __builtin_cpu_supports also checks that the OS saves the wider register state.
bool avx2_supported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}
bool avx512_supported() {
  return avx2_supported() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq");
}
#endif
bool always() { return true; }

// Best first.
const Variant kVariants[] = {
#if defined(HERON_CPU_X86_VARIANTS)
    {"avx512", heron_cpu::avx512::write_kv, heron_cpu::avx512::paged_attention,
     heron_cpu::avx512::rms_norm, heron_cpu::avx512::silu_and_mul, heron_cpu::avx512::rotary,
     heron_cpu::avx512::layer_norm, heron_cpu::avx512::gelu, avx512_supported},
    {"avx2", heron_cpu::avx2::write_kv, heron_cpu::avx2::paged_attention,
     heron_cpu::avx2::rms_norm, heron_cpu::avx2::silu_and_mul, heron_cpu::avx2::rotary,
     heron_cpu::avx2::layer_norm, heron_cpu::avx2::gelu, avx2_supported},
#endif
    {"portable", heron_cpu::portable::write_kv, heron_cpu::portable::paged_attention,
     heron_cpu::portable::rms_norm, heron_cpu::portable::silu_and_mul, heron_cpu::portable::rotary,
     heron_cpu::portable::layer_norm, heron_cpu::portable::gelu, always},
};

// The process-wide choice: the CPU does not change while the process runs; tests switch it.
const Variant* g_active = nullptr;

const Variant* best_variant() {
  for (const Variant& v : kVariants) {
    if (v.supported()) return &v;
  }
  return &kVariants[sizeof(kVariants) / sizeof(kVariants[0]) - 1];
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const Variant& v : kVariants) {
    if (v.supported()) names.emplace_back(v.name);
  }
  return names;
}

void set_isa(const std::string& name) {
  if (name.empty() || name == "auto") {
    g_active = best_variant();
    return;
  }
  std::string known;
  for (const Variant& v : kVariants) {
    known += (known.empty() ? "" : ", ") + std::string(v.name);
    if (name != v.name) continue;
    if (!v.supported()) throw py::value_error("ISA variant '" + name + "' is not supported by this CPU");
    g_active = &v;
    return;
  }
  throw py::value_error("unknown ISA variant '" + name + "' (built: " + known + ", or auto)");
}

py::dict cpu_features() {
  py::dict features;
#if defined(HERON_CPU_X86_VARIANTS)
  features["avx2"] = static_cast<bool>(__builtin_cpu_supports("avx2"));
  features["fma"] = static_cast<bool>(__builtin_cpu_supports("fma"));
  features["avx512f"] = static_cast<bool>(__builtin_cpu_supports("avx512f"));
  features["avx512bw"] = static_cast<bool>(__builtin_cpu_supports("avx512bw"));
  features["avx512vl"] = static_cast<bool>(__builtin_cpu_supports("avx512vl"));
  features["avx512_bf16"] = __builtin_cpu_supports("avx512f") && has_avx512_bf16();
#endif
  return features;
}

DType to_dtype(int code) {
  if (code == static_cast<int>(DType::kFloat32)) return DType::kFloat32;
  if (code == static_cast<int>(DType::kBFloat16)) return DType::kBFloat16;
  throw py::value_error("unknown dtype code " + std::to_string(code));
}

template <typename T>
const T* ptr(uintptr_t address) {
  return reinterpret_cast<const T*>(address);
}

void write_kv(uintptr_t key, uintptr_t value, uintptr_t key_cache, uintptr_t value_cache,
              uintptr_t slot_mapping, int64_t num_tokens, int64_t num_kv_heads, int64_t head_size,
              int64_t block_size, int64_t num_blocks, int64_t key_stride_token,
              int64_t key_stride_head, int64_t value_stride_token, int64_t value_stride_head,
              int dtype, int num_threads) {
  const int64_t* slots = ptr<int64_t>(slot_mapping);
  const int64_t num_slots = num_blocks * block_size;
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (slots[t] >= num_slots) {
      throw py::value_error("slot_mapping[" + std::to_string(t) + "] = " + std::to_string(slots[t]) +
                            " is past the cache's " + std::to_string(num_slots) + " slots");
    }
  }
  const WriteKvArgs args{ptr<void>(key), ptr<void>(value), reinterpret_cast<void*>(key_cache),
                         reinterpret_cast<void*>(value_cache), slots, num_tokens, num_kv_heads,
                         head_size, block_size, key_stride_token, key_stride_head,
                         value_stride_token, value_stride_head, to_dtype(dtype),
                         num_threads > 0 ? num_threads : 1};
  heron_cpu::replay::GilRelease release;
  g_active->write_kv(args);
}

// Checks that every sequence's metadata stays inside the tensors it indexes.
void check_metadata(const int32_t* starts, const int32_t* lens, const int32_t* tables,
                    int64_t num_seqs, int64_t num_tokens, int64_t block_size, int64_t num_blocks,
                    int64_t table_stride, int64_t table_width) {
  if (starts[0] < 0 || starts[num_seqs] > num_tokens) {
    throw py::value_error("query_start_loc spans tokens outside the query tensor");
  }
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t q_len = int64_t{starts[s + 1]} - starts[s];
    const std::string where = " for sequence " + std::to_string(s);
    if (q_len < 0) throw py::value_error("query_start_loc decreases" + where);
    if (lens[s] < q_len) throw py::value_error("seq_lens is shorter than the query length" + where);
    const int64_t blocks = (int64_t{lens[s]} + block_size - 1) / block_size;
    if (q_len > 0 && blocks > table_width) {
      throw py::value_error("block_tables has too few columns" + where);
    }
    for (int64_t j = 0; q_len > 0 && j < blocks; ++j) {
      const int32_t block = tables[s * table_stride + j];
      if (block < 0 || block >= num_blocks) {
        throw py::value_error("block_tables holds block " + std::to_string(block) + where +
                              ", outside [0, " + std::to_string(num_blocks) + ")");
      }
    }
  }
}

// Work items: (sequence, KV head, query chunk), each split over its context when there are too
// few items to keep every thread busy (long decodes), so that the combine pass merges the parts.
std::vector<WorkItem> plan(const int32_t* starts, const int32_t* lens, int64_t num_seqs,
                           int64_t num_kv_heads, int64_t group, int64_t block_size, int num_threads,
                           int64_t head_size, int64_t window, int64_t* partial_floats,
                           int64_t* max_rows) {
  const int64_t q_chunk = group >= 32 ? 1 : 32 / group;
  int64_t base = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    base += (int64_t{starts[s + 1]} - starts[s] + q_chunk - 1) / q_chunk * num_kv_heads;
  }
  const int64_t min_part = (256 + block_size - 1) / block_size * block_size;
  const int64_t want = (num_threads > 1 && base > 0 && base < 2 * num_threads)
                           ? (4 * int64_t{num_threads} + base - 1) / base
                           : 1;
  std::vector<WorkItem> items;
  items.reserve(static_cast<size_t>(base));
  *partial_floats = 0;
  *max_rows = 1;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t q_len = int64_t{starts[s + 1]} - starts[s];
    for (int64_t q0 = 0; q0 < q_len; q0 += q_chunk) {
      const int64_t count = q_len - q0 < q_chunk ? q_len - q0 : q_chunk;
      const int64_t end = lens[s] - q_len + q0 + count;  // causal: the last query's context
      // Under a sliding window the item starts at the block of its first query's window start:
      // blocks before it are never read (core may have freed them).
      const int64_t pos0 = lens[s] - q_len + q0;
      const int64_t lo = window > 0 && pos0 - window + 1 > 0 ? pos0 - window + 1 : 0;
      const int64_t begin = lo / block_size * block_size;
      const int64_t keys = end - begin;
      int64_t parts = want < (keys + min_part - 1) / min_part ? want : (keys + min_part - 1) / min_part;
      parts = parts < 1 ? 1 : parts;
      const int64_t part_len = ((keys + parts - 1) / parts + block_size - 1) / block_size * block_size;
      parts = (keys + part_len - 1) / part_len;
      const int64_t rows = count * group;
      *max_rows = rows > *max_rows ? rows : *max_rows;
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        for (int64_t p = 0; p < parts; ++p) {
          const int64_t part_end = (p + 1) * part_len < keys ? (p + 1) * part_len : keys;
          items.push_back(WorkItem{static_cast<int32_t>(s), static_cast<int32_t>(h),
                                   static_cast<int32_t>(q0), static_cast<int32_t>(count),
                                   static_cast<int32_t>(begin + p * part_len),
                                   static_cast<int32_t>(begin + part_end),
                                   static_cast<int32_t>(p), static_cast<int32_t>(parts),
                                   parts > 1 ? *partial_floats : 0});
          if (parts > 1) *partial_floats += rows * (head_size + 2);
        }
      }
    }
  }
  return items;
}

void paged_attention(uintptr_t out, uintptr_t query, uintptr_t key_cache, uintptr_t value_cache,
                     uintptr_t query_start_loc, uintptr_t seq_lens, uintptr_t block_tables,
                     int64_t num_seqs, int64_t num_tokens, int64_t num_heads, int64_t num_kv_heads,
                     int64_t head_size, int64_t block_size, int64_t num_blocks,
                     int64_t block_table_stride, int64_t block_table_width,
                     int64_t query_stride_token, int64_t query_stride_head, int64_t out_stride_token,
                     int64_t out_stride_head, double scale, int64_t window, double softcap,
                     int dtype, int num_threads) {
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0) {
    throw py::value_error("num_heads must be a positive multiple of num_kv_heads");
  }
  if (window < 0) throw py::value_error("window must be >= 0 (0: no sliding window)");
  if (softcap < 0) throw py::value_error("softcap must be >= 0 (0: no soft-capping)");
  const int32_t* starts = ptr<int32_t>(query_start_loc);
  const int32_t* lens = ptr<int32_t>(seq_lens);
  const int32_t* tables = ptr<int32_t>(block_tables);
  check_metadata(starts, lens, tables, num_seqs, num_tokens, block_size, num_blocks,
                 block_table_stride, block_table_width);
  num_threads = num_threads > 0 ? num_threads : 1;
  int64_t partial_floats = 0;
  int64_t max_rows = 1;
  const std::vector<WorkItem> items =
      plan(starts, lens, num_seqs, num_kv_heads, num_heads / num_kv_heads, block_size, num_threads,
           head_size, window, &partial_floats, &max_rows);
  // Room for the scores of the longest item that the two-pass path takes.
  int64_t two_pass_keys = 0;
  for (const WorkItem& it : items) {
    const int64_t span = heron_cpu::two_pass_span(it, num_heads / num_kv_heads, block_size);
    two_pass_keys = span > two_pass_keys ? span : two_pass_keys;
  }
  const int64_t scratch_floats =
      heron_cpu::attention_scratch_floats(max_rows, head_size, block_size, two_pass_keys);
  std::vector<float> partials(static_cast<size_t>(partial_floats));
  // Uninitialised: the kernels write every scratch float before reading it.
  const std::unique_ptr<float[]> scratch(new float[static_cast<size_t>(scratch_floats * num_threads)]);
  const AttentionArgs args{reinterpret_cast<void*>(out), ptr<void>(query), ptr<void>(key_cache),
                           ptr<void>(value_cache), starts, lens, tables, num_heads, num_kv_heads,
                           head_size, block_size, block_table_stride, query_stride_token,
                           query_stride_head, out_stride_token, out_stride_head,
                           static_cast<float>(scale), window, static_cast<float>(softcap),
                           to_dtype(dtype), num_threads, items.data(),
                           static_cast<int64_t>(items.size()), max_rows, partials.data(),
                           scratch.get(), scratch_floats, two_pass_keys};
  heron_cpu::replay::GilRelease release;
  g_active->paged_attention(args);
}

// The fused per-token kernels: the Python wrappers (heron_cpu/kernel_ops.py) check dtypes and
// shapes; positions are checked here because they index the cache.
void rms_norm(uintptr_t x, uintptr_t residual, uintptr_t weight, uintptr_t out,
              uintptr_t residual_out, int64_t rows, int64_t hidden, int64_t x_stride,
              int64_t residual_stride, double eps, int dtype, int num_threads) {
  const RmsNormArgs args{ptr<void>(x), ptr<void>(residual), ptr<void>(weight),
                         reinterpret_cast<void*>(out), reinterpret_cast<void*>(residual_out),
                         rows, hidden, x_stride, residual_stride, static_cast<float>(eps),
                         to_dtype(dtype), num_threads > 0 ? num_threads : 1};
  heron_cpu::replay::GilRelease release;
  g_active->rms_norm(args);
}

void silu_and_mul(uintptr_t x, uintptr_t out, int64_t rows, int64_t width, int64_t x_stride,
                  int dtype, int num_threads) {
  const SiluAndMulArgs args{ptr<void>(x), reinterpret_cast<void*>(out), rows, width, x_stride,
                            to_dtype(dtype), num_threads > 0 ? num_threads : 1};
  heron_cpu::replay::GilRelease release;
  g_active->silu_and_mul(args);
}

// The encoder's LayerNorm (x + residual when residual is set) and GELU; out may be x itself.
void layer_norm(uintptr_t x, uintptr_t residual, uintptr_t weight, uintptr_t bias, uintptr_t out,
                int64_t rows, int64_t hidden, int64_t x_stride, int64_t residual_stride,
                int64_t out_stride, double eps, int dtype, int num_threads) {
  const LayerNormArgs args{ptr<void>(x), ptr<void>(residual), ptr<void>(weight), ptr<void>(bias),
                           reinterpret_cast<void*>(out), rows, hidden, x_stride, residual_stride,
                           out_stride, static_cast<float>(eps), to_dtype(dtype),
                           num_threads > 0 ? num_threads : 1};
  py::gil_scoped_release release;
  g_active->layer_norm(args);
}

void gelu(uintptr_t x, uintptr_t out, int64_t rows, int64_t width, int64_t x_stride,
          int64_t out_stride, int tanh_approximation, int dtype, int num_threads) {
  if (to_dtype(dtype) != DType::kBFloat16) throw py::value_error("gelu: dtype must be bfloat16");
  const GeluArgs args{ptr<void>(x), reinterpret_cast<void*>(out), rows, width, x_stride, out_stride,
                      tanh_approximation, to_dtype(dtype), num_threads > 0 ? num_threads : 1};
  py::gil_scoped_release release;
  g_active->gelu(args);
}

void rotary(uintptr_t heads, uintptr_t cos_sin_cache, uintptr_t positions, uintptr_t out,
            int64_t num_tokens, int64_t num_heads, int64_t head_size, int64_t rotary_dim,
            int64_t max_position, int64_t token_stride, int64_t head_stride, int dtype,
            int num_threads) {
  const int64_t* pos = ptr<int64_t>(positions);
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (pos[t] < 0 || pos[t] >= max_position) {
      throw py::value_error("positions[" + std::to_string(t) + "] = " + std::to_string(pos[t]) +
                            " is outside the rotary cache's [0, " + std::to_string(max_position) +
                            ")");
    }
  }
  const RotaryArgs args{ptr<void>(heads), ptr<void>(cos_sin_cache), pos,
                        reinterpret_cast<void*>(out), num_tokens, num_heads, head_size,
                        rotary_dim, token_stride, head_stride, to_dtype(dtype),
                        num_threads > 0 ? num_threads : 1};
  heron_cpu::replay::GilRelease release;
  g_active->rotary(args);
}

// Token embedding: copies rows of the table; plain memcpy, so one build serves every ISA. The ids
// are checked here because a recorded step replays without the Python wrapper.
void embedding(uintptr_t token_ids, uintptr_t table, uintptr_t out, int64_t num_tokens,
               int64_t vocab_size, int64_t row_bytes) {
  const int64_t* ids = ptr<int64_t>(token_ids);
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab_size) {
      throw py::value_error("token id " + std::to_string(ids[t]) + " at position " +
                            std::to_string(t) + " is outside the vocabulary [0, " +
                            std::to_string(vocab_size) + ")");
    }
  }
  const char* rows = ptr<char>(table);
  char* dst = reinterpret_cast<char*>(out);
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::memcpy(dst + t * row_bytes, rows + ids[t] * row_bytes, static_cast<size_t>(row_bytes));
  }
}

}  // namespace

// Small-batch bf16 linear (gemv_bindings.cpp).
void heron_cpu_register_gemv(py::module_& m);
// Bidirectional attention of encoder prompts (encoder_attention_bindings.cpp).
void heron_cpu_register_encoder_attention(py::module_& m);
// The shared-memory all-reduce of tensor-parallel ranks (shm_allreduce.cpp).
void heron_cpu_register_shm_allreduce(py::module_& m);
// ReplayProgram, the C++ replay of recorded launches (replay.cpp).
void heron_cpu_register_replay(py::module_& m);

PYBIND11_MODULE(_C, m) {
  m.doc() = "Heron CPU kernels (no libtorch): raw pointers in, caller-allocated outputs written.";
  g_active = best_variant();
  m.def("isa", [] { return std::string(g_active->name); }, "The active ISA variant.");
  m.def("set_isa", &set_isa, py::arg("name"),
        "Select an ISA variant by name ('auto' = the best this CPU supports).");
  m.def("available_isas", &available_isas, "Variants built into this module that this CPU runs.");
  m.def("cpu_features", &cpu_features, "The CPU features that select variants and defaults.");
  m.def("max_threads", [] { return omp_get_max_threads(); }, "OpenMP's default thread count.");
  m.def("write_kv", &write_kv);
  m.def("paged_attention", &paged_attention);
  m.def("rms_norm", &rms_norm);
  m.def("silu_and_mul", &silu_and_mul);
  m.def("rotary", &rotary);
  m.def("layer_norm", &layer_norm);
  m.def("gelu", &gelu);
  m.def("embedding", &embedding);
  heron_cpu_register_gemv(m);
  heron_cpu_register_encoder_attention(m);
  heron_cpu_register_shm_allreduce(m);
  // Raw entries of the kernels heron_cpu.launch() records, for ReplayProgram (replay.h).
  heron_cpu::replay::add_raw<&write_kv>(m, "write_kv");
  heron_cpu::replay::add_raw<&paged_attention>(m, "paged_attention");
  heron_cpu::replay::add_raw<&rms_norm>(m, "rms_norm");
  heron_cpu::replay::add_raw<&silu_and_mul>(m, "silu_and_mul");
  heron_cpu::replay::add_raw<&rotary>(m, "rotary");
  heron_cpu::replay::add_raw<&embedding>(m, "embedding");
  heron_cpu_register_replay(m);
}
