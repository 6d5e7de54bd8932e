// Crash injection for libshm's own tests (private header; tests include it
// deliberately through the target's private include path).
//
// The heap journal and segment creation call crash_point() at every step
// where a killed process could leave shared state half-done. A test child
// calls kill_at_crash_point(n) and then the operation under test: the n-th
// crash point raises SIGKILL, so a loop over n covers every step.
#pragma once

#include <atomic>

namespace shm::testing {

extern std::atomic<long> crash_countdown;

inline void kill_at_crash_point(long n) { crash_countdown.store(n, std::memory_order_relaxed); }

void crash_now();  // raise(SIGKILL)

inline void crash_point() {
    // Relaxed: only this thread sets and reads it; it orders nothing.
    if (crash_countdown.load(std::memory_order_relaxed) > 0 &&
        crash_countdown.fetch_sub(1, std::memory_order_relaxed) == 1)
        crash_now();
}

// Forks that shm::Pool's fork server makes fail (EAGAIN) before it forks
// for real: a test sets it before it creates the Pool, whose server, a
// fork of the test, starts with that count.
extern std::atomic<int> failing_forks;

// Whether the next fork is to fail (and counts it).
inline bool fork_fails() {
    int n = failing_forks.load(std::memory_order_relaxed);
    while (n > 0)
        if (failing_forks.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) return true;
    return false;
}

}  // namespace shm::testing
