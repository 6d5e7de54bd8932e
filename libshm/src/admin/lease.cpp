// Leases on foreign files (lease.hpp).
#include "admin/lease.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstring>
#include <mutex>

#include "platform/platform.hpp"

namespace shm::admin {

using platform::sys;

namespace {

void ignore_default_sigio() {
    // The kernel signals a lease holder with SIGIO when someone opens the
    // file. We drop the signal's target at once (F_SETOWN 0), but a process
    // whose SIGIO still has the default action (terminate) would die if an
    // open landed in between; ignore it in that case only.
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction old;
        if (::sigaction(SIGIO, nullptr, &old) == 0 && !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_DFL) {
            struct sigaction ign;
            std::memset(&ign, 0, sizeof ign);
            ign.sa_handler = SIG_IGN;
            ::sigaction(SIGIO, &ign, nullptr);
        }
    });
}

}  // namespace

bool Lease::intact() const { return result == unused && ::fcntl(fd.get(), F_GETLEASE) == F_WRLCK; }

void take_lease(Lease& l, int dirfd, const std::string& name, std::uint64_t dev, std::uint64_t ino) {
    ignore_default_sigio();
    // O_NONBLOCK: if another process holds a lease on it (e.g. another
    // shmctl probing it right now), fail with EWOULDBLOCK instead of waiting.
    l.fd.reset(sys([&] {
        return ::openat(dirfd, name.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    }));
    if (!l.fd.valid()) {
        l.err = errno;
        l.result = l.err == EWOULDBLOCK ? Lease::in_use : Lease::unavailable;
        return;
    }
    struct stat st;
    if (::fstat(l.fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_dev != dev || st.st_ino != ino) {
        l.err = ESTALE;
        l.result = Lease::unavailable;
        return;
    }
    if (sys([&] { return ::fcntl(l.fd.get(), F_SETLEASE, F_WRLCK); }) != 0) {
        l.err = errno;
        l.result = l.err == EAGAIN || l.err == EBUSY ? Lease::in_use : Lease::unavailable;
        return;
    }
    ::fcntl(l.fd.get(), F_SETOWN, 0);  // no SIGIO for us when someone opens it
    l.result = Lease::unused;
}

}  // namespace shm::admin
