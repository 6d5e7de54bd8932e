// libshm._remote: shm::remote's Store, Queue, Lease, Dict, List, Lock and
// Event for the Python package (libshm/remote.py builds get_context("nats://
// ...") on them). A module of its own, built only when the C++ library
// shm::remote is (that is, when the NATS C client is found); it needs
// libshm._core imported first (its exception types and translator).
//
// Values cross as Python objects: None, bool, int (64-bit), float and str
// are stored natively (what a C++ program reads as shm::Value), anything
// else as bytes holding its pickle; bytes read back are unpickled. Dict
// keys are strings on the servers: a str key is its UTF-8, any other key is
// a NUL byte followed by its pickle.
//
// Every call that may wait releases the GIL; the waits that are the
// caller's (get, put on a full queue, join, acquire, wait) go in slices of
// at most kSlice so that Ctrl-C interrupts them.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <shm/remote.hpp>

#include "common.hpp"

namespace pyshm {
namespace {

namespace rm = shm::remote;
using shm::detail::Deadline;

constexpr auto kRemoteSlice = std::chrono::milliseconds(500);

PyObject* unavailable_type = nullptr;
PyObject* replicas_type = nullptr;

py::object pickle_mod() {
    static py::object* m = new py::object(py::module_::import("pickle"));
    return *m;
}

shm::Value to_value(py::handle o) {
    if (o.is_none()) return shm::Value(nullptr);
    if (PyBool_Check(o.ptr())) return shm::Value(o.ptr() == Py_True);
    if (PyLong_CheckExact(o.ptr())) {
        int overflow = 0;
        const long long v = PyLong_AsLongLongAndOverflow(o.ptr(), &overflow);
        if (overflow == 0) {
            if (v == -1 && PyErr_Occurred()) throw py::error_already_set();
            return shm::Value(static_cast<std::int64_t>(v));
        }
    } else if (PyFloat_CheckExact(o.ptr())) {
        return shm::Value(PyFloat_AS_DOUBLE(o.ptr()));
    } else if (PyUnicode_CheckExact(o.ptr())) {
        return shm::Value(o.cast<std::string>());
    }
    py::bytes b = pickle_mod().attr("dumps")(o, -1);
    return shm::Value::bytes(std::string_view(b));
}

py::object from_value(const shm::Value& v) {
    using T = shm::Value::Type;
    switch (v.type()) {
        case T::null: return py::none();
        case T::boolean: return py::bool_(v.as_bool());
        case T::integer: return py::int_(v.as_int());
        case T::real: return py::float_(v.as_double());
        case T::string: return py::str(v.as_string());
        case T::bytes: return pickle_mod().attr("loads")(py::bytes(v.as_bytes()));
        default: break;
    }
    // A nested list or dict a C++ program stored: a plain copy.
    if (v.is_new_container()) {
        if (v.type() == T::list) {
            py::list l;
            for (const auto& x : v.new_list_items()) l.append(from_value(x));
            return std::move(l);
        }
        py::dict d;
        for (const auto& [k, x] : v.new_dict_items()) d[py::str(k)] = from_value(x);
        return std::move(d);
    }
    throw py::type_error("a value of a kind the Python package does not read");
}

std::string to_key(py::handle k) {
    if (PyUnicode_Check(k.ptr())) {
        std::string s = k.cast<std::string>();
        if (!s.empty() && s[0] == '\0') throw py::value_error("a str key may not start with NUL (\\x00)");
        return s;
    }
    py::bytes b = pickle_mod().attr("dumps")(k, -1);
    return std::string(1, '\0') + std::string(b);
}

py::object from_key(const std::string& s) {
    if (!s.empty() && s[0] == '\0') return pickle_mod().attr("loads")(py::bytes(s.substr(1)));
    return py::str(s);
}

std::chrono::milliseconds ms(double seconds) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0));
}

// Run attempt(deadline) without the GIL in slices until it succeeds or
// the timeout (None: forever) passes; Ctrl-C between slices.
template <class Attempt>
bool wait_remote(py::handle timeout, Attempt&& attempt) {
    using clock = std::chrono::steady_clock;
    const auto t = to_timeout(timeout);
    const auto end = t ? clock::now() + *t : clock::time_point::max();
    for (;;) {
        auto slice_end = clock::now() + kRemoteSlice;
        if (slice_end > end) slice_end = end;
        if (without_gil([&] { return attempt(Deadline::at(slice_end)); })) return true;
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        if (t && clock::now() >= end) return false;
    }
}

