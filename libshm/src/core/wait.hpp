// The wait layer: the one way libshm waits for something another process
// (or thread) does.
//
// A wait is a loop over five steps, each a parameter of WaitPolicy:
//   1. ready?     the waiter's condition (it may act: take a unit, claim a
//                 ticket); done if so.
//   2. re-check   once spinning is over, the waiter may check the liveness
//                 of whoever blocks it (before every sleep, or after a sleep
//                 that the poll interval ended) and repair what a dead
//                 process left; if that changed anything, start again.
//   3. spin       `spins` cpu_relax() rounds, then `yields` sched_yield()
//                 rounds, each followed by step 1 (again after every wake if
//                 `respin`); or, for a policy with a `learned` spin, spin
//                 for as long as this thread has learned is worth it (see
//                 SpinBudget below), or, while the CPUs are oversubscribed,
//                 spin briefly and yield a few times (see yield_briefly).
//   4. deadline   passed: time out.
//   5. sleep      the waiter announces itself (arm(): a waiter count, a bit
//                 in a mask) and names a futex word and the value it saw;
//                 the sleep ends when the word changes and a waker wakes
//                 it, at the deadline, or after `poll` (so that a dead
//                 blocker is noticed). A wait with no futex word pauses
//                 instead, for a pause that doubles from pause_min to
//                 pause_max. Then disarm(), and back to step 1; after a
//                 futex sleep that ends past the deadline, time out at once
//                 (a waiter that wants a last try makes it; one that must
//                 know whether a wake ended its sleep, even so, asks
//                 through Sleep::woken).
//
// A waiter is any type with
//     bool ready();        step 1
//     bool recheck();      step 2; true if it changed something
//     Sleep arm();         step 5: announce, and say where to sleep
//     void disarm();       step 5: withdraw the announcement
// (derive from Waiter for the defaults: no re-check, a pause, nothing to
// withdraw).
//
// No lost wake-up: a waiter announces itself (seq_cst) before it reads the
// futex word's value to sleep on; a waker changes the word (seq_cst) before
// it reads the announcements. Either the waker sees the waiter, or the
// kernel's check of the word inside the futex sleep sees the change.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "platform/platform.hpp"
#include "shm/deadline.hpp"

