#include "core/wait.hpp"

#include <unistd.h>

#include <cerrno>

namespace shm {

namespace detail {
bool Deadline::passed() const {
    if (infinite) return false;
    timespec now;
    ::clock_gettime(clock, &now);
    return !core::before(now, abs);
}
}  // namespace detail

namespace core {

Deadline earlier(const Deadline& d, std::chrono::nanoseconds from_now) {
    Deadline p = Deadline::in(from_now);
    if (!d.infinite && d.clock == CLOCK_MONOTONIC && before(d.abs, p.abs)) return d;
    return p;
}

bool sleep(const Sleep& s, const Deadline& until, std::chrono::microseconds pause) {
    if (s.word) return platform::futex_wait(s.word, s.expected, until.infinite ? nullptr : &until.abs, until.clock);
    const Deadline p = earlier(until, pause);
    // EINTR ends the pause early: the caller looks again, as after a wake.
    ::clock_nanosleep(p.clock, TIMER_ABSTIME, &p.abs, nullptr);
    return true;
}

bool spin_allowed(std::int64_t now) noexcept {
    static thread_local std::int64_t sampled = 0;
    static thread_local bool allowed = true;
    if (now - sampled >= 1'000'000 || now < sampled) {
        sampled = now;
        allowed = !platform::cpus_oversubscribed();
    }
    return allowed;
}

int lock_until(pthread_mutex_t* m, const Deadline& d) {
#if defined(__SANITIZE_THREAD__)
    // ThreadSanitizer (GCC 12) intercepts neither pthread_mutex_clocklock nor
    // an EOWNERDEAD from pthread_mutex_timedlock, and would then report every
    // later unlock as wrong. Under TSan only, poll trylock (which it models
    // fully) until the deadline.
    int rc = 0;
    auto tried = [&] {
        rc = pthread_mutex_trylock(m);
        return rc != EBUSY;
    };
    return wait_until(tried, d, kTryLockPoll) == Waited::ready ? rc : ETIMEDOUT;
#else
    return pthread_mutex_clocklock(m, d.clock, &d.abs);
#endif
}

}  // namespace core

}  // namespace shm
