// shm::Mutex across processes: exclusion, timed locking, lock adaptors,
// misuse, and recovery from a dead owner.
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
