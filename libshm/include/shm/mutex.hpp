// shm::Mutex — a process-shared, robust mutex that lives in a segment.
//
// Built on glibc's robust, error-checking, process-shared pthread mutex
// rather than a hand-written futex lock: only glibc may register robust-list
// entries with the kernel (one robust list per thread, owned by libc), so a
// futex lock of our own could not have its owner's death reported by the
// kernel. glibc's gives exactly that, plus a fast uncontended path.
//
// Owner death: if the process (or thread) holding the mutex dies, the next
// locker acquires it normally and previous_owner_died() returns true until
// that holder unlocks. The mutex is made consistent at once, so it is never
// poisoned: the new holder repairs whatever the dead owner left half-done
// (or knows it has nothing to repair) and unlocks as usual. If the new
// holder dies too before unlocking, the next one is told again.
//
//     shm::Mutex& m = seg.find_or_construct<shm::Mutex>("lock");
//     std::lock_guard<shm::Mutex> g(m);
//     if (m.previous_owner_died()) repair();
//
// Meets the TimedLockable requirements: std::lock_guard, std::unique_lock
// and std::scoped_lock work. Misuse (unlock by a thread that does not hold
// it, relocking a mutex the thread already holds) throws shm::lock_error.
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>  // std::lock_guard, std::unique_lock, std::scoped_lock
#include <type_traits>

#include "shm/deadline.hpp"
#include "shm/object_kind.hpp"

namespace shm {

namespace detail {

// The calling thread's kernel tid and its process's pid, cached per thread
// and refreshed in a forked child: the mutex's inline fast path records its
// holder and checks the unlocker with two loads, no call.
struct ThreadIds {
    std::int32_t tid = 0;
    std::int32_t pid = 0;
    unsigned generation = ~0u;  // the fork generation these were read in
};
// Bumped in every forked child (pthread_atfork), defined in the platform layer.
extern std::atomic<unsigned> fork_generation;
void refresh_thread_ids(ThreadIds& ids) noexcept;
inline const ThreadIds& thread_ids() noexcept {
    static thread_local ThreadIds ids;
    if (ids.generation != fork_generation.load(std::memory_order_relaxed)) [[unlikely]] refresh_thread_ids(ids);
    return ids;
}

// What shm::Mutex and shm::RecursiveMutex share: glibc's robust,
// process-shared pthread mutex (error-checking, or with Recursive
// re-entrant) and, beside it, what its holder records. One implementation
// for both, in core/mutex.cpp (instantiated there for each). All the data
// is here and the two types add none: each keeps its pinned layout.
template <bool Recursive>
class RobustMutex {
public:
    RobustMutex();
    ~RobustMutex();
    RobustMutex(const RobustMutex&) = delete;
    RobustMutex& operator=(const RobustMutex&) = delete;

    // The uncontended paths are inline: a call into glibc and the holder's
    // bookkeeping, nothing more. Owner death and misuse go out of line.
    void lock() {
        const int rc = pthread_mutex_trylock(&m_);
        if (rc != 0) [[unlikely]]
            return lock_slow(rc);
        acquired();
    }
    bool try_lock();
    template <class Rep, class Period>
    bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
        return timed_lock(Deadline::in(d));
    }
    template <class Clock, class Duration>
    bool try_lock_until(const std::chrono::time_point<Clock, Duration>& tp) {
        return timed_lock(Deadline::at(tp));
    }
    void unlock() {
        // Refuse before touching anything: a non-holder's unlock changes nothing.
        if (!held_by_caller()) [[unlikely]]
            unlock_refused();
        if (outermost()) {
            owner_pid_.store(0, std::memory_order_relaxed);
            recovered_.store(0, std::memory_order_relaxed);
        }
        const int rc = pthread_mutex_unlock(&m_);
        if (rc != 0) [[unlikely]]
            unlock_failed(rc);
    }

    // True while held by a caller whose acquisition (for a RecursiveMutex,
    // its first: the recursion count was reset to 1) found the previous
    // owner dead. Only meaningful to the holder.
    bool previous_owner_died() const noexcept {
        return recovered_.load(std::memory_order_relaxed) != 0;
    }

    // Pid of the process holding the mutex, 0 when free. For display
    // (shmctl stat); it may be stale for a moment around lock and unlock.
    std::int32_t owner_pid() const noexcept { return owner_pid_.load(std::memory_order_relaxed); }

    // How many times a locker has recovered this mutex from a dead owner.
    std::uint64_t recoveries() const noexcept { return recoveries_.load(std::memory_order_relaxed); }

    // Whether the calling thread holds the mutex. glibc keeps the holder's
    // tid in __owner (FUTEX_TID_MASK bits for robust mutexes): read-only use
    // of a stable ABI field.
    bool held_by_caller() const noexcept { return (m_.__data.__owner & 0x3fffffff) == thread_ids().tid; }

protected:
    pthread_mutex_t m_;
    // Written only by the holder (after acquiring / before releasing).
    std::atomic<std::int32_t> owner_pid_{0};
    std::atomic<std::uint32_t> recovered_{0};
    std::atomic<std::uint64_t> recoveries_{0};

private:
    bool timed_lock(const Deadline& d);
    // lock() when the first try did not take it (rc: the try's result).
    void lock_slow(int rc);
    // What every acquisition records: the holder, and that it did not recover.
    void acquired() noexcept {
        if (outermost()) recovered_.store(0, std::memory_order_relaxed);
        owner_pid_.store(thread_ids().pid, std::memory_order_relaxed);
    }
    // Any acquisition's result: 0, the owner's death (recovered here), or a
    // refusal (thrown).
    void after_acquire(int rc, const char* op);
    [[noreturn]] void unlock_refused() const;
    [[noreturn]] void unlock_failed(int rc) const;
    // Whether the caller's hold is its outermost one (always, unless
    // Recursive): glibc's recursion count.
    bool outermost() const noexcept { return !Recursive || m_.__data.__count == 1; }
};

extern template class RobustMutex<false>;
extern template class RobustMutex<true>;

}  // namespace detail

class Mutex : public detail::RobustMutex<false> {
public:
    Mutex() {}  // user-provided, as before: a value-initialised Mutex is not zeroed first

private:
    struct Layout;  // its pinned layout, below
};

// A Mutex lives in shared memory (a segment's heap lock is one): its size
// and field offsets are pinned. Change a field's width, order or meaning:
// bump the layout version (kLayoutVersion). pthread_mutex_t is 40 bytes on
// x86-64 and 48 on arm64.
struct Mutex::Layout {
    static constexpr std::size_t kPthread = sizeof(pthread_mutex_t);
    static_assert(std::is_standard_layout_v<Mutex>);
    static_assert(alignof(Mutex) == 8);
    static_assert(sizeof(Mutex) == kPthread + 16);
    static_assert(offsetof(Mutex, m_) == 0);
    static_assert(offsetof(Mutex, owner_pid_) == kPthread);
    static_assert(offsetof(Mutex, recovered_) == kPthread + 4);
    static_assert(offsetof(Mutex, recoveries_) == kPthread + 8);
};

static_assert(std::atomic<std::int32_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(sizeof(pthread_mutex_t) <= 48, "pthread_mutex_t larger than expected");

template <>
struct object_kind_of<Mutex> {
    static constexpr ObjectKind value = ObjectKind::mutex;
};

}  // namespace shm
