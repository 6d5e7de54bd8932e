// Synchronisation primitives across processes, as named objects in a
// Segment: RecursiveMutex, Semaphore, BoundedSemaphore, Condition, Event,
// Barrier. Python's multiprocessing/threading names and meanings, C++
// conventions (chrono timeouts, Lockable, exceptions derived from shm::error).
//
// All of them wait through one futex layer (process-shared futexes with a
// short bounded spin first). Waiter counts kept in shared memory are only
// hints that let a wake skip its system call; a waiter killed while waiting
// leaves the hint high, which costs a spare wake later and never blocks one.
//
// Crash behaviour, per object:
//   RecursiveMutex  robust like shm::Mutex: owner death is reported to the
//                   next locker (previous_owner_died()), recursion count reset.
//   Semaphore       has no owner: units acquired by a process that dies are
//                   not returned (as with POSIX and Python semaphores). A
//                   waiter killed while waiting changes nothing.
//   Condition       a waiter killed while waiting changes nothing; a process
//                   killed holding the associated Mutex is reported to the
//                   next locker by the Mutex.
//   Event           a waiter killed while waiting changes nothing.
//   Barrier         a party killed while waiting breaks the barrier: the
//                   other waiters get shm::broken_barrier (within ~50 ms)
//                   instead of hanging; reset() makes it usable again. A party
//                   that dies before it arrives cannot be told from a slow
//                   one: use arrive_and_wait_for() to bound the wait.
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <type_traits>

#include "shm/deadline.hpp"
#include "shm/error.hpp"
#include "shm/mutex.hpp"
#include "shm/object_kind.hpp"

namespace shm {

// ---- RecursiveMutex -------------------------------------------------------
// Like shm::Mutex, and re-entrant: the holder may lock it again and must
// unlock it as many times. Only the holder may unlock (shm::lock_error).
class RecursiveMutex : public detail::RobustMutex<true> {
public:
    RecursiveMutex() {}  // user-provided, as before: not zeroed first when value-initialised

    // Recursion depth of the caller's hold (0 if the caller does not hold it).
    unsigned depth() const noexcept;

private:
    struct Layout;  // its pinned layout, below
};

// ---- Semaphore -------------------------------------------------------------
class Semaphore {
public:
    explicit Semaphore(std::uint32_t initial = 1);
    Semaphore(const Semaphore&) = delete;
    Semaphore& operator=(const Semaphore&) = delete;

    void acquire();
    bool try_acquire();
    template <class Rep, class Period>
    bool try_acquire_for(const std::chrono::duration<Rep, Period>& d) {
        return acquire_until(detail::Deadline::in(d));
    }
    template <class Clock, class Duration>
    bool try_acquire_until(const std::chrono::time_point<Clock, Duration>& tp) {
        return acquire_until(detail::Deadline::at(tp));
    }
    // Adds n units and wakes up to n waiters. shm::error (EOVERFLOW) if the
    // value would pass 2^31 - 1; for a BoundedSemaphore, shm::error (EINVAL)
    // if it would pass the initial value.
    void release(std::uint32_t n = 1);
    std::uint32_t value() const noexcept { return value_.load(std::memory_order_relaxed); }
    // Waiters right now, as a hint: it also counts waiters that were killed
    // while waiting (they never decrement it), so it only grows past the truth.
    std::uint32_t waiters() const noexcept { return waiters_.load(std::memory_order_relaxed); }
    // 0 for a plain Semaphore; the bound for a BoundedSemaphore.
    std::uint32_t bound() const noexcept { return bound_; }

protected:
    Semaphore(std::uint32_t initial, std::uint32_t bound);

private:
    struct Layout;
    bool acquire_until(const detail::Deadline& d);

