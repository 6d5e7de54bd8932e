// shm::Queue for Python: any picklable object as an item, bytes and str
// without pickling, items larger than the queue's slots kept in the
// segment's heap, blocking calls without the GIL and open to Ctrl-C.
//
// An item is one tag byte and its payload:
//   'b' bytes    the bytes as they are
//   's' str      its UTF-8
//   'p' object   pickle.dumps(obj, HIGHEST_PROTOCOL)
//   'L' large    8-byte offset and 8-byte length of a heap block in the
//                same segment holding one of the above; the getter frees it
// A raw queue (raw=True) carries bytes alone, with no tag: what a C++
// program puts and gets with shm::Queue.
#include <cstring>
#include <string_view>

#include "common.hpp"

namespace pyshm {

namespace {
using namespace pybind11::literals;

struct Codec {
    py::object dumps, loads;
    py::object protocol;  // pickle.HIGHEST_PROTOCOL
};
Codec* codec = nullptr;

struct PyQueue {
    SegmentPtr seg;
    shm::Queue q;
    std::string name;
    bool raw;
    bool closed = false;  // close() in this process (multiprocessing's meaning)
};

void check_open(const PyQueue& h) {
    if (h.closed) throw py::value_error("Queue '" + h.name + "' is closed");
}

// The buffer an item is encoded into. The puts of one thread reuse one, so
// that a put allocates nothing once it has grown to the items' size
// (kept up to kKeep bytes); a put that starts while another is under way on
// the same thread (in a signal handler, or in an object's __reduce__ while
// pickling) gets a string of its own.
class ItemBuffer {
public:
    ItemBuffer() : reused_(!shared().busy) {
        if (reused_) shared().busy = true;
    }
    ~ItemBuffer() {
        if (!reused_) return;
        Shared& s = shared();
        s.busy = false;
        if (s.buf.capacity() > kKeep) std::string().swap(s.buf);
    }
    ItemBuffer(const ItemBuffer&) = delete;
    ItemBuffer& operator=(const ItemBuffer&) = delete;
    std::string& str() { return reused_ ? shared().buf : own_; }

private:
    static constexpr std::size_t kKeep = 64 << 10;
    struct Shared {
        std::string buf;
        bool busy = false;
    };
    static Shared& shared() {
        thread_local Shared s;
        return s;
    }
    bool reused_;
    std::string own_;
};

// The item for obj: a view of obj's own bytes in a raw queue, else of out,
// which gets the tag and the payload.
std::string_view encode(const PyQueue& h, const py::handle& obj, std::string& out) {
    auto tagged = [&](char tag, const char* p, Py_ssize_t n) {
        out.clear();
        out.reserve(static_cast<std::size_t>(n) + 1);
        out.push_back(tag);
        out.append(p, static_cast<std::size_t>(n));
        return std::string_view(out);
    };
    if (h.raw) {
        if (!PyBytes_Check(obj.ptr())) throw py::type_error("a raw libshm.Queue carries bytes only");
        // The caller holds obj, and bytes do not change: no copy.
        return {PyBytes_AS_STRING(obj.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(obj.ptr()))};
    }
    if (PyBytes_CheckExact(obj.ptr())) return tagged('b', PyBytes_AS_STRING(obj.ptr()), PyBytes_GET_SIZE(obj.ptr()));
    if (PyUnicode_CheckExact(obj.ptr())) {
        Py_ssize_t n = 0;
        if (const char* p = PyUnicode_AsUTF8AndSize(obj.ptr(), &n)) return tagged('s', p, n);
        PyErr_Clear();  // lone surrogates: pickle it
    }
    PyObject* argv[2] = {obj.ptr(), codec->protocol.ptr()};
    py::object b = py::reinterpret_steal<py::object>(PyObject_Vectorcall(codec->dumps.ptr(), argv, 2, nullptr));
    if (!b) throw py::error_already_set();
    if (!PyBytes_Check(b.ptr())) throw py::type_error("pickle.dumps returned no bytes");
    return tagged('p', PyBytes_AS_STRING(b.ptr()), PyBytes_GET_SIZE(b.ptr()));
}

py::object decode(const char* p, std::size_t n, bool raw) {
    if (raw) return py::reinterpret_steal<py::object>(PyBytes_FromStringAndSize(p, static_cast<Py_ssize_t>(n)));
    if (n == 0) throw shm::corrupted("libshm.Queue: an empty item (not put by libshm for Python?)");
    const auto len = static_cast<Py_ssize_t>(n - 1);
    switch (p[0]) {
    case 'b': return py::reinterpret_steal<py::object>(PyBytes_FromStringAndSize(p + 1, len));
    case 's': {
        PyObject* s = PyUnicode_DecodeUTF8(p + 1, len, "surrogatepass");
        if (!s) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(s);
    }
    case 'p': {
        py::object view = py::reinterpret_steal<py::object>(PyMemoryView_FromMemory(const_cast<char*>(p + 1), len, PyBUF_READ));
        if (!view) throw py::error_already_set();
        PyObject* argv[1] = {view.ptr()};
        PyObject* o = PyObject_Vectorcall(codec->loads.ptr(), argv, 1, nullptr);
        if (!o) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(o);
    }
    default:
        throw shm::corrupted("libshm.Queue: an item with the unknown tag " + std::to_string(static_cast<unsigned char>(p[0])) +
                             " (made with raw=True on the other side?)");
    }
}

// An item over the queue's largest goes into a heap block; the queue
// carries where it is. Returns the descriptor, and the block in *block.
std::string to_large(PyQueue& h, std::string_view item, void** block) {
    void* p = without_gil([&] {
        void* b = h.seg->allocate(item.size());
        std::memcpy(b, item.data(), item.size());
        return b;
    });
    *block = p;
    std::string d(17, '\0');
    d[0] = 'L';
    const std::uint64_t off = h.seg->offset_of(p), len = item.size();
    std::memcpy(d.data() + 1, &off, 8);
    std::memcpy(d.data() + 9, &len, 8);
    return d;
}

py::object from_item(PyQueue& h, const std::string& item) {
    if (h.raw || item.empty() || item[0] != 'L') return decode(item.data(), item.size(), h.raw);
    if (item.size() != 17) throw shm::corrupted("libshm.Queue '" + h.name + "': a large item's descriptor has the wrong size");
    std::uint64_t off, len;
    std::memcpy(&off, item.data() + 1, 8);
    std::memcpy(&len, item.data() + 9, 8);
    if (off >= h.seg->size() || len > h.seg->size() - off)
        throw shm::corrupted("libshm.Queue '" + h.name + "': a large item points outside its segment");
    void* p = h.seg->at_offset(off);
    struct Free {
        PyQueue& h;
        void* p;
        ~Free() { h.seg->deallocate(p); }
    } f{h, p};
    const char* c = static_cast<const char*>(p);
    if (len == 0 || c[0] == 'L') throw shm::corrupted("libshm.Queue '" + h.name + "': a large item holds no item");
    return decode(c, len, false);
}

void put(PyQueue& h, py::handle obj, bool block, py::handle timeout) {
    check_open(h);
    ItemBuffer buf;
    std::string_view item = encode(h, obj, buf.str());
    void* block_mem = nullptr;
    std::string large;
    if (item.size() > h.q.max_item_size()) {
        if (h.raw) throw shm::error(EMSGSIZE, "libshm.Queue '" + h.name + "': item over max_item_size");
        large = to_large(h, item, &block_mem);
        item = large;
    }
    bool ok = false;
    try {
        ok = h.q.try_put(item);
        if (!ok && block)
            ok = wait_sliced(to_timeout(timeout), [&](std::chrono::nanoseconds d) { return h.q.put_for(item, d); });
    } catch (...) {
        if (block_mem) h.seg->deallocate(block_mem);
        throw;
    }
    if (!ok) {
        if (block_mem) h.seg->deallocate(block_mem);
        throw shm::full("full");
    }
}

py::object get(PyQueue& h, bool block, py::handle timeout) {
    check_open(h);
    std::optional<std::string> item = h.q.try_get();
    if (!item && block && !h.q.closed())
        wait_sliced(to_timeout(timeout), [&](std::chrono::nanoseconds d) {
            item = h.q.get_for(d);
            return item.has_value() || h.q.closed();
        });
    if (!item) {
        if (h.q.closed() && h.q.empty()) throw shm::closed("libshm.Queue '" + h.name + "' was shut down and is empty");
        throw shm::empty("empty");
    }
    return from_item(h, *item);
}

// The fast methods (common.hpp): put(obj, block=True, timeout=None),
// get(block=True, timeout=None), put_nowait(obj) and get_nowait(), as the
// pybind11 ones below.
PyObject* fast_put(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    try {
        PyObject* a[3];
        if (!parse_args("put", args, nargs, kwnames, {"obj", "block", "timeout"}, 1, a)) return nullptr;
        bool block = true;
        if (a[1] && !to_bool(a[1], "block", &block)) return nullptr;
        put(fast_self<PyQueue>(self), a[0], block, a[2] ? a[2] : Py_None);
        Py_RETURN_NONE;
    }
    PYSHM_FAST_CATCH
}

PyObject* fast_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    try {
        PyObject* a[2] = {nullptr, nullptr};
        if ((nargs || kwnames) && !parse_args("get", args, nargs, kwnames, {"block", "timeout"}, 0, a)) return nullptr;
        bool block = true;
        if (a[0] && !to_bool(a[0], "block", &block)) return nullptr;
        return get(fast_self<PyQueue>(self), block, a[1] ? a[1] : Py_None).release().ptr();
    }
    PYSHM_FAST_CATCH
}

PyObject* fast_put_nowait(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    try {
        PyObject* a[1];
        if (!parse_args("put_nowait", args, nargs, kwnames, {"obj"}, 1, a)) return nullptr;
        put(fast_self<PyQueue>(self), a[0], false, Py_None);
        Py_RETURN_NONE;
    }
    PYSHM_FAST_CATCH
}

PyObject* fast_get_nowait(PyObject* self, PyObject* const*, Py_ssize_t nargs, PyObject* kwnames) {
    if (nargs || kwnames) {
        PyErr_SetString(PyExc_TypeError, "get_nowait() takes no arguments");
        return nullptr;
    }
    try {
        return get(fast_self<PyQueue>(self), false, Py_None).release().ptr();
    }
    PYSHM_FAST_CATCH
}

py::tuple queue_fast_methods(const py::object& self) {
    static PyMethodDef put_def = PYSHM_FAST_METHOD("put", fast_put, "put(obj, block=True, timeout=None)");
    static PyMethodDef get_def = PYSHM_FAST_METHOD("get", fast_get, "get(block=True, timeout=None)");
    static PyMethodDef put_nowait_def = PYSHM_FAST_METHOD("put_nowait", fast_put_nowait, "put(obj, False)");
    static PyMethodDef get_nowait_def = PYSHM_FAST_METHOD("get_nowait", fast_get_nowait, "get(False)");
    return fast_methods<PyQueue>(self, {&put_def, &get_def, &put_nowait_def, &get_nowait_def});
}

PyQueue make(const SegmentPtr& s, const std::string& name, std::uint32_t capacity, std::uint32_t max_items,
             std::uint32_t max_item_size, std::uint64_t max_bytes, bool raw, bool create) {
    shm::QueueOptions o;
    o.capacity = capacity;
    o.max_items = max_items;
    o.max_item_size = max_item_size;
    o.max_bytes = max_bytes;
    return without_gil([&] { return PyQueue{s, create ? shm::Queue::create(*s, name, o) : shm::Queue::open(*s, name), name, raw}; });
}
}  // namespace

