// Deadlines as the wait layer takes them: an absolute time on a kernel clock.
// Public only so that the primitives' chrono templates can build one.
#pragma once

#include <time.h>

#include <chrono>
#include <type_traits>

namespace shm::detail {

struct Deadline {
    clockid_t clock = CLOCK_MONOTONIC;
    timespec abs{0, 0};
    bool infinite = true;

    static Deadline never() { return Deadline{}; }

    template <class Clock, class Duration>
    static Deadline at(const std::chrono::time_point<Clock, Duration>& tp) {
        using namespace std::chrono;
        Deadline d;
        d.infinite = false;
        nanoseconds ns;
        if constexpr (std::is_same_v<Clock, system_clock>) {
            d.clock = CLOCK_REALTIME;
            ns = duration_cast<nanoseconds>(tp.time_since_epoch());
        } else if constexpr (std::is_same_v<Clock, steady_clock>) {
            d.clock = CLOCK_MONOTONIC;  // libstdc++'s steady_clock
            ns = duration_cast<nanoseconds>(tp.time_since_epoch());
        } else {
            d.clock = CLOCK_MONOTONIC;
            ns = duration_cast<nanoseconds>(steady_clock::now().time_since_epoch() + (tp - Clock::now()));
        }
        if (ns.count() < 0) ns = nanoseconds(0);
        d.abs.tv_sec = static_cast<time_t>(ns.count() / 1000000000);
        d.abs.tv_nsec = static_cast<long>(ns.count() % 1000000000);
        return d;
    }

    template <class Rep, class Period>
    static Deadline in(const std::chrono::duration<Rep, Period>& d) {
        // Anything beyond a century is "forever" (and cannot overflow).
        if (std::chrono::duration<double>(d).count() > 3.2e9) return never();
        return at(std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(d));
    }

    bool passed() const;
};

}  // namespace shm::detail
