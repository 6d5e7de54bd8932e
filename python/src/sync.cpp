// Lock, RLock, Semaphore, BoundedSemaphore, Condition, Event and Barrier
// for Python, on shm::Mutex, RecursiveMutex, Semaphore, Condition, Event and
// Barrier. The Python classes (libshm/synchronize.py) add pickling and the
// multiprocessing signatures that need no speed.
#include <cerrno>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>

#include "common.hpp"

namespace pyshm {

namespace {
using namespace pybind11::literals;

PyObject* owner_died_warning = nullptr;

// A lock whose previous holder died: say so once, as a warning the program
// may turn into an error (warnings.simplefilter("error", OwnerDiedWarning)).
template <class M>
void after_acquire(const Handle<M>& h) {
    if (h.obj->previous_owner_died()) {
        const std::string msg = "libshm: the previous holder of lock '" + h.name + "' died holding it; the data it guards may need repair";
        if (PyErr_WarnEx(owner_died_warning, msg.c_str(), 2) != 0) {
            h.obj->unlock();
            throw py::error_already_set();
        }
    }
}

template <class M>
bool lock_acquire(Handle<M>& h, bool block, py::handle timeout) {
    M& m = *h.obj;
    // The uncontended path is try_lock() alone; whether the caller holds it
    // already is asked only when that fails. (An error-checking robust
    // mutex's trylock says EDEADLK to its holder, which try_lock throws.)
    bool got = false;
    try {
        got = m.try_lock();
    } catch (const shm::lock_error& e) {
        if (!std::is_same_v<M, shm::Mutex> || e.code().value() != EDEADLK) throw;
    }
    if (!got) {
        if constexpr (std::is_same_v<M, shm::Mutex>) {
            if (m.held_by_caller()) {
                // Python's Lock would wait for itself: as long as the
                // timeout allows, and forever is refused.
                const auto t = to_timeout(timeout);
                if (block && !t) {
                    PyErr_SetString(PyExc_RuntimeError, "libshm.Lock: this thread already holds it (acquiring it again would wait forever)");
                    throw py::error_already_set();
                }
                if (block) wait_sliced(t, [](std::chrono::nanoseconds d) {
                        std::this_thread::sleep_for(d);
                        return false;
                    });
                return false;
            }
        }
        if (block) got = wait_sliced(to_timeout(timeout), [&](std::chrono::nanoseconds d) { return m.try_lock_for(d); });
    }
    if (got) after_acquire(h);
    return got;
}

// Unlocking checks that the caller holds it (shm::lock_error, EPERM, if
// not): one check, turned into Python's error.
template <class M>
void lock_release(Handle<M>& h) {
    try {
        h.obj->unlock();
    } catch (const shm::lock_error& e) {
        if (e.code().value() != EPERM) throw;
        if constexpr (std::is_same_v<M, shm::Mutex>) throw py::value_error("libshm.Lock: released without being held by this thread");
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        throw py::error_already_set();
    }
}

// The fast methods (common.hpp): acquire(block=True, timeout=None),
// release(), __enter__() and __exit__(*args), as the pybind11 ones below.
template <class M>
PyObject* fast_acquire(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    try {
        PyObject* a[2] = {nullptr, nullptr};
        if ((nargs || kwnames) && !parse_args("acquire", args, nargs, kwnames, {"block", "timeout"}, 0, a)) return nullptr;
        bool block = true;
        if (a[0] && !to_bool(a[0], "block", &block)) return nullptr;
        return PyBool_FromLong(lock_acquire<M>(fast_self<Handle<M>>(self), block, a[1] ? a[1] : Py_None));
    }
    PYSHM_FAST_CATCH
}

template <class M>
PyObject* fast_enter(PyObject* self, PyObject* const*, Py_ssize_t nargs, PyObject* kwnames) {
    if (nargs || kwnames) {
        PyErr_SetString(PyExc_TypeError, "__enter__() takes no arguments");
        return nullptr;
    }
    try {
        return PyBool_FromLong(lock_acquire<M>(fast_self<Handle<M>>(self), true, Py_None));
    }
    PYSHM_FAST_CATCH
}

template <class M, bool AnyArgs>
PyObject* fast_release(PyObject* self, PyObject* const*, Py_ssize_t nargs, PyObject* kwnames) {
    if (!AnyArgs && (nargs || kwnames)) {
        PyErr_SetString(PyExc_TypeError, "release() takes no arguments");
        return nullptr;
    }
    try {
        lock_release<M>(fast_self<Handle<M>>(self));
        Py_RETURN_NONE;
    }
    PYSHM_FAST_CATCH
}

template <class M>
py::tuple lock_fast_methods(const py::object& self) {
    static PyMethodDef acquire = PYSHM_FAST_METHOD("acquire", fast_acquire<M>, "Take the lock; False if not taken (block=False, or the timeout passed).");
    static PyMethodDef release = PYSHM_FAST_METHOD("release", (fast_release<M, false>), "Release the lock.");
    static PyMethodDef enter = PYSHM_FAST_METHOD("__enter__", fast_enter<M>, "acquire()");
    static PyMethodDef exit = PYSHM_FAST_METHOD("__exit__", (fast_release<M, true>), "release()");
    return fast_methods<Handle<M>>(self, {&acquire, &release, &enter, &exit});
}

template <class M, class Cls>
void bind_lock_common(Cls& c) {
    c.def_static("create", [](const SegmentPtr& s, const std::string& n) { return Handle<M>::create(s, n); })
        .def_static("open", &Handle<M>::open)
        .def("acquire", &lock_acquire<M>, "block"_a = true, "timeout"_a = py::none(),
             "Take the lock; False if not taken (block=False, or the timeout passed).")
        .def("__enter__", [](Handle<M>& h) { return lock_acquire<M>(h, true, py::none()); })
        .def("release", &lock_release<M>)
        .def("__exit__", [](Handle<M>& h, const py::args&) { lock_release<M>(h); })
        .def("_fast", &lock_fast_methods<M>, "(acquire, release, __enter__, __exit__) as plain builtins: the fast path")
        .def_property_readonly("previous_owner_died", [](const Handle<M>& h) { return h.obj->previous_owner_died(); },
                               "True while held by a caller whose acquire found the previous holder dead.")
        .def_property_readonly("owner_pid", [](const Handle<M>& h) { return h.obj->owner_pid(); })
        .def("_is_mine", [](const Handle<M>& h) { return h.obj->held_by_caller(); })
        .def_readonly("segment", &Handle<M>::seg)
        .def_readonly("name", &Handle<M>::name);
}

void bind_locks(py::module_& m) {
    py::class_<Handle<shm::Mutex>> lock(m, "Lock");
    bind_lock_common<shm::Mutex>(lock);

    using R = Handle<shm::RecursiveMutex>;
    py::class_<R> rlock(m, "RLock");
    bind_lock_common<shm::RecursiveMutex>(rlock);
    rlock.def_property_readonly("depth", [](const R& h) { return h.obj->depth(); });
}

template <class S>
void bind_semaphore(py::module_& m, const char* name) {
    using H = Handle<S>;
    auto acquire = [](H& h, bool block, const py::object& timeout) {
        S& s = *h.obj;
        if (s.try_acquire()) return true;
        if (!block) return false;
        return wait_sliced(to_timeout(timeout), [&](std::chrono::nanoseconds d) { return s.try_acquire_for(d); });
    };
    py::class_<H>(m, name)
        .def_static("create",
                    [](const SegmentPtr& s, const std::string& n, std::uint32_t value) { return H::create(s, n, value); })
        .def_static("open", &H::open)
        .def("acquire", acquire, "block"_a = true, "timeout"_a = py::none())
        .def("__enter__", [acquire](H& h) { return acquire(h, true, py::none()); })
        .def("release",
             [](H& h) {
                 try {
                     h.obj->release();
                 } catch (const shm::error& e) {
                     if (e.code().value() == EINVAL) throw py::value_error("semaphore or lock released too many times");
                     throw;
                 }
             })
        .def("__exit__", [](H& h, py::args) { h.obj->release(); })
        .def("get_value", [](const H& h) { return h.obj->value(); })
        .def_readonly("segment", &H::seg)
        .def_readonly("name", &H::name);
}

// Condition: wait with a Lock or an RLock (the Python class passes its lock's handle).
void bind_condition(py::module_& m) {
    using H = Handle<shm::Condition>;
    auto wait = [](H& h, auto& lock, const py::object& timeout) {
        using L = std::remove_reference_t<decltype(*lock.obj)>;
        if (!lock.obj->held_by_caller()) throw py::value_error("libshm.Condition: wait() without holding the lock");
        std::unique_lock<L> lk(*lock.obj, std::adopt_lock);
        // One wait, in which this thread stays a waiter: a notify made at
        // any moment ends it (a loop of short waits misses one made between
        // two of them). Meanwhile the main thread looks for Ctrl-C every
        // 50 ms; other threads run no signal handlers and wait in one piece.
        // Python's wait() returns False on time-out.
        const auto t = to_timeout(timeout);
        bool interrupted = false;
        std::function<bool()> stop;
        if (handles_signals())
            stop = [&] {
                py::gil_scoped_acquire gil;
                interrupted = PyErr_CheckSignals() != 0;
                return interrupted;
            };
        bool woken = false;
        try {
            woken = without_gil([&] { return h.obj->wait_stoppable(lk, t, stop); });
        } catch (...) {
            lk.release();  // the caller holds it again, as Python's wait() leaves it
            throw;
        }
        lk.release();
        if (interrupted) throw py::error_already_set();
        after_acquire(lock);
        return woken;
    };
    py::class_<H>(m, "Condition")
        .def_static("create", [](const SegmentPtr& s, const std::string& n) { return H::create(s, n); })
        .def_static("open", &H::open)
        .def("wait", [wait](H& h, Handle<shm::Mutex>& l, const py::object& t) { return wait(h, l, t); })
        .def("wait", [wait](H& h, Handle<shm::RecursiveMutex>& l, const py::object& t) { return wait(h, l, t); })
        .def("notify",
             [](H& h, int n) {
                 for (int i = 0; i < n; ++i) h.obj->notify_one();
             })
        .def("notify_all", [](H& h) { h.obj->notify_all(); })
        .def_readonly("segment", &H::seg)
        .def_readonly("name", &H::name);
}

void bind_event(py::module_& m) {
    using H = Handle<shm::Event>;
    py::class_<H>(m, "Event")
        .def_static("create", [](const SegmentPtr& s, const std::string& n) { return H::create(s, n); })
        .def_static("open", &H::open)
        .def("is_set", [](const H& h) { return h.obj->is_set(); })
        .def("set", [](H& h) { h.obj->set(); })
        .def("clear", [](H& h) { h.obj->clear(); })
        .def(
            "wait",
            [](H& h, const py::object& timeout) {
                shm::Event& e = *h.obj;
                if (e.is_set()) return true;
                return wait_sliced(to_timeout(timeout), [&](std::chrono::nanoseconds d) { return e.wait_for(d); });
            },
            "timeout"_a = py::none())
        .def_readonly("segment", &H::seg)
        .def_readonly("name", &H::name);
}

void bind_barrier(py::module_& m) {
    using H = Handle<shm::Barrier>;
    py::class_<H>(m, "Barrier")
        .def_static("create",
                    [](const SegmentPtr& s, const std::string& n, std::uint32_t parties) { return H::create(s, n, parties); })
        .def_static("open", &H::open)
        .def(
            "wait",
            [](H& h, const py::object& timeout) {
                const auto t = to_timeout(timeout);
                bool interrupted = false;
                try {
                    return without_gil([&] {
                        if (t) return h.obj->arrive_and_wait_for(*t);
                        // Look for Ctrl-C about every 50 ms: a signal breaks the
                        // barrier, as an exception in threading.Barrier.wait does.
                        std::function<bool()> stop = [&] {
                            py::gil_scoped_acquire gil;
                            interrupted = PyErr_CheckSignals() != 0;
                            return interrupted;
                        };
                        return h.obj->arrive_and_wait(stop);
                    });
                } catch (const shm::broken_barrier&) {
                    if (interrupted) throw py::error_already_set();
                    throw;
                }
            },
            "timeout"_a = py::none())
        .def("abort", [](H& h) { h.obj->abort(); })
        .def("reset", [](H& h) { h.obj->reset(); })
        .def_property_readonly("parties", [](const H& h) { return h.obj->parties(); })
        .def_property_readonly("n_waiting", [](const H& h) { return h.obj->n_waiting(); })
        .def_property_readonly("broken", [](const H& h) { return h.obj->broken(); })
        .def_readonly("segment", &H::seg)
        .def_readonly("name", &H::name);
}
}  // namespace

void bind_sync(py::module_& m) {
    owner_died_warning = PyErr_NewExceptionWithDoc(
        "libshm.OwnerDiedWarning",
        "A lock was acquired from a process (or thread) that died holding it; "
        "the acquire succeeded, and the data the lock guards may need repair.",
        PyExc_RuntimeWarning, nullptr);
    m.attr("OwnerDiedWarning") = py::handle(owner_died_warning);
    bind_locks(m);
    bind_semaphore<shm::Semaphore>(m, "Semaphore");
    bind_semaphore<shm::BoundedSemaphore>(m, "BoundedSemaphore");
    bind_condition(m);
    bind_event(m);
    bind_barrier(m);
}

}  // namespace pyshm
