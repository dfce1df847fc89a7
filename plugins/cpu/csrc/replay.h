// Raw entry points of the launched kernels, for the C++ replay of step graphs (replay.cpp).
//
// Why: a recorded decode step is ~300 kernel calls whose arguments never change; replaying them
// through pybind11 costs a Python loop iteration, argument conversion and a GIL release per call.
// Every kernel that heron_cpu.launch() records takes only ints and floats, so each gets a second
// entry, Raw<&fn>::call, that unpacks a packed argument array and calls the same C++ function.
// heron_cpu/launch.py packs runs of such calls into one ReplayProgram, run by one pybind call
// that releases the GIL once for the whole run.
//
// The ABI below crosses extension modules (_quant's entries run from _C's programs), so it is
// plain C: a function pointer and a signature string inside a capsule, errors returned as codes
// (a C++ exception must not unwind across the two modules' hidden type information).

#pragma once

#include <Python.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace heron_cpu::replay {

// One packed argument: the signature says which member a kernel reads.
union Slot {
  int64_t i;   // 'i': a 64-bit signed integer (sizes, strides); 'n': a 32-bit one (codes)
  uint64_t u;  // 'u': an unsigned integer (addresses)
  double f;    // 'f': a floating-point number
};
static_assert(sizeof(Slot) == 8, "one slot per argument");

enum ErrorKind : int { kOk = 0, kValueError = 1, kMemoryError = 2, kRuntimeError = 3 };

// Calls the kernel with args[0 .. strlen(signature)); returns kOk, or an error kind with *message
// set to text that stays valid until the next raw call on this thread into the same module.
using RawCall = int (*)(const Slot* args, const char** message);

struct RawEntry {
  RawCall call;
  const char* signature;  // one of 'i', 'n', 'u', 'f' per argument
};

inline constexpr const char* kCapsuleName = "heron_cpu.raw_entry";

// True while a raw entry of this module runs: the GIL is already released by the replay.
inline thread_local bool t_in_raw_call = false;

// Releases the GIL for a kernel's duration when called from Python (as pybind11's
// gil_scoped_release does), and does nothing under a replay, which released it once for all.
class GilRelease {
 public:
  GilRelease() : state_(t_in_raw_call ? nullptr : PyEval_SaveThread()) {}
  ~GilRelease() {
    if (state_ != nullptr) PyEval_RestoreThread(state_);
  }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

template <typename T>
constexpr char slot_code() {
  constexpr bool is_int = std::is_integral_v<T> && !std::is_same_v<T, bool>;
  static_assert(std::is_same_v<T, double> || (is_int && sizeof(T) == 8) ||
                    (is_int && std::is_signed_v<T> && sizeof(T) == 4),
                "raw entries take only 64-bit integers, int and double");
  if constexpr (std::is_same_v<T, double>) return 'f';
  if constexpr (std::is_unsigned_v<T>) return 'u';
  if constexpr (sizeof(T) == 4) return 'n';
  return 'i';
}

template <typename T>
T unpack(const Slot& slot) {
  if constexpr (std::is_floating_point_v<T>) return static_cast<T>(slot.f);
  if constexpr (std::is_unsigned_v<T>) return static_cast<T>(slot.u);
  return static_cast<T>(slot.i);
}

inline int fail(int kind, const char* what, const char** message) {
  thread_local std::string text;
  text = what;
  *message = text.c_str();
  return kind;
}

template <auto Fn>
struct Raw;

// The trampoline of one bound function: the same C++ function pybind11 calls, without pybind11.
template <typename R, typename... A, R (*Fn)(A...)>
struct Raw<Fn> {
  static constexpr char kSignature[] = {slot_code<A>()..., '\0'};

  template <size_t... I>
  static void invoke(const Slot* args, std::index_sequence<I...>) {
    (void)args;
    Fn(unpack<A>(args[I])...);
  }

  static int call(const Slot* args, const char** message) {
    struct Flag {
      Flag() { t_in_raw_call = true; }
      ~Flag() { t_in_raw_call = false; }
    } flag;
    try {
      invoke(args, std::index_sequence_for<A...>{});
      return kOk;
    } catch (const pybind11::value_error& e) {  // the bindings' argument errors
      return fail(kValueError, e.what(), message);
    } catch (const std::invalid_argument& e) {
      return fail(kValueError, e.what(), message);
    } catch (const std::bad_alloc& e) {
      return fail(kMemoryError, e.what(), message);
    } catch (const std::exception& e) {
      return fail(kRuntimeError, e.what(), message);
    } catch (...) {
      return fail(kRuntimeError, "unknown C++ exception in a replayed kernel", message);
    }
  }

  static constexpr RawEntry kEntry{&call, kSignature};
};

// Publishes Raw<Fn> as module.raw_entries[name] (a capsule), beside the pybind function `name`.
template <auto Fn>
void add_raw(pybind11::module_& m, const char* name) {
  if (!pybind11::hasattr(m, "raw_entries")) m.attr("raw_entries") = pybind11::dict();
  PyObject* capsule =
      PyCapsule_New(const_cast<RawEntry*>(&Raw<Fn>::kEntry), kCapsuleName, nullptr);
  if (capsule == nullptr) throw pybind11::error_already_set();
  m.attr("raw_entries")[name] = pybind11::reinterpret_steal<pybind11::object>(capsule);
}

}  // namespace heron_cpu::replay