namespace shm::core {

using detail::Deadline;

// ---- deadlines --------------------------------------------------------------
// The one comparison of two times on the same clock.
inline bool before(const timespec& a, const timespec& b) noexcept {
    return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}
// The earlier of d and now + `from_now` (CLOCK_MONOTONIC). A deadline on
// another clock cannot be compared: now + from_now, and the caller checks d
// itself after the sleep (wait() does).
Deadline earlier(const Deadline& d, std::chrono::nanoseconds from_now);

// ---- the policy ---------------------------------------------------------------
enum class Recheck {
    never,
    before_sleep,  // before every sleep, once spinning is over
    after_poll,    // after a sleep that the poll interval ended
};

struct SpinBudget;

struct WaitPolicy {
    int spins = 0;        // cpu_relax() rounds before the first sleep
    int yields = 0;       // then sched_yield() rounds
    bool respin = false;  // spin and yield again after every sleep
    std::chrono::milliseconds poll{0};  // the longest sleep (0: until woken or the deadline)
    Recheck recheck = Recheck::never;
    // A wait with no futex word: the pause between two looks.
    std::chrono::microseconds pause_min{0};
    std::chrono::microseconds pause_max{0};
    // If set, the spin is learned instead of `spins` and `yields`: this
    // thread's budget for this kind of wait (a thread_local of its own).
    SpinBudget& (*learned)() = nullptr;
};

// ---- the learned spin -----------------------------------------------------------
// Spinning pays only while the other side answers within the spin: then it
// saves a sleep and a wake-up, which cost tens of µs across vCPUs (more
// than the whole round trip a spin achieves). So a wait that learns spins
// by time, up to a budget, and adjusts the budget by how each wait ended:
//   - done while spinning: the budget grows back towards kSpinMax (by an
//     eighth);
//   - done after a sleep, but within kSpinMax of its start: a full spin
//     would have caught it; spin fully next time;
//   - done after a sleep, later than that (the other side is idle, or
//     preempted): halve the budget, down to kSpinMin, so a thread waiting
//     on a quiet queue soon burns no CPU.
// It never yields: under CPU contention sched_yield() may hand a whole time
// slice (milliseconds) to whatever else runs, where a futex sleep is woken
// at once. While more tasks are runnable than there are CPUs it does not
// spin at all (yield_briefly() instead). kSpinMax is about one sleep and wake-up across vCPUs, the
// classic bound for spinning against blocking (never more than twice the
// cost of the better choice). Each thread learns per kind of wait (a get
// from a put), not per object.
inline constexpr std::chrono::nanoseconds kSpinMax{50'000};
inline constexpr std::chrono::nanoseconds kSpinMin{2'000};

struct SpinBudget {
    std::int64_t ns = kSpinMax.count();

    void spun() noexcept {
        ns += ns / 8;
        if (ns > kSpinMax.count()) ns = kSpinMax.count();
    }
    void slept(std::int64_t elapsed_ns) noexcept {
        if (elapsed_ns <= kSpinMax.count()) {
            ns = kSpinMax.count();
        } else {
            ns /= 2;
            if (ns < kSpinMin.count()) ns = kSpinMin.count();
        }
    }
    // Nothing came before the deadline: as a long wait.
    void timed_out() noexcept { slept(kSpinMax.count() + 1); }
};

// CLOCK_MONOTONIC in ns (the vDSO: no system call).
inline std::int64_t now_ns() noexcept {
    timespec t;
    ::clock_gettime(CLOCK_MONOTONIC, &t);
    return std::int64_t(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}

// The policies in use, with the spin counts and intervals each primitive
// has always had (a later change may tune them here).
// Semaphore: spin before every sleep, and sleep at most 50 ms at a time: a
// release wakes as many waiters as it adds units, and a woken waiter
// SIGKILLed before it takes its unit leaves that unit beside waiters still
// asleep; they find it at their next look.
inline constexpr WaitPolicy kSemaphoreWait{64, 0, true, std::chrono::milliseconds(50), Recheck::never, {}, {}};
// Event: spin before the first sleep.
inline constexpr WaitPolicy kEventWait{64, 0, false, {}, Recheck::never, {}, {}};
// Condition: one sleep, no spin (the caller holds a mutex until it sleeps).
inline constexpr WaitPolicy kConditionWait{};
// Condition with a stop(): still one waiter, whose sleeps last at most
// 50 ms; stop() is asked after each.
inline constexpr WaitPolicy kConditionPoll{0, 0, false, std::chrono::milliseconds(50), Recheck::after_poll, {}, {}};
// Barrier: a party killed while waiting wakes nobody: the waiters check
// each other every 50 ms.
inline constexpr WaitPolicy kBarrierWait{0, 0, false, std::chrono::milliseconds(50), Recheck::after_poll, {}, {}};
// Queue put and get: a learned spin (the put's and the get's apart), then
// sleep; whoever blocks the waiter is checked before every sleep, and at
// least every 50 ms.
inline SpinBudget& queue_put_budget() noexcept {
    static thread_local SpinBudget b;
    return b;
}
inline SpinBudget& queue_get_budget() noexcept {
    static thread_local SpinBudget b;
    return b;
}
inline constexpr WaitPolicy kQueuePutWait{0, 0, false, std::chrono::milliseconds(50), Recheck::before_sleep, {}, {},
                                          &queue_put_budget};
inline constexpr WaitPolicy kQueueGetWait{0, 0, false, std::chrono::milliseconds(50), Recheck::before_sleep, {}, {},
                                          &queue_get_budget};
// A queue sleeper that could not fence the wakers (membarrier refused by a
// seccomp filter) polls every 2 ms instead.
inline constexpr std::chrono::milliseconds kQueueUnfencedPoll{2};
// A queue claimant waiting for its own ticket after an ABA claim naps 1 ms.
inline constexpr WaitPolicy kQueueNap{100, 8, false, std::chrono::milliseconds(1), Recheck::before_sleep, {}, {}};
// WorkQueue put and get: a learned spin as the Queue's (a budget of their
// own); a sleeper looks for dead consumers before every sleep and every
// 50 ms (recover()).
inline SpinBudget& work_queue_budget() noexcept {
    static thread_local SpinBudget b;
    return b;
}
inline constexpr WaitPolicy kWorkQueueWait{0, 0, false, std::chrono::milliseconds(50), Recheck::before_sleep, {}, {},
                                           &work_queue_budget};
// WorkQueue join: no spin; dead consumers looked for every 50 ms.
inline constexpr WaitPolicy kWorkQueueJoin{0, 0, false, std::chrono::milliseconds(50), Recheck::after_poll, {}, {}};
// Queue join: no spin.
inline constexpr WaitPolicy kQueueJoin{0, 0, false, std::chrono::milliseconds(50), Recheck::never, {}, {}};
// A lock that can only be tried (a pthread mutex under ThreadSanitizer).
inline constexpr WaitPolicy kTryLockPoll{0, 0, false, {}, Recheck::never, std::chrono::microseconds(10),
                                         std::chrono::microseconds(1000)};
// A segment's meta lock (an OFD lock tried until a deadline).
inline constexpr WaitPolicy kMetaLockPoll{0, 0, false, {}, Recheck::never, std::chrono::microseconds(20),
                                          std::chrono::microseconds(5000)};

// ---- waiters --------------------------------------------------------------------
// Where to sleep.
struct Sleep {
    const std::atomic<std::uint32_t>* word = nullptr;  // futex word; nullptr: pause instead
    std::uint32_t expected = 0;                        // sleep only while *word == expected
    bool skip = false;                                 // ready already: do not sleep
    std::chrono::milliseconds poll{0};                 // if set, a shorter poll for this sleep
    bool* woken = nullptr;                             // if set, told whether a wake (not the time) ended it
};

struct Waiter {
    bool recheck() { return false; }
    Sleep arm() { return Sleep{}; }
    void disarm() {}
};

enum class Waited { ready, timeout };

// Spin, then yield, then sleep (step 3).
class Backoff {
public:
    explicit Backoff(const WaitPolicy& p) noexcept : spins_(p.spins), limit_(p.spins + p.yields) {}
    // One round of spinning or yielding; false once it is time to sleep.
    bool step() noexcept {
        if (n_ < spins_) {
            ++n_;
            platform::cpu_relax();
            return true;
        }
        if (n_ < limit_) {
            ++n_;
            ::sched_yield();
            return true;
        }
        return false;
    }
    bool spun_out() const noexcept { return n_ >= limit_; }
    void reset() noexcept { n_ = 0; }

private:
    int spins_, limit_, n_ = 0;
};

// One sleep (step 5): on s.word while it holds s.expected, or a pause of
// `pause`, never past `until`. Returns false only when it ended at `until`.
bool sleep(const Sleep& s, const Deadline& until, std::chrono::microseconds pause);

// Wake up to n sleepers on word (INT_MAX: all).
inline void wake(const std::atomic<std::uint32_t>& word, int n) { platform::futex_wake(&word, n); }

// Whether a learned spin may spin now: not while more tasks are runnable
// than there are CPUs (then the spinner holds a CPU that whoever it waits
// for may need; yield_briefly() hands it over instead). Sampled at most
// once a millisecond per thread.
bool spin_allowed(std::int64_t now) noexcept;

// The learned spin (step 3 of a policy with `learned`): spin on w.ready()
// from t0 for up to the budget; true if it became ready.
template <class W>
bool spin_learned(W& w, const SpinBudget& b, std::int64_t t0) {
    for (;;) {
        // The clock is read once per 16 PAUSEs (a few hundred ns).
        for (int i = 0; i < 16; ++i) {
            if (w.ready()) return true;
            platform::cpu_relax();
        }
        if (now_ns() - t0 >= b.ns) return false;
    }
}

// In place of the learned spin while the CPUs are oversubscribed: a long
// spin would hold a CPU that whoever this waits for may need, but sleeping
// at once costs the other side a futex wake for every item (one producer
// feeding four consumers on two CPUs makes a system call per put). So a
// short spin (kBriefSpins PAUSEs, a few µs), then up to kBriefYields
// sched_yield()s, which hand the CPU to a peer waiting for it. A yield that
// comes back later than kSpinMax gave a time slice to someone: if what the
// wait is blocked on did not move meanwhile (a waiter's progress(), if it
// has one), that was not a peer, and the wait goes to sleep rather than
// give another. True if it became ready.
inline constexpr int kBriefSpins = 100;
inline constexpr int kBriefYields = 8;
template <class W, class = void>
struct HasProgress : std::false_type {};
template <class W>
struct HasProgress<W, std::void_t<decltype(std::declval<W&>().progress())>> : std::true_type {};
// A value that changes when whatever blocks w moves (0 if w cannot tell).
template <class W>
std::uint64_t progress_of(W& w) {
    if constexpr (HasProgress<W>::value) {
        return w.progress();
    } else {
        return 0;
    }
}
template <class W>
bool yield_briefly(W& w) {
    for (int i = 0; i < kBriefSpins; ++i) {
        if (w.ready()) return true;
        platform::cpu_relax();
    }
    for (int i = 0; i < kBriefYields; ++i) {
        const std::uint64_t mark = progress_of(w);
        const std::int64_t t0 = now_ns();
        ::sched_yield();
        if (w.ready()) return true;
        if (now_ns() - t0 > kSpinMax.count() && progress_of(w) == mark) return false;
    }
    return false;
}

// The wait primitive: returns ready once w.ready() is true, timeout once d
// has passed (w.ready() is not asked again: a waiter that wants a last try
// makes it).
template <class W>
Waited wait(W& w, const Deadline& d, const WaitPolicy& p) {
    Backoff backoff(p);
    bool polled = false;  // the last sleep ended at the poll interval
    std::chrono::microseconds pause = p.pause_min;
    SpinBudget* budget = p.learned ? &p.learned() : nullptr;
    std::int64_t start = 0;
    if (budget) {
        start = now_ns();
        if (spin_allowed(start)) {
            if (spin_learned(w, *budget, start)) {
                budget->spun();
                return Waited::ready;
            }
        } else if (yield_briefly(w)) {
            return Waited::ready;
        }
    }
    bool slept = false;
    for (;;) {
        if (w.ready()) {
            if (budget && slept) budget->slept(now_ns() - start);
            return Waited::ready;
        }
        if (p.recheck != Recheck::never && backoff.spun_out() &&
            (p.recheck == Recheck::before_sleep || polled)) {
            polled = false;
            if (w.recheck()) continue;
        }
        if (backoff.step()) continue;
        if (d.passed()) {
            if (budget) budget->timed_out();
            return Waited::timeout;
        }
        const Sleep s = w.arm();
        bool woken = true;
        if (!s.skip) {
            std::chrono::milliseconds poll = p.poll;
            if (s.poll.count() > 0 && (poll.count() == 0 || s.poll < poll)) poll = s.poll;
            woken = sleep(s, poll.count() > 0 ? earlier(d, poll) : d, pause);
            slept = true;
            if (s.woken) *s.woken = woken;
            if (!s.word && pause < p.pause_max) pause = pause * 2 < p.pause_max ? pause * 2 : p.pause_max;
        }
        w.disarm();
        // After a futex sleep the deadline comes first; after a pause, one
        // more look (as a lock tried until a deadline always had).
        if (s.word && d.passed()) {
            if (budget) budget->timed_out();
            return Waited::timeout;
        }
        polled = !woken;
        if (p.respin) backoff.reset();
    }
}

// wait() for a condition alone: no futex word, so it pauses between looks
// (p.pause_min doubling to p.pause_max). For locks that can only be tried,
// such as a segment's meta lock:
//     core::wait_until([&] { return platform::ofd_try_lock(fd, byte); },
//                      core::Deadline::at(steady_deadline), core::kMetaLockPoll)
template <class Ready>
Waited wait_until(Ready&& ready, const Deadline& d, const WaitPolicy& p) {
    struct W : Waiter {
        Ready& r;
        explicit W(Ready& f) : r(f) {}
        bool ready() { return r(); }
    } w(ready);
    return wait(w, d, p);
}

// Lock a pthread mutex by the deadline: pthread_mutex_clocklock, or under
// ThreadSanitizer (which models neither it nor an EOWNERDEAD from
// pthread_mutex_timedlock) trylock polled by wait_until(). Returns what
// they return (0, EOWNERDEAD, ETIMEDOUT, ...).
int lock_until(pthread_mutex_t* m, const Deadline& d);

}  // namespace shm::core
