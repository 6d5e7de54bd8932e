// The wait layer on its own (core/wait.hpp): deadlines, spinning, sleeping
// on a futex word, waking, and noticing a blocker's death.
//
// Every wait is bounded by a generous cap against hangs; nothing asserts on
// how long something took, only on counts and events.
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <thread>

#include "core/liveness.hpp"
#include "core/wait.hpp"
#include "platform/platform.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shm::core::ProcessId;
namespace liveness = shm::core::liveness;

namespace {

// Memory shared with forked children.
template <class T>
T* shared() {
    void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    return ::new (p) T();
}
template <class T>
void unshare(T* p) {
    p->~T();
    ::munmap(p, sizeof(T));
}

constexpr auto kCap = 60s;  // against hangs only

}  // namespace

// ---- the wait layer ----------------------------------------------------------------

namespace {

// Sleeps on `word` while it holds 0; ready once it does not. Counts its sleeps.
struct WordWaiter : shm::core::Waiter {
    std::atomic<std::uint32_t>& word;
    std::atomic<std::uint32_t>& sleepers;
    int sleeps = 0;
    WordWaiter(std::atomic<std::uint32_t>& w, std::atomic<std::uint32_t>& s) : word(w), sleepers(s) {}
    bool ready() { return word.load() != 0; }
    shm::core::Sleep arm() {
        sleepers.fetch_add(1);
        ++sleeps;
        return shm::core::Sleep{&word, 0};
    }
    void disarm() { sleepers.fetch_sub(1); }
};

}  // namespace

TEST_CASE("wait: deadlines compare once, on their own clock", "[core][wait]") {
    using shm::core::Deadline;
    CHECK(shm::core::before(timespec{1, 5}, timespec{1, 6}));
    CHECK(shm::core::before(timespec{1, 999999999}, timespec{2, 0}));
    CHECK_FALSE(shm::core::before(timespec{2, 0}, timespec{2, 0}));
    CHECK_FALSE(Deadline::never().passed());
    CHECK(Deadline::in(-1s).passed());
    CHECK(Deadline::at(std::chrono::system_clock::now() - 1s).passed());
    CHECK_FALSE(Deadline::in(1h).passed());
    CHECK(Deadline::in(std::chrono::hours(24 * 365 * 200)).infinite);
    // The earlier of a deadline and a poll interval.
    const Deadline soon = Deadline::in(1ms), late = Deadline::in(1h);
    const Deadline e1 = shm::core::earlier(soon, 50ms);
    CHECK((e1.abs.tv_sec == soon.abs.tv_sec && e1.abs.tv_nsec == soon.abs.tv_nsec));
    const Deadline e2 = shm::core::earlier(late, 50ms);
    CHECK(shm::core::before(e2.abs, late.abs));
    CHECK_FALSE(shm::core::earlier(Deadline::never(), 50ms).infinite);
    // Another clock cannot be compared: the poll interval, on CLOCK_MONOTONIC.
    const Deadline rt = Deadline::at(std::chrono::system_clock::now() + 1ms);
    CHECK(shm::core::earlier(rt, 50ms).clock == CLOCK_MONOTONIC);
}

TEST_CASE("wait: a backoff spins, then yields, then says sleep", "[core][wait]") {
    shm::core::WaitPolicy p;
    p.spins = 5;
    p.yields = 3;
    shm::core::Backoff b(p);
    int steps = 0;
    while (b.step()) ++steps;
    CHECK(steps == 8);
    CHECK(b.spun_out());
    b.reset();
    CHECK_FALSE(b.spun_out());
}

TEST_CASE("wait: a wait that is never satisfied times out at its deadline", "[core][wait]") {
    std::atomic<std::uint32_t> word{0}, sleepers{0};
    for (const shm::core::WaitPolicy& p : {shm::core::kSemaphoreWait, shm::core::kQueueGetWait, shm::core::kBarrierWait}) {
        WordWaiter w(word, sleepers);
        const auto t0 = std::chrono::steady_clock::now();
        CHECK(shm::core::wait(w, shm::core::Deadline::in(30ms), p) == shm::core::Waited::timeout);
        CHECK(std::chrono::steady_clock::now() - t0 < kCap);
        CHECK(sleepers.load() == 0);
    }
    // It sleeps rather than spins to the deadline. Shown with a policy that
    // does not spin (one that spins may, on a loaded machine, spend a short
    // deadline spinning), and a deadline no plausible preemption uses up.
    {
        WordWaiter w(word, sleepers);
        CHECK(shm::core::wait(w, shm::core::Deadline::in(300ms), shm::core::kBarrierWait) ==
              shm::core::Waited::timeout);
        CHECK(w.sleeps >= 1);
        CHECK(sleepers.load() == 0);
    }
    // On CLOCK_REALTIME too.
    WordWaiter w(word, sleepers);
    CHECK(shm::core::wait(w, shm::core::Deadline::at(std::chrono::system_clock::now() + 30ms),
                          shm::core::kEventWait) == shm::core::Waited::timeout);
    // Already passed: no sleep at all.
    WordWaiter late(word, sleepers);
    CHECK(shm::core::wait(late, shm::core::Deadline::in(-1ms), shm::core::kConditionWait) ==
          shm::core::Waited::timeout);
    CHECK(late.sleeps == 0);
}

