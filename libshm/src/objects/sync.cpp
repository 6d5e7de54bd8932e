// RecursiveMutex, Semaphore, Condition, Event, Barrier.
//
// Every wait goes through core::wait() (core/wait.hpp) on a 32-bit futex
// word of the object. Every sleeper follows the same pattern:
//     waiters.fetch_add(1)  (seq_cst)   then  sleep on (word, seen)
// and every waker:
//     change word            (seq_cst)   then  if (waiters.load()) wake
// Both pairs are sequentially consistent, so either the waker sees the
// waiter counted, or the kernel's re-check of the word inside the futex
// sleep sees the change: no lost wake-up. A waiter killed while asleep never
// decrements its count; that only makes later wakers issue a spare system
// call.
#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

#include "core/liveness.hpp"
#include "core/wait.hpp"
#include "platform/platform.hpp"
#include "shm/error.hpp"
#include "shm/sync.hpp"

namespace shm {

// ---- RecursiveMutex -------------------------------------------------------
// Locking and unlocking are the robust mutex's (core/mutex.cpp).

unsigned RecursiveMutex::depth() const noexcept {
    return held_by_caller() ? m_.__data.__count : 0;
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
    // Takes a unit when it can; sleeps while the value is 0.
    struct W : core::Waiter {
        Semaphore& s;
        explicit W(Semaphore& sem) : s(sem) {}
        bool ready() { return s.try_acquire(); }
        core::Sleep arm() {
            s.waiters_.fetch_add(1, std::memory_order_seq_cst);
            return core::Sleep{&s.value_, 0};
        }
        void disarm() { s.waiters_.fetch_sub(1, std::memory_order_seq_cst); }
    } w(*this);
    return core::wait(w, d, core::kSemaphoreWait) == core::Waited::ready || try_acquire();
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
    if (waiters_.load(std::memory_order_seq_cst) > 0) core::wake(value_, static_cast<int>(std::min<std::uint32_t>(n, INT_MAX)));
}

// ---- Condition -------------------------------------------------------------
// A waiter reads seq_, counts itself and lets go of the mutex, then sleeps
// on seq_ until a notify changes it and wakes it. It stays counted, with the
// mutex let go, until the wait ends: through every poll of a stoppable wait
// too. It returns whether a wake ended one of its sleeps, even if the
// deadline had passed by the time it had the mutex back: else a notify that
// woke it at the last moment would be lost, since no other waiter gets it.

namespace {
// How a wait lets go of the mutex and takes it back: a Mutex once; a
// RecursiveMutex at every level its holder holds.
struct HoldMutex {
    std::unique_lock<Mutex>& lock;
    void release() { lock.unlock(); }
    void retake() { lock.lock(); }  // a dead holder: lock.mutex()->previous_owner_died()
};
struct HoldRecursive {
    RecursiveMutex& m;
    unsigned depth = 0;
    void release() {
        depth = m.depth();
        for (unsigned i = 0; i < depth; ++i) m.unlock();
    }
    void retake() {
        // A dead holder is reported by previous_owner_died() after the first lock.
        for (unsigned i = 0; i < depth; ++i) m.lock();
    }
};

template <class L>
void require_held(std::unique_lock<L>& lock) {
    if (!lock.owns_lock() || !lock.mutex()->held_by_caller())
        throw lock_error(EPERM, "shm::Condition::wait: the caller must hold the mutex (through the unique_lock)");
}

detail::Deadline deadline_of(std::optional<std::chrono::nanoseconds> timeout) {
    return timeout ? detail::Deadline::in(*timeout) : detail::Deadline::never();
}
}  // namespace

template <class Hold>
bool Condition::wait_released(Hold& hold, const detail::Deadline& d, const std::function<bool()>* stop) {
    struct W : core::Waiter {
        std::atomic<std::uint32_t>& seq;
        const std::atomic<std::uint32_t>& waiters;
        const std::function<bool()>* stop;
        std::uint32_t seen = 0;
        bool woken = false, stopped = false;
        W(std::atomic<std::uint32_t>& s, const std::atomic<std::uint32_t>& w, const std::function<bool()>* st)
            : seq(s), waiters(w), stop(st) {}
        bool ready() const { return woken || stopped; }
        // After a poll. A notify made while this waiter slept went to
        // another waiter (a wake would have ended its sleep), so it sleeps
        // on from the value seq_ has now, read at once, before stop() runs:
        // a notify made while stop() runs ends the next sleep at once (if it
        // also woke another waiter, one of the two wakes spuriously). One
        // made in the instant between the end of the sleep and this read
        // woke another waiter if one was asleep, else nobody: so with no
        // other waiter it is this one's, taken as its wake-up rather than
        // lost (should one it woke have left already, one more wakes: a
        // spurious wake-up, never a lost one).
        bool recheck() {
            const std::uint32_t now = seq.load(std::memory_order_seq_cst);
            if (now != seen && waiters.load(std::memory_order_seq_cst) == 1) {
                woken = true;
                return true;
            }
            seen = now;
            stopped = (*stop)();
            return stopped;
        }
        core::Sleep arm() {
            core::Sleep s{&seq, seen};
            s.woken = &woken;
            return s;
        }
    } w(seq_, waiters_, stop);
    w.seen = seq_.load(std::memory_order_seq_cst);
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    hold.release();
    try {
        core::wait(w, d, stop ? core::kConditionPoll : core::kConditionWait);
    } catch (...) {  // from stop(); a forced unwind too
        waiters_.fetch_sub(1, std::memory_order_seq_cst);
        hold.retake();
        throw;
    }
    waiters_.fetch_sub(1, std::memory_order_seq_cst);
    hold.retake();
    return w.woken;
}

void Condition::wait(std::unique_lock<Mutex>& lock) { wait_until_deadline(lock, detail::Deadline::never()); }

bool Condition::wait_until_deadline(std::unique_lock<Mutex>& lock, const detail::Deadline& d) {
    require_held(lock);
    HoldMutex h{lock};
    return wait_released(h, d, nullptr);
}

void Condition::wait(std::unique_lock<RecursiveMutex>& lock) {
    wait_until_deadline(lock, detail::Deadline::never());
}

bool Condition::wait_until_deadline(std::unique_lock<RecursiveMutex>& lock, const detail::Deadline& d) {
    require_held(lock);
    HoldRecursive h{*lock.mutex()};
    return wait_released(h, d, nullptr);
}

bool Condition::wait_stoppable(std::unique_lock<Mutex>& lock, std::optional<std::chrono::nanoseconds> timeout,
                               const std::function<bool()>& stop) {
    require_held(lock);
    HoldMutex h{lock};
    return wait_released(h, deadline_of(timeout), stop ? &stop : nullptr);
}

bool Condition::wait_stoppable(std::unique_lock<RecursiveMutex>& lock,
                               std::optional<std::chrono::nanoseconds> timeout, const std::function<bool()>& stop) {
    require_held(lock);
    HoldRecursive h{*lock.mutex()};
    return wait_released(h, deadline_of(timeout), stop ? &stop : nullptr);
}

void Condition::notify_one() {
    seq_.fetch_add(1, std::memory_order_seq_cst);
    if (waiters_.load(std::memory_order_seq_cst) > 0) core::wake(seq_, 1);
}

void Condition::notify_all() {
    seq_.fetch_add(1, std::memory_order_seq_cst);
    if (waiters_.load(std::memory_order_seq_cst) > 0) core::wake(seq_, INT_MAX);
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
    if (waiters_.load(std::memory_order_seq_cst) > 0) core::wake(flag_, INT_MAX);
}

void Event::clear() { flag_.fetch_and(~1u, std::memory_order_release); }

void Event::wait() { wait_until_deadline(detail::Deadline::never()); }

bool Event::wait_until_deadline(const detail::Deadline& d) {
    // Done once set, or once set and cleared again since the first look
    // (its generation moved).
    struct W : core::Waiter {
        Event& e;
        std::uint32_t seen = 0, gen = 0;
        bool first = true;
        explicit W(Event& ev) : e(ev) {}
        bool ready() {
            seen = e.flag_.load(std::memory_order_acquire);
            if (first) {
                first = false;
                gen = seen >> 1;
            }
            return (seen & 1) || (seen >> 1) != gen;
        }
        core::Sleep arm() {
            e.waiters_.fetch_add(1, std::memory_order_seq_cst);
            return core::Sleep{&e.flag_, seen};
        }
        void disarm() { e.waiters_.fetch_sub(1, std::memory_order_seq_cst); }
    } w(*this);
    return core::wait(w, d, core::kEventWait) == core::Waited::ready || w.ready();
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
    core::wake(word_, INT_MAX);
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
        core::wake(word_, INT_MAX);
    }
    m_.unlock();
}

