// heron_cpu._C.ReplayProgram: a run of recorded kernel calls replayed in C++ (see replay.h).
//
// heron_cpu/launch.py appends each recorded call that has a raw entry, with the Python ints and
// floats it was recorded with; run() then calls them in order with the GIL released once. The
// arguments are converted here, once, exactly as pybind11 would convert them at every call.
// Built with threads > 1, a program runs each run of calls whose kernels can share a thread team
// (replay.h: kTeam and kSerial modes, at least one kTeam) inside one OpenMP parallel region.

#include <omp.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "replay.h"

namespace py = pybind11;

namespace heron_cpu::replay {
namespace {

// Converts `value` into `slot` as the signature code says; false if it is not such a number.
bool convert(char code, py::handle value, Slot* slot) {
  PyObject* obj = value.ptr();
  if (code == 'f') {
    if (!PyFloat_Check(obj) && !PyLong_Check(obj)) return false;
    slot->f = PyFloat_AsDouble(obj);
  } else if (code == 'u') {
    if (!PyLong_Check(obj)) return false;
    slot->u = PyLong_AsUnsignedLongLong(obj);
  } else {
    if (!PyLong_Check(obj)) return false;
    slot->i = PyLong_AsLongLong(obj);
    if (code == 'n' && (slot->i < INT32_MIN || slot->i > INT32_MAX)) return false;
  }
  if (PyErr_Occurred()) {  // out of range
    PyErr_Clear();
    return false;
  }
  return true;
}

// A barrier of a team region's threads: a shared counter and a generation that the last thread
// to arrive advances; the others spin on it (pause), then yield after a while so that a thread
// descheduled on a busy machine is not starved by its partner's spinning.
class SpinBarrier {
 public:
  explicit SpinBarrier(int threads) : threads_(threads) {}

  void wait() {
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == threads_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < kSpins) {
#if defined(__x86_64__)
        _mm_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr int kSpins = 1 << 14;
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> generation_{0};
  int threads_;
};

class ReplayProgram {
 public:
  // threads > 1: calls that can share a team of that many threads run in team regions.
  explicit ReplayProgram(int threads) : threads_(threads > 1 ? threads : 1) {}

  // Appends one call; false (and nothing appended) if `entry` is not a raw entry or `args` do
  // not fit its signature: the caller then keeps that call as a Python call.
  bool append(py::handle entry, const py::tuple& args) {
    if (!PyCapsule_IsValid(entry.ptr(), kCapsuleName)) return false;
    const auto* raw = static_cast<const RawEntry*>(PyCapsule_GetPointer(entry.ptr(), kCapsuleName));
    const std::string signature(raw->signature);
    if (signature.size() != args.size()) return false;
    std::vector<Slot> packed(signature.size());
    for (size_t j = 0; j < signature.size(); ++j) {
      if (!convert(signature[j], args[j], &packed[j])) return false;
    }
    int mode = kOutside;
    if (threads_ > 1 && raw->mode != nullptr) mode = raw->mode(packed.data(), threads_);
    if (mode == kTeam && raw->team == nullptr) mode = kOutside;
    ops_.push_back(Op{raw->call, raw->team, mode, slots_.size()});
    slots_.insert(slots_.end(), packed.begin(), packed.end());
    segments_.clear();
    return true;
  }

  // Runs every call in order; the first that fails stops the run and raises its error.
  void run() {
    if (segments_.empty()) plan();
    int kind = kOk;
    std::string text;
    {
      py::gil_scoped_release release;
      for (const Segment& seg : segments_) {
        kind = seg.team ? run_team(seg, &text) : run_plain(seg, &text);
        if (kind != kOk) break;
      }
    }
    if (kind == kOk) return;
    if (text.empty()) text = "replayed kernel failed";
    if (kind == kValueError) throw py::value_error(text);
    if (kind == kMemoryError) throw std::bad_alloc();
    throw std::runtime_error(text);
  }

  size_t size() const { return ops_.size(); }

  // Calls in team regions, as (team regions, calls with a team entry, serial calls in them).
  py::tuple team_stats() {
    if (segments_.empty()) plan();
    size_t regions = 0, team = 0, serial = 0;
    for (const Segment& seg : segments_) {
      if (!seg.team) continue;
      ++regions;
      for (size_t i = seg.begin; i < seg.end; ++i) (ops_[i].mode == kTeam ? team : serial) += 1;
    }
    return py::make_tuple(regions, team, serial);
  }

  int threads() const { return threads_; }

