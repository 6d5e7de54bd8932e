// C++ errors as the exceptions a multiprocessing user expects: queue.Empty
// and queue.Full, threading.BrokenBarrierError, KeyError, IndexError,
// ValueError for a closed queue; the rest as libshm.Error (an OSError with
// the errno) or one of its subclasses.
#include <new>
#include <stdexcept>

#include "common.hpp"

namespace pyshm {

namespace {
// The exception types, created once; a pointer each, never freed (they live
// as long as the interpreter).
struct Types {
    PyObject* error;
    PyObject* not_found;
    PyObject* already_exists;
    PyObject* out_of_space;
    PyObject* type_mismatch;
    PyObject* corrupted;
    PyObject* queue_empty;
    PyObject* queue_full;
    PyObject* broken_barrier;
};
Types* types = nullptr;

void raise_os(PyObject* type, const shm::error& e) {
    // OSError(errno, strerror-like text): the message names the object.
    py::object err = py::reinterpret_borrow<py::object>(type)(e.code().value(), e.what());
    PyErr_SetObject(type, err.ptr());
}

// Set the Python exception for the C++ exception being handled when it is
// one of shm's; false for any other.
bool set_shm_error() {
    try {
        throw;
    } catch (const shm::key_error& e) {
        PyErr_SetString(PyExc_KeyError, e.what());
    } catch (const shm::index_error& e) {
        PyErr_SetString(PyExc_IndexError, e.what());
    } catch (const shm::value_type_error& e) {
        PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const shm::empty&) {
        PyErr_SetNone(types->queue_empty);
    } catch (const shm::full&) {
        PyErr_SetNone(types->queue_full);
    } catch (const shm::closed& e) {
        PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const shm::broken_barrier&) {
        PyErr_SetNone(types->broken_barrier);
    } catch (const shm::not_found& e) {
        raise_os(types->not_found, e);
    } catch (const shm::already_exists& e) {
        raise_os(types->already_exists, e);
    } catch (const shm::out_of_space& e) {
        raise_os(types->out_of_space, e);
    } catch (const shm::type_mismatch& e) {
        raise_os(types->type_mismatch, e);
    } catch (const shm::corrupted& e) {
        raise_os(types->corrupted, e);
    } catch (const shm::error& e) {
        raise_os(types->error, e);
    } catch (...) {
        return false;
    }
    return true;
}
}  // namespace

void raise_current() noexcept {
    try {
        throw;
    } catch (py::error_already_set& e) {
        e.restore();
    } catch (const py::builtin_exception& e) {
        e.set_error();
    } catch (...) {
        if (set_shm_error()) return;
        // The rest as pybind11's default translator has them.
        try {
            throw;
        } catch (const std::bad_alloc& e) {
            PyErr_SetString(PyExc_MemoryError, e.what());
        } catch (const std::out_of_range& e) {
            PyErr_SetString(PyExc_IndexError, e.what());
        } catch (const std::overflow_error& e) {
            PyErr_SetString(PyExc_OverflowError, e.what());
        } catch (const std::domain_error& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const std::invalid_argument& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const std::length_error& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const std::range_error& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        } catch (const std::exception& e) {
            PyErr_SetString(PyExc_RuntimeError, e.what());
        } catch (...) {
            PyErr_SetString(PyExc_RuntimeError, "Caught an unknown exception!");
        }
    }
}

void bind_errors(py::module_& m) {
    py::module_ queue = py::module_::import("queue");
    py::module_ threading = py::module_::import("threading");
    static Types t{};
    auto make = [&](const char* name, py::handle base, const char* doc) {
        PyObject* type = PyErr_NewExceptionWithDoc((std::string("libshm.") + name).c_str(), doc, base.ptr(), nullptr);
        if (!type) throw py::error_already_set();
        m.attr(name) = py::handle(type);
        return type;
    };
    using namespace pybind11::literals;
    t.error = make("Error", PyExc_OSError, "A libshm operation failed; errno and strerror as for OSError.");
    py::object error = py::reinterpret_borrow<py::object>(t.error);
    t.not_found = make("NotFound", py::make_tuple(error, py::handle(PyExc_FileNotFoundError)),
                       "No segment or object of that name.");
    t.already_exists = make("AlreadyExists", py::make_tuple(error, py::handle(PyExc_FileExistsError)),
                            "A segment or object of that name exists already.");
    t.out_of_space = make("OutOfSpace", py::make_tuple(error, py::handle(PyExc_MemoryError)),
                          "The segment (or the shm directory) has no room for this; nothing was changed.");
    t.type_mismatch = make("TypeMismatch", py::make_tuple(error, py::handle(PyExc_TypeError)),
                           "The name is taken by an object of another type.");
    t.corrupted = make("Corrupted", error, "The segment's contents failed a check; nothing was changed.");
    t.queue_empty = queue.attr("Empty").ptr();
    t.queue_full = queue.attr("Full").ptr();
    t.broken_barrier = threading.attr("BrokenBarrierError").ptr();
    types = &t;

    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (...) {
            if (!set_shm_error()) throw;  // not shm's: the next translator's
        }
    });
}

}  // namespace pyshm
