// shm::Mutex across processes: exclusion, timed locking, lock adaptors,
// misuse, and recovery from a dead owner.
#include <sched.h>
#include <signal.h>

#include <fstream>

#include <shm/shm.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
constexpr std::size_t kSize = 1 << 20;

namespace {
struct Counter {
    std::uint64_t value = 0;
};
}  // namespace

TEST_CASE("4 processes x 100000 increments under a Mutex end exact", "[mutex]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("count", kSize);
    auto& m = seg.construct<shm::Mutex>("lock");
    auto& c = seg.construct<Counter>("counter");
    constexpr int kProcs = 4, kIters = 100000;
    std::vector<pid_t> kids;
    for (int p = 0; p < kProcs; ++p)
        kids.push_back(test::spawn([&] {
            // Each child opens the segment by name, like an unrelated process.
            auto s = shm::Segment::open("count");
            auto& lock = *s.find<shm::Mutex>("lock");
            auto& counter = *s.find<Counter>("counter");
            for (int i = 0; i < kIters; ++i) {
                std::lock_guard<shm::Mutex> g(lock);
                // Non-atomic read-modify-write: only the lock makes it exact.
                std::uint64_t v = counter.value;
                counter.value = v + 1;
            }
            return 0;
        }));
    for (pid_t k : kids) test::require_exit_ok(k, 300s);
    std::lock_guard<shm::Mutex> g(m);
    REQUIRE(c.value == std::uint64_t(kProcs) * kIters);
    REQUIRE_FALSE(m.previous_owner_died());
}

TEST_CASE("try_lock and timed locks see a holder in another process", "[mutex]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("held", kSize);
    auto& m = seg.construct<shm::Mutex>("m");
    auto& phase = seg.construct<std::atomic<int>>("phase", 0);
    pid_t c = test::spawn([&] {
        m.lock();
        phase = 1;
        // Hold until the parent has seen it held, then release.
        while (phase.load() != 2) std::this_thread::sleep_for(100us);
        m.unlock();
        phase = 3;
        return 0;
    });
    REQUIRE(test::eventually([&] { return phase.load() == 1; }));
    CHECK(m.owner_pid() == c);
    CHECK_FALSE(m.try_lock());
    CHECK_FALSE(m.try_lock_for(20ms));
    CHECK_FALSE(m.try_lock_until(std::chrono::system_clock::now() + 20ms));
    CHECK_FALSE(m.try_lock_until(std::chrono::steady_clock::now() + 20ms));
    CHECK_FALSE(m.try_lock_until(std::chrono::high_resolution_clock::now() + 5ms));
    CHECK_FALSE(m.try_lock_for(-1s));  // a past deadline is a try
    phase = 2;
    REQUIRE(m.try_lock_for(30s));
    CHECK(m.owner_pid() == ::getpid());
    CHECK(m.held_by_caller());
    m.unlock();
    CHECK(m.owner_pid() == 0);
    test::require_exit_ok(c);
}

TEST_CASE("standard lock adaptors work", "[mutex]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("adapt", kSize);
    auto& a = seg.construct<shm::Mutex>("a");
    auto& b = seg.construct<shm::Mutex>("b");
    {
        std::scoped_lock both(a, b);
        CHECK(a.held_by_caller());
        CHECK(b.held_by_caller());
    }
    {
        std::unique_lock<shm::Mutex> u(a, 50ms);
        REQUIRE(u.owns_lock());
        u.unlock();
        CHECK(u.try_lock());
    }
    {
        std::unique_lock<shm::Mutex> u(a, std::try_to_lock);
        CHECK(u.owns_lock());
    }
    CHECK_FALSE(a.held_by_caller());
    CHECK_FALSE(b.held_by_caller());
}

TEST_CASE("misuse is a clear error", "[mutex]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("misuse", kSize);
    auto& m = seg.construct<shm::Mutex>("m");
    SECTION("unlock of a free mutex") {
        REQUIRE_THROWS_AS(m.unlock(), shm::lock_error);
    }
    SECTION("relock by the holder") {
        m.lock();
        try {
            m.lock();
            FAIL("relocked");
        } catch (const shm::lock_error& e) {
            CHECK(e.code().value() == EDEADLK);
            CHECK(std::string(e.what()).find("already holds") != std::string::npos);
        }
        m.unlock();
    }
    SECTION("unlock by another thread") {
        m.lock();
        bool threw = false;
        std::thread t([&] {
            try {
                m.unlock();
            } catch (const shm::lock_error& e) {
                threw = e.code().value() == EPERM;
            }
        });
        t.join();
        CHECK(threw);
        CHECK(m.held_by_caller());
        m.unlock();
    }
    SECTION("unlock by another process") {
        m.lock();
        pid_t c = test::spawn([&] {
            try {
                m.unlock();
            } catch (const shm::lock_error&) {
                return 0;
            }
            return 1;
        });
        test::require_exit_ok(c);
        CHECK(m.held_by_caller());
        m.unlock();
    }
}