bool set_remote_error() {
    try {
        throw;
    } catch (const rm::unavailable& e) {
        py::object err = py::reinterpret_borrow<py::object>(unavailable_type)(e.code().value(), e.what());
        PyErr_SetObject(unavailable_type, err.ptr());
    } catch (const rm::not_enough_replicas& e) {
        py::object err = py::reinterpret_borrow<py::object>(replicas_type)(e.code().value(), e.what());
        PyErr_SetObject(replicas_type, err.ptr());
    } catch (...) {
        return false;
    }
    return true;
}

}  // namespace
}  // namespace pyshm

PYBIND11_MODULE(_remote, m) {
    using namespace pyshm;
    using namespace pybind11::literals;
    m.doc() = "libshm's objects across hosts (NATS JetStream); use libshm.get_context(url), not this module";
    py::module_ core = py::module_::import("libshm._core");
    auto make = [&](const char* name, py::handle bases, const char* doc) {
        PyObject* type = PyErr_NewExceptionWithDoc((std::string("libshm.") + name).c_str(), doc, bases.ptr(), nullptr);
        if (!type) throw py::error_already_set();
        m.attr(name) = py::handle(type);
        return type;
    };
    unavailable_type = make("Unavailable", py::make_tuple(core.attr("Error"), py::handle(PyExc_ConnectionError)),
                            "No NATS server answered in time; the message names the servers and the object.");
    replicas_type = make("NotEnoughReplicas", py::make_tuple(core.attr("Error")),
                         "The object asks for more replicas than the servers can give.");
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (...) {
            if (!set_remote_error()) throw;
        }
    });

    py::class_<rm::Store>(m, "Store")
        .def_static(
            "connect",
            [](const std::string& servers, double request_timeout, int replicas, double lock_lease, double ack_wait,
               std::uint32_t max_deliveries) {
                rm::StoreOptions o;
                o.request_timeout = ms(request_timeout);
                o.replicas = replicas;
                o.lock_lease = ms(lock_lease);
                o.ack_wait = ms(ack_wait);
                o.max_deliveries = max_deliveries;
                o.client_name = "libshm-python";
                return without_gil([&] { return rm::connect(servers, o); });
            },
            "servers"_a, "request_timeout"_a = 5.0, "replicas"_a = 0, "lock_lease"_a = 10.0, "ack_wait"_a = 30.0,
            "max_deliveries"_a = 4)
        .def_property_readonly("servers", &rm::Store::servers)
        .def_property_readonly("replicas", &rm::Store::replicas)
        .def("remove", [](rm::Store& s, const std::string& name) { return without_gil([&] { return s.remove(name); }); })
        .def("kind", [](rm::Store& s, const std::string& name) { return without_gil([&] { return s.kind(name); }); });

    py::class_<rm::Lease>(m, "Lease")
        .def_property_readonly("item", [](const rm::Lease& l) { return py::bytes(l.item()); })
        .def_property_readonly("deliveries", &rm::Lease::deliveries)
        .def_property_readonly("id", &rm::Lease::id)
        .def("ack", [](rm::Lease& l) { return without_gil([&] { return l.ack(); }); })
        .def("nak", [](rm::Lease& l) { without_gil([&] { l.nak(); }); })
        .def("extend", [](rm::Lease& l) { without_gil([&] { l.extend(); }); });

    py::class_<rm::Queue>(m, "Queue")
        .def_static(
            "open_or_create",
            [](rm::Store& s, const std::string& name, std::uint32_t max_items, std::uint32_t max_item_size,
               double lease, std::uint32_t max_deliveries, int replicas) {
                rm::QueueOptions o;
                o.max_items = max_items;
                o.max_item_size = max_item_size;
                o.lease = ms(lease);
                o.max_deliveries = max_deliveries;
                o.replicas = replicas;
                return without_gil([&] { return rm::Queue::open_or_create(s, name, o); });
            },
            "store"_a, "name"_a, "max_items"_a = 1024, "max_item_size"_a = 1 << 20, "lease"_a = 0.0,
            "max_deliveries"_a = 0, "replicas"_a = 0)
        // put(item, timeout): False if still full when the timeout passed.
        .def("put",
             [](rm::Queue& q, const py::bytes& item, py::object timeout) {
                 std::string data(item);
                 return wait_remote(timeout, [&](const Deadline& d) { return q.put_until(data, d); });
             },
             "item"_a, "timeout"_a = py::none())
        // put_async(item, timeout): sent without waiting for the servers'
        // answer; False, nothing sent, if still full when the timeout passed.
        .def("put_async",
             [](rm::Queue& q, const py::bytes& item, py::object timeout) {
                 std::string data(item);
                 return wait_remote(timeout, [&](const Deadline& d) { return q.put_async_until(data, d); });
             },
             "item"_a, "timeout"_a = py::none())
        .def("flush", [](rm::Queue& q) { return without_gil([&] { return q.flush(); }); })
        .def_property_readonly("unflushed", &rm::Queue::unflushed)
        // get(timeout): a Lease, or None if still empty when the timeout passed.
        .def("get",
             [](rm::Queue& q, py::object timeout) -> std::optional<rm::Lease> {
                 std::optional<rm::Lease> got;
                 wait_remote(timeout, [&](const Deadline& d) {
                     got = q.get_until(d);
                     return got.has_value();
                 });
                 return got;
             },
             "timeout"_a = py::none())
        // Items a get asks the servers for at once (1: none fetched ahead).
        .def_property("prefetch", &rm::Queue::prefetch, &rm::Queue::set_prefetch)
        .def("task_done", [](rm::Queue& q) { return without_gil([&] { return q.task_done(); }); })
        .def("join",
             [](rm::Queue& q, py::object timeout) {
                 return wait_remote(timeout, [&](const Deadline& d) { return q.join_until(d); });
             },
             "timeout"_a = py::none())
        .def("qsize", [](const rm::Queue& q) { return without_gil([&] { return q.qsize(); }); })
        .def("full", [](const rm::Queue& q) { return without_gil([&] { return q.full(); }); })
        .def("leased", [](const rm::Queue& q) { return without_gil([&] { return q.leased(); }); })
        .def("unfinished", [](const rm::Queue& q) { return without_gil([&] { return q.unfinished(); }); })
        .def("purge", [](rm::Queue& q) { without_gil([&] { q.purge(); }); })
        .def_property_readonly("max_items", &rm::Queue::max_items)
        .def_property_readonly("name", &rm::Queue::name);

    py::class_<rm::Dict>(m, "Dict")
        .def_static(
            "open_or_create",
            [](rm::Store& s, const std::string& name, int replicas, bool local_copy) {
                rm::ObjectOptions o;
                o.replicas = replicas;
                o.local_copy = local_copy;
                return without_gil([&] { return rm::Dict::open_or_create(s, name, o); });
            },
            "store"_a, "name"_a, "replicas"_a = 0, "local_copy"_a = false)
        .def("sync", [](const rm::Dict& x) { without_gil([&] { x.sync(); }); })
        .def_property_readonly("has_local_copy", &rm::Dict::has_local_copy)
        .def("__getitem__",
             [](const rm::Dict& d, py::handle key) {
                 const std::string k = to_key(key);
                 auto v = without_gil([&] { return d.find(k); });
                 if (!v) throw py::key_error(py::repr(key).cast<std::string>());
                 return from_value(*v);
             })
        .def("get",
             [](const rm::Dict& d, py::handle key, py::object dflt) {
                 const std::string k = to_key(key);
                 auto v = without_gil([&] { return d.find(k); });
                 return v ? from_value(*v) : dflt;
             },
             "key"_a, "default"_a = py::none())
        .def("__setitem__",
             [](rm::Dict& d, py::handle key, py::handle value) {
                 const std::string k = to_key(key);
                 const shm::Value v = to_value(value);
                 without_gil([&] { d.set(k, v); });
             })
        // d[key] = value without waiting for the servers (Dict::set_async).
        .def("set_async",
             [](rm::Dict& d, py::handle key, py::handle value) {
                 const std::string k = to_key(key);
                 const shm::Value v = to_value(value);
                 without_gil([&] { d.set_async(k, v); });
             })
        .def("flush", [](rm::Dict& d) { return without_gil([&] { return d.flush(); }); })
        .def_property_readonly("unflushed", &rm::Dict::unflushed)
        .def("__delitem__",
             [](rm::Dict& d, py::handle key) {
                 const std::string k = to_key(key);
                 if (!without_gil([&] { return d.erase(k); })) throw py::key_error(py::repr(key).cast<std::string>());
             })
        .def("__contains__",
             [](const rm::Dict& d, py::handle key) {
                 const std::string k = to_key(key);
                 return without_gil([&] { return d.contains(k); });
             })
        .def("__len__", [](const rm::Dict& d) { return without_gil([&] { return d.size(); }); })
        .def("keys",
             [](const rm::Dict& d) {
                 auto ks = without_gil([&] { return d.keys(); });
                 py::list out;
                 for (const auto& k : ks) out.append(from_key(k));
                 return out;
             })
        .def("items",
             [](const rm::Dict& d) {
                 auto its = without_gil([&] { return d.items(); });
                 py::list out;
                 for (const auto& [k, v] : its) out.append(py::make_tuple(from_key(k), from_value(v)));
                 return out;
             })
        .def("clear", [](rm::Dict& d) { without_gil([&] { d.clear(); }); })
        .def("setdefault",
             [](rm::Dict& d, py::handle key, py::handle dflt) {
                 const std::string k = to_key(key);
                 const shm::Value v = to_value(dflt);
                 return from_value(without_gil([&] { return d.setdefault(k, v); }));
             })
        // update_key(key, fn): stores fn(value) (None for a missing key) by
        // compare-and-set; fn may run more than once.
        .def("update_key",
             [](rm::Dict& d, py::handle key, const py::function& fn) {
                 const std::string k = to_key(key);
                 auto v = without_gil([&] {
                     return d.update(k, [&](const shm::Value& old) {
                         py::gil_scoped_acquire gil;
                         return to_value(fn(from_value(old)));
                     });
                 });
                 return from_value(v);
             })
        .def_property_readonly("name", &rm::Dict::name);

    py::class_<rm::List>(m, "List")
        .def_static(
            "open_or_create",
            [](rm::Store& s, const std::string& name, int replicas, bool local_copy) {
                rm::ObjectOptions o;
                o.replicas = replicas;
                o.local_copy = local_copy;
                return without_gil([&] { return rm::List::open_or_create(s, name, o); });
            },
            "store"_a, "name"_a, "replicas"_a = 0, "local_copy"_a = false)
        .def("sync", [](const rm::List& x) { without_gil([&] { x.sync(); }); })
        .def_property_readonly("has_local_copy", &rm::List::has_local_copy)
        .def("append",
             [](rm::List& l, py::handle v) {
                 const shm::Value x = to_value(v);
                 without_gil([&] { l.append(x); });
             })
        .def("extend",
             [](rm::List& l, py::iterable it) {
                 std::vector<shm::Value> xs;
                 for (auto v : it) xs.push_back(to_value(v));
                 without_gil([&] { l.extend(xs); });
             })
        .def("insert",
             [](rm::List& l, std::int64_t i, py::handle v) {
                 const shm::Value x = to_value(v);
                 without_gil([&] { l.insert(i, x); });
             })
        .def("__getitem__",
             [](const rm::List& l, std::int64_t i) { return from_value(without_gil([&] { return l.get(i); })); })
        .def("__setitem__",
             [](rm::List& l, std::int64_t i, py::handle v) {
                 const shm::Value x = to_value(v);
                 without_gil([&] { l.set(i, x); });
             })
        .def("pop", [](rm::List& l, std::int64_t i) { return from_value(without_gil([&] { return l.pop(i); })); },
             "index"_a = -1)
        .def("__len__", [](const rm::List& l) { return without_gil([&] { return l.size(); }); })
        .def("snapshot",
             [](const rm::List& l) {
                 auto xs = without_gil([&] { return l.snapshot(); });
                 py::list out;
                 for (const auto& x : xs) out.append(from_value(x));
                 return out;
             })
        .def("clear", [](rm::List& l) { without_gil([&] { l.clear(); }); })
        .def_property_readonly("name", &rm::List::name);

    py::class_<rm::Lock>(m, "Lock")
        .def_static(
            "open_or_create",
            [](rm::Store& s, const std::string& name, double lease, int replicas) {
                rm::LockOptions o;
                o.lease = ms(lease);
                o.replicas = replicas;
                return without_gil([&] { return rm::Lock::open_or_create(s, name, o); });
            },
            "store"_a, "name"_a, "lease"_a = 0.0, "replicas"_a = 0)
        .def("acquire",
             [](rm::Lock& l, py::object timeout) {
                 return wait_remote(timeout, [&](const Deadline& d) { return l.try_lock_until(d); });
             },
             "timeout"_a = py::none())
        .def("try_acquire", [](rm::Lock& l) { return without_gil([&] { return l.try_lock(); }); })
        .def("release", [](rm::Lock& l) { without_gil([&] { l.unlock(); }); })
        .def_property_readonly("token", &rm::Lock::token)
        .def_property_readonly("held", &rm::Lock::held)
        .def_property_readonly("lease", [](const rm::Lock& l) { return l.lease().count() / 1000.0; })
        .def_property_readonly("name", &rm::Lock::name);

    py::class_<rm::Event>(m, "Event")
        .def_static(
            "open_or_create",
            [](rm::Store& s, const std::string& name, int replicas) {
                rm::ObjectOptions o;
                o.replicas = replicas;
                return without_gil([&] { return rm::Event::open_or_create(s, name, o); });
            },
            "store"_a, "name"_a, "replicas"_a = 0)
        .def("set", [](rm::Event& e) { without_gil([&] { e.set(); }); })
        .def("clear", [](rm::Event& e) { without_gil([&] { e.clear(); }); })
        .def("is_set", [](const rm::Event& e) { return without_gil([&] { return e.is_set(); }); })
        .def("wait",
             [](rm::Event& e, py::object timeout) {
                 return wait_remote(timeout, [&](const Deadline& d) { return e.wait_until(d); });
             },
             "timeout"_a = py::none())
        .def_property_readonly("name", &rm::Event::name);
}
