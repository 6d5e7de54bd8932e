#include "platform/platform.hpp"

#include <fcntl.h>
#include <sched.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <atomic>
#include <climits>
#include <cstring>

#include "shm/error.hpp"

namespace shm::detail {
// Bumped in every forked child. Declared for the inline mutex path in
// shm/mutex.hpp; constant-initialised, so it is zero before any dynamic
// initialiser runs.
std::atomic<unsigned> fork_generation{0};
}  // namespace shm::detail

namespace shm::platform {

void fail(int err, const std::string& what) {
    std::string msg = what + ": " + std::strerror(err);
    switch (err) {
        case ENOENT: throw not_found(msg);
        case EEXIST: throw already_exists(msg);
        case ENOSPC: throw out_of_space(msg);
        default: throw error(err, msg);
    }
}

namespace {
struct flock one_byte(short type, off_t off) {
    struct flock fl;
    std::memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = off;
    fl.l_len = 1;
    fl.l_pid = 0;  // required to be 0 for F_OFD_* commands
    return fl;
}
}  // namespace

bool ofd_try_lock(int fd, off_t off) {
    struct flock fl = one_byte(F_WRLCK, off);
    if (sys([&] { return ::fcntl(fd, F_OFD_SETLK, &fl); }) == 0) return true;
    if (errno == EAGAIN || errno == EACCES) return false;
    fail(errno, "fcntl(F_OFD_SETLK)");
}

void ofd_lock_wait(int fd, off_t off) {
    struct flock fl = one_byte(F_WRLCK, off);
    if (sys([&] { return ::fcntl(fd, F_OFD_SETLKW, &fl); }) != 0) fail(errno, "fcntl(F_OFD_SETLKW)");
}

void ofd_unlock(int fd, off_t off) {
    struct flock fl = one_byte(F_UNLCK, off);
    // Unlocking cannot fail on a valid descriptor; nothing useful to do if it does.
    (void)sys([&] { return ::fcntl(fd, F_OFD_SETLK, &fl); });
}

bool ofd_is_locked(int fd, off_t off) {
    struct flock fl = one_byte(F_WRLCK, off);
    if (sys([&] { return ::fcntl(fd, F_OFD_GETLK, &fl); }) != 0) fail(errno, "fcntl(F_OFD_GETLK)");
    return fl.l_type != F_UNLCK;
}

std::uint64_t process_start_time(pid_t pid) {
    if (pid <= 0) return 0;
    char path[64];
    std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
    int fd = sys([&] { return ::open(path, O_RDONLY | O_CLOEXEC); });
    if (fd < 0) return 0;
    char buf[1024];
    ssize_t n = sys([&] { return ::read(fd, buf, sizeof buf - 1); });
    ::close(fd);
    if (n <= 0) return 0;
    buf[n] = '\0';
    // The command name (field 2) is in parentheses and may contain spaces
    // or ')': fields resume after the last ')'.
    char* p = std::strrchr(buf, ')');
    if (!p) return 0;
    ++p;
    // Field 3, the state: a zombie (or a dying task) has exited, it only
    // waits to be reaped, and counts as dead.
    while (*p == ' ') ++p;
    if (*p == 'Z' || *p == 'X' || *p == 'x') return 0;
    // After ')' comes field 3 (state); start time is field 22.
    int field = 2;
    while (*p && field < 22) {
        while (*p == ' ') ++p;
        ++field;
        if (field == 22) break;
        while (*p && *p != ' ') ++p;
    }
    if (field != 22) return 0;
    return std::strtoull(p, nullptr, 10);
}

std::uint64_t self_start_time() {
    // Cached per fork generation: a child reads its own. Two threads that
    // both read it first store the same value.
    static std::atomic<unsigned> cached_for{~0u};
    static std::atomic<std::uint64_t> cached{0};
    const unsigned g = fork_generation();
    if (cached_for.load(std::memory_order_acquire) != g) {
        cached.store(process_start_time(::getpid()), std::memory_order_relaxed);
        cached_for.store(g, std::memory_order_release);
    }
    return cached.load(std::memory_order_relaxed);
}

std::int64_t realtime_ns() {
    timespec ts;
    ::clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

namespace {
std::atomic<unsigned>& g_fork_generation = shm::detail::fork_generation;
const int g_atfork_registered = ::pthread_atfork(nullptr, nullptr, [] {
    g_fork_generation.fetch_add(1, std::memory_order_relaxed);
});
}  // namespace

pid_t current_pid() {
    static std::atomic<std::uint64_t> cache{0};  // generation << 32 | pid
    std::uint64_t c = cache.load(std::memory_order_relaxed);
    unsigned g = g_fork_generation.load(std::memory_order_relaxed);
    if (c == 0 || (c >> 32) != g) {
        c = (std::uint64_t(g) << 32) | static_cast<std::uint32_t>(::getpid());
        cache.store(c, std::memory_order_relaxed);
    }
    return static_cast<pid_t>(c & 0xffffffffu);
}

unsigned fork_generation() { return g_fork_generation.load(std::memory_order_relaxed); }

pid_t current_tid() {
    (void)g_atfork_registered;
    thread_local pid_t tid = 0;
    thread_local unsigned generation = ~0u;
    unsigned g = g_fork_generation.load(std::memory_order_relaxed);
    if (generation != g) {
        tid = static_cast<pid_t>(::syscall(SYS_gettid));
        generation = g;
    }
    return tid;
}

bool futex_wait(const void* word, std::uint32_t expected, const timespec* abs, clockid_t clock) {
    // FUTEX_WAIT_BITSET takes an absolute time (CLOCK_MONOTONIC unless
    // FUTEX_CLOCK_REALTIME). Not FUTEX_PRIVATE_FLAG: waiters are in other
    // processes.
    int op = FUTEX_WAIT_BITSET;
    if (abs && clock == CLOCK_REALTIME) op |= FUTEX_CLOCK_REALTIME;
    long r = ::syscall(SYS_futex, word, op, expected, abs, nullptr, FUTEX_BITSET_MATCH_ANY);
    return !(r == -1 && errno == ETIMEDOUT);
}

void futex_wake(const void* word, int n) {
    ::syscall(SYS_futex, word, FUTEX_WAKE, n, nullptr, nullptr, 0);
}

bool membarrier_register() {
    return ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
}

int membarrier_all() {
    return ::syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0 ? 0 : errno;
}

void prefault_write(void* p, std::size_t len) noexcept {
#ifdef MADV_POPULATE_WRITE
    const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const std::uintptr_t a = (reinterpret_cast<std::uintptr_t>(p) + page - 1) & ~(page - 1);
    const std::uintptr_t b = (reinterpret_cast<std::uintptr_t>(p) + len) & ~(page - 1);
    if (b > a) (void)::madvise(reinterpret_cast<void*>(a), b - a, MADV_POPULATE_WRITE);  // a hint: errors ignored
#else
    (void)p;
    (void)len;
#endif
}

FsSpace fs_space(int fd) {
    struct statvfs sv;
    FsSpace s;
    if (sys([&] { return ::fstatvfs(fd, &sv); }) == 0) {
        s.free = static_cast<std::uint64_t>(sv.f_bavail) * sv.f_frsize;
        s.total = static_cast<std::uint64_t>(sv.f_blocks) * sv.f_frsize;
    }
    return s;
}

std::string human_bytes(std::uint64_t n) {
    static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = static_cast<double>(n);
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    if (u == 0)
        std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
    else
        std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
    return buf;
}

bool cpus_oversubscribed() {
    // One descriptor for the process, read with pread (no open per sample);
    // a child of fork() shares it, which pread allows.
    static const int fd = ::open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    static const int cpus = [] {
        cpu_set_t set;
        if (::sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
        const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? static_cast<int>(n) : 1;
    }();
    if (fd < 0) return false;
    // "0.52 0.58 0.59 3/467 12345": the fourth field is runnable/total.
    char buf[128];
    const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return false;
    buf[n] = 0;
    const char* p = buf;
    for (int spaces = 0; *p && spaces < 3; ++p)
        if (*p == ' ') ++spaces;
    int running = 0;
    for (; *p >= '0' && *p <= '9'; ++p) running = running * 10 + (*p - '0');
    return running > cpus;
}

}  // namespace shm::platform
