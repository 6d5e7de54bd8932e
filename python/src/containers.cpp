// shm::Dict and shm::List for Python (Manager().dict()/list() without the
// server), and the conversion between Python objects and shm::Value.
//
// Values: None, bool, int (64-bit), float, str, bytes, and plain lists and
// dicts of those are stored natively, so C++ programs read them as
// shm::Value; a list or dict comes back as a plain Python copy, as from a
// Manager. Anything else (a tuple, a set, an int past 64 bits, an instance,
// a libshm object, which pickles by name) is stored as bytes starting with
// kPickled and pickled; bytes that themselves start with kPickled are
// stored pickled too, so every bytes value comes back as it went in.
//
// Keys: a str key is stored as its UTF-8 when it does not start with NUL;
// other keys start with NUL and a letter: "\0i" + decimal for int (and
// bool, which Python dicts treat as 0 and 1), "\0b" + the bytes for bytes,
// "\0s" + UTF-8 for a str starting with NUL, "\0p" + a pickle for any other
// hashable key.
#include <cstring>
#include <string_view>

#include "common.hpp"

namespace pyshm {

namespace {
using namespace pybind11::literals;

constexpr std::string_view kPickled{"\0pickle:", 8};

struct Pickle {
    py::object dumps, loads;
    int protocol;
};
Pickle* pk = nullptr;

bool starts_with(std::string_view s, std::string_view p) { return s.size() >= p.size() && s.substr(0, p.size()) == p; }

std::string_view bytes_view(const py::handle& b) {
    return {PyBytes_AS_STRING(b.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(b.ptr()))};
}

shm::Value pickled(const py::handle& o) {
    py::object b = pk->dumps(o, pk->protocol);
    std::string s;
    s.reserve(kPickled.size() + static_cast<std::size_t>(PyBytes_GET_SIZE(b.ptr())));
    s.append(kPickled).append(bytes_view(b));
    return shm::Value::bytes(s);
}

// The UTF-8 of a str, or false for one with lone surrogates.
bool utf8(const py::handle& o, std::string_view* out) {
    Py_ssize_t n = 0;
    const char* p = PyUnicode_AsUTF8AndSize(o.ptr(), &n);
    if (!p) {
        PyErr_Clear();
        return false;
    }
    *out = {p, static_cast<std::size_t>(n)};
    return true;
}

std::string encode_key(const py::handle& k) {
    PyObject* o = k.ptr();
    std::string_view s;
    if (PyUnicode_Check(o) && utf8(k, &s)) {
        if (s.empty() || s[0] != '\0') return std::string(s);
        return std::string("\0s", 2).append(s);
    }
    if (PyLong_Check(o)) return std::string("\0i", 2).append(py::str(py::int_(py::reinterpret_borrow<py::object>(k))));
    if (PyBytes_Check(o)) return std::string("\0b", 2).append(bytes_view(k));
    if (PyObject_Hash(o) == -1) throw py::error_already_set();  // unhashable: TypeError, as dict says
    py::object b = pk->dumps(k, pk->protocol);
    return std::string("\0p", 2).append(bytes_view(b));
}

py::object decode_key(std::string_view k) {
    if (k.empty() || k[0] != '\0') return py::str(k.data(), k.size());
    if (k.size() < 2) throw shm::corrupted("libshm: a dict key of one NUL byte");
    const std::string_view rest = k.substr(2);
    switch (k[1]) {
    case 's': return py::str(rest.data(), rest.size());
    case 'i': return py::int_(py::str(rest.data(), rest.size()));
    case 'b': return py::bytes(rest.data(), rest.size());
    case 'p': return pk->loads(py::bytes(rest.data(), rest.size()));
    default: throw shm::corrupted("libshm: a dict key with the unknown form " + std::to_string(static_cast<unsigned char>(k[1])));
    }
}

shm::Value to_value(const py::handle& h, int depth = 0);

std::vector<shm::Value> to_values(const py::handle& seq, int depth) {
    std::vector<shm::Value> out;
    out.reserve(static_cast<std::size_t>(PyList_GET_SIZE(seq.ptr())));
    for (const auto& x : py::reinterpret_borrow<py::list>(seq)) out.push_back(to_value(x, depth + 1));
    return out;
}

std::vector<std::pair<std::string, shm::Value>> to_items(const py::handle& d, int depth) {
    std::vector<std::pair<std::string, shm::Value>> out;
    out.reserve(static_cast<std::size_t>(PyDict_GET_SIZE(d.ptr())));
    for (const auto& kv : py::reinterpret_borrow<py::dict>(d)) out.emplace_back(encode_key(kv.first), to_value(kv.second, depth + 1));
    return out;
}

shm::Value to_value(const py::handle& h, int depth) {
    PyObject* o = h.ptr();
    if (o == Py_None) return shm::Value();
    if (PyBool_Check(o)) return shm::Value(o == Py_True);
    if (PyLong_CheckExact(o)) {
        int overflow = 0;
        const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow) return shm::Value(static_cast<std::int64_t>(v));
        return pickled(h);
    }
    if (PyFloat_CheckExact(o)) return shm::Value(PyFloat_AS_DOUBLE(o));
    std::string_view s;
    if (PyUnicode_CheckExact(o) && utf8(h, &s)) return shm::Value(s);
    if (PyBytes_CheckExact(o)) {
        if (starts_with(bytes_view(h), kPickled)) return pickled(h);
        return shm::Value::bytes(bytes_view(h));
    }
    // Deep nesting (or a list that holds itself) is pickled, which sees cycles.
    if (depth < 32 && PyList_CheckExact(o)) return shm::Value::new_list(to_values(h, depth));
    if (depth < 32 && PyDict_CheckExact(o)) return shm::Value::new_dict(to_items(h, depth));
    return pickled(h);
}

py::object from_value(const shm::Value& v) {
    using T = shm::Value::Type;
    switch (v.type()) {
    case T::null: return py::none();
    case T::boolean: return py::bool_(v.as_bool());
    case T::integer: return py::int_(v.as_int());
    case T::real: return py::float_(v.as_double());
    case T::string: {
        const std::string& s = v.as_string();
        return py::reinterpret_steal<py::object>(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogatepass"));
    }
    case T::bytes: {
        const std::string& b = v.as_bytes();
        if (starts_with(b, kPickled))
            return pk->loads(py::memoryview::from_memory(b.data() + kPickled.size(), static_cast<Py_ssize_t>(b.size() - kPickled.size())));
        return py::bytes(b);
    }
    case T::list: {
        py::list out;
        for (const auto& x : v.as_list().snapshot()) out.append(from_value(x));
        return std::move(out);
    }
    case T::dict: {
        py::dict out;
        for (const auto& [k, x] : v.as_dict().items()) out[decode_key(k)] = from_value(x);
        return std::move(out);
    }
    }
    return py::none();
}

struct PyDict {
    SegmentPtr seg;
    shm::Dict d;
    std::string name;
};

struct PyList {
    SegmentPtr seg;
    shm::List l;
    std::string name;
};

py::list to_pylist(const std::vector<shm::Value>& vs) {
    py::list out(vs.size());
    for (std::size_t i = 0; i < vs.size(); ++i) out[i] = from_value(vs[i]);
    return out;
}

// open_or_create() and open() of a Dict or List handle H over container C.
template <class H, class C>
py::class_<H> container_class(py::module_& m, const char* name) {
    py::class_<H> cls(m, name);
    cls.def_static("open_or_create",
                   [](const SegmentPtr& s, const std::string& n) {
                       return without_gil([&] { return H{s, C::open_or_create(*s, n), n}; });
                   })
        .def_static("open", [](const SegmentPtr& s, const std::string& n) {
            return without_gil([&] { return H{s, C::open(*s, n), n}; });
        });
    return cls;
}

py::object dict_getitem(const PyDict& h, py::handle k) {
    std::optional<shm::Value> v = h.d.find(encode_key(k));
    if (!v) throw py::key_error(py::repr(k));
    return from_value(*v);
}

void dict_setitem(PyDict& h, py::handle k, py::handle v) { h.d.set(encode_key(k), to_value(v)); }

// The fast methods (common.hpp): __getitem__(key) and __setitem__(key,
// value), as the pybind11 ones below.
PyObject* fast_getitem(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    if (nargs != 1 || kwnames) {
        PyErr_SetString(PyExc_TypeError, "__getitem__() takes exactly one argument");
        return nullptr;
    }
    try {
        return dict_getitem(fast_self<PyDict>(self), args[0]).release().ptr();
    }
    PYSHM_FAST_CATCH
}

PyObject* fast_setitem(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    if (nargs != 2 || kwnames) {
        PyErr_SetString(PyExc_TypeError, "__setitem__() takes exactly two arguments");
        return nullptr;
    }
    try {
        dict_setitem(fast_self<PyDict>(self), args[0], args[1]);
        Py_RETURN_NONE;
    }
    PYSHM_FAST_CATCH
}

py::tuple dict_fast_methods(const py::object& self) {
    static PyMethodDef getitem = PYSHM_FAST_METHOD("__getitem__", fast_getitem, "d[key]");
    static PyMethodDef setitem = PYSHM_FAST_METHOD("__setitem__", fast_setitem, "d[key] = value");
    return fast_methods<PyDict>(self, {&getitem, &setitem});
}

void bind_dict(py::module_& m) {
    container_class<PyDict, shm::Dict>(m, "Dict")
        .def("__getitem__", &dict_getitem)
        .def("get",
             [](const PyDict& h, const py::handle& k, const py::object& dflt) {
                 std::optional<shm::Value> v = h.d.find(encode_key(k));
                 return v ? from_value(*v) : dflt;
             }, "key"_a, "default"_a = py::none())
        .def("__setitem__", &dict_setitem)
        .def("_fast", &dict_fast_methods, "(__getitem__, __setitem__) as plain builtins: the fast path")
        .def("__delitem__",
             [](PyDict& h, const py::handle& k) {
                 if (!h.d.erase(encode_key(k))) throw py::key_error(py::repr(k));
             })
        .def("__contains__", [](const PyDict& h, const py::handle& k) { return h.d.contains(encode_key(k)); })
        .def("__len__", [](const PyDict& h) { return h.d.size(); })
        .def("_raw_keys", [](const PyDict& h) {
            py::list out;
            for (const auto& k : h.d.keys()) out.append(decode_key(k));
            return out;
        })
        .def("values", [](const PyDict& h) { return to_pylist(h.d.values()); })
        .def("items",
             [](const PyDict& h) {
                 py::list out;
                 for (const auto& [k, v] : h.d.items()) out.append(py::make_tuple(decode_key(k), from_value(v)));
                 return out;
             })
        .def("copy",
             [](const PyDict& h) {
                 py::dict out;
                 for (const auto& [k, v] : h.d.items()) out[decode_key(k)] = from_value(v);
                 return out;
             })
        .def("pop",
             [](PyDict& h, const py::handle& k, const py::args& dflt) {
                 if (dflt.size() > 1) throw py::type_error("pop expected at most 2 arguments");
                 const std::string key = encode_key(k);
                 if (dflt.size() == 1) {
                     // pop with a default never raises: the marker stands for "missing".
                     const shm::Value missing = shm::Value::bytes(std::string(kPickled) + "missing");
                     shm::Value v = h.d.pop(key, missing);
                     if (v == missing) return py::reinterpret_borrow<py::object>(dflt[0]);
                     return from_value(v);
                 }
                 if (!h.d.contains(key)) throw py::key_error(py::repr(k));
                 return from_value(h.d.pop(key));
             })
        .def("setdefault",
             [](PyDict& h, const py::handle& k, const py::handle& dflt) { return from_value(h.d.setdefault(encode_key(k), to_value(dflt))); },
             "key"_a, "default"_a = py::none())
        .def("_update_items",
             [](PyDict& h, const py::iterable& items) {
                 std::vector<std::pair<std::string, shm::Value>> kv;
                 for (const auto& it : items) {
                     py::tuple t = py::reinterpret_borrow<py::object>(it);
                     kv.emplace_back(encode_key(t[0]), to_value(t[1]));
                 }
                 h.d.update(kv);
             })
        .def("increment",
             [](PyDict& h, const py::handle& k, const py::object& n) -> py::object {
                 if (PyFloat_Check(n.ptr())) return py::float_(h.d.increment(encode_key(k), n.cast<double>()));
                 return py::int_(h.d.increment(encode_key(k), n.cast<std::int64_t>()));
             }, "key"_a, "n"_a = 1)
        .def("clear", [](PyDict& h) { h.d.clear(); })
        .def_readonly("segment", &PyDict::seg)
        .def_readonly("name", &PyDict::name);
}

void bind_list(py::module_& m) {
    container_class<PyList, shm::List>(m, "List")
        .def("__len__", [](const PyList& h) { return h.l.size(); })
        .def("__getitem__",
             [](const PyList& h, std::int64_t i) {
                 try {
                     return from_value(h.l.get(i));
                 } catch (const shm::index_error&) {
                     throw py::index_error("list index out of range");
                 }
             })
        .def("__getitem__",
             [](const PyList& h, const py::slice& s) {
                 py::list all = to_pylist(h.l.snapshot());
                 PyObject* r = PyObject_GetItem(all.ptr(), s.ptr());
                 if (!r) throw py::error_already_set();
                 return py::reinterpret_steal<py::object>(r);
             })
        .def("__setitem__",
             [](PyList& h, std::int64_t i, const py::handle& v) {
                 try {
                     h.l.set(i, to_value(v));
                 } catch (const shm::index_error&) {
                     throw py::index_error("list assignment index out of range");
                 }
             })
        .def("__delitem__",
             [](PyList& h, std::int64_t i) {
                 try {
                     h.l.pop(i);
                 } catch (const shm::index_error&) {
                     throw py::index_error("list assignment index out of range");
                 }
             })
        .def("append", [](PyList& h, const py::handle& v) { h.l.append(to_value(v)); })
        .def("extend",
             [](PyList& h, const py::iterable& it) {
                 std::vector<shm::Value> vs;
                 for (const auto& x : it) vs.push_back(to_value(x));
                 h.l.extend(vs);
             })
        .def("insert", [](PyList& h, std::int64_t i, const py::handle& v) { h.l.insert(i, to_value(v)); })
        .def("pop",
             [](PyList& h, std::int64_t i) {
                 try {
                     return from_value(h.l.pop(i));
                 } catch (const shm::index_error&) {
                     throw py::index_error(h.l.empty() ? "pop from empty list" : "pop index out of range");
                 }
             }, "index"_a = -1)
        .def("remove",
             [](PyList& h, const py::handle& v) {
                 try {
                     h.l.remove(to_value(v));
                 } catch (const shm::error& e) {
                     if (e.code().value() == ENOENT) throw py::value_error("list.remove(x): x not in list");
                     throw;
                 }
             })
        .def("index",
             [](const PyList& h, const py::handle& v) {
                 try {
                     return h.l.index(to_value(v));
                 } catch (const shm::error& e) {
                     if (e.code().value() == ENOENT) throw py::value_error(std::string(py::repr(v)) + " is not in list");
                     throw;
                 }
             })
        .def("count", [](const PyList& h, const py::handle& v) { return h.l.count(to_value(v)); })
        .def("clear", [](PyList& h) { h.l.clear(); })
        .def("copy", [](const PyList& h) { return to_pylist(h.l.snapshot()); })
        .def("_rewrite",
             [](PyList& h, const py::function& fn) {
                 // fn(a copy) computes the new items; they replace the
                 // list's in one step if it still holds what was copied,
                 // else again from a new copy. fn runs with no lock held.
                 for (;;) {
                     std::vector<shm::Value> snap = h.l.snapshot();
                     py::list items(fn(to_pylist(snap)));
                     if (h.l.assign_if(snap, to_values(items, 0))) return;
                 }
             },
             "Replace the items with fn(copy of the items), as one compare-and-set (retried)")
        .def_readonly("segment", &PyList::seg)
        .def_readonly("name", &PyList::name);
}
}  // namespace

void bind_containers(py::module_& m) {
    py::module_ pickle = py::module_::import("pickle");
    // Never freed, as the queue's codec.
    pk = new Pickle{pickle.attr("dumps"), pickle.attr("loads"), pickle.attr("HIGHEST_PROTOCOL").cast<int>()};
    bind_dict(m);
    bind_list(m);
}

}  // namespace pyshm
