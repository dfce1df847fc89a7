// heron_cpu._C.ReplayProgram: a run of recorded kernel calls replayed in C++ (see replay.h).
//
// heron_cpu/launch.py appends each recorded call that has a raw entry, with the Python ints and
// floats it was recorded with; run() then calls them in order with the GIL released once. The
// arguments are converted here, once, exactly as pybind11 would convert them at every call.

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

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

class ReplayProgram {
 public:
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
    ops_.push_back(Op{raw->call, slots_.size()});
    slots_.insert(slots_.end(), packed.begin(), packed.end());
    return true;
  }

  // Runs every call in order; the first that fails stops the run and raises its error.
  void run() const {
    int kind = kOk;
    const char* message = nullptr;
    {
      py::gil_scoped_release release;
      for (const Op& op : ops_) {
        kind = op.call(slots_.data() + op.offset, &message);
        if (kind != kOk) break;
      }
    }
    if (kind == kOk) return;
    const std::string text(message != nullptr ? message : "replayed kernel failed");
    if (kind == kValueError) throw py::value_error(text);
    if (kind == kMemoryError) throw std::bad_alloc();
    throw std::runtime_error(text);
  }

  size_t size() const { return ops_.size(); }

 private:
  struct Op {
    RawCall call;
    size_t offset;  // of its first argument in slots_
  };
  std::vector<Op> ops_;
  std::vector<Slot> slots_;
};

}  // namespace
}  // namespace heron_cpu::replay

void heron_cpu_register_replay(py::module_& m) {
  using heron_cpu::replay::ReplayProgram;
  py::class_<ReplayProgram>(m, "ReplayProgram",
                            "Recorded kernel calls with raw entries, replayed in order from C++.")
      .def(py::init<>())
      .def("append", &ReplayProgram::append, py::arg("entry"), py::arg("args"),
           "Append a call of the raw entry (a capsule of raw_entries) with its recorded ints and "
           "floats; False if they do not fit its signature (nothing appended).")
      .def("run", &ReplayProgram::run,
           "Run every call in order with the GIL released; the first failure raises its error.")
      .def("__len__", &ReplayProgram::size);
}