TEST_CASE("owner death: the next locker acquires and is told once", "[mutex][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("dead", kSize);
    auto& m = seg.construct<shm::Mutex>("m");
    SECTION("killed while holding") {
        pid_t c = test::spawn([&] {
            m.lock();
            ::raise(SIGKILL);
            return 0;
        });
        REQUIRE(test::wait_for(c).signaled);
        REQUIRE(m.try_lock_for(10s));
        CHECK(m.previous_owner_died());
        CHECK(m.recoveries() == 1);
        m.unlock();
        m.lock();
        CHECK_FALSE(m.previous_owner_died());  // repaired: not poisoned, not repeated
        m.unlock();
    }
    SECTION("exited without unlocking, observed by a blocked waiter") {
        pid_t holder = test::spawn([&] {
            m.lock();
            std::this_thread::sleep_for(50ms);
            ::_exit(0);
            return 0;
        });
        REQUIRE(test::eventually([&] { return m.owner_pid() == holder; }));
        m.lock();  // blocks until the holder exits
        CHECK(m.previous_owner_died());
        m.unlock();
        test::require_exit_ok(holder);
    }
    SECTION("a recovering holder that dies too: the next one is told again") {
        pid_t a = test::spawn([&] {
            m.lock();
            ::raise(SIGKILL);
            return 0;
        });
        REQUIRE(test::wait_for(a).signaled);
        pid_t b = test::spawn([&] {
            m.lock();
            if (!m.previous_owner_died()) return 1;
            ::raise(SIGKILL);
            return 0;
        });
        REQUIRE(test::wait_for(b).signaled);
        REQUIRE(m.try_lock_for(10s));
        CHECK(m.previous_owner_died());
        CHECK(m.recoveries() == 2);
        m.unlock();
    }
}

// ---- a wake-up lost with the waiter it went to ----------------------------------------
// Not under ThreadSanitizer: there a waiter polls trylock instead of sleeping
// in the kernel (core::lock_until), so no wake-up can be lost, and none of
// this can be set up.
#if !defined(__SANITIZE_THREAD__)

namespace {
constexpr std::uint32_t kFutexWaiters = 0x80000000u;  // glibc's robust lock word: "others sleep"

// The lock word of a shm::Mutex or RecursiveMutex (glibc's __data.__lock; the
// pthread mutex is the object's first member: mutex.hpp pins it there).
template <class M>
std::atomic<std::uint32_t>& lock_word(M& m) {
    return *reinterpret_cast<std::atomic<std::uint32_t>*>(&reinterpret_cast<pthread_mutex_t*>(&m)->__data.__lock);
}

// Whether process pid sleeps in a futex wait (its wchan names one).
bool in_futex_wait(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/wchan");
    std::string w;
    std::getline(f, w);
    return w.find("futex") != std::string::npos;
}
}  // namespace

TEMPLATE_TEST_CASE("a waiter whose wake-up was lost still gets the mutex", "[mutex][crash]", shm::Mutex,
                   shm::RecursiveMutex) {
    // The kernel wakes one waiter at an unlock; that waiter carries the
    // knowledge that others sleep. Killed between its wake-up and its lock,
    // it takes that knowledge with it: the others sleep on beside a free
    // mutex. Here that state is made exactly: the holder clears the
    // "others sleep" bit, as a dead woken waiter leaves it, and unlocks.
    test::ShmDir dir;
    auto seg = shm::Segment::create("lost", kSize);
    auto& m = seg.template construct<TestType>("m");
    auto& got = seg.construct<std::atomic<int>>("got", 0);
    m.lock();
    pid_t waiter = test::spawn([&] {
        m.lock();
        got = 1;
        m.unlock();
        return 0;
    });
    // It sleeps in the kernel, and has said so in the lock word.
    REQUIRE(test::eventually([&] { return (lock_word(m).load() & kFutexWaiters) && in_futex_wait(waiter); }, 20s));
    lock_word(m).fetch_and(~kFutexWaiters);
    m.unlock();  // no wake-up: nobody is said to sleep
    // Before, it slept until this test's cap; now it looks again within 50 ms.
    test::require_exit_ok(waiter, 30s);
    CHECK(got.load() == 1);
    CHECK(m.try_lock());
    CHECK_FALSE(m.previous_owner_died());
    m.unlock();
}

