// shm::Segment for Python: create, open, unlink, and what it holds.
#include "common.hpp"

namespace pyshm {

void bind_segment(py::module_& m) {
    using namespace pybind11::literals;
    py::class_<shm::Segment, SegmentPtr>(m, "Segment", "A named segment in the shm directory (libshm.<name>).")
        .def_static(
            "create",
            [](const std::string& name, std::size_t size, bool persistent) {
                shm::SegmentOptions o;
                o.persistent = persistent;
                return without_gil([&] { return std::make_shared<shm::Segment>(shm::Segment::create(name, size, o)); });
            },
            "name"_a, "size"_a, "persistent"_a = false)
        .def_static(
            "open",
            [](const std::string& name) {
                return without_gil([&] { return std::make_shared<shm::Segment>(shm::Segment::open(name)); });
            },
            "name"_a)
        .def_static(
            "open_or_create",
            [](const std::string& name, std::size_t size) {
                return without_gil([&] { return std::make_shared<shm::Segment>(shm::Segment::open_or_create(name, size)); });
            },
            "name"_a, "size"_a)
        .def_static("unlink", &shm::Segment::unlink, "name"_a)
        .def_property_readonly("name", &shm::Segment::name)
        .def_property_readonly("path", &shm::Segment::path)
        .def_property_readonly("size", &shm::Segment::size)
        .def_property_readonly("created", &shm::Segment::created)
        .def_property_readonly("attached", &shm::Segment::attached)
        .def_property_readonly("free_memory", &shm::Segment::free_memory)
        .def_property_readonly("used_memory", &shm::Segment::used_memory)
        .def_property("persistent", &shm::Segment::persistent, &shm::Segment::set_persistent)
        .def("detach", &shm::Segment::detach)
        .def("objects",
             [](const shm::Segment& s) {
                 py::list out;
                 for (const auto& o : s.objects())
                     out.append(py::make_tuple(o.name, std::string(shm::to_string(o.kind)), o.size));
                 return out;
             })
        .def("verify", [](const shm::Segment& s) {
            const auto r = s.verify();
            py::list problems;
            for (const auto& p : r.problems) problems.append(p);
            return problems;
        });
}

}  // namespace pyshm