TEST_CASE("wait: a waker wakes a sleeper in another process", "[core][wait]") {
    struct Shared {
        std::atomic<std::uint32_t> word{0}, sleepers{0}, result{0};
        std::atomic<int> sleeps{0};
    };
    auto* sh = shared<Shared>();
    const pid_t pid = test::spawn([&] {
        WordWaiter w(sh->word, sh->sleepers);
        // No spin and no poll: only a wake ends the sleep.
        const auto r = shm::core::wait(w, shm::core::Deadline::never(), shm::core::kConditionWait);
        sh->sleeps.store(w.sleeps);
        sh->result.store(r == shm::core::Waited::ready ? 1 : 2);
        return 0;
    });
    REQUIRE(test::eventually([&] { return sh->sleepers.load() == 1; }, kCap));
    sh->word.store(1, std::memory_order_seq_cst);
    shm::core::wake(sh->word, INT_MAX);
    test::require_exit_ok(pid);
    CHECK(sh->result.load() == 1);
    CHECK(sh->sleeps.load() >= 1);
    unshare(sh);
}

TEST_CASE("wait: Sleep::woken tells a sleep a wake ended from one the time ended", "[core][wait]") {
    using shm::core::Deadline;
    // Ready only once told of a wake. arm() may first let a deadline pass.
    struct Told : shm::core::Waiter {
        std::atomic<std::uint32_t>& word;
        std::uint32_t expected;
        const Deadline* arm_after = nullptr;
        bool woken = false;
        int sleeps = 0;
        Told(std::atomic<std::uint32_t>& w, std::uint32_t e) : word(w), expected(e) {}
        bool ready() const { return woken; }
        shm::core::Sleep arm() {
            while (arm_after && !arm_after->passed()) std::this_thread::sleep_for(1ms);
            ++sleeps;
            shm::core::Sleep s{&word, expected};
            s.woken = &woken;
            return s;
        }
    };
    std::atomic<std::uint32_t> word{0};
    // The time ends it.
    Told timed(word, 0);
    CHECK(shm::core::wait(timed, Deadline::in(20ms), shm::core::kConditionWait) == shm::core::Waited::timeout);
    CHECK_FALSE(timed.woken);
    CHECK(timed.sleeps == 1);
    // The word no longer holds what it expects: as a wake, at once.
    Told changed(word, 1);
    CHECK(shm::core::wait(changed, Deadline::in(kCap), shm::core::kConditionWait) == shm::core::Waited::ready);
    CHECK(changed.woken);
    CHECK(changed.sleeps == 1);
    // Woken once its deadline has passed: the wait times out, and the
    // waiter still knows that a wake ended its sleep.
    Told late(word, 1);
    const Deadline d = Deadline::in(20ms);
    late.arm_after = &d;
    CHECK(shm::core::wait(late, d, shm::core::kConditionWait) == shm::core::Waited::timeout);
    CHECK(late.woken);
    CHECK(late.sleeps == 1);
}

TEST_CASE("wait: a sleeper notices its blocker's death at the next poll", "[core][wait]") {
    struct Shared {
        std::atomic<std::uint32_t> word{0};
        std::atomic<std::int32_t> pid{0};
        std::atomic<std::uint64_t> start{0};
    };
    auto* sh = shared<Shared>();
    const pid_t owner = test::spawn([&] {
        const ProcessId me = liveness::self();
        sh->start.store(me.start_time);
        sh->pid.store(me.pid);
        for (;;) ::pause();  // holds the word, never changes it
        return 0;
    });
    REQUIRE(test::eventually([&] { return sh->pid.load() == owner; }, kCap));

    // Ready when the word changes; the re-check looks at the owner.
    struct W : shm::core::Waiter {
        Shared& s;
        int rechecks = 0;
        bool owner_died = false;
        explicit W(Shared& sh) : s(sh) {}
        bool ready() const { return owner_died || s.word.load() != 0; }
        bool recheck() {
            ++rechecks;
            owner_died = !liveness::alive(ProcessId{s.pid.load(), s.start.load()});
            return owner_died;
        }
        shm::core::Sleep arm() { return shm::core::Sleep{&s.word, 0}; }
    };
    for (shm::core::Recheck when : {shm::core::Recheck::after_poll, shm::core::Recheck::before_sleep}) {
        shm::core::WaitPolicy p;
        p.poll = 5ms;
        p.recheck = when;
        W alive_owner(*sh);
        // While the owner lives, the re-checks find nothing and the wait times out.
        CHECK(shm::core::wait(alive_owner, shm::core::Deadline::in(50ms), p) == shm::core::Waited::timeout);
        CHECK_FALSE(alive_owner.owner_died);
        CHECK(alive_owner.rechecks >= 1);
    }
    test::kill_and_reap(owner);
    for (shm::core::Recheck when : {shm::core::Recheck::after_poll, shm::core::Recheck::before_sleep}) {
        shm::core::WaitPolicy p;
        p.poll = 5ms;
        p.recheck = when;
        W w(*sh);
        CHECK(shm::core::wait(w, shm::core::Deadline::in(kCap), p) == shm::core::Waited::ready);
        CHECK(w.owner_died);
    }
    unshare(sh);
}