    std::atomic<std::uint32_t> value_;    // futex word
    std::atomic<std::uint32_t> waiters_{0};
    std::uint32_t bound_ = 0;
    [[maybe_unused]] std::uint32_t reserved_ = 0;  // layout padding, never read
};

// Releasing above the initial value is an error (shm::error, EINVAL).
// A distinct type in a segment: find<Semaphore>() does not find one.
class BoundedSemaphore : public Semaphore {
public:
    explicit BoundedSemaphore(std::uint32_t initial = 1) : Semaphore(initial, initial) {}
};

// ---- Condition -------------------------------------------------------------
// Used with a shm::Mutex held through std::unique_lock. Spurious wake-ups
// are possible, as with std::condition_variable; use the predicate forms.
// Every wait ends by relocking the mutex: if its holder died meanwhile,
// lock.mutex()->previous_owner_died() is true on return (and inside the
// predicate), which is where the caller repairs the guarded data. A timed
// wait that a notify woke returns true, even if its time ran out while it
// took the mutex back: the notify is not lost to a time-out.
class Condition {
public:
    Condition() = default;
    Condition(const Condition&) = delete;
    Condition& operator=(const Condition&) = delete;

    void wait(std::unique_lock<Mutex>& lock);
    template <class Pred>
    void wait(std::unique_lock<Mutex>& lock, Pred pred) {
        while (!pred()) wait(lock);
    }
    // Returns false on time-out (std::cv_status::timeout).
    template <class Rep, class Period>
    bool wait_for(std::unique_lock<Mutex>& lock, const std::chrono::duration<Rep, Period>& d) {
        return wait_until_deadline(lock, detail::Deadline::in(d));
    }
    template <class Clock, class Duration>
    bool wait_until(std::unique_lock<Mutex>& lock, const std::chrono::time_point<Clock, Duration>& tp) {
        return wait_until_deadline(lock, detail::Deadline::at(tp));
    }
    // Return pred() at the end: false means it timed out with pred() false.
    template <class Rep, class Period, class Pred>
    bool wait_for(std::unique_lock<Mutex>& lock, const std::chrono::duration<Rep, Period>& d, Pred pred) {
        return wait_pred(lock, detail::Deadline::in(d), pred);
    }
    template <class Clock, class Duration, class Pred>
    bool wait_until(std::unique_lock<Mutex>& lock, const std::chrono::time_point<Clock, Duration>& tp,
                    Pred pred) {
        return wait_pred(lock, detail::Deadline::at(tp), pred);
    }
    // The same with a RecursiveMutex (Python's Condition uses an RLock by
    // default): the wait releases every level the caller holds and takes
    // them all back before it returns.
    void wait(std::unique_lock<RecursiveMutex>& lock);
    template <class Rep, class Period>
    bool wait_for(std::unique_lock<RecursiveMutex>& lock, const std::chrono::duration<Rep, Period>& d) {
        return wait_until_deadline(lock, detail::Deadline::in(d));
    }

    // For a caller that must stay responsive while it waits (the Python
    // binding, which looks for Ctrl-C): waits as wait() (no timeout) or
    // wait_for() do, and calls stop() about every 50 ms, without the mutex;
    // when stop() returns true the wait ends as on a time-out. The caller
    // stays a waiter throughout: a notify made meanwhile, even while stop()
    // runs, ends the wait, where a loop of short wait_for() calls misses one
    // made between two of them. A null stop waits as wait() and wait_for().
    // Returns true if woken, false on time-out or stop.
    bool wait_stoppable(std::unique_lock<Mutex>& lock, std::optional<std::chrono::nanoseconds> timeout,
                        const std::function<bool()>& stop);
    bool wait_stoppable(std::unique_lock<RecursiveMutex>& lock, std::optional<std::chrono::nanoseconds> timeout,
                        const std::function<bool()>& stop);

    void notify_one();
    void notify_all();
    // A hint: also counts waiters killed while waiting (see Semaphore).
    std::uint32_t waiters() const noexcept { return waiters_.load(std::memory_order_relaxed); }

private:
    struct Layout;
    bool wait_until_deadline(std::unique_lock<Mutex>& lock, const detail::Deadline& d);
    bool wait_until_deadline(std::unique_lock<RecursiveMutex>& lock, const detail::Deadline& d);
    // The one wait: `hold` lets go of the mutex and takes it back (sync.cpp).
    template <class Hold>
    bool wait_released(Hold& hold, const detail::Deadline& d, const std::function<bool()>* stop);
    template <class Pred>
    bool wait_pred(std::unique_lock<Mutex>& lock, const detail::Deadline& d, Pred& pred) {
        while (!pred())
            if (!wait_until_deadline(lock, d)) return pred();
        return true;
    }

