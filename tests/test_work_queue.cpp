// shm::WorkQueue: delivery at least once. Behaviour, refusals, redelivery
// when a consumer dies, dead letters, and SIGKILL at every crash point of
// put, get, ack, redelivery and dead-letter reads, and at random moments.
#include <algorithm>
#include <map>
#include <set>

#include <signal.h>

#include <shm/shm.hpp>

#include "support.hpp"
#include "platform/testing.hpp"

using namespace std::chrono_literals;
using shm::Lease;
using shm::WorkQueue;
using shm::WorkQueueOptions;
constexpr std::size_t kSize = 8 << 20;

namespace {
bool clean(const std::vector<std::string>& problems) {
    for (auto& p : problems) UNSCOPED_INFO(p);
    return problems.empty();
}

// Everything a WorkQueue holds, as text: the counts, and the items waiting in order.
std::string dump(WorkQueue& q) {
    std::string s = "waiting " + std::to_string(q.qsize()) + " leased " + std::to_string(q.leased()) + " dead " +
                    std::to_string(q.dead_letters()) + " unfinished " + std::to_string(q.unfinished()) + ":";
    return s;
}

// A child that gets one item and dies holding its lease.
pid_t die_holding(const std::string& seg_name, const std::string& q_name) {
    pid_t c = test::spawn([=] {
        auto s = shm::Segment::open(seg_name);
        WorkQueue q = WorkQueue::open(s, q_name);
        Lease l = q.get();
        ::raise(SIGKILL);
        return 1;
    });
    auto e = test::wait_for(c);
    REQUIRE(e.signaled);
    return c;
}
}  // namespace

TEST_CASE("WorkQueue: put, get under a lease, ack", "[work_queue]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("wq", kSize);
    WorkQueue q = WorkQueue::create(seg, "q", {8, 3});
    CHECK(q.capacity() == 8);
    CHECK(q.max_deliveries() == 3);
    CHECK_FALSE(q.try_get());
    q.put("a");
    q.put("b");
    q.put(std::string(100000, 'x'));  // any size the heap holds
    CHECK(q.qsize() == 3);
    CHECK(q.unfinished() == 3);
    Lease a = q.get();
    CHECK(a.item() == "a");
    CHECK(a.deliveries() == 1);
    CHECK(q.qsize() == 2);
    CHECK(q.leased() == 1);
    CHECK(q.unfinished() == 3);
    CHECK(a.ack());
    CHECK(a.acked());
    CHECK_FALSE(a.ack());          // once only
    CHECK_FALSE(q.ack(a.id()));    // by id too
    CHECK(q.unfinished() == 2);
    auto b = q.try_get();
    REQUIRE(b);
    CHECK(b->item() == "b");
    auto big = q.get_for(1s);
    REQUIRE(big);
    CHECK(big->item().size() == 100000);
    CHECK_FALSE(q.join_until(shm::detail::Deadline::in(10ms)));
    CHECK(q.ack(b->id()));         // an ack by id, from the queue
    CHECK_FALSE(b->ack());         // the lease's own ack finds it done
    CHECK(big->ack());
    CHECK(q.unfinished() == 0);
    CHECK(q.join_until(shm::detail::Deadline::in(10ms)));
    CHECK(q.redeliveries() == 0);
    CHECK(clean(q.verify()));
    // Another handle, from open(), sees the same queue and its options.
    WorkQueue again = WorkQueue::open(seg, "q");
    CHECK(again.capacity() == 8);
    REQUIRE_THROWS_AS(WorkQueue::create(seg, "q"), shm::already_exists);
    REQUIRE_THROWS_AS(WorkQueue::open(seg, "absent"), shm::not_found);
    REQUIRE_THROWS_AS(WorkQueue::create(seg, "zero", {0, 3}), shm::error);
    REQUIRE_THROWS_AS(WorkQueue::create(seg, "nodel", {8, 0}), shm::error);
}

TEST_CASE("WorkQueue: refusals change nothing", "[work_queue]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("wqr", 1 << 20);
    WorkQueue q = WorkQueue::create(seg, "q", {3, 2});
    q.put("1");
    q.put("2");
    Lease l = q.get();
    q.put("3");
    // Full: waiting 2 + leased 1 = capacity.
    const std::string before = dump(q);
    const std::size_t used = seg.used_memory();
    CHECK_FALSE(q.try_put("4"));
    CHECK_FALSE(q.put_for("4", 20ms));
    CHECK(dump(q) == before);
    CHECK(seg.used_memory() == used);
    // Room again once acknowledged.
    CHECK(l.ack());
    const std::string before2 = dump(q);
    const std::size_t used2 = seg.used_memory();
    // Out of space: larger than the heap.
    REQUIRE_THROWS_AS(q.put(std::string(2 << 20, 'h')), shm::out_of_space);
    CHECK(dump(q) == before2);
    CHECK(seg.used_memory() == used2);
    // Closed: put refused; get drains, then reports closed.
    q.close();
    CHECK(q.closed());
    REQUIRE_THROWS_AS(q.put("5"), shm::closed);
    CHECK(dump(q) == before2);
    Lease two = q.get();
    Lease three = q.get();
    CHECK(two.item() == "2");
    CHECK(three.item() == "3");
    // Leases are out: a get still waits (a redelivery may come).
    CHECK_FALSE(q.get_for(20ms));
    two.ack();
    three.ack();
    REQUIRE_THROWS_AS(q.get(), shm::closed);
    CHECK_FALSE(q.try_get());
    CHECK(clean(q.verify()));
}

