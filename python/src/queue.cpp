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

#include "common.hpp"

namespace pyshm {

namespace {
using namespace pybind11::literals;

struct Codec {
    py::object dumps, loads;
    int protocol;
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

std::string encode(const PyQueue& h, const py::handle& obj) {
    std::string out;
    auto tagged = [&](char tag, const char* p, Py_ssize_t n) {
        out.resize(static_cast<std::size_t>(n) + 1);
        out[0] = tag;
        std::memcpy(out.data() + 1, p, static_cast<std::size_t>(n));
    };
    if (h.raw) {
        if (!PyBytes_Check(obj.ptr())) throw py::type_error("a raw libshm.Queue carries bytes only");
        out.assign(PyBytes_AS_STRING(obj.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(obj.ptr())));
        return out;
    }
    if (PyBytes_CheckExact(obj.ptr())) {
        tagged('b', PyBytes_AS_STRING(obj.ptr()), PyBytes_GET_SIZE(obj.ptr()));
        return out;
    }
    if (PyUnicode_CheckExact(obj.ptr())) {
        Py_ssize_t n = 0;
        if (const char* p = PyUnicode_AsUTF8AndSize(obj.ptr(), &n)) {
            tagged('s', p, n);
            return out;
        }
        PyErr_Clear();  // lone surrogates: pickle it
    }
    py::object b = codec->dumps(obj, codec->protocol);
    tagged('p', PyBytes_AS_STRING(b.ptr()), PyBytes_GET_SIZE(b.ptr()));
    return out;
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
    case 'p': return codec->loads(py::memoryview::from_memory(p + 1, len));
    default:
        throw shm::corrupted("libshm.Queue: an item with the unknown tag " + std::to_string(static_cast<unsigned char>(p[0])) +
                             " (made with raw=True on the other side?)");
    }
}

// An item over the queue's largest goes into a heap block; the queue
// carries where it is. Returns the descriptor, and the block in *block.
std::string to_large(PyQueue& h, const std::string& item, void** block) {
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

void put(PyQueue& h, const py::handle& obj, bool block, const py::object& timeout) {
    check_open(h);
    std::string item = encode(h, obj);
    void* block_mem = nullptr;
    if (item.size() > h.q.max_item_size()) {
        if (h.raw) throw shm::error(EMSGSIZE, "libshm.Queue '" + h.name + "': item over max_item_size");
        item = to_large(h, item, &block_mem);
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

py::object get(PyQueue& h, bool block, const py::object& timeout) {
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
    codec = new Codec{pickle.attr("dumps"), pickle.attr("loads"), pickle.attr("HIGHEST_PROTOCOL").cast<int>()};

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