TEST_CASE("wait: a condition alone is polled with a growing pause", "[core][wait]") {
    int looks = 0;
    auto third = [&] { return ++looks == 3; };
    CHECK(shm::core::wait_until(third, shm::core::Deadline::in(kCap), shm::core::kTryLockPoll) ==
          shm::core::Waited::ready);
    CHECK(looks == 3);
    looks = 0;
    auto never = [&] {
        ++looks;
        return false;
    };
    CHECK(shm::core::wait_until(never, shm::core::Deadline::in(20ms), shm::core::kMetaLockPoll) ==
          shm::core::Waited::timeout);
    CHECK(looks >= 1);
}

TEST_CASE("wait: a pthread mutex is locked by a deadline", "[core][wait]") {
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    CHECK(shm::core::lock_until(&m, shm::core::Deadline::in(kCap)) == 0);
    int rc = -1;
    std::thread other([&] { rc = shm::core::lock_until(&m, shm::core::Deadline::in(20ms)); });
    other.join();
    CHECK(rc == ETIMEDOUT);
    pthread_mutex_unlock(&m);
    std::thread again([&] {
        rc = shm::core::lock_until(&m, shm::core::Deadline::in(kCap));
        if (rc == 0) pthread_mutex_unlock(&m);
    });
    again.join();
    CHECK(rc == 0);
}

TEST_CASE("wait: a learned spin grows back while spinning pays and shrinks on a quiet peer", "[core][wait]") {
    using shm::core::kSpinMax;
    using shm::core::kSpinMin;
    shm::core::SpinBudget b;
    CHECK(b.ns == kSpinMax.count());
    // Waits that end long after a full spin would have: halve, down to the floor.
    b.slept(kSpinMax.count() * 10);
    CHECK(b.ns == kSpinMax.count() / 2);
    for (int i = 0; i < 20; ++i) b.timed_out();
    CHECK(b.ns == kSpinMin.count());
    // Waits done while spinning: grow by an eighth, never past the top.
    const std::int64_t before = b.ns;
    b.spun();
    CHECK(b.ns == before + before / 8);
    for (int i = 0; i < 100; ++i) b.spun();
    CHECK(b.ns == kSpinMax.count());
    // A wait that slept but was answered within a full spin: spin fully next time.
    for (int i = 0; i < 20; ++i) b.timed_out();
    b.slept(kSpinMax.count() / 2);
    CHECK(b.ns == kSpinMax.count());
}

TEST_CASE("wait: under oversubscription a waiter spins briefly, yields a few times, then gives up", "[core][wait]") {
    using shm::core::kBriefSpins;
    using shm::core::kBriefYields;
    struct Counting {
        int calls = 0;
        int ready_at = 0;  // 0: never
        bool ready() { return ++calls == ready_at; }
    };
    // Ready during the spin: found there, before any yield.
    Counting early{0, kBriefSpins / 2};
    CHECK(shm::core::yield_briefly(early));
    CHECK(early.calls == kBriefSpins / 2);
    // Never ready: it stops on its own after the spin and at most the yields.
    Counting never;
    CHECK_FALSE(shm::core::yield_briefly(never));
    CHECK(never.calls > kBriefSpins);
    CHECK(never.calls <= kBriefSpins + kBriefYields);
    // A waiter that can say whether its blocker moved is asked; one that
    // cannot counts as not moved.
    struct Moving : Counting {
        std::uint64_t moves = 0;
        std::uint64_t progress() { return ++moves; }
    };
    Moving moving;
    CHECK_FALSE(shm::core::yield_briefly(moving));
    CHECK(moving.moves >= 1);
    CHECK(shm::core::progress_of(never) == 0);
}

TEST_CASE("wait: a learned wait is satisfied by another thread, spinning or asleep", "[core][wait]") {
    // The budget of kQueueGetWait is this thread's: make it spin briefly and
    // then sleep, then spin fully; either way the wait ends ready.
    std::atomic<std::uint32_t> word{0}, sleepers{0};
    for (int round = 0; round < 2; ++round) {
        word.store(0);
        if (round == 0)
            for (int i = 0; i < 20; ++i) shm::core::queue_get_budget().timed_out();
        WordWaiter w(word, sleepers);
        std::thread t([&] {
            // Wake only once the waiter sleeps (round 0) or at once (round 1).
            if (round == 0)
                while (sleepers.load() == 0) std::this_thread::yield();
            word.fetch_add(1);
            shm::core::wake(word, INT_MAX);
        });
        CHECK(shm::core::wait(w, shm::core::Deadline::in(kCap), shm::core::kQueueGetWait) == shm::core::Waited::ready);
        t.join();
        if (round == 0) CHECK(w.sleeps >= 1);
        CHECK(sleepers.load() == 0);
    }
}
