// Sync primitives across processes: RecursiveMutex, Semaphore,
// BoundedSemaphore, Condition, Event, Barrier.
//
//  * the Python seeds' scenarios, one process per thread of the original;
//  * timed waits time out and never hang;
//  * SIGKILL while waiting (and while holding a Condition's Mutex), at least
//    100 rounds each, with the survivors carrying on within bounded waits;
//  * misuse gives clear errors; a RecursiveMutex owner's death is reported.
//
// Children report through exit codes (never Catch macros); every wait is
// bounded; nothing asserts on durations.
#include <sched.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include <shm/shm.hpp>

#include "support.hpp"

using namespace std::chrono_literals;

namespace {

constexpr std::size_t kSize = 1 << 20;

// Children still running at scope exit are killed and reaped, so that a
// failed REQUIRE does not leave blocked processes behind until the test
// program ends.
class Kids {
public:
    Kids() = default;
    Kids(const Kids&) = delete;
    Kids& operator=(const Kids&) = delete;
    ~Kids() {
        for (pid_t p : pids_) test::kill_and_reap(p);
    }
    pid_t add(pid_t p) {
        pids_.push_back(p);
        return p;
    }
    // Wait for a normal exit with code 0 (REQUIREd).
    void finish(pid_t p, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
        forget(p);
        test::require_exit_ok(p, limit);
    }
    void kill(pid_t p) {
        forget(p);
        test::kill_and_reap(p);
    }

private:
    void forget(pid_t p) { pids_.erase(std::remove(pids_.begin(), pids_.end(), p), pids_.end()); }
    std::vector<pid_t> pids_;
};

// State letter of a process from /proc/<pid>/stat ('S' sleeping, 'R'
// running...), '?' if unreadable. Only for the crash tests' statistics.
char proc_state(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string s;
    std::getline(f, s);
    auto close = s.rfind(')');
    if (close == std::string::npos || close + 2 >= s.size()) return '?';
    return s[close + 2];
}

void random_pause(unsigned max_us) {
    std::this_thread::sleep_for(std::chrono::microseconds(test::rng()() % (max_us + 1)));
}

// Bounded wait usable in children: false on time-out.
template <class Pred>
bool within(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    return test::eventually(pred, limit);
}

}  // namespace

// ============================================================================
// 1. The Python seeds' scenarios, across processes
// ============================================================================

namespace {
// The RLock seed: add()/remove() take the lock and call execute(), which
// takes it again.
struct Box {
    shm::RecursiveMutex lock;
    // Atomics so the compiler keeps every store; the read-modify-write is
    // deliberately not atomic: only the lock makes the total exact.
    std::atomic<int> total{0};
    std::atomic<int> inside{0};       // processes inside execute() right now
    std::atomic<int> overlaps{0};     // execute() found another process inside
    std::atomic<int> bad_depth{0};    // depth() != 2 in the nested section
    std::atomic<int> told_dead{0};    // previous_owner_died() in a healthy run
    std::atomic<int> not_owner{0};    // owner_pid() / held_by_caller() wrong
    std::atomic<int> go{0};

