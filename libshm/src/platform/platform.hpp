// The platform layer: every system call libshm makes goes through here.
//
// sys() retries EINTR and leaves errno intact; fail() turns an errno into the
// matching shm::error with a message naming the object. Nothing above this
// file calls the OS directly.
#pragma once

#include <pthread.h>
#include <sys/types.h>
#include <time.h>

#include <cerrno>
#include <cstdint>
#include <string>

namespace shm::platform {

// Call f() until it does not fail with EINTR. Returns f()'s result; on
// failure errno is the cause.
template <class F>
auto sys(F f) -> decltype(f()) {
    for (;;) {
        auto r = f();
        if (r == -1 && errno == EINTR) continue;
        return r;
    }
}

// Throw the shm::error that fits `err` (ENOENT → not_found, EEXIST →
// already_exists, ENOSPC → out_of_space, otherwise shm::error), with
// "<what>: <strerror>" as its message.
[[noreturn]] void fail(int err, const std::string& what);

// --- open-file-description byte-range locks (F_OFD_*) -------------------
// Each lock covers one byte at `off`. The kernel drops it when the last
// descriptor of the open file description is closed, i.e. when its holder
// dies. Locks of the same open file description never conflict with each
// other, so a process tests other processes' slots through its own fd.
bool ofd_try_lock(int fd, off_t off);  // false if held by another description
void ofd_lock_wait(int fd, off_t off); // blocks until acquired
void ofd_unlock(int fd, off_t off);
bool ofd_is_locked(int fd, off_t off); // held by another open file description

// --- processes ------------------------------------------------------------
// Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22),
// 0 if there is no such process or it has exited (a zombie not yet reaped).
// Whether a process is alive is core/liveness.hpp's to say.
std::uint64_t process_start_time(pid_t pid);
// This process's start time, read once per process (re-read after fork).
std::uint64_t self_start_time();

std::int64_t realtime_ns();

// The calling thread's tid, cached per thread (refreshed after fork).
pid_t current_tid();
// getpid() without a system call: cached, refreshed after fork.
pid_t current_pid();
// Bumped in every fork child: a cheap "am I still the same process" check.
unsigned fork_generation();

// --- futexes (process-shared) ---------------------------------------------
// Used through core/wait.hpp, which says when to sleep and for how long.
// Sleep while *word == expected, until woken or the deadline passes.
// Returns false only on time-out; true when woken, interrupted, or the value
// had already changed (callers re-check their condition in all cases).
bool futex_wait(const void* word, std::uint32_t expected, const timespec* abs, clockid_t clock);
void futex_wake(const void* word, int n);

// --- asymmetric fences across processes (membarrier(2)) ----------------------
// A process registered with membarrier_register() may order a store before
// a later load with a compiler barrier alone, as long as whoever depends on
// that order calls membarrier_all() between its own store and load: the
// kernel then runs a full fence on every CPU that runs a registered
// process. Registration is per process; register again after fork.
// membarrier_register() returns false where the kernel (or a seccomp
// filter) refuses it; membarrier_all() returns 0, or the errno of failure.
bool membarrier_register();
int membarrier_all();

// --- page tables -------------------------------------------------------------
// Map the whole pages inside [p, p + len) of a shared mapping writable now,
// in one call (MADV_POPULATE_WRITE), instead of one page fault per page at
// first touch. Only a hint: where the kernel refuses it, nothing happens and
// the pages fault in as usual.
void prefault_write(void* p, std::size_t len) noexcept;

// Whether more tasks are runnable on this host now than there are CPUs this
// process may run on (/proc/loadavg's count of runnable tasks, which
// includes the caller, against sched_getaffinity()). False where it cannot
// tell. A few µs: callers sample it, not call it per step.
bool cpus_oversubscribed();
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Free and total bytes of the filesystem holding `fd`.
struct FsSpace {
    std::uint64_t free = 0;
    std::uint64_t total = 0;
};
FsSpace fs_space(int fd);

std::string human_bytes(std::uint64_t n);

}  // namespace shm::platform