std::uint32_t Barrier::arrive_and_wait() { return arrive(detail::Deadline::never()); }

std::uint32_t Barrier::arrive_and_wait(const std::function<bool()>& stop) {
    return arrive(detail::Deadline::never(), stop ? &stop : nullptr);
}

namespace {
const char* const kBarrierBroken =
    "shm::Barrier: the barrier is broken (a party died, timed out or called abort()); reset() makes it usable";
}  // namespace

// Under m_: whether a party waiting in the current generation has died.
bool Barrier::party_died_locked() const {
    const std::uint32_t n = arrived_.load(std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < n && i < kMaxParties; ++i) {
        const core::ProcessId p{waiting_[i].pid.load(std::memory_order_relaxed),
                                waiting_[i].start_time.load(std::memory_order_relaxed)};
        if (!p.empty() && !core::liveness::alive(p)) return true;
    }
    return false;
}

std::uint32_t Barrier::arrive(const detail::Deadline& d, const std::function<bool()>* stop) {
    lock_state();
    const std::uint32_t w = word_.load(std::memory_order_relaxed);
    if (w & 1) {
        m_.unlock();
        throw broken_barrier(kBarrierBroken);
    }
    const std::uint32_t gen = w >> 1;
    const std::uint32_t idx = arrived_.load(std::memory_order_relaxed);
    if (idx + 1 == parties_) {
        arrived_.store(0, std::memory_order_relaxed);
        for (std::uint32_t i = 0; i < idx; ++i) waiting_[i].pid.store(0, std::memory_order_relaxed);
        word_.store((gen + 1) << 1, std::memory_order_seq_cst);  // one store completes the generation
        core::wake(word_, INT_MAX);
        m_.unlock();
        return idx;
    }
    const core::ProcessId me = core::liveness::self();
    waiting_[idx].start_time.store(me.start_time, std::memory_order_relaxed);
    waiting_[idx].pid.store(me.pid, std::memory_order_relaxed);
    arrived_.store(idx + 1, std::memory_order_relaxed);
    m_.unlock();
    return await_generation(gen, idx, d, stop);
}

