// RecursiveMutex, Semaphore, Condition, Event, Barrier.
//
// The wait layer is platform::futex_wait/futex_wake on a 32-bit word of the
// object. Every sleeper follows the same pattern:
//     waiters.fetch_add(1)  (seq_cst)   then  futex_wait(word, seen)
// and every waker:
//     change word            (seq_cst)   then  if (waiters.load()) futex_wake
// Both pairs are sequentially consistent, so either the waker sees the
// waiter counted, or the kernel's re-check of the word inside futex_wait sees
// the change: no lost wake-up. A waiter killed while asleep never decrements
// its count; that only makes later wakers issue a spare system call.
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

#include "core/liveness.hpp"
#include "platform/platform.hpp"
#include "shm/error.hpp"
#include "shm/sync.hpp"

namespace shm {

namespace detail {
bool Deadline::passed() const {
    if (infinite) return false;
    timespec now;
    ::clock_gettime(clock, &now);
    return now.tv_sec > abs.tv_sec || (now.tv_sec == abs.tv_sec && now.tv_nsec >= abs.tv_nsec);
}
}  // namespace detail

namespace {

constexpr int kSpin = 64;  // brief spin before sleeping (cross-CPU wake-ups cost tens of µs)

bool wait_word(const std::atomic<std::uint32_t>& w, std::uint32_t seen, const detail::Deadline& d) {
    return platform::futex_wait(&w, seen, d.infinite ? nullptr : &d.abs, d.clock);
}

// The earlier of d and now + ms (on CLOCK_MONOTONIC).
detail::Deadline poll_deadline(const detail::Deadline& d, long ms) {
    detail::Deadline p = detail::Deadline::in(std::chrono::milliseconds(ms));
    if (d.infinite) return p;
    if (d.clock == CLOCK_MONOTONIC) {
        bool d_first = d.abs.tv_sec < p.abs.tv_sec || (d.abs.tv_sec == p.abs.tv_sec && d.abs.tv_nsec < p.abs.tv_nsec);
        return d_first ? d : p;
    }
    return p;  // a realtime deadline is re-checked by the caller after each poll
}

[[noreturn]] void rmutex_fail(int rc, const char* op) {
    std::string where = std::string("shm::RecursiveMutex::") + op;
    if (rc == EPERM) throw lock_error(rc, where + ": the calling thread does not hold this mutex");
    if (rc == EAGAIN) throw lock_error(rc, where + ": recursion depth limit reached");
    if (rc == ENOTRECOVERABLE) throw lock_error(rc, where + ": mutex was left unrecoverable by a foreign user");
    throw error(rc, where + ": " + std::strerror(rc));
}

}  // namespace

// ---- RecursiveMutex -------------------------------------------------------

RecursiveMutex::RecursiveMutex() {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    int rc = pthread_mutex_init(&m_, &a);
    pthread_mutexattr_destroy(&a);
    if (rc != 0) throw error(rc, std::string("shm::RecursiveMutex: pthread_mutex_init: ") + std::strerror(rc));
}

RecursiveMutex::~RecursiveMutex() { pthread_mutex_destroy(&m_); }

void RecursiveMutex::after_acquire(int rc, const char* op) {
    if (rc == EOWNERDEAD) {
        // glibc resets the recursion count to 1 for the new owner.
        pthread_mutex_consistent(&m_);
        recovered_.store(1, std::memory_order_relaxed);
        recoveries_.fetch_add(1, std::memory_order_relaxed);
    } else if (rc == 0) {
        if (m_.__data.__count == 1) recovered_.store(0, std::memory_order_relaxed);
    } else {
        rmutex_fail(rc, op);
    }
    owner_pid_.store(platform::current_pid(), std::memory_order_relaxed);
}

void RecursiveMutex::lock() { after_acquire(pthread_mutex_lock(&m_), "lock"); }

bool RecursiveMutex::try_lock() {
    int rc = pthread_mutex_trylock(&m_);
    if (rc == EBUSY) return false;
    after_acquire(rc, "try_lock");
    return true;
}

bool RecursiveMutex::timed_lock(const detail::Deadline& d) {
    if (d.infinite) {
        lock();
        return true;
    }
    int rc = platform::mutex_clocklock(&m_, d.clock, d.abs);
    if (rc == ETIMEDOUT) return false;
    after_acquire(rc, "try_lock_until");
    return true;
}

bool RecursiveMutex::held_by_caller() const noexcept {
    return (m_.__data.__owner & 0x3fffffff) == platform::current_tid();
}

unsigned RecursiveMutex::depth() const noexcept {
    return held_by_caller() ? m_.__data.__count : 0;
}

void RecursiveMutex::unlock() {
    if (!held_by_caller()) rmutex_fail(EPERM, "unlock");
    if (m_.__data.__count == 1) {
        owner_pid_.store(0, std::memory_order_relaxed);
        recovered_.store(0, std::memory_order_relaxed);
    }
    int rc = pthread_mutex_unlock(&m_);
    if (rc != 0) rmutex_fail(rc, "unlock");
}

// ---- Semaphore -------------------------------------------------------------

Semaphore::Semaphore(std::uint32_t initial) : Semaphore(initial, 0) {}

Semaphore::Semaphore(std::uint32_t initial, std::uint32_t bound) : value_(initial), bound_(bound) {
    if (initial > INT_MAX)
        throw error(EOVERFLOW, "shm::Semaphore: initial value " + std::to_string(initial) + " is above 2^31-1");
}

bool Semaphore::try_acquire() {
    std::uint32_t v = value_.load(std::memory_order_relaxed);
    while (v > 0)
        // Acquire: pairs with the release in release(); what the releaser
        // wrote before releasing is visible to the acquirer.
        if (value_.compare_exchange_weak(v, v - 1, std::memory_order_acquire, std::memory_order_relaxed))
            return true;
    return false;
}

void Semaphore::acquire() { acquire_until(detail::Deadline::never()); }

bool Semaphore::acquire_until(const detail::Deadline& d) {
    for (;;) {
        for (int i = 0; i < kSpin; ++i) {
            if (try_acquire()) return true;
            platform::cpu_relax();
        }
        waiters_.fetch_add(1, std::memory_order_seq_cst);
        bool woken = wait_word(value_, 0, d);
        waiters_.fetch_sub(1, std::memory_order_seq_cst);
        if (!woken) return try_acquire();
    }
}

void Semaphore::release(std::uint32_t n) {
    if (n == 0) return;
    std::uint32_t v = value_.load(std::memory_order_relaxed);
    for (;;) {
        std::uint64_t next = std::uint64_t(v) + n;
        if (bound_ && next > bound_)
            throw error(EINVAL, "shm::BoundedSemaphore::release(" + std::to_string(n) + "): the value " +
                                    std::to_string(v) + " would rise above its bound " + std::to_string(bound_) +
                                    " (released more often than acquired)");
        if (next > INT_MAX)
            throw error(EOVERFLOW, "shm::Semaphore::release(" + std::to_string(n) + "): the value " +
                                       std::to_string(v) + " would overflow 2^31-1");
        // seq_cst: ordered before the waiters_ load below (see the file comment).
        if (value_.compare_exchange_weak(v, static_cast<std::uint32_t>(next), std::memory_order_seq_cst,
                                         std::memory_order_relaxed))
            break;
    }
    if (waiters_.load(std::memory_order_seq_cst) > 0) platform::futex_wake(&value_, static_cast<int>(std::min<std::uint32_t>(n, INT_MAX)));
}

// ---- Condition -------------------------------------------------------------

void Condition::wait(std::unique_lock<Mutex>& lock) { wait_until_deadline(lock, detail::Deadline::never()); }

bool Condition::wait_until_deadline(std::unique_lock<Mutex>& lock, const detail::Deadline& d) {
    if (!lock.owns_lock() || !lock.mutex()->held_by_caller())
        throw lock_error(EPERM, "shm::Condition::wait: the caller must hold the mutex (through the unique_lock)");
    std::uint32_t seen = seq_.load(std::memory_order_seq_cst);
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    lock.unlock();
    bool woken = wait_word(seq_, seen, d);
    waiters_.fetch_sub(1, std::memory_order_seq_cst);
    lock.lock();  // a dead holder is reported by lock.mutex()->previous_owner_died()
    return woken;
}

void Condition::notify_one() {
    seq_.fetch_add(1, std::memory_order_seq_cst);
    if (waiters_.load(std::memory_order_seq_cst) > 0) platform::futex_wake(&seq_, 1);
}

void Condition::notify_all() {
    seq_.fetch_add(1, std::memory_order_seq_cst);
    if (waiters_.load(std::memory_order_seq_cst) > 0) platform::futex_wake(&seq_, INT_MAX);
}

// ---- Event -----------------------------------------------------------------
// flag_ = generation << 1 | set. set() bumps the generation, so a waiter woken
// by a set() returns true even if clear() follows at once (Python's Event
// behaves the same way).

void Event::set() {
    std::uint32_t w = flag_.load(std::memory_order_relaxed);
    for (;;) {
        if (w & 1) return;
        if (flag_.compare_exchange_weak(w, ((w >> 1) + 1) << 1 | 1, std::memory_order_seq_cst,
                                        std::memory_order_relaxed))
            break;
    }
    if (waiters_.load(std::memory_order_seq_cst) > 0) platform::futex_wake(&flag_, INT_MAX);
}

void Event::clear() { flag_.fetch_and(~1u, std::memory_order_release); }

void Event::wait() { wait_until_deadline(detail::Deadline::never()); }

bool Event::wait_until_deadline(const detail::Deadline& d) {
    std::uint32_t w = flag_.load(std::memory_order_acquire);
    for (int i = 0; i < kSpin && !(w & 1); ++i) {
        platform::cpu_relax();
        w = flag_.load(std::memory_order_acquire);
    }
    if (w & 1) return true;
    const std::uint32_t gen = w >> 1;
    for (;;) {
        waiters_.fetch_add(1, std::memory_order_seq_cst);
        bool woken = wait_word(flag_, w, d);
        waiters_.fetch_sub(1, std::memory_order_seq_cst);
        w = flag_.load(std::memory_order_acquire);
        if ((w & 1) || (w >> 1) != gen) return true;  // set, or set and cleared meanwhile
        if (!woken) return false;
    }
}

// ---- Barrier ---------------------------------------------------------------

Barrier::Barrier(std::uint32_t parties) : parties_(parties) {
    if (parties == 0 || parties > kMaxParties)
        throw error(EINVAL, "shm::Barrier: parties must be 1.." + std::to_string(kMaxParties) + ", not " +
                                std::to_string(parties));
    for (auto& p : waiting_) {
        p.pid.store(0, std::memory_order_relaxed);
        p.start_time.store(0, std::memory_order_relaxed);
    }
}

// Under m_: mark the current generation broken and wake everyone.
void Barrier::break_locked() {
    std::uint32_t w = word_.load(std::memory_order_relaxed);
    if (w & 1) return;
    broken_generation_ = w >> 1;
    // Release: broken_generation_ before the word; partner: the acquire loads
    // of word_ in arrive().
    word_.store(w | 1, std::memory_order_seq_cst);
    platform::futex_wake(&word_, INT_MAX);
}

void Barrier::lock_state() {
    m_.lock();
    // A party died while updating the barrier: its state cannot be trusted.
    if (m_.previous_owner_died()) break_locked();
}

bool Barrier::broken() const noexcept { return word_.load(std::memory_order_acquire) & 1; }

void Barrier::abort() {
    std::lock_guard<Mutex> g(m_);
    break_locked();
}

void Barrier::reset() {
    lock_state();
    std::uint32_t w = word_.load(std::memory_order_relaxed);
    if (arrived_.load(std::memory_order_relaxed) > 0 || (w & 1)) {
        // Parties waiting now were in a generation that ends broken.
        broken_generation_ = w >> 1;
        arrived_.store(0, std::memory_order_relaxed);
        for (auto& p : waiting_) p.pid.store(0, std::memory_order_relaxed);
        word_.store(((w >> 1) + 1) << 1, std::memory_order_seq_cst);
        platform::futex_wake(&word_, INT_MAX);
    }
    m_.unlock();
}

std::uint32_t Barrier::arrive_and_wait() { return arrive(detail::Deadline::never()); }

std::uint32_t Barrier::arrive(const detail::Deadline& d) {
    static const char* kBroken =
        "shm::Barrier: the barrier is broken (a party died, timed out or called abort()); reset() makes it usable";
    lock_state();
    std::uint32_t w = word_.load(std::memory_order_relaxed);
    if (w & 1) {
        m_.unlock();
        throw broken_barrier(kBroken);
    }
    const std::uint32_t gen = w >> 1;
    const std::uint32_t idx = arrived_.load(std::memory_order_relaxed);
    if (idx + 1 == parties_) {
        arrived_.store(0, std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < idx; ++i) waiting_[i].pid.store(0, std::memory_order_relaxed);
        word_.store((gen + 1) << 1, std::memory_order_seq_cst);  // one store completes the generation
        platform::futex_wake(&word_, INT_MAX);
        m_.unlock();
        return idx;
    }
    const core::ProcessId me = core::liveness::self();
    waiting_[idx].start_time.store(me.start_time, std::memory_order_relaxed);
    waiting_[idx].pid.store(me.pid, std::memory_order_relaxed);
    arrived_.store(idx + 1, std::memory_order_relaxed);
    m_.unlock();

    for (;;) {
        std::uint32_t cur = word_.load(std::memory_order_acquire);
        if ((cur >> 1) != gen) {
            // The generation ended: completed, or reset while we waited.
            std::lock_guard<Mutex> g(m_);
            if (broken_generation_ == gen) throw broken_barrier(kBroken);
            return idx;
        }
        if (cur & 1) throw broken_barrier(kBroken);
        // Sleep at most 50 ms at a time: a party killed while waiting cannot
        // wake anyone, so the waiters check each other's liveness.
        detail::Deadline p = poll_deadline(d, 50);
        if (wait_word(word_, cur, p)) continue;
        lock_state();
        std::uint32_t now = word_.load(std::memory_order_relaxed);
        if (now == cur) {
            if (d.passed()) {
                break_locked();
                m_.unlock();
                throw broken_barrier("shm::Barrier: timed out waiting for the other parties; the barrier is now broken");
            }
            std::uint32_t n = arrived_.load(std::memory_order_relaxed);
            for (std::uint32_t i = 0; i < n && i < kMaxParties; ++i) {
                const core::ProcessId p{waiting_[i].pid.load(std::memory_order_relaxed),
                                        waiting_[i].start_time.load(std::memory_order_relaxed)};
                if (!p.empty() && !core::liveness::alive(p)) {
                    break_locked();
                    break;
                }
            }
        }
        m_.unlock();
    }
}

}  // namespace shm
