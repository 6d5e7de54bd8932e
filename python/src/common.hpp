// The binding's shared pieces: the GIL, blocking in slices that Ctrl-C can
// interrupt, and the handles that keep a segment alive. Nothing here or
// elsewhere in the binding takes the GIL back in a destructor (see
// without_gil()).
#pragma once

#include <pybind11/pybind11.h>

#ifdef __GLIBCXX__
#include <cxxabi.h>
#endif

#include <chrono>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include <shm/shm.hpp>

namespace pyshm {

namespace py = pybind11;
using namespace std::chrono_literals;

// A segment shared by the Python objects made from it. Every object handle
// holds one, so the mapping lives while any of them does.
using SegmentPtr = std::shared_ptr<shm::Segment>;

// The longest a blocking call waits without the GIL before it looks for a
// pending signal (Ctrl-C raises KeyboardInterrupt within about this long).
inline constexpr std::chrono::milliseconds kSlice{50};

// Python's timeout argument: None waits forever; a negative one is 0, as
// multiprocessing treats it. Anything float() takes is a number of seconds.
inline std::optional<std::chrono::nanoseconds> to_timeout(py::handle timeout) {
    if (timeout.is_none()) return std::nullopt;
    const double s = PyFloat_AsDouble(timeout.ptr());
    if (s == -1.0 && PyErr_Occurred()) throw py::error_already_set();
    if (!(s > 0)) return std::chrono::nanoseconds(0);
    if (s > 1e9) return std::nullopt;  // beyond 30 years: forever
    return std::chrono::nanoseconds(static_cast<std::int64_t>(s * 1e9));
}

// f() without the GIL; returns what f() returns. The GIL is taken back by
// a plain call, never in a destructor (as pybind11's gil_scoped_release
// does): once the interpreter finalizes, a daemon thread that takes it back
// (its wait has ended) is ended by pthread_exit(), whose forced unwinding
// calls std::terminate() when it leaves a noexcept destructor. Here it
// unwinds through the caller, whose catch (...) blocks rethrow it, up to
// the thread's start.
template <class F>
auto without_gil(F&& f) -> std::invoke_result_t<F&> {
    PyThreadState* ts = PyEval_SaveThread();
    try {
        if constexpr (std::is_void_v<std::invoke_result_t<F&>>) {
            f();
            PyEval_RestoreThread(ts);
        } else {
            auto r = f();
            PyEval_RestoreThread(ts);
            return r;
        }
#ifdef __GLIBCXX__
    } catch (abi::__forced_unwind&) {
        throw;  // the thread is ending (in PyEval_RestoreThread): no GIL to take back
#endif
    } catch (...) {
        PyEval_RestoreThread(ts);
        throw;
    }
}

// Whether this thread runs Python's signal handlers (the main thread; in
// any other PyErr_CheckSignals() does nothing). With the GIL.
inline bool handles_signals() {
    const py::object main = py::module_::import("threading").attr("main_thread")();
    return PyThread_get_thread_ident() == main.attr("ident").cast<unsigned long>();
}

// Run attempt(slice) without the GIL until it returns true or the timeout
// passes, in slices of at most kSlice; between slices, with the GIL, raise
// what a signal handler raised (KeyboardInterrupt). attempt must be a timed
// wait that changes nothing when it returns false.
template <class Attempt>
bool wait_sliced(std::optional<std::chrono::nanoseconds> timeout, Attempt&& attempt) {
    using clock = std::chrono::steady_clock;
    const auto end = timeout ? clock::now() + *timeout : clock::time_point::max();
    for (;;) {
        auto slice = std::chrono::nanoseconds(kSlice);
        if (timeout) {
            const auto left = end - clock::now();
            if (left < slice) slice = left > std::chrono::nanoseconds(0) ? left : std::chrono::nanoseconds(0);
        }
        if (without_gil([&] { return attempt(slice); })) return true;
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        if (timeout && clock::now() >= end) return false;
    }
}

// ---- fast methods ------------------------------------------------------------
// The hot calls (a lock's acquire and release, a queue's put and get) cost
// less than pybind11's dispatcher around them (a type lookup, argument
// vectors allocated and freed, a tuple per call). So they are also
// offered as plain CPython builtins (METH_FASTCALL) bound to a capsule that
// holds the C++ handle and a reference to the Python object owning it: the
// Python classes take them from the handle's _fast() and call them
// directly. They share the C++ code with the pybind11 methods of the same
// names and raise the same exceptions.

// The capsule of fast methods for the handle `owner` (a T), and the handle
// back from it.
template <class T>
py::tuple fast_methods(const py::object& owner, std::initializer_list<PyMethodDef*> defs) {
    T* handle = owner.cast<T*>();
    PyObject* cap = PyCapsule_New(handle, nullptr, [](PyObject* c) {
        Py_XDECREF(static_cast<PyObject*>(PyCapsule_GetContext(c)));
    });
    if (!cap) throw py::error_already_set();
    py::object capsule = py::reinterpret_steal<py::object>(cap);
    PyCapsule_SetContext(cap, owner.inc_ref().ptr());
    py::tuple out(defs.size());
    std::size_t i = 0;
    for (PyMethodDef* d : defs) {
        PyObject* f = PyCFunction_NewEx(d, cap, nullptr);
        if (!f) throw py::error_already_set();
        PyTuple_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i++), f);
    }
    return out;
}
template <class T>
T& fast_self(PyObject* capsule) noexcept {
    return *static_cast<T*>(PyCapsule_GetPointer(capsule, nullptr));
}