std::uint32_t Barrier::await_generation(std::uint32_t gen, std::uint32_t idx, const detail::Deadline& d,
                                        const std::function<bool()>* stop) {
    // Until the generation ends (completed, or reset) or the barrier breaks.
    // A party killed while waiting cannot wake anyone, so after every poll
    // interval the waiters check each other's liveness.
    struct W : core::Waiter {
        Barrier& b;
        const std::uint32_t gen;
        const std::function<bool()>* stop;
        std::uint32_t cur = 0;
        bool stopped = false;
        W(Barrier& barrier, std::uint32_t g, const std::function<bool()>* s) : b(barrier), gen(g), stop(s) {}
        bool ready() {
            cur = b.word_.load(std::memory_order_acquire);
            return (cur >> 1) != gen || (cur & 1);
        }
        bool recheck() {
            stopped = stop && (*stop)();
            b.lock_state();
            const bool same = b.word_.load(std::memory_order_relaxed) == cur;
            if (same && (stopped || b.party_died_locked())) b.break_locked();
            b.m_.unlock();
            return true;  // look again
        }
        core::Sleep arm() { return core::Sleep{&b.word_, cur}; }
    } w(*this, gen, stop);
    for (;;) {
        if (core::wait(w, d, core::kBarrierWait) == core::Waited::ready) {
            if ((w.cur >> 1) != gen) {
                std::lock_guard<Mutex> g(m_);
                if (broken_generation_ == gen) throw broken_barrier(kBarrierBroken);
                return idx;
            }
            throw broken_barrier(kBarrierBroken);
        }
        lock_state();
        if (word_.load(std::memory_order_relaxed) == w.cur) {
            break_locked();
            m_.unlock();
            throw broken_barrier("shm::Barrier: timed out waiting for the other parties; the barrier is now broken");
        }
        m_.unlock();  // the generation ended as the time ran out: look again
    }
}

}  // namespace shm