TEST_CASE("WorkQueue: a dead consumer's item is delivered again, first", "[work_queue][processes]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("wqd", kSize);
    WorkQueue q = WorkQueue::create(seg, "q", {16, 4});
    for (const char* s : {"first", "second", "third"}) q.put(s);
    die_holding("wqd", "q");  // took "first"
    CHECK(q.leased() == 1);
    CHECK(q.recover() == 1);
    CHECK(q.leased() == 0);
    Lease again = q.get();
    CHECK(again.item() == "first");  // at the front
    CHECK(again.deliveries() == 2);
    CHECK(q.redeliveries() == 1);
    CHECK(again.ack());
    CHECK(q.get().item() == "second");

    SECTION("a consumer that exits without acknowledging counts as dead too") {
        pid_t c = test::spawn([] {
            auto s = shm::Segment::open("wqd");
            WorkQueue qq = WorkQueue::open(s, "q");
            Lease l = qq.get();
            return l.item() == "third" ? 0 : 1;
        });
        test::require_exit_ok(c);
        // No recover() call: get() finds nothing waiting, so it looks.
        Lease l = q.get();
        CHECK(l.item() == "third");
        CHECK(l.deliveries() == 2);
    }
    SECTION("a getter asleep on an empty queue gets a dead consumer's item") {
        Lease third = q.get();  // nothing waiting now
        pid_t holder = test::spawn([] {
            auto s = shm::Segment::open("wqd");
            WorkQueue qq = WorkQueue::open(s, "q");
            qq.put("late");
            Lease l = qq.get();
            ::pause();  // until killed
            return 1;
        });
        // The holder's lease exists once the queue has nothing waiting and one more leased.
        for (int i = 0; i < 60000 && !(q.leased() == 3 && q.qsize() == 0); ++i) std::this_thread::sleep_for(1ms);
        REQUIRE(q.leased() == 3);
        pid_t getter = test::spawn([] {
            auto s = shm::Segment::open("wqd");
            WorkQueue qq = WorkQueue::open(s, "q");
            Lease l = qq.get();  // asleep until the holder dies
            return l.item() == "late" && l.deliveries() == 2 ? 0 : 1;
        });
        std::this_thread::sleep_for(20ms);
        ::kill(holder, SIGKILL);
        test::require_exit_ok(getter);
        test::wait_for(holder);
        third.ack();
    }
    CHECK(clean(q.verify()));
}

TEST_CASE("WorkQueue: after max_deliveries deaths an item is a dead letter", "[work_queue][processes]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("wqdl", kSize);
    WorkQueue q = WorkQueue::create(seg, "q", {4, 3});
    q.put("poison");
    q.put("fine");
    pid_t last = 0;
    for (int i = 0; i < 3; ++i) {
        last = die_holding("wqdl", "q");
        q.recover();
    }
    CHECK(q.dead_letters() == 1);
    CHECK(q.qsize() == 1);
    CHECK(q.unfinished() == 2);
    Lease fine = q.get();
    CHECK(fine.item() == "fine");
    CHECK(fine.deliveries() == 1);
    fine.ack();
    CHECK_FALSE(q.join_until(shm::detail::Deadline::in(10ms)));  // the dead letter is unfinished
    auto d = q.try_get_dead();
    REQUIRE(d);
    CHECK(d->item == "poison");
    CHECK(d->deliveries == 3);
    CHECK(d->last_pid == last);
    CHECK_FALSE(q.try_get_dead());
    CHECK(q.unfinished() == 0);
    CHECK(q.join_until(shm::detail::Deadline::in(10ms)));
    CHECK(clean(q.verify()));
}

