// libshm._core: the C++ library for the Python package (libshm/__init__.py
// builds multiprocessing's API on it).
#include "common.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "libshm's C++ objects; use the libshm package, not this module";
    m.attr("version") = shm::version();
    pyshm::bind_errors(m);
    pyshm::bind_segment(m);
    pyshm::bind_sync(m);
    pyshm::bind_queue(m);
    pyshm::bind_containers(m);
    pyshm::bind_shared(m);
}