 private:
  struct Op {
    RawCall call;
    TeamCall team;
    int mode;       // TeamMode in a team of threads_
    size_t offset;  // of its first argument in slots_
  };
  struct Segment {
    size_t begin, end;
    bool team;  // one parallel region for ops [begin, end)
  };

  // Splits the calls into team regions (maximal runs of kTeam / kSerial calls with a kTeam
  // among them) and plain runs.
  void plan() {
    segments_.clear();
    size_t i = 0;
    while (i < ops_.size()) {
      size_t j = i;
      bool any_team = false;
      while (j < ops_.size() && ops_[j].mode != kOutside) any_team |= ops_[j++].mode == kTeam;
      if (j > i && any_team) {
        segments_.push_back(Segment{i, j, true});
        i = j;
        continue;
      }
      if (j == i) j = i + 1;  // a kOutside call
      if (!segments_.empty() && !segments_.back().team && segments_.back().end == i) {
        segments_.back().end = j;
      } else {
        segments_.push_back(Segment{i, j, false});
      }
      i = j;
    }
  }

  int run_plain(const Segment& seg, std::string* text) const {
    for (size_t i = seg.begin; i < seg.end; ++i) {
      const char* message = nullptr;
      const int kind = ops_[i].call(slots_.data() + ops_[i].offset, &message);
      if (kind != kOk) {
        *text = message != nullptr ? message : "";
        return kind;
      }
    }
    return kOk;
  }

  // One parallel region for the segment. Every thread passes the same barriers (placed by the
  // calls' modes alone, never by what happened), so an error cannot leave a thread waiting: the
  // first error is kept and every later call is skipped.
  int run_team(const Segment& seg, std::string* text) const {
    std::atomic<int> error{kOk};
    std::string first;
    auto record = [&](int kind, const char* message) {
      int expected = kOk;
      if (error.compare_exchange_strong(expected, kind)) first = message != nullptr ? message : "";
    };
    // The team may be smaller than asked (OMP_THREAD_LIMIT, OMP_DYNAMIC): the barrier is made
    // for the team there is, once, and its address handed to every thread.
    SpinBarrier* shared = nullptr;
#pragma omp parallel num_threads(threads_)
    {
      const int thread = omp_get_thread_num();
      const int threads = omp_get_num_threads();
      SpinBarrier* barrier = nullptr;
#pragma omp single copyprivate(barrier)
      barrier = shared = new SpinBarrier(threads);
      for (size_t i = seg.begin; i < seg.end; ++i) {
        const Op& op = ops_[i];
        // A kernel reads what the one before it wrote: wait for every thread's share, except
        // between two serial calls (both on thread 0).
        if (i > seg.begin && !(op.mode == kSerial && ops_[i - 1].mode == kSerial)) {
          barrier->wait();
        }
        if (error.load(std::memory_order_acquire) != kOk) continue;
        const char* message = nullptr;
        int kind = kOk;
        if (op.mode == kTeam) {
          kind = op.team(slots_.data() + op.offset, thread, threads, &message);
        } else if (thread == 0) {
          kind = op.call(slots_.data() + op.offset, &message);
        }
        if (kind != kOk) record(kind, message);
      }
    }
    delete shared;
    *text = first;
    return error.load();
  }

  int threads_;
  std::vector<Op> ops_;
  std::vector<Slot> slots_;
  std::vector<Segment> segments_;
};

}  // namespace
}  // namespace heron_cpu::replay

void heron_cpu_register_replay(py::module_& m) {
  using heron_cpu::replay::ReplayProgram;
  py::class_<ReplayProgram>(m, "ReplayProgram",
                            "Recorded kernel calls with raw entries, replayed in order from C++.")
      .def(py::init<int>(), py::arg("threads") = 1,
           "threads > 1: runs of calls that can share a team of that many OpenMP threads run in "
           "one parallel region each, with a barrier between kernels (replay.h).")
      .def("append", &ReplayProgram::append, py::arg("entry"), py::arg("args"),
           "Append a call of the raw entry (a capsule of raw_entries) with its recorded ints and "
           "floats; False if they do not fit its signature (nothing appended).")
      .def("run", &ReplayProgram::run,
           "Run every call in order with the GIL released; the first failure raises its error.")
      .def("team_stats", &ReplayProgram::team_stats,
           "(team regions, calls with a team entry in them, serial calls in them) per run.")
      .def_property_readonly("threads", &ReplayProgram::threads)
      .def("__len__", &ReplayProgram::size);
}
