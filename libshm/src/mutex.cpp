#include "shm/mutex.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "platform.hpp"
#include "shm/error.hpp"

namespace shm {

namespace {
// The calling thread's tid without a system call per unlock: cached per
// thread and invalidated by fork (the child's thread has a new tid).
std::atomic<unsigned> g_fork_generation{0};
const int g_atfork_registered = ::pthread_atfork(nullptr, nullptr, [] {
    g_fork_generation.fetch_add(1, std::memory_order_relaxed);
});

pid_t current_tid() {
    thread_local pid_t tid = 0;
    thread_local unsigned generation = ~0u;
    unsigned g = g_fork_generation.load(std::memory_order_relaxed);
    if (generation != g) {
        tid = static_cast<pid_t>(::syscall(SYS_gettid));
        generation = g;
    }
    return tid;
}

[[noreturn]] void mutex_fail(int rc, const char* op) {
    if (rc == EDEADLK)
        throw lock_error(rc, std::string("shm::Mutex::") + op +
                                 ": the calling thread already holds this mutex");
    if (rc == EPERM)
        throw lock_error(rc, std::string("shm::Mutex::") + op +
                                 ": the calling thread does not hold this mutex");
    if (rc == ENOTRECOVERABLE)
        throw lock_error(rc, std::string("shm::Mutex::") + op +
                                 ": mutex was left unrecoverable by a foreign user");
    throw error(rc, std::string("shm::Mutex::") + op + ": " + std::strerror(rc));
}
}  // namespace

Mutex::Mutex() {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    // Error-checking: relocking by the holder and unlocking by a non-holder
    // fail with EDEADLK / EPERM instead of hanging or corrupting.
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    int rc = pthread_mutex_init(&m_, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) throw error(rc, std::string("shm::Mutex: pthread_mutex_init: ") + std::strerror(rc));
}

Mutex::~Mutex() { pthread_mutex_destroy(&m_); }

void Mutex::after_acquire(int rc, const char* op) {
    if (rc == EOWNERDEAD) {
        // The owner died holding the lock. Make it consistent now so it is
        // never poisoned, and tell the new holder.
        pthread_mutex_consistent(&m_);
        recovered_.store(1, std::memory_order_relaxed);
        recoveries_.fetch_add(1, std::memory_order_relaxed);
    } else if (rc == 0) {
        recovered_.store(0, std::memory_order_relaxed);
    } else {
        mutex_fail(rc, op);
    }
    owner_pid_.store(::getpid(), std::memory_order_relaxed);
}

void Mutex::lock() { after_acquire(pthread_mutex_lock(&m_), "lock"); }

bool Mutex::try_lock() {
    int rc = pthread_mutex_trylock(&m_);
    if (rc == EBUSY) return false;
    after_acquire(rc, "try_lock");
    return true;
}

bool Mutex::timed_lock(clockid_t clock, const timespec& abs) {
#if defined(__SANITIZE_THREAD__)
    // ThreadSanitizer (GCC 12) intercepts neither pthread_mutex_clocklock nor
    // an EOWNERDEAD from pthread_mutex_timedlock, and would then report every
    // later unlock as wrong. Under TSan only, poll trylock (which it models
    // fully) until the deadline.
    int rc;
    long pause_us = 10;
    for (;;) {
        rc = pthread_mutex_trylock(&m_);
        if (rc != EBUSY) break;
        timespec now;
        ::clock_gettime(clock, &now);
        if (now.tv_sec > abs.tv_sec || (now.tv_sec == abs.tv_sec && now.tv_nsec >= abs.tv_nsec)) {
            rc = ETIMEDOUT;
            break;
        }
        ::usleep(static_cast<useconds_t>(pause_us));
        pause_us = pause_us < 1000 ? pause_us * 2 : 1000;
    }
#else
    int rc = pthread_mutex_clocklock(&m_, clock, &abs);
#endif
    if (rc == ETIMEDOUT) return false;
    after_acquire(rc, "try_lock_until");
    return true;
}

bool Mutex::held_by_caller() const noexcept {
    // glibc keeps the holder's tid in __owner (FUTEX_TID_MASK bits for
    // robust mutexes). Read-only use of a stable ABI field.
    return (m_.__data.__owner & 0x3fffffff) == current_tid();
}

void Mutex::unlock() {
    if (!held_by_caller()) mutex_fail(EPERM, "unlock");
    owner_pid_.store(0, std::memory_order_relaxed);
    recovered_.store(0, std::memory_order_relaxed);
    int rc = pthread_mutex_unlock(&m_);
    if (rc != 0) mutex_fail(rc, "unlock");
}

}  // namespace shm
