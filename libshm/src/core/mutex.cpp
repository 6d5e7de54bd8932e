// The robust mutex: shm::Mutex and shm::RecursiveMutex (shm/mutex.hpp,
// detail::RobustMutex).
#include "shm/mutex.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/wait.hpp"
#include "platform/platform.hpp"
#include "shm/error.hpp"

namespace shm::detail {

void refresh_thread_ids(ThreadIds& ids) noexcept {
    ids.generation = fork_generation.load(std::memory_order_relaxed);
    ids.tid = platform::current_tid();
    ids.pid = platform::current_pid();
}

namespace {
template <bool Recursive>
constexpr const char* kName = Recursive ? "shm::RecursiveMutex" : "shm::Mutex";

// EDEADLK comes only from an error-checking mutex, EAGAIN only from a
// recursive one.
template <bool Recursive>
[[noreturn]] void mutex_fail(int rc, const char* op) {
    const std::string where = std::string(kName<Recursive>) + "::" + op;
    if (rc == EDEADLK) throw lock_error(rc, where + ": the calling thread already holds this mutex");
    if (rc == EPERM) throw lock_error(rc, where + ": the calling thread does not hold this mutex");
    if (rc == EAGAIN) throw lock_error(rc, where + ": recursion depth limit reached");
    if (rc == ENOTRECOVERABLE) throw lock_error(rc, where + ": mutex was left unrecoverable by a foreign user");
    throw error(rc, where + ": " + std::strerror(rc));
}
}  // namespace

template <bool Recursive>
RobustMutex<Recursive>::RobustMutex() {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    // Error-checking: relocking by the holder and unlocking by a non-holder
    // fail with EDEADLK / EPERM instead of hanging or corrupting. Recursive:
    // the holder may lock again; unlocking by a non-holder fails with EPERM.
    pthread_mutexattr_settype(&a, Recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
    int rc = pthread_mutex_init(&m_, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) throw error(rc, std::string(kName<Recursive>) + ": pthread_mutex_init: " + std::strerror(rc));
}

template <bool Recursive>
RobustMutex<Recursive>::~RobustMutex() {
    pthread_mutex_destroy(&m_);
}

template <bool Recursive>
void RobustMutex<Recursive>::after_acquire(int rc, const char* op) {
    if (rc == EOWNERDEAD) {
        // The owner died holding the lock. Make it consistent now so it is
        // never poisoned, and tell the new holder (glibc resets a recursive
        // mutex's count to 1 for it).
        pthread_mutex_consistent(&m_);
        recovered_.store(1, std::memory_order_relaxed);
        recoveries_.fetch_add(1, std::memory_order_relaxed);
        owner_pid_.store(thread_ids().pid, std::memory_order_relaxed);
    } else if (rc == 0) {
        acquired();
    } else {
        mutex_fail<Recursive>(rc, op);
    }
}

// A waiter sleeps in the kernel for at most this long, then tries again.
// The kernel wakes one waiter at an unlock (or at the death of the holder),
// and that waiter carries the knowledge that others sleep (glibc's
// FUTEX_WAITERS bit): if it is SIGKILLed after the wake-up and before it
// takes the lock, or a locker that does not know of them takes the free lock
// first, the others are never woken, and sleep on beside a free mutex. So
// no sleep is endless: a lost wake-up costs at most this.
constexpr auto kLockPoll = std::chrono::milliseconds(50);

template <bool Recursive>
void RobustMutex<Recursive>::lock_slow(int rc) {
    while (rc == EBUSY || rc == ETIMEDOUT) rc = core::lock_until(&m_, Deadline::in(kLockPoll));
    after_acquire(rc, "lock");
}

template <bool Recursive>
bool RobustMutex<Recursive>::try_lock() {
    int rc = pthread_mutex_trylock(&m_);
    if (rc == EBUSY) return false;
    after_acquire(rc, "try_lock");
    return true;
}

template <bool Recursive>
bool RobustMutex<Recursive>::timed_lock(const Deadline& d) {
    if (d.infinite) {
        lock();
        return true;
    }
    // In slices of kLockPoll (see there), the last one ending at d.
    int rc;
    do {
        rc = core::lock_until(&m_, core::earlier(d, kLockPoll));
    } while (rc == ETIMEDOUT && !d.passed());
    if (rc == ETIMEDOUT) return false;
    after_acquire(rc, "try_lock_until");
    return true;
}

template <bool Recursive>
void RobustMutex<Recursive>::unlock_refused() const {
    mutex_fail<Recursive>(EPERM, "unlock");
}

template <bool Recursive>
void RobustMutex<Recursive>::unlock_failed(int rc) const {
    mutex_fail<Recursive>(rc, "unlock");
}

template class RobustMutex<false>;
template class RobustMutex<true>;

}  // namespace shm::detail
