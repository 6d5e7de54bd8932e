#include "shm/mutex.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/wait.hpp"
#include "platform/platform.hpp"
#include "shm/error.hpp"

namespace shm {

namespace {
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
    owner_pid_.store(platform::current_pid(), std::memory_order_relaxed);
}

void Mutex::lock() { after_acquire(pthread_mutex_lock(&m_), "lock"); }

bool Mutex::try_lock() {
    int rc = pthread_mutex_trylock(&m_);
    if (rc == EBUSY) return false;
    after_acquire(rc, "try_lock");
    return true;
}

bool Mutex::timed_lock(const detail::Deadline& d) {
    if (d.infinite) {
        lock();
        return true;
    }
    int rc = core::lock_until(&m_, d);
    if (rc == ETIMEDOUT) return false;
    after_acquire(rc, "try_lock_until");
    return true;
}

bool Mutex::held_by_caller() const noexcept {
    // glibc keeps the holder's tid in __owner (FUTEX_TID_MASK bits for
    // robust mutexes). Read-only use of a stable ABI field.
    return (m_.__data.__owner & 0x3fffffff) == platform::current_tid();
}

void Mutex::unlock() {
    if (!held_by_caller()) mutex_fail(EPERM, "unlock");
    owner_pid_.store(0, std::memory_order_relaxed);
    recovered_.store(0, std::memory_order_relaxed);
    int rc = pthread_mutex_unlock(&m_);
    if (rc != 0) mutex_fail(rc, "unlock");
}

}  // namespace shm