// A PyMethodDef for f(capsule, args, nargs, kwnames).
#define PYSHM_FAST_METHOD(name, fn, doc) \
    PyMethodDef { name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fn)), METH_FASTCALL | METH_KEYWORDS, doc }

// The arguments of a fast method called f(names...): out[i] is the one
// named names[i] (borrowed), or stays null when not given. The first
// `required` are required. False, with TypeError set, on a wrong call.
bool parse_args(const char* fn, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames,
                std::initializer_list<const char*> names, std::size_t required, PyObject** out);

// A bool argument as pybind11 takes one: True, False, None (false) or
// anything with __bool__. False, with TypeError set, otherwise.
bool to_bool(PyObject* o, const char* what, bool* out);

// Set the Python exception for the C++ exception being handled (in a
// catch block), as pybind11 would for a bound function: shm's errors as
// errors.cpp translates them, pybind11's and the standard ones as pybind11
// does.
void raise_current() noexcept;

// The catch blocks that end a fast method's try block: any exception
// becomes the Python error and the method returns null, except a forced
// unwind (the thread ending at exit, see without_gil()), which goes on.
// Fast methods are therefore not noexcept.
#ifdef __GLIBCXX__
#define PYSHM_FAST_CATCH                  \
    catch (abi::__forced_unwind&) {       \
        throw;                            \
    }                                     \
    catch (...) {                         \
        raise_current();                  \
        return nullptr;                   \
    }
#else
#define PYSHM_FAST_CATCH                  \
    catch (...) {                         \
        raise_current();                  \
        return nullptr;                   \
    }
#endif

// The segment's name and the object's name: what a handle pickles as.
struct Where {
    std::string segment;
    std::string object;
};

// A named object in a segment, and the segment it lives in. `attachment`
// keeps obj's mapping while the handle lives: the Segment may be detached
// meanwhile (libshm._arena detaches every segment at exit, while a daemon
// thread may still be blocked in a wait on obj).
template <class T>
struct Handle {
    SegmentPtr seg;
    T* obj;
    std::string name;
    std::shared_ptr<const void> attachment;

    template <class... Args>
    static Handle create(const SegmentPtr& s, const std::string& name, Args... args) {
        return without_gil([&] {
            T* o = &s->construct<T>(name, args...);
            return Handle{s, o, name, s->share()};
        });
    }
    static Handle open(const SegmentPtr& s, const std::string& name) {
        T* o = without_gil([&] { return s->find<T>(name); });
        if (!o) throw shm::not_found("libshm: no " + std::string(shm::to_string(shm::object_kind_of<T>::value)) +
                                     " '" + name + "' in segment '" + s->name() + "'");
        return Handle{s, o, name, s->share()};
    }
};

void bind_segment(py::module_& m);
void bind_shared(py::module_& m);
void bind_work_queue(py::module_& m);
void bind_sync(py::module_& m);
void bind_queue(py::module_& m);
void bind_containers(py::module_& m);
void bind_errors(py::module_& m);

}  // namespace pyshm
