// shm::WorkQueue for Python (libshm.Pool's task queue, and
// libshm.WorkQueue): items are bytes (the Python side pickles); blocking
// calls without the GIL and open to Ctrl-C.
#include "common.hpp"

namespace pyshm {

namespace {
using namespace pybind11::literals;

struct PyWorkQueue {
    SegmentPtr seg;
    shm::WorkQueue q;
    std::string name;
};

std::string_view bytes_of(const py::bytes& b) {
    char* p = nullptr;
    Py_ssize_t n = 0;
    if (PyBytes_AsStringAndSize(b.ptr(), &p, &n) != 0) throw py::error_already_set();
    return std::string_view(p, static_cast<std::size_t>(n));
}

// (lease id, item, deliveries)
py::tuple lease_tuple(const shm::Lease& l) {
    return py::make_tuple(l.id(), py::bytes(l.item()), l.deliveries());
}
}  // namespace

void bind_work_queue(py::module_& m) {
    py::class_<PyWorkQueue>(m, "WorkQueue", "shm::WorkQueue: items (bytes) delivered at least once")
        .def_static(
            "open_or_create",
            [](const SegmentPtr& s, const std::string& name, std::uint32_t capacity, std::uint32_t max_deliveries) {
                return without_gil([&] {
                    return PyWorkQueue{s, shm::WorkQueue::open_or_create(*s, name, {capacity, max_deliveries}), name};
                });
            },
            "segment"_a, "name"_a, "capacity"_a, "max_deliveries"_a)
        .def_static(
            "open",
            [](const SegmentPtr& s, const std::string& name) {
                return without_gil([&] { return PyWorkQueue{s, shm::WorkQueue::open(*s, name), name}; });
            },
            "segment"_a, "name"_a)
        .def(
            "put",
            [](PyWorkQueue& h, const py::bytes& item, bool block, const py::object& timeout) {
                const std::string_view b = bytes_of(item);
                if (h.q.try_put(b)) return;
                if (block && wait_sliced(to_timeout(timeout), [&](std::chrono::nanoseconds d) { return h.q.put_for(b, d); }))
                    return;
                throw shm::full("full");
            },
            "item"_a, "block"_a = true, "timeout"_a = py::none(),
            "Put (bytes); queue.Full if full (past the timeout, or at once if not block)")
        .def(
            "get",
            [](PyWorkQueue& h, bool block, const py::object& timeout) -> py::object {
                // Closed and drained: nothing waiting and nothing leased (a
                // lease may yet come back).
                auto drained = [&] { return h.q.closed() && h.q.qsize() == 0 && h.q.leased() == 0; };
                std::optional<shm::Lease> l = h.q.try_get();
                if (!l && block)
                    wait_sliced(to_timeout(timeout), [&](std::chrono::nanoseconds d) {
                        l = h.q.get_for(d);
                        return l.has_value() || drained();
                    });
                if (!l) {
                    if (drained()) throw shm::closed("libshm.WorkQueue '" + h.name + "' is closed and drained");
                    throw shm::empty("empty");
                }
                return lease_tuple(*l);
            },
            "block"_a = true, "timeout"_a = py::none(),
            "(lease id, item, deliveries); queue.Empty if none (past the timeout); ValueError once closed and drained")
        .def("ack", [](PyWorkQueue& h, std::uint64_t id) { return without_gil([&] { return h.q.ack(id); }); }, "lease_id"_a,
             "Acknowledge a delivery: False if it is no longer held")
        .def("recover", [](PyWorkQueue& h) { return without_gil([&] { return h.q.recover(); }); },
             "Deliver again now the items of consumers that died; how many")
        .def(
            "get_dead",
            [](PyWorkQueue& h) -> py::object {
                std::optional<shm::DeadLetter> d = without_gil([&] { return h.q.try_get_dead(); });
                if (!d) return py::none();
                return py::make_tuple(py::bytes(d->item), d->deliveries, d->last_pid);
            },
            "(item, deliveries, pid of the last consumer) of a dead letter, or None")
        .def(
            "join",
            [](PyWorkQueue& h, const py::object& timeout) {
                return wait_sliced(to_timeout(timeout), [&](std::chrono::nanoseconds d) {
                    return h.q.join_until(shm::detail::Deadline::in(d));
                });
            },
            "timeout"_a = py::none(), "Wait until every item is acknowledged or read as a dead letter; False on time-out")
        .def("close", [](PyWorkQueue& h) { without_gil([&] { h.q.close(); }); })
        .def_property_readonly("closed", [](const PyWorkQueue& h) { return h.q.closed(); })
        .def("qsize", [](const PyWorkQueue& h) { return h.q.qsize(); })
        .def_property_readonly("leased", [](const PyWorkQueue& h) { return h.q.leased(); })
        .def_property_readonly("unfinished", [](const PyWorkQueue& h) { return h.q.unfinished(); })
        .def_property_readonly("dead_letters", [](const PyWorkQueue& h) { return h.q.dead_letters(); })
        .def_property_readonly("redeliveries", [](const PyWorkQueue& h) { return h.q.redeliveries(); })
        .def_property_readonly("capacity", [](const PyWorkQueue& h) { return h.q.capacity(); })
        .def_property_readonly("max_deliveries", [](const PyWorkQueue& h) { return h.q.max_deliveries(); })
        .def_property_readonly("name", [](const PyWorkQueue& h) { return h.name; })
        .def_readonly("segment", &PyWorkQueue::seg)
        .def("verify", [](const PyWorkQueue& h) { return h.q.verify(); });
}

}  // namespace pyshm