    std::atomic<std::uint32_t> seq_{0};  // futex word: bumped by every notify
    std::atomic<std::uint32_t> waiters_{0};
};

// ---- Event -----------------------------------------------------------------
// A waiter woken by set() returns true even if clear() followed at once (as
// Python's Event.wait does), so is_set() right after wait() may be false.
class Event {
public:
    Event() = default;
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;

    void set();
    void clear();
    bool is_set() const noexcept { return (flag_.load(std::memory_order_acquire) & 1) != 0; }
    void wait();
    // True if the event is set, false on time-out.
    template <class Rep, class Period>
    bool wait_for(const std::chrono::duration<Rep, Period>& d) {
        return wait_until_deadline(detail::Deadline::in(d));
    }
    template <class Clock, class Duration>
    bool wait_until(const std::chrono::time_point<Clock, Duration>& tp) {
        return wait_until_deadline(detail::Deadline::at(tp));
    }
    // A hint: also counts waiters killed while waiting (see Semaphore).
    std::uint32_t waiters() const noexcept { return waiters_.load(std::memory_order_relaxed); }

private:
    struct Layout;
    bool wait_until_deadline(const detail::Deadline& d);
    std::atomic<std::uint32_t> flag_{0};  // futex word: generation << 1 | set
    std::atomic<std::uint32_t> waiters_{0};
};

// ---- Barrier ---------------------------------------------------------------
// `parties` processes (or threads) meet; reusable across generations. Up to
// kMaxParties parties; each Barrier takes about 4 KiB of the segment (one
// liveness record per possible party).
class Barrier {
public:
    static constexpr std::uint32_t kMaxParties = 256;

    explicit Barrier(std::uint32_t parties);
    Barrier(const Barrier&) = delete;
    Barrier& operator=(const Barrier&) = delete;

    // Returns the arrival index, 0 .. parties-1, different for each party of
    // a generation. Throws shm::broken_barrier if the barrier is or becomes
    // broken while waiting.
    std::uint32_t arrive_and_wait();
    // As above; on time-out the barrier breaks (as in Python) and this throws
    // shm::broken_barrier.
    template <class Rep, class Period>
    std::uint32_t arrive_and_wait_for(const std::chrono::duration<Rep, Period>& d) {
        return arrive(detail::Deadline::in(d));
    }
    // As arrive_and_wait(), for a caller that must stay responsive while it
    // waits (a Python binding that checks for Ctrl-C): stop() is called
    // about every 50 ms, outside the barrier's lock; when it returns true the
    // barrier breaks, as on a time-out, and this throws shm::broken_barrier.
    // A null stop waits as arrive_and_wait() does.
    std::uint32_t arrive_and_wait(const std::function<bool()>& stop);
    // Break the barrier: current and future waiters get broken_barrier until
    // reset().
    void abort();
    // Make the barrier usable again; parties waiting now get broken_barrier.
    void reset();
    bool broken() const noexcept;
    std::uint32_t parties() const noexcept { return parties_; }
    // Parties waiting in the current generation (0 while broken: they left).
    std::uint32_t n_waiting() const noexcept {
        return broken() ? 0 : arrived_.load(std::memory_order_relaxed);
    }
    // Generations ended so far: completed ones, and ones ended by reset().
    std::uint32_t generation() const noexcept { return word_.load(std::memory_order_relaxed) >> 1; }

private:
    struct Layout;
    std::uint32_t arrive(const detail::Deadline& d, const std::function<bool()>* stop = nullptr);
    std::uint32_t await_generation(std::uint32_t gen, std::uint32_t idx, const detail::Deadline& d,
                                   const std::function<bool()>* stop);
    void lock_state();
    void break_locked();
    bool party_died_locked() const;

    // A party waiting in the current generation: its process's pid and
    // start time (the identity core/liveness.hpp checks).
    struct Party {
        std::atomic<std::int32_t> pid;
        std::atomic<std::uint64_t> start_time;
    };