    void execute(int n) {
        std::lock_guard<shm::RecursiveMutex> g(lock);
        if (inside.fetch_add(1) != 0) ++overlaps;
        if (lock.depth() != 2) ++bad_depth;
        if (lock.previous_owner_died()) ++told_dead;
        if (!lock.held_by_caller() || lock.owner_pid() != ::getpid()) ++not_owner;
        total.store(total.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
        inside.fetch_sub(1);
    }
    void add(int n) {
        std::lock_guard<shm::RecursiveMutex> g(lock);
        execute(n);
    }
    void remove(int n) {
        std::lock_guard<shm::RecursiveMutex> g(lock);
        execute(-n);
    }
};
}  // namespace

TEST_CASE("RecursiveMutex box: add and remove with nested locking in two processes end at 0",
          "[sync][rmutex]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("rbox", kSize);
    auto& box = seg.construct<Box>("box");
    Kids kids;
    constexpr int kN = 20000;

    // Nesting in one process first: depth counts every acquisition form.
    {
        auto& l = box.lock;
        CHECK(l.depth() == 0);
        CHECK_FALSE(l.held_by_caller());
        l.lock();
        CHECK(l.depth() == 1);
        CHECK(l.try_lock());
        CHECK(l.depth() == 2);
        CHECK(l.try_lock_for(10ms));
        CHECK(l.try_lock_until(std::chrono::steady_clock::now() + 10ms));
        CHECK(l.depth() == 4);
        CHECK(l.owner_pid() == ::getpid());
        CHECK_FALSE(l.previous_owner_died());
        for (unsigned d = 4; d > 0; --d) {
            CHECK(l.depth() == d);
            l.unlock();
        }
        CHECK(l.depth() == 0);
        CHECK(l.owner_pid() == 0);
        CHECK_FALSE(l.held_by_caller());
    }

    pid_t adder = kids.add(test::spawn([] {
        auto s = shm::Segment::open("rbox");
        auto& b = *s.find<Box>("box");
        if (!within([&] { return b.go.load() == 1; })) return 2;
        for (int i = 0; i < kN; ++i) b.add(1);
        return 0;
    }));
    pid_t remover = kids.add(test::spawn([&] {
        // Uses the inherited handle.
        if (!within([&] { return box.go.load() == 1; })) return 2;
        for (int i = 0; i < kN; ++i) box.remove(1);
        return 0;
    }));
    box.go = 1;
    kids.finish(adder, 120s);
    kids.finish(remover, 120s);

    std::lock_guard<shm::RecursiveMutex> g(box.lock);
    CHECK(box.total.load() == 0);
    CHECK(box.overlaps.load() == 0);
    CHECK(box.bad_depth.load() == 0);
    CHECK(box.told_dead.load() == 0);
    CHECK(box.not_owner.load() == 0);
    CHECK(box.lock.recoveries() == 0);
    CHECK(box.lock.depth() == 1);
}

namespace {
struct Items {
    std::atomic<int> slots[5];
    std::atomic<int> got[5];
    Items() {
        for (int i = 0; i < 5; ++i) {
            slots[i] = -1;
            got[i] = -1;
        }
    }
};
}  // namespace

TEST_CASE("Semaphore producer and consumer processes pass 5 items in order", "[sync][semaphore]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("sem5", kSize);
    auto& sem = seg.construct<shm::Semaphore>("items", 0u);
    auto& it = seg.construct<Items>("slots");
    Kids kids;
    CHECK(sem.value() == 0);
    CHECK(sem.bound() == 0);

    pid_t consumer = kids.add(test::spawn([] {
        auto s = shm::Segment::open("sem5");
        auto& q = *s.find<shm::Semaphore>("items");
        auto& st = *s.find<Items>("slots");
        for (int i = 0; i < 5; ++i) {
            if (!q.try_acquire_for(10s)) return 2;
            st.got[i] = st.slots[i].load();
        }
        return 0;
    }));
    pid_t producer = kids.add(test::spawn([&] {
        for (int i = 0; i < 5; ++i) {
            random_pause(2000);  // the consumer usually waits, sometimes not
            it.slots[i] = 100 + i;
            sem.release();
        }
        return 0;
    }));
    kids.finish(producer, 30s);
    kids.finish(consumer, 30s);
    for (int i = 0; i < 5; ++i) {
        INFO("item " << i);
        CHECK(it.got[i].load() == 100 + i);
    }
    CHECK(sem.value() == 0);
    CHECK_FALSE(sem.try_acquire());
}

namespace {
struct Ring {
    static constexpr int kCap = 10;
    static constexpr int kItems = 20;
    // All under the Mutex "m".
    std::atomic<int> buf[kCap];
    std::atomic<int> put{0};    // items put so far
    std::atomic<int> taken{0};  // items taken so far
    std::atomic<int> max_size{0};
    std::atomic<int> got[kItems];
    std::atomic<int> producer_waited{0};  // times the producer found it full
    std::atomic<int> consumer_waited{0};  // times the consumer found it empty
    Ring() {
        for (auto& b : buf) b = -1;
        for (auto& g : got) g = -1;
    }
    int size() const { return put.load() - taken.load(); }
};
}  // namespace

TEST_CASE("Condition producer and consumer processes pass 20 items through a 10 slot buffer",
          "[sync][condition]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("ring", kSize);
    auto& m = seg.construct<shm::Mutex>("m");
    auto& cv = seg.construct<shm::Condition>("changed");
    auto& r = seg.construct<Ring>("ring");
    Kids kids;

    pid_t producer = kids.add(test::spawn([&] {
        for (int i = 0; i < Ring::kItems; ++i) {
            std::unique_lock<shm::Mutex> lk(m);
            if (r.size() >= Ring::kCap) ++r.producer_waited;
            if (!cv.wait_for(lk, 10s, [&] { return r.size() < Ring::kCap; })) return 2;
            r.buf[r.put.load() % Ring::kCap] = 1000 + i;
            r.put = r.put.load() + 1;
            if (r.size() > r.max_size.load()) r.max_size = r.size();
            if (r.size() > Ring::kCap) return 3;
            cv.notify_all();
        }
        return 0;
    }));
    pid_t consumer = kids.add(test::spawn([] {
        auto s = shm::Segment::open("ring");
        auto& mm = *s.find<shm::Mutex>("m");
        auto& c = *s.find<shm::Condition>("changed");
        auto& rr = *s.find<Ring>("ring");
        for (int k = 0; k < Ring::kItems; ++k) {
            {
                std::unique_lock<shm::Mutex> lk(mm);
                if (rr.size() == 0) ++rr.consumer_waited;
                // Unbounded on purpose (the seed's form); the parent bounds
                // the whole child.
                c.wait(lk, [&] { return rr.size() > 0; });
                rr.got[k] = rr.buf[rr.taken.load() % Ring::kCap].load();
                rr.taken = rr.taken.load() + 1;
                c.notify_all();
            }
            // Slow at first so that the producer fills the buffer.
            if (k < 3) std::this_thread::sleep_for(2ms);
        }
        return 0;
    }));
    kids.finish(producer, 30s);
    kids.finish(consumer, 30s);

    std::lock_guard<shm::Mutex> g(m);
    for (int k = 0; k < Ring::kItems; ++k) {
        INFO("item " << k);
        CHECK(r.got[k].load() == 1000 + k);
    }
    CHECK(r.put.load() == Ring::kItems);
    CHECK(r.taken.load() == Ring::kItems);
    CHECK(r.max_size.load() >= 1);
    CHECK(r.max_size.load() <= Ring::kCap);
    CHECK(cv.waiters() == 0);
}

namespace {
struct Light {
    static constexpr int kCars = 3;
    std::atomic<int> ready{0};
    std::atomic<int> stop{0};
    std::atomic<int> passes[kCars];        // wait returned true
    std::atomic<int> passes_green[kCars];  // ... and the light was still green
    std::atomic<int> timeouts[kCars];
    Light() {
        for (int i = 0; i < kCars; ++i) passes[i] = passes_green[i] = timeouts[i] = 0;
    }
};
}  // namespace

TEST_CASE("Event traffic light: one process toggles and 3 cars pass only on green", "[sync][event]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("light", kSize);
    auto& ev = seg.construct<shm::Event>("green");
    auto& L = seg.construct<Light>("light");
    Kids kids;
    constexpr int kCycles = 50;

    std::vector<pid_t> cars;
    for (int c = 0; c < Light::kCars; ++c)
        cars.push_back(kids.add(test::spawn([&, c] {
            ++L.ready;
            while (!L.stop.load()) {
                if (ev.wait_for(2s)) {
                    ++L.passes[c];
                    if (ev.is_set()) ++L.passes_green[c];
                    std::this_thread::sleep_for(300us);  // drive through
                } else {
                    ++L.timeouts[c];
                }
            }
            // The light is left green at the end: everyone gets through.
            return ev.wait_for(10s) ? 0 : 3;
        })));
    REQUIRE(test::eventually([&] { return L.ready.load() == Light::kCars; }, 10s));
    CHECK_FALSE(ev.is_set());

    pid_t light = kids.add(test::spawn([&] {
        // kCycles, and on until a car has passed: a busy machine may not run
        // a car at all during the first ones.
        auto passed = [&] {
            int n = 0;
            for (auto& p : L.passes) n += p.load();
            return n;
        };
        for (int i = 0; i < kCycles || passed() == 0; ++i) {
            ev.set();
            if (!ev.is_set()) return 2;
            std::this_thread::sleep_for(2ms);
            ev.clear();
            if (ev.is_set()) return 3;
            std::this_thread::sleep_for(2ms);
        }
        L.stop = 1;
        ev.set();
        return 0;
    }));
    kids.finish(light, 30s);
    for (pid_t c : cars) kids.finish(c, 30s);

    CHECK(ev.is_set());
    CHECK(ev.wait_for(0ms));
    int passes = 0, green = 0, timeouts = 0;
    for (int c = 0; c < Light::kCars; ++c) {
        passes += L.passes[c];
        green += L.passes_green[c];
        timeouts += L.timeouts[c];
    }
    INFO("passes " << passes << " on green " << green << " time-outs " << timeouts);
    CHECK(passes > 0);
    CHECK(green <= passes);
}

namespace {
struct Generations {
    static constexpr int kGens = 1000;
    std::atomic<std::uint32_t> sums[kGens];
    std::atomic<int> bad_index{0};
    std::atomic<int> go{0};
    Generations() {
        for (auto& s : sums) s = 0;
    }
};
}  // namespace

TEST_CASE("Barrier of 4 processes over 1000 generations hands out each index once per generation",
          "[sync][barrier]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("bar4", kSize);
    auto& bar = seg.construct<shm::Barrier>("bar", 4u);
    auto& G = seg.construct<Generations>("gens");
    Kids kids;
    CHECK(bar.parties() == 4);
    CHECK(bar.generation() == 0);
    CHECK(bar.n_waiting() == 0);
    CHECK_FALSE(bar.broken());

    std::vector<pid_t> ps;
    for (int p = 0; p < 4; ++p)
        ps.push_back(kids.add(test::spawn([p] {
            auto s = shm::Segment::open("bar4");
            auto& b = *s.find<shm::Barrier>("bar");
            auto& g = *s.find<Generations>("gens");
            if (!within([&] { return g.go.load() == 1; })) return 2;
            for (int gen = 0; gen < Generations::kGens; ++gen) {
                std::uint32_t idx = b.arrive_and_wait();
                if (idx >= 4) {
                    ++g.bad_index;
                    return 3;
                }
                g.sums[gen].fetch_add(1u << idx);
                if ((gen + p) % 97 == 0) std::this_thread::sleep_for(100us);  // vary the order
            }
            return 0;
        })));
    G.go = 1;
    for (pid_t p : ps) kids.finish(p, 120s);

    CHECK(G.bad_index.load() == 0);
    int wrong = 0, first_wrong = -1;
    for (int g = 0; g < Generations::kGens; ++g)
        if (G.sums[g].load() != 15u) {
            if (first_wrong < 0) first_wrong = g;
            ++wrong;
        }
    INFO("first wrong generation " << first_wrong << " sum "
                                   << (first_wrong >= 0 ? G.sums[first_wrong].load() : 15u));
    CHECK(wrong == 0);
    CHECK(bar.generation() == std::uint32_t(Generations::kGens));
    CHECK(bar.n_waiting() == 0);
    CHECK_FALSE(bar.broken());
}

// ============================================================================
// 2. Timed waits time out and never hang
// ============================================================================

TEST_CASE("timed waits return false on time-out and true once satisfied", "[sync][timed]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("timed", kSize);
    Kids kids;

    SECTION("Semaphore") {
        auto& s = seg.construct<shm::Semaphore>("s", 0u);
        CHECK_FALSE(s.try_acquire());
        CHECK_FALSE(s.try_acquire_for(20ms));
        CHECK_FALSE(s.try_acquire_until(std::chrono::system_clock::now() + 20ms));
        CHECK_FALSE(s.try_acquire_until(std::chrono::steady_clock::now() + 20ms));
        CHECK_FALSE(s.try_acquire_until(std::chrono::high_resolution_clock::now() + 5ms));
        CHECK_FALSE(s.try_acquire_for(-1s));  // a past deadline is a try
        CHECK(s.value() == 0);
        s.release();
        CHECK(s.value() == 1);
        CHECK(s.try_acquire_for(20ms));
        CHECK(s.value() == 0);
        s.release(3);
        CHECK(s.value() == 3);
        CHECK(s.try_acquire());
        CHECK(s.try_acquire_for(-1s));
        CHECK(s.try_acquire_until(std::chrono::system_clock::now()));
        CHECK_FALSE(s.try_acquire());
        // Released by another process while waiting.
        pid_t c = kids.add(test::spawn([&] {
            std::this_thread::sleep_for(5ms);
            s.release();
            return 0;
        }));
        CHECK(s.try_acquire_for(10s));
        kids.finish(c);
        CHECK(s.value() == 0);
    }

    SECTION("Event") {
        auto& ev = seg.construct<shm::Event>("e");
        CHECK_FALSE(ev.is_set());
        CHECK_FALSE(ev.wait_for(20ms));
        CHECK_FALSE(ev.wait_until(std::chrono::system_clock::now() + 20ms));
        CHECK_FALSE(ev.wait_until(std::chrono::steady_clock::now() + 20ms));
        CHECK_FALSE(ev.wait_for(-1s));
        ev.set();
        CHECK(ev.is_set());
        CHECK(ev.wait_for(20ms));
        CHECK(ev.wait_for(-1s));
        ev.wait();  // returns at once
        ev.set();   // setting twice is harmless
        CHECK(ev.is_set());
        ev.clear();
        CHECK_FALSE(ev.is_set());
        CHECK_FALSE(ev.wait_for(5ms));
        // Set by another process while waiting.
        pid_t c = kids.add(test::spawn([&] {
            std::this_thread::sleep_for(5ms);
            ev.set();
            return 0;
        }));
        CHECK(ev.wait_for(10s));
        kids.finish(c);
        CHECK(ev.is_set());
        CHECK(ev.waiters() == 0);
    }

    SECTION("Condition") {
        auto& m = seg.construct<shm::Mutex>("m");
        auto& cv = seg.construct<shm::Condition>("cv");
        std::unique_lock<shm::Mutex> lk(m);
        CHECK_FALSE(cv.wait_for(lk, 20ms));
        CHECK(lk.owns_lock());
        CHECK(m.held_by_caller());
        CHECK_FALSE(cv.wait_until(lk, std::chrono::system_clock::now() + 20ms));
        CHECK_FALSE(cv.wait_until(lk, std::chrono::steady_clock::now() + 20ms));
        CHECK_FALSE(cv.wait_for(lk, -1s));
        CHECK(m.held_by_caller());
        // With a predicate: the result is pred().
        int calls = 0;
        CHECK_FALSE(cv.wait_for(lk, 20ms, [&] {
            ++calls;
            return false;
        }));
        CHECK(calls >= 2);  // before waiting and after the time-out
        CHECK_FALSE(cv.wait_until(lk, std::chrono::system_clock::now() + 5ms, [] { return false; }));
        CHECK(cv.wait_for(lk, 20ms, [] { return true; }));
        CHECK(cv.wait_until(lk, std::chrono::steady_clock::now() - 1s, [] { return true; }));
        CHECK(lk.owns_lock());
        CHECK(cv.waiters() == 0);
        // Notified by another process: the predicate form returns true.
        auto& flag = seg.construct<std::atomic<int>>("flag", 0);
        pid_t c = kids.add(test::spawn([&] {
            std::this_thread::sleep_for(5ms);
            std::lock_guard<shm::Mutex> g(m);
            flag = 1;
            cv.notify_one();
            return 0;
        }));
        CHECK(cv.wait_for(lk, 10s, [&] { return flag.load() == 1; }));
        CHECK(m.held_by_caller());
        lk.unlock();
        kids.finish(c);
    }

    SECTION("RecursiveMutex held by another process") {
        auto& rm = seg.construct<shm::RecursiveMutex>("rm");
        auto& phase = seg.construct<std::atomic<int>>("phase", 0);
        pid_t c = kids.add(test::spawn([&] {
            rm.lock();
            rm.lock();
            if (rm.depth() != 2) return 2;
            phase = 1;
            if (!within([&] { return phase.load() == 2; })) return 3;
            rm.unlock();
            if (rm.depth() != 1) return 4;
            rm.unlock();
            if (rm.depth() != 0) return 5;
            return 0;
        }));
        REQUIRE(test::eventually([&] { return phase.load() == 1; }, 10s));
        CHECK(rm.owner_pid() == c);
        CHECK(rm.depth() == 0);
        CHECK_FALSE(rm.held_by_caller());
        CHECK_FALSE(rm.try_lock());
        CHECK_FALSE(rm.try_lock_for(20ms));
        CHECK_FALSE(rm.try_lock_until(std::chrono::system_clock::now() + 20ms));
        CHECK_FALSE(rm.try_lock_until(std::chrono::steady_clock::now() + 20ms));
        CHECK_FALSE(rm.try_lock_for(-1s));
        phase = 2;
        REQUIRE(rm.try_lock_for(10s));
        CHECK(rm.depth() == 1);
        CHECK_FALSE(rm.previous_owner_died());
        CHECK(rm.owner_pid() == ::getpid());
        rm.unlock();
        kids.finish(c);
    }

    SECTION("Barrier alone times out and breaks then works again after reset") {
        auto& b = seg.construct<shm::Barrier>("b", 2u);
        auto& idx = seg.construct<std::atomic<int>>("idx", -1);
        REQUIRE_THROWS_AS(b.arrive_and_wait_for(20ms), shm::broken_barrier);
        CHECK(b.broken());
        CHECK(b.n_waiting() == 0);  // the party that timed out has left
        // While broken every arrival fails at once.
        CHECK_THROWS_AS(b.arrive_and_wait_for(10s), shm::broken_barrier);
        CHECK_THROWS_AS(b.arrive_and_wait(), shm::broken_barrier);
        CHECK(b.broken());
        b.reset();
        CHECK_FALSE(b.broken());
        CHECK(b.n_waiting() == 0);
        const std::uint32_t g0 = b.generation();
        pid_t c = kids.add(test::spawn([&] {
            idx = static_cast<int>(b.arrive_and_wait_for(10s));
            return 0;
        }));
        std::uint32_t mine = 99;
        REQUIRE_NOTHROW(mine = b.arrive_and_wait_for(10s));
        kids.finish(c);
        CHECK(mine <= 1);
        CHECK(idx.load() >= 0);
        CHECK(idx.load() + int(mine) == 1);  // indexes 0 and 1
        CHECK(b.generation() == g0 + 1);
        CHECK_FALSE(b.broken());
        // abort() breaks it too; reset() repairs.
        b.abort();
        CHECK(b.broken());
        CHECK_THROWS_AS(b.arrive_and_wait_for(10s), shm::broken_barrier);
        b.reset();
        CHECK_FALSE(b.broken());
    }

    SECTION("Barrier of one party never waits") {
        auto& b = seg.construct<shm::Barrier>("one", 1u);
        CHECK(b.arrive_and_wait() == 0);
        CHECK(b.arrive_and_wait_for(0ms) == 0);
        CHECK(b.generation() == 2);
        CHECK_FALSE(b.broken());
    }
}

// ============================================================================
// 3. SIGKILL while waiting: the others carry on
// ============================================================================

namespace {
struct CondKill {
    // ticket and survivor_waiting under the Mutex.
    std::atomic<int> ticket{0};            // the round the parent has released
    std::atomic<int> survivor_waiting{0};  // the round the survivor waits for
    std::atomic<int> acked{0};
    std::atomic<int> victim_waiting{0};
    std::atomic<int> victim_woke{0};  // nobody notifies a victim: only spurious wake-ups
};
}  // namespace

TEST_CASE("SIGKILL of a Condition waiter: a surviving waiter is still notified", "[sync][condition][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("condkill", kSize);
    auto& m = seg.construct<shm::Mutex>("m");
    auto& cv = seg.construct<shm::Condition>("cv");
    auto& st = seg.construct<CondKill>("st");
    Kids kids;
    constexpr int kRounds = 150;

    pid_t survivor = kids.add(test::spawn([] {
        auto s = shm::Segment::open("condkill");
        auto& mm = *s.find<shm::Mutex>("m");
        auto& c = *s.find<shm::Condition>("cv");
        auto& t = *s.find<CondKill>("st");
        for (int r = 1; r <= kRounds; ++r) {
            std::unique_lock<shm::Mutex> lk(mm, 10s);
            if (!lk.owns_lock()) return 2;
            t.survivor_waiting = r;  // under the lock: waiting once it is released
            if (!c.wait_for(lk, 10s, [&] { return t.ticket.load() >= r; })) return 3;
            t.acked = r;
        }
        return 0;
    }));

    int sleeping = 0, told = 0;
    for (int r = 1; r <= kRounds; ++r) {
        REQUIRE(test::eventually([&] { return st.survivor_waiting.load() == r; }, 10s));
        { std::lock_guard<shm::Mutex> g(m); }  // the survivor has released it: inside wait
        const std::uint32_t before = cv.waiters();
        st.victim_waiting = 0;
        pid_t v = kids.add(test::spawn([&] {
            std::unique_lock<shm::Mutex> lk(m);
            st.victim_waiting = 1;
            cv.wait(lk);  // killed here; never notified before that
            ++st.victim_woke;
            cv.wait(lk);
            return 0;
        }));
        // Odd rounds: settled in the wait (it counted itself and released the
        // mutex). Even rounds: killed at a random moment after fork, possibly
        // before it waits or while it holds the mutex.
        if (r % 2) {
            REQUIRE(test::eventually([&] { return st.victim_waiting.load() == 1 && cv.waiters() > before; }, 10s));
            { std::lock_guard<shm::Mutex> g(m); }
            random_pause(500);
        } else {
            random_pause(1500);  // anywhere from start-up to asleep
        }
        if (proc_state(v) == 'S') ++sleeping;
        kids.kill(v);

        {
            std::unique_lock<shm::Mutex> lk(m, 10s);
            REQUIRE(lk.owns_lock());
            if (lk.mutex()->previous_owner_died()) ++told;  // the victim died holding it
            st.ticket = r;
            if (r % 2)
                cv.notify_one();
            else
                cv.notify_all();
        }
        INFO("round " << r);
        REQUIRE(test::eventually([&] { return st.acked.load() == r; }, 10s));
    }
    kids.finish(survivor, 30s);
    // A victim woken spuriously (allowed) shows in victim_woke; one killed
    // holding the mutex (before waiting, or relocking) in `told`.
    WARN("Condition: " << kRounds << " waiters killed (" << sleeping << " seen asleep in the kernel, "
                       << st.victim_woke.load() << " woken spuriously, " << told
                       << " holding the mutex); survivor notified every round (half notify_one, half "
                       << "notify_all); waiters() hint left at " << cv.waiters());
    // Still a working condition afterwards.
    std::unique_lock<shm::Mutex> lk(m);
    CHECK_FALSE(cv.wait_for(lk, 1ms));
}

namespace {
struct WaitKill {
    std::atomic<int> go{0};     // parent: round r may start
    std::atomic<int> ready{0};  // survivor: about to wait in round r
    std::atomic<int> acked{0};  // survivor: got through round r
    std::atomic<int> victim_ready{0};
    std::atomic<int> victim_through{0};  // a victim got through: must stay 0
};
}  // namespace

TEST_CASE("SIGKILL of an Event waiter: set() still wakes a surviving waiter", "[sync][event][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("evkill", kSize);
    auto& ev = seg.construct<shm::Event>("ev");
    auto& st = seg.construct<WaitKill>("st");
    Kids kids;
    constexpr int kRounds = 150;

    pid_t survivor = kids.add(test::spawn([] {
        auto s = shm::Segment::open("evkill");
        auto& e = *s.find<shm::Event>("ev");
        auto& t = *s.find<WaitKill>("st");
        for (int r = 1; r <= kRounds; ++r) {
            if (!within([&] { return t.go.load() >= r; })) return 2;
            t.ready = r;
            if (!e.wait_for(10s)) return 3;
            t.acked = r;
        }
        return 0;
    }));

    int sleeping = 0, landed_counted = 0;
    for (int r = 1; r <= kRounds; ++r) {
        ev.clear();
        // Hint of waiters with nobody alive waiting: the dead ones so far.
        const std::uint32_t base = ev.waiters();
        st.go = r;
        REQUIRE(test::eventually([&] { return st.ready.load() == r && ev.waiters() >= base + 1; }, 10s));
        st.victim_ready = 0;
        pid_t v = kids.add(test::spawn([&] {
            st.victim_ready = 1;
            ev.wait();
            ++st.victim_through;
            return 0;
        }));
        // Odd rounds: counted as waiting first. Even rounds: killed at a
        // random moment after fork, possibly before it waits.
        if (r % 2) {
            REQUIRE(test::eventually([&] { return st.victim_ready.load() == 1 && ev.waiters() >= base + 2; }, 10s));
            random_pause(500);
        } else {
            random_pause(1500);  // anywhere from start-up to asleep
        }
        if (proc_state(v) == 'S') ++sleeping;
        kids.kill(v);
        if (ev.waiters() >= base + 2) ++landed_counted;
        ev.set();
        INFO("round " << r);
        REQUIRE(test::eventually([&] { return st.acked.load() == r; }, 10s));
    }
    kids.finish(survivor, 30s);
    WARN("Event: " << kRounds << " waiters killed (" << sleeping << " seen asleep in the kernel, "
                   << landed_counted << " still counted as waiting after death); survivor woken every round; "
                   << "waiters() hint left at " << ev.waiters());
    CHECK(st.victim_through.load() == 0);
    ev.clear();
    CHECK_FALSE(ev.wait_for(1ms));
    ev.set();
    CHECK(ev.wait_for(1ms));
}

TEST_CASE("SIGKILL of a Semaphore waiter: release(1) goes to a surviving waiter", "[sync][semaphore][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("semkill", kSize);
    auto& sem = seg.construct<shm::Semaphore>("sem", 0u);
    auto& st = seg.construct<WaitKill>("st");
    Kids kids;
    constexpr int kRounds = 150;

    pid_t survivor = kids.add(test::spawn([] {
        auto s = shm::Segment::open("semkill");
        auto& q = *s.find<shm::Semaphore>("sem");
        auto& t = *s.find<WaitKill>("st");
        for (int r = 1; r <= kRounds; ++r) {
            if (!within([&] { return t.go.load() >= r; })) return 2;
            t.ready = r;
            if (!q.try_acquire_for(10s)) return 3;
            t.acked = r;
        }
        return 0;
    }));

    int sleeping = 0, landed_counted = 0;
    for (int r = 1; r <= kRounds; ++r) {
        const std::uint32_t base = sem.waiters();
        st.go = r;
        REQUIRE(test::eventually([&] { return st.ready.load() == r && sem.waiters() >= base + 1; }, 10s));
        st.victim_ready = 0;
        pid_t v = kids.add(test::spawn([&] {
            st.victim_ready = 1;
            sem.acquire();
            ++st.victim_through;
            return 0;
        }));
        if (r % 2) {
            REQUIRE(test::eventually([&] { return st.victim_ready.load() == 1 && sem.waiters() >= base + 2; }, 10s));
            random_pause(500);
        } else {
            random_pause(1500);  // anywhere from start-up to asleep
        }
        if (proc_state(v) == 'S') ++sleeping;
        kids.kill(v);
        if (sem.waiters() >= base + 2) ++landed_counted;
        CHECK(sem.value() == 0);
        sem.release(1);
        INFO("round " << r);
        REQUIRE(test::eventually([&] { return st.acked.load() == r; }, 10s));
        REQUIRE(sem.value() == 0);  // the survivor took the unit; the dead waiter took nothing
    }
    kids.finish(survivor, 30s);
    WARN("Semaphore: " << kRounds << " waiters killed (" << sleeping << " seen asleep in the kernel, "
                       << landed_counted << " still counted as waiting after death); "
                       << "survivor acquired every release; waiters() hint left at " << sem.waiters());
    CHECK(st.victim_through.load() == 0);
    CHECK(sem.value() == 0);
    CHECK_FALSE(sem.try_acquire_for(1ms));
    sem.release(2);
    CHECK(sem.try_acquire());
    CHECK(sem.try_acquire());
    CHECK(sem.value() == 0);
}

namespace {
struct BarKill {
    static constexpr int kRounds = 100;
    std::atomic<int> go{0};   // round r: the kill phase may start
    std::atomic<int> go2{0};  // round r: the barrier was reset, full generation
    std::atomic<int> broken_seen{0};
    std::atomic<int> completed_early{0};  // a kill-phase generation completed: must stay 0
    std::atomic<std::uint32_t> sums[kRounds];
    BarKill() {
        for (auto& s : sums) s = 0;
    }
};
}  // namespace

TEST_CASE("SIGKILL of a Barrier party: the waiting parties get broken_barrier and reset recovers",
          "[sync][barrier][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("barkill", kSize);
    // 4 parties. Kill phase: survivors A and B and a victim arrive, the 4th
    // never does; the victim is killed. Then reset() and a full generation of
    // A, B, C and the parent.
    auto& bar = seg.construct<shm::Barrier>("bar", 4u);
    auto& st = seg.construct<BarKill>("st");
    Kids kids;
    constexpr int kRounds = BarKill::kRounds;

    auto full_generation = [](BarKill& t, shm::Barrier& b, int r) {
        std::uint32_t idx = b.arrive_and_wait_for(10s);
        if (idx >= 4) return false;
        t.sums[r - 1].fetch_add(1u << idx);
        return true;
    };
    std::vector<pid_t> survivors;
    for (int k = 0; k < 2; ++k)
        survivors.push_back(kids.add(test::spawn([&] {
            for (int r = 1; r <= kRounds; ++r) {
                if (!within([&] { return st.go.load() >= r; })) return 2;
                try {
                    bar.arrive_and_wait();  // unbounded: death detection must end it
                    ++st.completed_early;
                    return 3;
                } catch (const shm::broken_barrier&) {
                    ++st.broken_seen;
                }
                if (!within([&] { return st.go2.load() >= r; })) return 4;
                if (!full_generation(st, bar, r)) return 5;
            }
            return 0;
        })));
    survivors.push_back(kids.add(test::spawn([&] {
        for (int r = 1; r <= kRounds; ++r) {
            if (!within([&] { return st.go2.load() >= r; })) return 4;
            if (!full_generation(st, bar, r)) return 5;
        }
        return 0;
    })));

    int sleeping = 0;
    for (int r = 1; r <= kRounds; ++r) {
        INFO("round " << r);
        const bool victim_first = test::rng()() % 2;
        if (!victim_first) st.go = r;
        pid_t v = kids.add(test::spawn([&] {
            bar.arrive_and_wait();
            return 0;
        }));
        if (victim_first) st.go = r;
        REQUIRE(test::eventually([&] { return bar.n_waiting() == 3; }, 10s));
        random_pause(500);
        if (proc_state(v) == 'S') ++sleeping;
        kids.kill(v);
        REQUIRE(test::eventually([&] { return st.broken_seen.load() == 2 * r; }, 10s));
        CHECK(bar.broken());
        CHECK_THROWS_AS(bar.arrive_and_wait_for(10s), shm::broken_barrier);
        bar.reset();
        REQUIRE_FALSE(bar.broken());
        st.go2 = r;
        std::uint32_t idx = 99;
        REQUIRE_NOTHROW(idx = bar.arrive_and_wait_for(10s));
        REQUIRE(idx < 4);
        st.sums[r - 1].fetch_add(1u << idx);
    }
    for (pid_t s : survivors) kids.finish(s, 30s);
    CHECK(st.completed_early.load() == 0);
    int wrong = 0;
    for (int r = 0; r < kRounds; ++r)
        if (st.sums[r].load() != 15u) ++wrong;
    CHECK(wrong == 0);
    CHECK_FALSE(bar.broken());
    CHECK(bar.n_waiting() == 0);
    WARN("Barrier: " << kRounds << " parties killed while 2 others waited (" << sleeping
                     << " seen asleep in the kernel); both survivors got broken_barrier every round, "
                     << "reset() and a full generation followed; generation() now " << bar.generation());
}

namespace {
struct Critical {
    // Atomics (under the lock) so that the compiler keeps every store in
    // program order: a process can die between any two of them.
    std::atomic<std::int32_t> holder{0};  // pid inside the critical section
    std::atomic<std::uint64_t> a{0};      // a == b outside the critical section
    std::atomic<std::uint64_t> b{0};
    std::atomic<std::uint64_t> marked_deaths{0};  // found `holder` set
    std::atomic<std::uint64_t> unreported{0};     // ... and not told the owner died: a bug
    std::atomic<std::uint64_t> repairs{0};        // acquisitions told the owner died
    std::atomic<std::uint64_t> torn_after{0};     // a != b after repairing: a bug
    std::atomic<int> ticket{0};                   // round released by the parent
    std::atomic<int> waiting{0};                  // the survivor waits for this round
    std::atomic<int> acked{0};
    std::atomic<int> victim_ready{0};
};

// Under the lock, right after acquiring it.
void repair_if_needed(shm::Mutex& m, Critical& c) {
    if (c.holder.load() != 0) {
        ++c.marked_deaths;
        if (!m.previous_owner_died()) ++c.unreported;
    }
    if (m.previous_owner_died()) {
        if (c.a.load() != c.b.load()) c.b = c.a.load();
        c.holder = 0;
        ++c.repairs;
    }
    if (c.a.load() != c.b.load()) ++c.torn_after;
}

void critical_section(Critical& c) {
    c.holder = ::getpid();
    c.a = c.a.load() + 1;
    ::sched_yield();  // SIGKILL is delivered on the way out of the kernel
    c.b = c.a.load();
    c.holder = 0;
}
}  // namespace

TEST_CASE("SIGKILL while holding a Condition's Mutex: the next locker repairs and waiters are still notified",
          "[sync][condition][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("cvhold", kSize);
    auto& m = seg.construct<shm::Mutex>("m");
    auto& cv = seg.construct<shm::Condition>("cv");
    auto& c = seg.construct<Critical>("crit");
    Kids kids;
    constexpr int kRounds = 150;

    // A waiter that lives through every round. Its predicate runs after each
    // (re)acquisition inside wait, so it repairs whenever it is the first to
    // find the dead owner.
    pid_t survivor = kids.add(test::spawn([] {
        auto s = shm::Segment::open("cvhold");
        auto& mm = *s.find<shm::Mutex>("m");
        auto& cc = *s.find<shm::Condition>("cv");
        auto& t = *s.find<Critical>("crit");
        for (int r = 1; r <= kRounds; ++r) {
            std::unique_lock<shm::Mutex> lk(mm, 10s);
            if (!lk.owns_lock()) return 2;
            t.waiting = r;
            if (!cc.wait_for(lk, 10s, [&] {
                    repair_if_needed(*lk.mutex(), t);
                    return t.ticket.load() >= r;
                }))
                return 3;
            t.acked = r;
        }
        return 0;
    }));

    int inside_found_by_parent = 0, parent_told = 0;
    for (int r = 1; r <= kRounds; ++r) {
        INFO("round " << r);
        REQUIRE(test::eventually([&] { return c.waiting.load() == r; }, 10s));
        c.victim_ready = 0;
        pid_t v = kids.add(test::spawn([&] {
            for (std::uint64_t i = 0;; ++i) {
                std::unique_lock<shm::Mutex> lk(m);
                repair_if_needed(m, c);
                critical_section(c);
                // Ready once in the loop: the random pause then lands
                // wherever it is, however late a busy machine ran it.
                if (i == 0) c.victim_ready = 1;
                if (i % 4 == 0) cv.notify_all();     // spurious wake-ups for the survivor
                if (i % 8 == 1) cv.wait_for(lk, 20us);  // a waiter too, now and then
            }
            return 0;
        }));
        REQUIRE(test::eventually([&] { return c.victim_ready.load() == 1; }, 10s));
        random_pause(1000);
        kids.kill(v);

        {
            std::unique_lock<shm::Mutex> lk(m, 10s);
            REQUIRE(lk.owns_lock());
            if (c.holder.load() == v) {
                // Died inside: we are the first locker since, and must be told.
                ++inside_found_by_parent;
                CHECK(lk.mutex()->previous_owner_died());
            }
            if (lk.mutex()->previous_owner_died()) ++parent_told;
            repair_if_needed(m, c);
            CHECK(c.a.load() == c.b.load());
            CHECK(c.holder.load() == 0);
            c.ticket = r;
            if (r % 2)
                cv.notify_one();
            else
                cv.notify_all();
        }
        REQUIRE(test::eventually([&] { return c.acked.load() == r; }, 10s));
    }
    kids.finish(survivor, 30s);
    WARN("Condition + Mutex: " << kRounds << " holders/waiters killed; " << c.marked_deaths.load()
                               << " inside the critical section (" << inside_found_by_parent
                               << " found by the parent, the rest by the waiting survivor); "
                               << c.repairs.load() << " acquisitions told the owner died (" << parent_told
                               << " by the parent); survivor notified every round");
    CHECK(c.unreported.load() == 0);
    CHECK(c.torn_after.load() == 0);
    CHECK(c.marked_deaths.load() > 0);
    CHECK(c.repairs.load() >= c.marked_deaths.load());
    std::lock_guard<shm::Mutex> g(m);
    CHECK_FALSE(m.previous_owner_died());
    CHECK(c.a.load() == c.b.load());
}

// ============================================================================
// 4. Misuse gives clear errors
// ============================================================================

TEST_CASE("misuse of the sync primitives is a clear error", "[sync][misuse]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("misuse", kSize);
    Kids kids;

    SECTION("RecursiveMutex unlock when not held") {
        auto& rm = seg.construct<shm::RecursiveMutex>("rm");
        try {
            rm.unlock();
            FAIL("unlocked a free RecursiveMutex");
        } catch (const shm::lock_error& e) {
            CHECK(e.code().value() == EPERM);
            CHECK(std::string(e.what()).find("unlock") != std::string::npos);
        }
        // Unlocked once too often.
        rm.lock();
        rm.unlock();
        CHECK_THROWS_AS(rm.unlock(), shm::lock_error);
        // Still usable.
        CHECK(rm.try_lock());
        rm.unlock();
    }

    SECTION("RecursiveMutex unlock by another thread") {
        auto& rm = seg.construct<shm::RecursiveMutex>("rm");
        rm.lock();
        rm.lock();
        bool threw = false;
        std::thread t([&] {
            try {
                rm.unlock();
            } catch (const shm::lock_error& e) {
                threw = e.code().value() == EPERM;
            }
        });
        t.join();
        CHECK(threw);
        CHECK(rm.held_by_caller());
        CHECK(rm.depth() == 2);
        rm.unlock();
        rm.unlock();
        CHECK_FALSE(rm.held_by_caller());
    }

    SECTION("RecursiveMutex unlock by another process") {
        auto& rm = seg.construct<shm::RecursiveMutex>("rm");
        rm.lock();
        pid_t c = kids.add(test::spawn([&] {
            if (rm.held_by_caller() || rm.depth() != 0) return 2;
            if (rm.try_lock()) return 3;
            try {
                rm.unlock();
            } catch (const shm::lock_error&) {
                return 0;
            }
            return 1;
        }));
        kids.finish(c);
        CHECK(rm.held_by_caller());
        CHECK(rm.depth() == 1);
        CHECK(rm.owner_pid() == ::getpid());
        rm.unlock();
    }

    SECTION("BoundedSemaphore release above its bound") {
        auto& bs = seg.construct<shm::BoundedSemaphore>("bs", 2u);
        CHECK(bs.bound() == 2);
        CHECK(bs.value() == 2);
        try {
            bs.release();
            FAIL("released above the bound");
        } catch (const shm::error& e) {
            CHECK(e.code().value() == EINVAL);
            CHECK(std::string(e.what()).find("bound") != std::string::npos);
        }
        CHECK(bs.value() == 2);
        CHECK(bs.try_acquire());
        bs.release();  // back to the bound: fine
        CHECK(bs.value() == 2);
        CHECK(bs.try_acquire());
        CHECK(bs.try_acquire());
        CHECK_FALSE(bs.try_acquire());
        CHECK_THROWS_AS(bs.release(3), shm::error);
        CHECK(bs.value() == 0);
        bs.release(2);
        CHECK(bs.value() == 2);
        // Found by its own type from another process, with the same rule.
        pid_t c = kids.add(test::spawn([] {
            auto s = shm::Segment::open("misuse");
            auto* b = s.find<shm::BoundedSemaphore>("bs");
            if (!b || b->bound() != 2) return 2;
            try {
                b->release();
            } catch (const shm::error&) {
                return 0;
            }
            return 1;
        }));
        kids.finish(c);
        CHECK(bs.value() == 2);
    }

    SECTION("Semaphore release that would overflow") {
        auto& s = seg.construct<shm::Semaphore>("s", 0x7fffffffu);
        CHECK(s.value() == 0x7fffffffu);
        try {
            s.release();
            FAIL("overflowed");
        } catch (const shm::error& e) {
            CHECK(e.code().value() == EOVERFLOW);
        }
        CHECK(s.value() == 0x7fffffffu);
        CHECK(s.try_acquire());
        CHECK_THROWS_AS(s.release(2), shm::error);
        s.release(1);
        CHECK(s.value() == 0x7fffffffu);
        CHECK_THROWS_AS(shm::Semaphore{0x80000000u}, shm::error);
    }

    SECTION("Barrier of 0 or too many parties") {
        try {
            seg.construct<shm::Barrier>("b0", 0u);
            FAIL("Barrier(0) constructed");
        } catch (const shm::error& e) {
            CHECK(e.code().value() == EINVAL);
        }
        // The failed construction left nothing behind.
        CHECK(seg.find<shm::Barrier>("b0") == nullptr);
        CHECK(seg.verify().ok);
        CHECK_THROWS_AS(shm::Barrier{0u}, shm::error);
        CHECK_THROWS_AS(shm::Barrier{shm::Barrier::kMaxParties + 1}, shm::error);
        CHECK_NOTHROW(seg.construct<shm::Barrier>("max", shm::Barrier::kMaxParties));
    }

    SECTION("Condition wait without owning the lock") {
        auto& m = seg.construct<shm::Mutex>("m");
        auto& cv = seg.construct<shm::Condition>("cv");
        std::unique_lock<shm::Mutex> deferred(m, std::defer_lock);
        CHECK_THROWS_AS(cv.wait(deferred), shm::lock_error);
        CHECK_THROWS_AS(cv.wait_for(deferred, 10ms), shm::lock_error);
        CHECK_THROWS_AS(cv.wait(deferred, [] { return false; }), shm::error);
        std::unique_lock<shm::Mutex> empty;
        CHECK_THROWS_AS(cv.wait_for(empty, 10ms), shm::lock_error);
        CHECK_FALSE(deferred.owns_lock());
        CHECK_FALSE(m.held_by_caller());
        CHECK(cv.waiters() == 0);
        // The mutex is untouched and usable.
        CHECK(m.try_lock());
        m.unlock();
    }
}

// ============================================================================
// 5. RecursiveMutex owner death
// ============================================================================

TEST_CASE("RecursiveMutex owner killed while holding it twice: the next locker gets it at depth 1",
          "[sync][rmutex][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("rdead", kSize);
    auto& rm = seg.construct<shm::RecursiveMutex>("rm");
    Kids kids;

    pid_t c = kids.add(test::spawn([&] {
        rm.lock();
        rm.lock();
        if (rm.depth() != 2) return 2;
        ::raise(SIGKILL);
        return 0;
    }));
    auto e = test::wait_for(c);
    REQUIRE(e.signaled);
    REQUIRE(e.signal == SIGKILL);

    REQUIRE(rm.try_lock_for(10s));
    CHECK(rm.previous_owner_died());
    CHECK(rm.depth() == 1);
    CHECK(rm.recoveries() == 1);
    CHECK(rm.owner_pid() == ::getpid());
    CHECK(rm.held_by_caller());
    // Nesting on a recovered lock keeps the flag until the last unlock.
    rm.lock();
    CHECK(rm.depth() == 2);
    CHECK(rm.previous_owner_died());
    rm.unlock();
    CHECK(rm.depth() == 1);
    // One unlock releases it.
    rm.unlock();
    CHECK(rm.depth() == 0);
    CHECK_FALSE(rm.held_by_caller());
    CHECK(rm.owner_pid() == 0);

    pid_t other = kids.add(test::spawn([&] {
        if (!rm.try_lock_for(10s)) return 2;
        if (rm.previous_owner_died()) return 3;  // told once, not again
        if (rm.depth() != 1) return 4;
        rm.unlock();
        return 0;
    }));
    kids.finish(other);
    REQUIRE(rm.try_lock());
    CHECK_FALSE(rm.previous_owner_died());
    CHECK(rm.recoveries() == 1);
    rm.unlock();
}

TEST_CASE("Condition with a RecursiveMutex held twice: the wait releases both levels and restores them",
          "[sync][condition]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("rcond", kSize);
    auto& m = seg.construct<shm::RecursiveMutex>("m");
    auto& cv = seg.construct<shm::Condition>("cv");
    auto& flag = seg.construct<std::atomic<int>>("flag", 0);
    Kids kids;

    std::unique_lock<shm::RecursiveMutex> lk(m);
    m.lock();  // depth 2
    pid_t child = kids.add(test::spawn([] {
        auto s = shm::Segment::open("rcond");
        auto& mm = *s.find<shm::RecursiveMutex>("m");
        auto& c = *s.find<shm::Condition>("cv");
        auto& f = *s.find<std::atomic<int>>("flag");
        // Only possible if the waiter released both levels.
        if (!mm.try_lock_for(30s)) return 2;
        f = 1;
        c.notify_all();
        mm.unlock();
        return 0;
    }));
    bool woken = false;
    for (int i = 0; i < 3000 && flag.load() == 0; ++i) woken = cv.wait_for(lk, 10ms) || woken;
    CHECK(flag.load() == 1);
    CHECK(m.held_by_caller());
    CHECK(m.depth() == 2);
    m.unlock();
    CHECK(m.depth() == 1);
    lk.unlock();
    CHECK(m.depth() == 0);
    kids.finish(child);

    // Without the lock held: a clear error.
    std::unique_lock<shm::RecursiveMutex> none(m, std::defer_lock);
    CHECK_THROWS_AS(cv.wait_for(none, 1ms), shm::lock_error);
}

TEST_CASE("Condition: a notify that wakes a waiter is not lost when the waiter gets the mutex back late",
          "[sync][condition]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("cvlate", kSize);
    auto& m = seg.construct<shm::Mutex>("m");
    auto& cv = seg.construct<shm::Condition>("cv");

    // The notifier keeps the mutex until the waiter's deadline has passed,
    // so the waiter it woke takes the mutex back after its time has run
    // out. Only rounds in which the notify came before that deadline count
    // (on a machine slow enough, it may not).
    int counted = 0, reported = 0;
    for (int round = 0; round < 20 && counted < 3; ++round) {
        const auto deadline = std::chrono::steady_clock::now() + 300ms;
        bool woken = false;
        std::thread waiter([&] {
            std::unique_lock<shm::Mutex> lk(m);
            woken = cv.wait_until(lk, deadline);
        });
        // Counted, then the mutex let go: the waiter is in its wait.
        REQUIRE(test::eventually([&] { return cv.waiters() == 1; }, 30s));
        bool in_time;
        {
            std::lock_guard<shm::Mutex> g(m);
            cv.notify_one();
            in_time = std::chrono::steady_clock::now() < deadline;
            while (std::chrono::steady_clock::now() <= deadline) std::this_thread::sleep_for(5ms);
        }
        waiter.join();
        if (in_time) {
            ++counted;
            if (woken) ++reported;
        }
    }
    REQUIRE(counted > 0);
    CHECK(reported == counted);
    CHECK(cv.waiters() == 0);
}

TEST_CASE("Condition::wait_stoppable: the caller stays a waiter while stop() runs", "[sync][condition]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("cvstop", kSize);
    auto& m = seg.construct<shm::RecursiveMutex>("m");
    auto& cv = seg.construct<shm::Condition>("cv");

    SECTION("a notify made while stop() runs ends the wait") {
        std::atomic<int> stops{0};
        std::atomic<bool> notified{false}, got_lock{false};
        std::thread notifier([&] {
            if (!test::eventually([&] { return stops.load() >= 1; }, 30s)) return;
            // Only possible if the wait let go of both levels.
            std::lock_guard<shm::RecursiveMutex> g(m);
            got_lock = true;
            cv.notify_one();
            notified = true;
        });
        std::unique_lock<shm::RecursiveMutex> lk(m);
        m.lock();  // depth 2
        const bool woken = cv.wait_stoppable(lk, std::nullopt, [&] {
            if (++stops == 1) test::eventually([&] { return notified.load(); }, 30s);
            return stops.load() > 1000;  // against a hang only
        });
        notifier.join();
        CHECK(got_lock.load());
        CHECK(woken);
        CHECK(stops.load() == 1);
        CHECK(m.depth() == 2);
        CHECK(cv.waiters() == 0);
        m.unlock();
    }
    SECTION("stop() returning true ends the wait as a time-out") {
        std::unique_lock<shm::RecursiveMutex> lk(m);
        int stops = 0;
        CHECK_FALSE(cv.wait_stoppable(lk, std::nullopt, [&] { return ++stops == 3; }));
        CHECK(stops == 3);
        CHECK(m.depth() == 1);
        CHECK(cv.waiters() == 0);
    }
    SECTION("time-outs, with and without stop()") {
        std::unique_lock<shm::RecursiveMutex> lk(m);
        CHECK_FALSE(cv.wait_stoppable(lk, 30ms, [] { return false; }));
        CHECK_FALSE(cv.wait_stoppable(lk, 30ms, {}));
        CHECK_FALSE(cv.wait_stoppable(lk, 0ms, {}));
        CHECK(m.depth() == 1);
        CHECK(cv.waiters() == 0);
    }
    SECTION("with a Mutex, and without holding it") {
        auto& plain = seg.construct<shm::Mutex>("plain");
        std::unique_lock<shm::Mutex> lk(plain);
        CHECK_FALSE(cv.wait_stoppable(lk, 1ms, [] { return true; }));
        CHECK(lk.owns_lock());
        lk.unlock();
        CHECK_THROWS_AS(cv.wait_stoppable(lk, 1ms, {}), shm::lock_error);
        std::unique_lock<shm::RecursiveMutex> none(m, std::defer_lock);
        CHECK_THROWS_AS(cv.wait_stoppable(none, 1ms, {}), shm::lock_error);
    }
}

TEST_CASE("Condition with a RecursiveMutex: a waiting thread and a process forked meanwhile each get one of two notifies",
          "[sync][condition]") {
    // Python's Condition (an RLock by default): a thread waits first, then
    // a forked process; each notify wakes one. Both wait as the binding
    // does, looking for Ctrl-C every 50 ms; the notifies fall anywhere
    // between those looks.
    test::ShmDir dir;
    auto seg = shm::Segment::create("cvfork", kSize);
    auto& m = seg.construct<shm::RecursiveMutex>("m");
    auto& cv = seg.construct<shm::Condition>("cv");
    auto& sleeping = seg.construct<shm::Semaphore>("sleeping", 0u);
    auto& woken = seg.construct<shm::Semaphore>("woken", 0u);
    Kids kids;

    auto waiter = [&]() -> int {
        std::unique_lock<shm::RecursiveMutex> lk(m);
        sleeping.release();
        int looks = 0;
        if (!cv.wait_stoppable(lk, std::nullopt, [&] { return ++looks > 1200; })) return 2;  // a minute: a hang
        if (!lk.owns_lock() || m.depth() != 1) return 3;
        woken.release();
        return 0;
    };
    for (int round = 0; round < 10; ++round) {
        INFO("round " << round);
        int thread_rc = -1;
        std::thread t([&] { thread_rc = waiter(); });
        REQUIRE(sleeping.try_acquire_for(30s));
        pid_t p = kids.add(test::spawn(waiter));
        REQUIRE(sleeping.try_acquire_for(30s));
        for (int n = 1; n <= 2; ++n) {
            random_pause(120000);
            {
                std::lock_guard<shm::RecursiveMutex> g(m);  // both are in their waits
                cv.notify_one();
            }
            REQUIRE(woken.try_acquire_for(30s));  // a lost notify: nobody wakes
        }
        t.join();
        CHECK(thread_rc == 0);
        kids.finish(p);
        CHECK(cv.waiters() == 0);
    }
}

TEST_CASE("Barrier: a waiter whose stop() says so breaks the barrier for everyone", "[sync][barrier]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("bstop", kSize);
    auto& b = seg.construct<shm::Barrier>("b", 3u);
    Kids kids;

    // A party waits with no stop: it learns of the break from the other one.
    pid_t other = kids.add(test::spawn([] {
        auto s = shm::Segment::open("bstop");
        auto& bb = *s.find<shm::Barrier>("b");
        try {
            bb.arrive_and_wait();
        } catch (const shm::broken_barrier&) {
            return 0;
        }
        return 2;
    }));
    for (int i = 0; i < 30000 && b.n_waiting() < 1; ++i) std::this_thread::sleep_for(1ms);
    REQUIRE(b.n_waiting() == 1);
    int asked = 0;
    std::function<bool()> stop = [&] { return ++asked >= 3; };
    CHECK_THROWS_AS(b.arrive_and_wait(stop), shm::broken_barrier);
    CHECK(asked == 3);
    CHECK(b.broken());
    kids.finish(other);
    b.reset();
    CHECK_FALSE(b.broken());

    // A null stop waits as arrive_and_wait() does.
    auto& one = seg.construct<shm::Barrier>("one", 1u);
    CHECK(one.arrive_and_wait(std::function<bool()>{}) == 0);
}

TEST_CASE("Semaphore: a unit whose wake-up went to a waiter killed before it took it reaches another",
          "[sync][semaphore][crash]") {
    // release(1) wakes one sleeper; killed before it takes the unit, it
    // leaves the unit beside the others, still asleep. That state is made
    // exactly here: the value rises with no wake-up at all.
    test::ShmDir dir;
    auto seg = shm::Segment::create("semlost", kSize);
    auto& sem = seg.construct<shm::Semaphore>("sem", 0u);
    pid_t waiter = test::spawn([&] {
        sem.acquire();
        return 0;
    });
    REQUIRE(test::eventually([&] { return sem.waiters() == 1 && proc_state(waiter) == 'S'; }, 20s));
    std::this_thread::sleep_for(20ms);  // past its spin, asleep in the kernel
    reinterpret_cast<std::atomic<std::uint32_t>*>(&sem)->store(1);  // value_: offset 0 (sync.hpp pins it)
    // Before, it slept until this test's cap; now it looks again within 50 ms.
    test::require_exit_ok(waiter, 30s);
    CHECK(sem.value() == 0);
}
