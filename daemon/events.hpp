// What an epoll event of shmd's loop is about (the kind in the high 32 bits
// of its tag, an fd or a pid in the low ones), and pidfd helpers.
#pragma once

#include <poll.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdint>

namespace shmd {

inline constexpr std::uint64_t kListen = 1, kConn = 2, kPidfd = 3, kSignal = 4, kSweep = 5, kWatchdog = 6;
inline constexpr std::uint64_t tag(std::uint64_t kind, std::uint64_t v) { return kind << 32 | (v & 0xffffffffu); }

inline int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

// The process a pidfd names has exited (its pidfd is readable).
inline bool pidfd_exited(int pidfd) {
    pollfd p{pidfd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

}  // namespace shmd