TEST_CASE("WorkQueue: killed at every crash point of every operation: before or after, never between",
          "[work_queue][crash]") {
    test::ShmDir dir;
    struct Step {
        const char* name;
        std::vector<std::function<void(WorkQueue&)>> ops;  // one or more operations, in order
    };
    // Each starts from: "a" waiting, "b" leased by a dead process, "c" a dead letter.
    std::vector<Step> steps = {
        {"put", {[](WorkQueue& q) { q.put(std::string(3000, 'p')); }}},
        {"get", {[](WorkQueue& q) { q.try_get(); }}},
        {"get, then ack", {}},
        {"recover", {[](WorkQueue& q) { q.recover(); }}},
        {"read a dead letter", {[](WorkQueue& q) { q.try_get_dead(); }}},
        {"close", {[](WorkQueue& q) { q.close(); }}},
    };
    // "get, then ack" as two steps: its states are before, after the get, after the ack.
    auto held = std::make_shared<std::optional<Lease>>();
    steps[2].ops = {[held](WorkQueue& q) { *held = q.try_get(); }, [held](WorkQueue&) { REQUIRE((*held)->ack()); }};
    int killed = 0;
    for (auto& st : steps) {
        auto setup = [](const char* seg_name) {
            auto seg = shm::Segment::create(seg_name, kSize);
            WorkQueue q = WorkQueue::create(seg, "q", {8, 1});
            q.put("c");
            die_holding(seg_name, "q");
            q.recover();  // "c" is a dead letter (max_deliveries 1)
            q.put("b");
            die_holding(seg_name, "q");  // "b" leased by a dead process
            q.put("a");
            return seg;
        };
        // The states before, between and after the operations, uninterrupted.
        std::set<std::string> states;
        {
            auto seg = setup("model");
            WorkQueue q = WorkQueue::open(seg, "q");
            states.insert(dump(q));
            for (auto& op : st.ops) {
                op(q);
                states.insert(dump(q));
            }
            held->reset();  // its lease holds the segment
        }
        for (long n = 1;; ++n) {
            REQUIRE(n < 2000);
            auto seg = setup("points");
            WorkQueue q = WorkQueue::open(seg, "q");
            pid_t c = test::spawn([&] {
                auto s = shm::Segment::open("points");
                WorkQueue qq = WorkQueue::open(s, "q");
                shm::testing::kill_at_crash_point(n);
                for (auto& op : st.ops) op(qq);
                return 7;
            });
            auto e = test::wait_for(c);
            INFO(st.name << ", crash point " << n);
            REQUIRE((e.signaled || (e.exited && e.code == 7)));
            CHECK(clean(q.verify()));
            CHECK(states.count(dump(q)) == 1);
            // Nothing lost: every item is somewhere, after recovery.
            q.recover();
            CHECK(q.unfinished() == q.qsize() + q.leased() + q.dead_letters());
            if (e.exited) break;
            ++killed;
        }
    }
    WARN("work queue operations killed at " << killed << " crash points");
    CHECK(killed > 30);
}

TEST_CASE("WorkQueue: consumers SIGKILLed at random, every item done, none after its ack",
          "[work_queue][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("wqs", 32 << 20);
    constexpr int kItems = 3000;
    WorkQueue q = WorkQueue::create(seg, "q", {256, 1000});
    shm::Dict done = shm::Dict::open_or_create(seg, "done");      // item -> times its work finished
    shm::Dict acked = shm::Dict::open_or_create(seg, "acked");    // item -> 1 once its ack returned
    shm::Dict late = shm::Dict::open_or_create(seg, "late");      // items delivered after their ack
    pid_t producer = test::spawn([] {
        auto s = shm::Segment::open("wqs");
        WorkQueue qq = WorkQueue::open(s, "q");
        for (int i = 0; i < kItems; ++i) qq.put(std::to_string(i));
        return 0;
    });
    auto consumer = [] {
        return test::spawn([] {
            auto s = shm::Segment::open("wqs");
            WorkQueue qq = WorkQueue::open(s, "q");
            shm::Dict d = shm::Dict::open(s, "done"), a = shm::Dict::open(s, "acked"), lt = shm::Dict::open(s, "late");
            for (;;) {
                auto l = qq.get_for(100ms);
                if (!l) continue;
                if (a.contains(l->item())) lt.increment(l->item());
                std::this_thread::sleep_for(std::chrono::microseconds(test::rng()() % 400));  // the work
                d.increment(l->item());
                if (l->ack()) a.set(l->item(), 1);
            }
            return 0;
        });
    };
    std::vector<pid_t> consumers;
    for (int i = 0; i < 3; ++i) consumers.push_back(consumer());
    int kills = 0;
    for (int round = 0; round < 100000 && kills < 150; ++round) {
        std::this_thread::sleep_for(std::chrono::microseconds(test::rng()() % 3000));
        std::size_t k = test::rng()() % consumers.size();
        test::kill_and_reap(consumers[k]);
        consumers[k] = consumer();
        ++kills;
    }
    test::require_exit_ok(producer, 120s);
    // Let the consumers finish what is left (the cap only stops a hang).
    REQUIRE(q.join_until(shm::detail::Deadline::in(120s)));
    for (pid_t c : consumers) test::kill_and_reap(c);
    CHECK(q.unfinished() == 0);
    CHECK(q.dead_letters() == 0);
    CHECK(late.size() == 0);
    for (int i = 0; i < kItems; ++i) {
        INFO("item " << i);
        CHECK(done.contains(std::to_string(i)));
    }
    WARN(kills << " consumers killed; " << q.redeliveries() << " items delivered again");
    CHECK(clean(q.verify()));
}