void bind_queue(py::module_& m) {
    py::module_ pickle = py::module_::import("pickle");
    // Never freed: a static py::object would be released after the
    // interpreter has gone.
    codec = new Codec{pickle.attr("dumps"), pickle.attr("loads"), pickle.attr("HIGHEST_PROTOCOL")};

    py::class_<PyQueue>(m, "Queue")
        .def_static(
            "create",
            [](const SegmentPtr& s, const std::string& name, std::uint32_t capacity, std::uint32_t max_items,
               std::uint32_t max_item_size, std::uint64_t max_bytes, bool raw) {
                return make(s, name, capacity, max_items, max_item_size, max_bytes, raw, true);
            },
            "segment"_a, "name"_a, "capacity"_a, "max_items"_a, "max_item_size"_a, "max_bytes"_a, "raw"_a)
        .def_static(
            "open",
            [](const SegmentPtr& s, const std::string& name, bool raw) { return make(s, name, 0, 0, 0, 0, raw, false); },
            "segment"_a, "name"_a, "raw"_a)
        .def("put", &put, "obj"_a, "block"_a = true, "timeout"_a = py::none())
        .def("put_nowait", [](PyQueue& h, const py::handle& o) { put(h, o, false, py::none()); })
        .def("get", &get, "block"_a = true, "timeout"_a = py::none())
        .def("get_nowait", [](PyQueue& h) { return get(h, false, py::none()); })
        .def("_fast", &queue_fast_methods, "(put, get, put_nowait, get_nowait) as plain builtins: the fast path")
        .def("qsize", [](const PyQueue& h) { return h.q.qsize(); })
        .def("empty", [](const PyQueue& h) { return h.q.empty(); })
        .def("full", [](const PyQueue& h) { return h.q.full(); })
        .def("close", [](PyQueue& h) { h.closed = true; })
        .def_property_readonly("is_closed", [](const PyQueue& h) { return h.closed; })
        .def("shutdown", [](PyQueue& h) { h.q.close(); })
        .def_property_readonly("is_shutdown", [](const PyQueue& h) { return h.q.closed(); })
        .def("task_done",
             [](PyQueue& h) {
                 try {
                     h.q.task_done();
                 } catch (const shm::error& e) {
                     if (e.code().value() == EINVAL) throw py::value_error("task_done() called too many times");
                     throw;
                 }
             })
        .def(
            "join",
            [](PyQueue& h, const py::object& timeout) {
                return wait_sliced(to_timeout(timeout), [&](std::chrono::nanoseconds d) { return h.q.join_for(d); });
            },
            "timeout"_a = py::none())
        .def_property_readonly("capacity", [](const PyQueue& h) { return h.q.capacity(); })
        .def_property_readonly("max_items", [](const PyQueue& h) { return h.q.max_items(); })
        .def_property_readonly("max_item_size", [](const PyQueue& h) { return h.q.max_item_size(); })
        .def_property_readonly("max_bytes", [](const PyQueue& h) { return h.q.max_bytes(); })
        .def_property_readonly("repairs", [](const PyQueue& h) { return h.q.repairs(); })
        .def_readonly("raw", &PyQueue::raw)
        .def_readonly("segment", &PyQueue::seg)
        .def_readonly("name", &PyQueue::name);
}

}  // namespace pyshm
