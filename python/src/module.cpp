// libshm._core: the C++ library for the Python package (libshm/__init__.py
// builds multiprocessing's API on it).
#include "common.hpp"

namespace {
// _noop(*args): does nothing, through the cheapest call CPython has (a
// METH_FASTCALL builtin), for the benchmarks' floor: a loop calling it
// costs what the loop and one call to C cost, without any binding.
PyObject* noop(PyObject*, PyObject* const*, Py_ssize_t) { Py_RETURN_NONE; }
PyMethodDef noop_def{"_noop", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(noop)), METH_FASTCALL,
                     "_noop(*args): does nothing (a benchmark's floor: the cost of calling C)"};
}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "libshm's C++ objects; use the libshm package, not this module";
    m.attr("version") = shm::version();
    PyObject* noop_fn = PyCFunction_NewEx(&noop_def, nullptr, nullptr);
    if (!noop_fn) throw pybind11::error_already_set();
    m.attr("_noop") = pybind11::reinterpret_steal<pybind11::object>(noop_fn);
    pyshm::bind_errors(m);
    pyshm::bind_segment(m);
    pyshm::bind_sync(m);
    pyshm::bind_queue(m);
    pyshm::bind_containers(m);
    pyshm::bind_shared(m);
    pyshm::bind_work_queue(m);
}