namespace {
// Put the waiters and this thread on one CPU and make this thread a
// real-time one (SCHED_FIFO), so that no waiter runs while it does. False
// (and nothing changed) where that is not allowed.
cpu_set_t saved_cpus;
void lower_and_unpin() {
    sched_param normal{};
    ::sched_setscheduler(0, SCHED_OTHER, &normal);
    ::sched_setaffinity(0, sizeof saved_cpus, &saved_cpus);
}
bool pin_and_raise(const std::vector<pid_t>& waiters) {
    cpu_set_t one;
    CPU_ZERO(&one);
    if (::sched_getaffinity(0, sizeof saved_cpus, &saved_cpus) != 0) return false;
    int cpu = -1;
    for (int c = 0; c < CPU_SETSIZE && cpu < 0; ++c)
        if (CPU_ISSET(c, &saved_cpus)) cpu = c;
    CPU_SET(cpu, &one);
    sched_param rt{};
    rt.sched_priority = 1;
    if (::sched_setscheduler(0, SCHED_FIFO, &rt) != 0) return false;
    bool ok = ::sched_setaffinity(0, sizeof one, &one) == 0;
    for (pid_t w : waiters) ok = ok && ::sched_setaffinity(w, sizeof one, &one) == 0;
    if (!ok) lower_and_unpin();
    return ok;
}
}  // namespace

TEST_CASE("waiters SIGKILLed as the mutex is handed to them: the others still get it", "[mutex][crash]") {
    // Rounds of: this process holds the mutex, three waiter processes sleep
    // on it (queued in turn), a fourth process takes and releases it again
    // and again with no wait (as the heap lock's spin does), this process
    // unlocks, and the first waiter (the one the kernel wakes) is SIGKILLed
    // after a random delay: before it takes the mutex, while, or after.
    // Killed after its wake-up while the fourth held the mutex, it leaves
    // the others asleep with nobody told of them. The other two must each
    // get the mutex.
    test::ShmDir dir;
    auto seg = shm::Segment::create("handed", kSize);
    auto& m = seg.construct<shm::Mutex>("m");
    auto& got = seg.construct<std::atomic<int>>("got", 0);
    auto& go = seg.construct<std::atomic<int>>("go", 0);
    for (int round = 0; round < 100; ++round) {
        INFO("round " << round);
        got = 0;
        go = 0;
        m.lock();
        std::vector<pid_t> waiters;
        for (int w = 0; w < 3; ++w) {
            waiters.push_back(test::spawn([&] {
                m.lock();
                got.fetch_add(1);
                m.unlock();
                return 0;
            }));
            // Queued in this order: each sleeps before the next starts.
            REQUIRE(test::eventually([&] { return in_futex_wait(waiters.back()); }, 20s));
        }
        pid_t taker = test::spawn([&] {
            while (go.load() == 0) {
            }
            for (int i = 0; i < 2000; ++i) {
                if (m.try_lock()) m.unlock();
            }
            return 0;
        });
        // A delay of 0 to 40 µs, spun (a sleep would take 50 µs at least).
        // In half the rounds this thread runs meanwhile as a real-time task
        // on the waiters' one CPU, where it may (as root): the woken waiter
        // then cannot run before it is killed.
        const auto delay = std::chrono::nanoseconds(test::rng()() % 40'000);
        const bool hold_cpu = round % 2 == 0 && pin_and_raise(waiters);
        go = 1;
        m.unlock();
        for (auto t0 = std::chrono::steady_clock::now(); std::chrono::steady_clock::now() - t0 < delay;) {
        }
        ::kill(waiters[0], SIGKILL);
        if (hold_cpu) lower_and_unpin();
        test::kill_and_reap(waiters[0]);
        test::require_exit_ok(taker, 30s);
        test::require_exit_ok(waiters[1], 30s);
        test::require_exit_ok(waiters[2], 30s);
        CHECK(got.load() >= 2);
        // Free again.
        REQUIRE(m.try_lock_for(30s));
        m.unlock();
    }
    WARN(m.recoveries() << " of 100 killed waiters held the mutex when they died");
}
#endif  // !__SANITIZE_THREAD__
