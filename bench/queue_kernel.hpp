// Helpers for the queue benchmarks that go through the kernel (pipe, Unix
// socket, POSIX message queue): whole-item reads and writes, and the system
// limits they report when the kernel refuses.
#pragma once

#include <errno.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>

#include "queue_harness.hpp"

namespace qbench {

inline std::string sys_error(const std::string& what) { return what + ": " + std::strerror(errno); }

// Write all n bytes (a blocking descriptor writes them all at once unless
// interrupted; loop for safety).
inline void write_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            throw Failure(sys_error("write"));
        }
        p += w;
        n -= static_cast<std::size_t>(w);
    }
}

// Read exactly n bytes.
inline void read_all(int fd, char* p, std::size_t n) {
    while (n > 0) {
        ssize_t r = ::read(fd, p, n);
        if (r < 0) {
            if (errno == EINTR) continue;
            throw Failure(sys_error("read"));
        }
        if (r == 0) throw Failure("read: end of file in the middle of the run");
        p += r;
        n -= static_cast<std::size_t>(r);
    }
}

// A number from /proc/sys, or -1.
inline long proc_sys(const std::string& path) {
    std::ifstream f(path);
    long v = -1;
    if (!(f >> v)) return -1;
    return v;
}

inline std::string kib(std::size_t bytes) {
    return bytes >= (std::size_t(1) << 20) && bytes % (std::size_t(1) << 20) == 0
               ? std::to_string(bytes >> 20) + " MiB"
               : std::to_string(bytes >> 10) + " KiB";
}

}  // namespace qbench
