// shm::SharedArray and SharedScalar for Python's Value, Array, RawValue and
// RawArray: a block whose bytes Python sees through the buffer protocol
// (ctypes builds its objects on them with from_buffer), and its lock.
#include "common.hpp"

namespace pyshm {

namespace {
using namespace pybind11::literals;

struct Block {
    SegmentPtr seg;
    shm::SharedArrayInfo info;
};

shm::ElementType element_type(const std::string& typecode) {
    const auto t = typecode.size() == 1 ? shm::from_typecode(typecode[0]) : std::nullopt;
    if (!t) throw py::value_error("libshm: no shared element type for typecode '" + typecode + "'");
    return *t;
}
}  // namespace

void bind_shared(py::module_& m) {
    py::class_<Block>(m, "SharedBlock", py::buffer_protocol(),
                      "A shm::SharedArray or SharedScalar; its bytes through the buffer protocol.")
        .def_static(
            "create",
            [](const SegmentPtr& s, const std::string& name, const std::string& typecode, std::size_t count,
               bool with_lock, bool scalar) {
                const shm::ElementType t = element_type(typecode);
                return without_gil([&] {
                    return Block{s, scalar ? shm::create_shared_scalar(*s, name, t, with_lock)
                                           : shm::create_shared_array(*s, name, t, count, with_lock)};
                });
            },
            "segment"_a, "name"_a, "typecode"_a, "count"_a, "lock"_a, "scalar"_a)
        .def_static(
            "open",
            [](const SegmentPtr& s, const std::string& name) {
                return without_gil([&] { return Block{s, shm::open_shared_array(*s, name)}; });
            },
            "segment"_a, "name"_a)
        .def_buffer([](Block& b) {
            return py::buffer_info(b.info.data, 1, py::format_descriptor<std::uint8_t>::format(), 1,
                                   {static_cast<py::ssize_t>(b.info.bytes())}, {1}, false);
        })
        .def_property_readonly("typecode", [](const Block& b) { return std::string(1, b.info.typecode()); })
        .def_property_readonly("count", [](const Block& b) { return b.info.count; })
        .def_property_readonly("scalar", [](const Block& b) { return b.info.scalar; })
        .def_property_readonly("has_lock", [](const Block& b) { return b.info.lock != nullptr; })
        .def_property_readonly("name", [](const Block& b) { return b.info.name; })
        .def_readonly("segment", &Block::seg)
        .def("lock",
             [](const Block& b) {
                 if (!b.info.lock) throw py::attribute_error("libshm: this shared value was made with lock=False");
                 return Handle<shm::RecursiveMutex>{b.seg, b.info.lock, b.info.name, b.info.attachment};
             },
             "The array's own RecursiveMutex, as an RLock handle.");
}

}  // namespace pyshm