    Mutex m_;  // guards everything below except word_'s reads
    // Futex word: generation << 1 | broken.
    std::atomic<std::uint32_t> word_{0};
    std::atomic<std::uint32_t> arrived_{0};
    std::uint32_t parties_;
    std::uint32_t broken_generation_ = ~0u;  // last generation that ended broken
    Party waiting_[kMaxParties];
};

// ---- layouts -------------------------------------------------------------------
// Every object above lives in shared memory: sizes and field offsets are
// pinned. Change a field's width, order or meaning: bump the layout version
// (kLayoutVersion). pthread_mutex_t is 40 bytes on x86-64, 48 on arm64.
struct RecursiveMutex::Layout {
    static constexpr std::size_t kPthread = sizeof(pthread_mutex_t);
    static_assert(std::is_standard_layout_v<RecursiveMutex>);
    static_assert(alignof(RecursiveMutex) == 8);
    static_assert(sizeof(RecursiveMutex) == kPthread + 16);
    static_assert(offsetof(RecursiveMutex, m_) == 0);
    static_assert(offsetof(RecursiveMutex, owner_pid_) == kPthread);
    static_assert(offsetof(RecursiveMutex, recovered_) == kPthread + 4);
    static_assert(offsetof(RecursiveMutex, recoveries_) == kPthread + 8);
};
struct Semaphore::Layout {
    static_assert(std::is_standard_layout_v<Semaphore>);
    static_assert(sizeof(Semaphore) == 16 && alignof(Semaphore) == 4);
    static_assert(sizeof(BoundedSemaphore) == sizeof(Semaphore));
    static_assert(offsetof(Semaphore, value_) == 0);
    static_assert(offsetof(Semaphore, waiters_) == 4);
    static_assert(offsetof(Semaphore, bound_) == 8);
    static_assert(offsetof(Semaphore, reserved_) == 12);
};
struct Condition::Layout {
    static_assert(std::is_standard_layout_v<Condition>);
    static_assert(sizeof(Condition) == 8 && alignof(Condition) == 4);
    static_assert(offsetof(Condition, seq_) == 0);
    static_assert(offsetof(Condition, waiters_) == 4);
};
struct Event::Layout {
    static_assert(std::is_standard_layout_v<Event>);
    static_assert(sizeof(Event) == 8 && alignof(Event) == 4);
    static_assert(offsetof(Event, flag_) == 0);
    static_assert(offsetof(Event, waiters_) == 4);
};
struct Barrier::Layout {
    static constexpr std::size_t kMutex = sizeof(Mutex);
    static_assert(std::is_standard_layout_v<Barrier>);
    static_assert(sizeof(Party) == 16 && alignof(Party) == 8);
    static_assert(offsetof(Party, pid) == 0);
    static_assert(offsetof(Party, start_time) == 8);
    static_assert(alignof(Barrier) == 8);
    static_assert(sizeof(Barrier) == kMutex + 16 + sizeof(Party) * kMaxParties);
    static_assert(offsetof(Barrier, m_) == 0);
    static_assert(offsetof(Barrier, word_) == kMutex);
    static_assert(offsetof(Barrier, arrived_) == kMutex + 4);
    static_assert(offsetof(Barrier, parties_) == kMutex + 8);
    static_assert(offsetof(Barrier, broken_generation_) == kMutex + 12);
    static_assert(offsetof(Barrier, waiting_) == kMutex + 16);
};

template <> struct object_kind_of<RecursiveMutex> { static constexpr ObjectKind value = ObjectKind::recursive_mutex; };
template <> struct object_kind_of<Semaphore> { static constexpr ObjectKind value = ObjectKind::semaphore; };
template <> struct object_kind_of<BoundedSemaphore> { static constexpr ObjectKind value = ObjectKind::bounded_semaphore; };
template <> struct object_kind_of<Condition> { static constexpr ObjectKind value = ObjectKind::condition; };
template <> struct object_kind_of<Event> { static constexpr ObjectKind value = ObjectKind::event; };
template <> struct object_kind_of<Barrier> { static constexpr ObjectKind value = ObjectKind::barrier; };

}  // namespace shm
