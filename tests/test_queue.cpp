// shm::Queue across processes: order and exactly-once delivery, blocking and
// time-outs, close, task_done/join, batches, zero copy, typed queues, the
// byte budget, and producers and consumers SIGKILLed at random points and
// at every step of put, get and repair.
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/syscall.h>

#include <cstddef>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <shm/shm.hpp>

#include "core/liveness.hpp"
#include "objects/queue_layout.hpp"

#include "support.hpp"
#include "platform/testing.hpp"

using namespace std::chrono_literals;
constexpr std::size_t kSize = 16 << 20;

namespace {
std::string item(std::uint32_t producer, std::uint32_t seq) {
    std::string s(64, '.');
    std::memcpy(&s[0], &producer, 4);
    std::memcpy(&s[4], &seq, 4);
    return s;
}
std::pair<std::uint32_t, std::uint32_t> parse(const std::string& s) {
    std::uint32_t p, q;
    std::memcpy(&p, s.data(), 4);
    std::memcpy(&q, s.data() + 4, 4);
    return {p, q};
}

// Somebody sleeps in a get (`consumers`) or a put of the queue `name`: the
// event a test waits for before it wakes them, where a sleep would only
// hope that a busy machine had run them that far.
bool asleep_in(shm::Segment& seg, const std::string& name, bool consumers) {
    for (const shm::ObjectInfo& o : seg.objects())
        if (o.name == name) {
            auto* c = static_cast<const shm::detail::QueueControl*>(seg.at_offset(o.offset));
            return (consumers ? c->consumers_waiting : c->producers_waiting).load() != 0;
        }
    return false;
}
shm::detail::QueueControl* control_of(shm::Segment& seg, const std::string& name) {
    for (const shm::ObjectInfo& o : seg.objects())
        if (o.name == name) return static_cast<shm::detail::QueueControl*>(seg.at_offset(o.offset));
    return nullptr;
}
}  // namespace

TEST_CASE("queue basics: FIFO, full, empty, sizes and limits", "[queue]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("q", kSize);
    shm::QueueOptions o;
    o.capacity = 5;  // rounded up to 8
    o.max_item_size = 100;
    shm::Queue q = shm::Queue::create(seg, "jobs", o);
    CHECK(q.capacity() == 8);
    CHECK(q.max_item_size() == 100);
    CHECK(q.empty());
    CHECK_FALSE(q.try_get());
    REQUIRE_THROWS_AS(q.get_nowait(), shm::empty);
    for (int i = 0; i < 8; ++i) q.put("item" + std::to_string(i));
    CHECK(q.full());
    CHECK(q.qsize() == 8);
    CHECK_FALSE(q.try_put("x"));
    REQUIRE_THROWS_AS(q.put_nowait("x"), shm::full);
    CHECK_FALSE(q.put_for("x", 10ms));
    for (int i = 0; i < 8; ++i) CHECK(q.get() == "item" + std::to_string(i));
    CHECK_FALSE(q.get_for(10ms));
    q.put("");  // empty items are items
    CHECK(q.get().empty());
    try {
        q.put(std::string(101, 'x'));
        FAIL("oversized item accepted");
    } catch (const shm::error& e) {
        CHECK(e.code().value() == EMSGSIZE);
        CHECK(std::string(e.what()).find("max_item_size of 100") != std::string::npos);
    }
    REQUIRE_THROWS_AS(shm::Queue::create(seg, "jobs", o), shm::already_exists);
    shm::Queue again = shm::Queue::open(seg, "jobs");
    again.put("shared");
    CHECK(q.get() == "shared");
    REQUIRE_THROWS_AS(shm::Queue::open(seg, "none"), shm::not_found);
    shm::QueueOptions bad;
    bad.capacity = 1;
    REQUIRE_THROWS_AS(shm::Queue::create(seg, "bad", bad), shm::error);
    bad.capacity = 8;
    bad.max_item_size = 0;
    REQUIRE_THROWS_AS(shm::Queue::create(seg, "bad", bad), shm::error);
}

TEST_CASE("a reused buffer takes each item whole whatever size it had", "[queue]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("q", kSize);
    shm::Queue q = shm::Queue::create(seg, "jobs");
    // Same size as the buffer (copied in place), longer, shorter, empty,
    // and same size again after a shorter one.
    const std::vector<std::string> items = {"abcd", "wxyz", "a longer item than four", "ab", "", "efgh", "ijkl"};
    std::string out = "0123";
    for (const auto& it : items) q.put(it);
    for (const auto& it : items) {
        q.get(out);
        CHECK(out == it);
    }
    // get_many into a vector whose strings keep their last sizes (its first
    // item comes by the blocking get, the rest by the non-blocking one).
    std::vector<std::string> batch = {"1234", "12", "", "123456789"};
    for (const auto& it : items) q.put(it);
    CHECK(q.get_many(batch, items.size(), 1s) == items.size());
    CHECK(batch == items);
    CHECK(q.empty());
}

namespace {
struct Seen {
    static constexpr int kProducers = 4, kItems = 100000;
    std::atomic<std::uint8_t> count[kProducers][kItems];
    std::atomic<int> out_of_order{0};
    std::atomic<int> bad{0};
    std::atomic<int> producers_done{0};
    Seen() {
        for (auto& row : count)
            for (auto& c : row) c = 0;
    }
};
}  // namespace

TEST_CASE("4 producers x 4 consumers x 100000 items: exactly once and in order per producer", "[queue][processes]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("mpmc", 64 << 20);
    shm::QueueOptions o;
    o.capacity = 1024;
    o.max_item_size = 64;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    auto& seen = seg.construct<Seen>("seen");
    std::vector<pid_t> producers, consumers;
    for (std::uint32_t c = 0; c < 4; ++c)
        consumers.push_back(test::spawn([&] {
            std::uint32_t last[Seen::kProducers];
            for (auto& l : last) l = ~0u;
            for (;;) {
                std::string s;
                try {
                    s = q.get();
                } catch (const shm::closed&) {
                    return 0;
                }
                auto [p, i] = parse(s);
                if (p >= Seen::kProducers || i >= Seen::kItems) {
                    ++seen.bad;
                    continue;
                }
                // FIFO per producer, as one consumer sees it.
                if (last[p] != ~0u && i <= last[p]) ++seen.out_of_order;
                last[p] = i;
                seen.count[p][i].fetch_add(1);
            }
        }));
    for (std::uint32_t p = 0; p < Seen::kProducers; ++p)
        producers.push_back(test::spawn([&, p] {
            for (std::uint32_t i = 0; i < Seen::kItems; ++i) q.put(item(p, i));
            return 0;
        }));
    for (pid_t k : producers) test::require_exit_ok(k, 300s);
    q.close();
    for (pid_t k : consumers) test::require_exit_ok(k, 300s);
    int missing = 0, twice = 0;
    for (auto& row : seen.count)
        for (auto& c : row) {
            if (c == 0) ++missing;
            if (c > 1) ++twice;
        }
    CHECK(missing == 0);
    CHECK(twice == 0);
    CHECK(seen.out_of_order == 0);
    CHECK(seen.bad == 0);
    CHECK(q.qsize() == 0);
}

TEST_CASE("threads of several processes share each process's id: exactly once and in order per producer",
          "[queue][threads]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("threads", 64 << 20);
    shm::QueueOptions o;
    o.capacity = 64;  // small: producers and consumers keep catching up with each other
    o.max_item_size = 64;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    auto& seen = seg.construct<Seen>("seen");
    constexpr std::uint32_t kItems = 20000;
    // Two processes, each with two producer threads and two consumer
    // threads. Under ThreadSanitizer one process runs all four producers:
    // it cannot see synchronisation that passes through another process
    // (a consumer there releasing bytes a producer here then reuses).
#if defined(__SANITIZE_THREAD__)
    constexpr std::uint32_t kPerProcess = 4;
#else
    constexpr std::uint32_t kPerProcess = 2;
#endif
    auto worker = [&](std::uint32_t first_producer) {
        return test::spawn([&, first_producer] {
            std::vector<std::thread> threads;
            for (std::uint32_t p = first_producer; p < first_producer + kPerProcess; ++p)
                threads.emplace_back([&, p] {
                    for (std::uint32_t i = 0; i < kItems; ++i) q.put(item(p, i));
                });
            for (int c = 0; c < 2; ++c)
                threads.emplace_back([&] {
                    std::uint32_t last[Seen::kProducers];
                    for (auto& l : last) l = ~0u;
                    std::string s;
                    for (;;) {
                        try {
                            q.get(s);
                        } catch (const shm::closed&) {
                            return;
                        }
                        auto [p, i] = parse(s);
                        if (p >= Seen::kProducers || i >= kItems) {
                            ++seen.bad;
                            continue;
                        }
                        if (last[p] != ~0u && i <= last[p]) ++seen.out_of_order;
                        last[p] = i;
                        seen.count[p][i].fetch_add(1);
                        q.task_done();
                    }
                });
            for (std::uint32_t t = 0; t < kPerProcess; ++t) threads[t].join();
            seen.producers_done.fetch_add(static_cast<int>(kPerProcess));
            for (std::size_t t = kPerProcess; t < threads.size(); ++t) threads[t].join();
            return 0;
        });
    };
    std::vector<pid_t> workers;
    for (std::uint32_t first = 0; first < 4; first += kPerProcess) workers.push_back(worker(first));
    REQUIRE(test::eventually([&] { return seen.producers_done.load() == 4; }, 300s));
    CHECK(q.join_for(60s));
    q.close();
    for (pid_t w : workers) test::require_exit_ok(w, 60s);
    int missing = 0, twice = 0;
    for (std::uint32_t p = 0; p < 4; ++p)
        for (std::uint32_t i = 0; i < kItems; ++i) {
            if (seen.count[p][i] == 0) ++missing;
            if (seen.count[p][i] > 1) ++twice;
        }
    CHECK(missing == 0);
    CHECK(twice == 0);
    CHECK(seen.out_of_order == 0);
    CHECK(seen.bad == 0);
    CHECK(q.qsize() == 0);
}

TEST_CASE("blocking get and put wake across processes and time-outs return", "[queue]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("block", kSize);
    shm::QueueOptions o;
    o.capacity = 2;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    // A consumer blocked on an empty queue is woken by a put.
    pid_t c = test::spawn([&] { return q.get() == "wake" ? 0 : 1; });
    REQUIRE(test::eventually([&] { return asleep_in(seg, "q", true); }));
    q.put("wake");
    test::require_exit_ok(c);
    // A producer blocked on a full queue is woken by a get.
    q.put("a");
    q.put("b");
    pid_t p = test::spawn([&] {
        q.put("c");
        return 0;
    });
    REQUIRE(test::eventually([&] { return asleep_in(seg, "q", false); }));
    CHECK(q.get() == "a");
    test::require_exit_ok(p);
    CHECK(q.get() == "b");
    CHECK(q.get() == "c");
    // Time-outs: outcomes only.
    CHECK_FALSE(q.get_for(5ms).has_value());
    CHECK_FALSE(q.closed());
    q.put("x");
    q.put("y");
    CHECK_FALSE(q.put_for("z", 5ms));
    CHECK(q.get_many(10, 5ms) == std::vector<std::string>{"x", "y"});
    CHECK(q.get_many(10, 5ms).empty());
}

namespace {
// Make membarrier(2) fail with EPERM in this process, as a container's
// seccomp filter might. False where that cannot be set up.
bool refuse_membarrier() {
#if defined(__x86_64__)
    sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_membarrier, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof f / sizeof f[0]), f};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
    if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return false;
    return ::syscall(__NR_membarrier, 0, 0, 0) == -1 && errno == EPERM;
#else
    return false;
#endif
}
}  // namespace

// Publishing skips its fence in processes registered for membarrier; one
// refused it must fence its own stores and poll while it sleeps.
TEST_CASE("a process refused membarrier trades items both ways with one that has it", "[queue]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("nomembarrier", kSize);
    shm::Queue req = shm::Queue::create(seg, "req"), rep = shm::Queue::create(seg, "rep");
    auto& refused = seg.construct<std::atomic<int>>("refused", 0);
    constexpr int kRounds = 2000;
    pid_t child = test::spawn([&] {
        refused = refuse_membarrier() ? 1 : 2;
        for (int i = 0; i < kRounds; ++i) {
            std::string s = req.get();
            if (i % 100 == 0) std::this_thread::sleep_for(3ms);  // the parent sleeps in get
            rep.put(s);
        }
        return 0;
    });
    REQUIRE(test::eventually([&] { return refused.load() != 0; }));
    if (refused == 2) WARN("no seccomp filter here: both processes have membarrier");
    for (int i = 0; i < kRounds; ++i) {
        if (i % 100 == 50) std::this_thread::sleep_for(3ms);  // the child sleeps in get
        req.put(std::to_string(i));
        REQUIRE(rep.get_for(10s) == std::optional<std::string>(std::to_string(i)));
    }
    test::require_exit_ok(child, 10s);
}

TEST_CASE("close: puts fail and consumers drain then see closed and blocked ones wake", "[queue]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("close", kSize);
    shm::Queue q = shm::Queue::create(seg, "q");
    pid_t blocked = test::spawn([&] {
        try {
            q.get();
            return 1;
        } catch (const shm::closed&) {
            return 0;
        }
    });
    REQUIRE(test::eventually([&] { return asleep_in(seg, "q", true); }));
    q.close();
    test::require_exit_ok(blocked);
    CHECK(q.closed());
    REQUIRE_THROWS_AS(q.put("late"), shm::closed);
    REQUIRE_THROWS_AS(q.reserve(), shm::closed);

    shm::Queue r = shm::Queue::create(seg, "r");
    for (int i = 0; i < 10; ++i) r.put(std::to_string(i));
    r.close();
    for (int i = 0; i < 10; ++i) CHECK(r.get() == std::to_string(i));
    REQUIRE_THROWS_AS(r.get(), shm::closed);
    CHECK_FALSE(r.get_for(5ms).has_value());
    CHECK_FALSE(r.try_get().has_value());
    REQUIRE_THROWS_AS(r.get_nowait(), shm::closed);
}

TEST_CASE("task_done and join: join returns when every item is processed", "[queue][join]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("join", kSize);
    shm::Queue q = shm::Queue::create(seg, "q");
    auto& processed = seg.construct<std::atomic<int>>("processed", 0);
    CHECK(q.join_for(5ms));  // nothing put: returns at once
    REQUIRE_THROWS_AS(q.task_done(), shm::error);
    std::vector<pid_t> workers;
    for (int w = 0; w < 2; ++w)
        workers.push_back(test::spawn([&] {
            for (;;) {
                std::string s;
                try {
                    s = q.get();
                } catch (const shm::closed&) {
                    return 0;
                }
                std::this_thread::sleep_for(100us);
                ++processed;
                q.task_done();
            }
        }));
    for (int i = 0; i < 200; ++i) q.put(std::to_string(i));
    q.join();
    CHECK(processed.load() == 200);
    q.close();
    for (pid_t w : workers) test::require_exit_ok(w);
}

TEST_CASE("join counts a killed consumer's item as done even before the parent reaps it", "[queue][join]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("zombie", kSize);
    shm::Queue q = shm::Queue::create(seg, "q");
    auto& got = seg.construct<std::atomic<int>>("got", 0);
    q.put("job");
    pid_t c = test::spawn([&] {
        q.get();
        got = 1;
        for (;;) ::pause();  // never calls task_done
        return 0;
    });
    REQUIRE(test::eventually([&] { return got.load() == 1; }));
    ::kill(c, SIGKILL);
    // Not reaped yet: a zombie has exited and must count as dead.
    REQUIRE(test::eventually([&] {
        std::ifstream st("/proc/" + std::to_string(c) + "/stat");
        std::string all((std::istreambuf_iterator<char>(st)), std::istreambuf_iterator<char>());
        return all.find(") Z") != std::string::npos;
    }));
    CHECK(q.join_for(10s));
    int status;
    ::waitpid(c, &status, 0);
}

TEST_CASE("batches zero copy and typed queues", "[queue]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("zc", 32 << 20);
    shm::QueueOptions o;
    o.capacity = 4;
    o.max_item_size = 1 << 20;
    shm::Queue q = shm::Queue::create(seg, "big", o);
    {
        auto r = q.reserve();
        REQUIRE(r.capacity() == (1u << 20));
        std::memset(r.data(), 'z', 1 << 20);
        r.data()[0] = 'a';
        r.commit(1 << 20);
    }
    { auto dropped = q.reserve(); }  // never committed: skipped by consumers
    q.put("after");
    std::size_t seen_len = 0;
    char first = 0;
    q.consume([&](const char* p, std::size_t n) {
        seen_len = n;
        first = p[0];
    });
    CHECK(seen_len == (1u << 20));
    CHECK(first == 'a');
    CHECK(q.get() == "after");
    CHECK(q.empty());

    shm::Queue m = shm::Queue::create(seg, "many");
    CHECK(m.put_many({"1", "2", "3"}) == 3);
    CHECK(m.get_many(2, 1s) == std::vector<std::string>{"1", "2"});
    CHECK(m.get_many(5, 1s) == std::vector<std::string>{"3"});
    // Into a kept vector: resized to the count, its strings reused.
    std::vector<std::string> kept(4, std::string(64, 'k'));
    const char* first_buffer = kept[0].data();
    CHECK(m.put_many({"a", "b"}) == 2);
    CHECK(m.get_many(kept, 8, 1s) == 2);
    CHECK(kept == std::vector<std::string>{"a", "b"});
    CHECK(kept[0].data() == first_buffer);
    CHECK(m.get_many(kept, 8, 5ms) == 0);
    CHECK(kept.empty());
    CHECK(m.put_many({"c", "d", "e"}) == 3);
    CHECK(m.get_many(kept, 2, 1s) == 2);
    CHECK(kept == std::vector<std::string>{"c", "d"});
    CHECK(m.get_many(kept, 0, 1s) == 0);
    CHECK(kept.empty());
    CHECK(m.get() == "e");
    // One item too large refuses the whole call: nothing is put.
    try {
        m.put_many({"ok", std::string(m.max_item_size() + 1, 'z'), "after"});
        FAIL("put_many took an item over max_item_size");
    } catch (const shm::error& e) {
        CHECK(e.code().value() == EMSGSIZE);
    }
    CHECK(m.empty());
    std::string buf(100, 'x');
    m.put("reused");
    m.get(buf);
    CHECK(buf == "reused");

    struct Point {
        double x, y;
    };
    shm::TypedQueue<Point> tp(shm::Queue::create(seg, "points"));
    tp.put({1.5, 2.5});
    Point pt = tp.get();
    CHECK(pt.x == 1.5);
    CHECK(pt.y == 2.5);
    shm::TypedQueue<std::string> ts(shm::Queue::create(seg, "strings"));
    ts.put("hello");
    CHECK(ts.get() == "hello");
    CHECK_FALSE(ts.try_get().has_value());
}

// ---- byte budget -----------------------------------------------------------------

namespace {
// Item k of producer p, `len` bytes (at least 12): a header (p, k, len), then
// bytes that depend on all three, so a torn or misplaced item is caught.
std::string sized_item(std::uint32_t p, std::uint32_t k, std::uint32_t len) {
    std::string s(len, '\0');
    std::uint64_t x = (std::uint64_t(p) << 40) ^ (std::uint64_t(k) << 8) ^ len ^ 0x9e3779b97f4a7c15ull;
    for (std::uint32_t i = 12; i < len; ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s[i] = static_cast<char>(x);
    }
    std::memcpy(&s[0], &p, 4);
    std::memcpy(&s[4], &k, 4);
    std::memcpy(&s[8], &len, 4);
    return s;
}
// (p, k) of an item made by sized_item, or nullopt if it is not one, whole.
std::optional<std::pair<std::uint32_t, std::uint32_t>> check_sized(std::string_view s) {
    if (s.size() < 12) return std::nullopt;
    std::uint32_t p, k, len;
    std::memcpy(&p, s.data(), 4);
    std::memcpy(&k, s.data() + 4, 4);
    std::memcpy(&len, s.data() + 8, 4);
    if (len != s.size() || sized_item(p, k, len) != s) return std::nullopt;
    return std::make_pair(p, k);
}
// A size from 12 to max bytes for item k of producer p.
std::uint32_t size_for(std::uint32_t p, std::uint32_t k, std::uint32_t max) {
    std::uint64_t h = (std::uint64_t(p) * 0x9e3779b97f4a7c15ull) ^ (std::uint64_t(k) * 0xbf58476d1ce4e5b9ull);
    h ^= h >> 31;
    return 12 + static_cast<std::uint32_t>(h % (max - 11));
}
}  // namespace

TEST_CASE("byte budget: puts block when bytes run out while slots remain, and oversized items are refused",
          "[queue][bytes]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("bytes", kSize);
    shm::QueueOptions o;
    o.capacity = 64;
    o.max_item_size = 1024;
    o.max_bytes = 4096;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    CHECK(q.capacity() == 64);
    CHECK(q.max_bytes() == 4096);
    CHECK(q.bytes_used() == 0);
    for (int i = 0; i < 4; ++i) q.put(std::string(1024, static_cast<char>('a' + i)));
    // 4 items of 64, but every byte is taken.
    CHECK(q.qsize() == 4);
    CHECK(q.bytes_used() == 4096);
    CHECK(q.full());
    CHECK_FALSE(q.try_put("x"));
    REQUIRE_THROWS_AS(q.put_nowait("x"), shm::full);
    CHECK_FALSE(q.put_for("x", 10ms));
    CHECK(q.try_put(""));  // an empty item takes no bytes
    CHECK(q.qsize() == 5);

    // A producer blocked for bytes wakes when a consumer frees them.
    pid_t p = test::spawn([&] {
        q.put(std::string(1000, 'e'));
        return 0;
    });
    REQUIRE(test::eventually([&] { return asleep_in(seg, "q", false); }));
    CHECK(q.qsize() == 5);
    CHECK(q.get() == std::string(1024, 'a'));
    test::require_exit_ok(p);
    CHECK(q.bytes_used() == 3 * 1024 + 1000);
    CHECK(q.try_put(std::string(24, 'f')));  // exactly the last 24 bytes
    CHECK_FALSE(q.try_put("g"));
    for (int i = 1; i < 4; ++i) CHECK(q.get() == std::string(1024, static_cast<char>('a' + i)));
    CHECK(q.get().empty());
    CHECK(q.get() == std::string(1000, 'e'));
    CHECK(q.get() == std::string(24, 'f'));
    CHECK(q.empty());
    CHECK(q.bytes_used() == 0);
    CHECK_FALSE(q.full());

    // Items are counted in 8-byte units; slots run out first here.
    for (int i = 0; i < 64; ++i) REQUIRE(q.try_put("1234567"));
    CHECK(q.bytes_used() == 64 * 8);
    CHECK_FALSE(q.try_put("1"));
    for (int i = 0; i < 64; ++i) REQUIRE(q.get() == "1234567");
    CHECK(q.bytes_used() == 0);

    // Over the budget: refused with the limit named, even below max_item_size.
    shm::QueueOptions b;
    b.capacity = 8;
    b.max_item_size = 8192;
    b.max_bytes = 4096;
    shm::Queue big = shm::Queue::create(seg, "big", b);
    try {
        big.put(std::string(4097, 'x'));
        FAIL("item over max_bytes accepted");
    } catch (const shm::error& e) {
        CHECK(e.code().value() == EMSGSIZE);
        CHECK(std::string(e.what()).find("max_bytes of 4096") != std::string::npos);
    }
    REQUIRE_THROWS_AS(big.try_put(std::string(5000, 'x')), shm::error);
    REQUIRE_THROWS_AS(big.reserve(4097), shm::error);
    try {
        big.put(std::string(8193, 'x'));
        FAIL("item over max_item_size accepted");
    } catch (const shm::error& e) {
        CHECK(std::string(e.what()).find("max_item_size of 8192") != std::string::npos);
    }
    // An item of the whole budget fits an empty queue, wherever the ring is.
    big.put(std::string(1000, 'p'));
    CHECK(big.get().size() == 1000);
    {
        auto r = big.reserve();
        CHECK(r.capacity() == 4096);
        std::memset(r.data(), 'w', 4096);
        r.commit(4096);
    }
    CHECK_FALSE(big.try_put("x"));
    CHECK(big.get() == std::string(4096, 'w'));
    big.put(std::string(4096, 'v'));
    CHECK(big.get() == std::string(4096, 'v'));

    shm::QueueOptions bad;
    bad.max_bytes = (std::uint64_t(1) << 40) + 1;
    REQUIRE_THROWS_AS(shm::Queue::create(seg, "bad", bad), shm::error);
}

TEST_CASE("byte budget: 100,000 items of up to 1 MiB in 64 MiB take about 64 MiB", "[queue][bytes]") {
    test::ShmDir dir;
    // Slots without a byte budget would need 100,000 × 1 MiB.
    auto seg = shm::Segment::create("huge", 72 << 20);
    shm::QueueOptions o;
    o.capacity = 100000;
    o.max_item_size = 1 << 20;
    o.max_bytes = 64 << 20;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    CHECK(q.capacity() == 131072);
    for (int i = 0; i < 64; ++i) {
        auto r = q.reserve(1 << 20);
        std::memset(r.data(), 'a' + i % 26, 1 << 20);
        r.commit(1 << 20);
    }
    CHECK(q.qsize() == 64);
    CHECK_FALSE(q.try_put("x"));
    for (int i = 0; i < 64; ++i) {
        bool ok = false;
        q.consume([&](const char* p, std::size_t n) {
            ok = n == (1u << 20) && p[0] == 'a' + i % 26 && p[n - 1] == 'a' + i % 26;
        });
        REQUIRE(ok);
    }
    // Now small items: as many as there are slots.
    for (int i = 0; i < 131072; ++i) REQUIRE(q.try_put("small"));
    CHECK_FALSE(q.try_put("small"));
    CHECK(q.get() == "small");
}

TEST_CASE("byte budget: mixed sizes wrap around the byte ring many times, whole and in order", "[queue][bytes][stress]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("wrap", kSize);
    shm::QueueOptions o;
    o.capacity = 32;
    o.max_item_size = 3000;
    o.max_bytes = 10000;  // about 6 items of average size
    shm::Queue q = shm::Queue::create(seg, "q", o);
    constexpr std::uint32_t kProducers = 2, kItems = 20000;
    struct Results {
        std::atomic<std::uint8_t> seen[kProducers][kItems];
        std::atomic<int> bad{0}, out_of_order{0};
        std::atomic<std::uint64_t> bytes{0};
    };
    auto& R = seg.construct<Results>("results");
    for (auto& row : R.seen)
        for (auto& c : row) c = 0;
    std::vector<pid_t> producers, consumers;
    for (std::uint32_t c = 0; c < 2; ++c)
        consumers.push_back(test::spawn([&, c] {
            std::uint32_t next[kProducers] = {};
            auto record = [&](std::string_view s) {
                auto pk = check_sized(s);
                if (!pk || pk->first >= kProducers || pk->second >= kItems) {
                    ++R.bad;
                    return;
                }
                if (pk->second < next[pk->first]) ++R.out_of_order;
                next[pk->first] = pk->second + 1;
                R.seen[pk->first][pk->second].fetch_add(1);
                R.bytes.fetch_add(s.size());
            };
            for (;;) {
                try {
                    if (c == 0)
                        record(q.get());  // a copy
                    else
                        q.consume([&](const char* p, std::size_t n) { record({p, n}); });  // in place
                } catch (const shm::closed&) {
                    return 0;
                }
            }
        }));
    for (std::uint32_t p = 0; p < kProducers; ++p)
        producers.push_back(test::spawn([&, p] {
            for (std::uint32_t k = 0; k < kItems; ++k) {
                std::string s = sized_item(p, k, size_for(p, k, 3000));
                if (p == 0 || k % 3 == 0) {
                    q.put(s);
                } else {
                    // Zero copy, reserving more than it commits.
                    auto r = q.reserve(std::min<std::size_t>(3000, s.size() + 100));
                    std::memcpy(r.data(), s.data(), s.size());
                    r.commit(s.size());
                }
            }
            return 0;
        }));
    for (pid_t k : producers) test::require_exit_ok(k, 300s);
    q.close();
    for (pid_t k : consumers) test::require_exit_ok(k, 300s);
    int missing = 0, twice = 0;
    std::uint64_t bytes = 0;
    for (std::uint32_t p = 0; p < kProducers; ++p)
        for (std::uint32_t k = 0; k < kItems; ++k) {
            if (R.seen[p][k] == 0) ++missing;
            if (R.seen[p][k] > 1) ++twice;
            bytes += size_for(p, k, 3000);
        }
    WARN(bytes << " bytes through a ring of 10000: " << bytes / 10000 << " laps");
    CHECK(bytes / 10000 > 1000);
    CHECK(missing == 0);
    CHECK(twice == 0);
    CHECK(R.bad == 0);
    CHECK(R.out_of_order == 0);
    CHECK(R.bytes == bytes);
    CHECK(q.bytes_used() == 0);
}

TEST_CASE("a producer killed while it waits for bytes does not stop the next one being woken", "[queue][bytes]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("waiter", kSize);
    shm::QueueOptions o;
    o.capacity = 16;
    o.max_item_size = 1000;
    o.max_bytes = 1000;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    q.put(std::string(1000, 'a'));
    pid_t dead = test::spawn([&] {
        q.put(std::string(1000, 'b'));
        return 1;
    });
    REQUIRE(test::eventually([&] { return asleep_in(seg, "q", false); }));  // killed while it waits
    test::kill_and_reap(dead);
    pid_t live = test::spawn([&] {
        q.put(std::string(1000, 'c'));
        return 0;
    });
    // The dead one's bit may still be set, and the live one may take its
    // id: no event tells that it sleeps. If the get below comes first, the
    // put simply does not wait; nothing checked depends on it.
    std::this_thread::sleep_for(30ms);
    CHECK(q.get() == std::string(1000, 'a'));
    test::require_exit_ok(live, 10s);
    CHECK(q.get() == std::string(1000, 'c'));
    CHECK(q.empty());
}

// ---- killed processes ----------------------------------------------------------------

namespace {
struct Ledger {
    static constexpr int kPerProducer = 2000;
    static constexpr int kMaxIds = 1 << 20;
    std::atomic<std::uint8_t> delivered[kMaxIds];  // times each id was recorded as got
    std::atomic<std::uint32_t> acked[512];         // per producer incarnation: puts that returned
    std::atomic<int> torn{0};
    Ledger() {
        for (auto& d : delivered) d = 0;
        for (auto& a : acked) a = 0;
    }
};

// Kill a producer or a consumer `rounds` times at random points, and go on
// until at least kMinAcked puts have been acknowledged (counts, not time:
// on a busy machine the same random pauses leave fewer puts done), then check
// that everything acknowledged came out whole and once, beyond the one item
// each killed consumer may have taken, and that the queue still takes an
// item of its whole byte budget. Items are 12 .. max_item bytes if `mixed`,
// else exactly max_item bytes; mixed producers also use reserve/commit.
void kill_test(const shm::QueueOptions& o, bool mixed, int rounds, std::uint32_t batch = 1) {
    constexpr std::uint64_t kMinAcked = 1000;
    test::ShmDir dir;
    auto seg = shm::Segment::create("crashq", 32 << 20);
    shm::Queue q = shm::Queue::create(seg, "q", o);
    auto& L = seg.construct<Ledger>("ledger");
    int producer_kills = 0, consumer_kills = 0;
    std::uint32_t incarnation = 0;
    auto size_of = [&](std::uint32_t inc, std::uint32_t k) {
        return mixed ? size_for(inc, k, o.max_item_size) : o.max_item_size;
    };
    auto start_producer = [&](std::uint32_t inc) {
        return test::spawn([&, inc] {
            std::vector<std::string> run;
            for (std::uint32_t k = 0; batch > 1 && k < Ledger::kPerProducer;) {
                run.clear();
                for (; run.size() < batch && k < Ledger::kPerProducer; ++k) run.push_back(sized_item(inc, k, size_of(inc, k)));
                q.put_many(run);
                L.acked[inc].store(k);
            }
            for (std::uint32_t k = 0; batch == 1 && k < Ledger::kPerProducer; ++k) {
                std::string s = sized_item(inc, k, size_of(inc, k));
                if (mixed && k % 2) {
                    auto r = q.reserve(s.size());
                    std::memcpy(r.data(), s.data(), s.size());
                    r.commit(s.size());
                } else {
                    q.put(s);
                }
                L.acked[inc].store(k + 1);
            }
            return 0;
        });
    };
    auto record = [&](std::string_view s) {
        auto pk = check_sized(s);
        if (!pk || pk->first >= 512 || pk->second >= Ledger::kPerProducer) {
            ++L.torn;
            return;
        }
        L.delivered[pk->first * Ledger::kPerProducer + pk->second].fetch_add(1);
    };
    auto start_consumer = [&] {
        return test::spawn([&] {
            std::vector<std::string> got;
            for (std::uint64_t n = 0;; ++n) {
                if (batch > 1 && n % 3 != 2) {
                    // Runs of up to `batch`, and of 1 .. batch - 1 (every
                    // other call) so that runs start at varied tickets.
                    if (q.get_many(got, n % 3 ? batch : 1 + n % (batch - 1), 10s) == 0) return 0;
                    for (const auto& s : got) record(s);
                } else if (n % 2) {
                    auto s = q.get_for(10s);
                    if (!s) return 0;
                    record(*s);
                } else {
                    q.consume([&](const char* p, std::size_t len) { record({p, len}); });
                }
            }
        });
    };
    auto acked_so_far = [&] {
        std::uint64_t n = 0;
        for (std::uint32_t inc = 0; inc <= incarnation; ++inc) n += L.acked[inc].load();
        return n;
    };
    pid_t producer = start_producer(incarnation);
    pid_t consumer = start_consumer();
    for (int round = 0; round < rounds; ++round) {
        std::this_thread::sleep_for(std::chrono::microseconds(200 + test::rng()() % 1500));
        if (test::rng()() % 2) {
            test::kill_and_reap(producer);
            ++producer_kills;
            producer = start_producer(++incarnation);
        } else {
            test::kill_and_reap(consumer);
            ++consumer_kills;
            consumer = start_consumer();
        }
        REQUIRE(incarnation < 512);
    }
    // The last pair runs unharmed until enough puts are acknowledged (the
    // producer alone may make 2000); the cap only catches a hang.
    REQUIRE(test::eventually([&] { return acked_so_far() >= kMinAcked; }, 300s));
    test::kill_and_reap(producer);
    ++producer_kills;
    test::kill_and_reap(consumer);
    ++consumer_kills;
    // Drain what is left; it must come out whole, once.
    std::uint64_t drained = 0;
    for (;;) {
        auto s = q.get_for(200ms);
        if (!s) break;
        record(*s);
        ++drained;
    }
    std::uint64_t acked = 0, delivered = 0, twice = 0, lost_acked = 0, beyond_ack = 0;
    for (std::uint32_t inc = 0; inc <= incarnation; ++inc) {
        std::uint32_t a = L.acked[inc].load();
        acked += a;
        for (std::uint32_t k = 0; k < Ledger::kPerProducer; ++k) {
            std::uint8_t d = L.delivered[inc * Ledger::kPerProducer + k].load();
            delivered += d;
            if (d > 1) ++twice;
            if (k < a && d == 0) ++lost_acked;
            if (k >= a + batch && d > 0) ++beyond_ack;  // only those in flight (a .. a + batch - 1) may appear unacked
        }
    }
    WARN("killed " << producer_kills << " producers and " << consumer_kills << " consumers; " << acked
                   << " puts acknowledged, " << delivered << " delivered (" << drained << " drained at the end), "
                   << lost_acked << " acknowledged items missing, " << q.repairs() << " slots repaired");
    CHECK(L.torn == 0);
    CHECK(twice == 0);
    CHECK(beyond_ack == 0);
    // Each killed consumer may have taken one item (or one run) whole
    // without recording it.
    CHECK(lost_acked <= static_cast<std::uint64_t>(consumer_kills) * batch);
    CHECK(acked >= kMinAcked);
    // The queue still works, is empty, and every byte comes back: an item
    // of the whole budget (which repairs what dead consumers left) fits.
    CHECK(q.qsize() == 0);
    const std::size_t whole = std::min<std::uint64_t>(q.max_bytes(), q.max_item_size());
    REQUIRE(q.put_for(std::string(whole, 'w'), 10s));
    CHECK(q.get() == std::string(whole, 'w'));
    CHECK(q.bytes_used() == 0);
    q.put("alive");
    CHECK(q.get() == "alive");
}
}  // namespace

TEST_CASE("200 SIGKILLs of producers and consumers: nothing lost or duplicated beyond a killed consumer's item",
          "[queue][crash]") {
    shm::QueueOptions o;
    o.capacity = 64;
    o.max_item_size = 64;
    kill_test(o, false, 200);
}

TEST_CASE("200 SIGKILLs with a byte budget smaller than capacity x max_item_size and mixed sizes",
          "[queue][crash][bytes]") {
    shm::QueueOptions o;
    o.capacity = 64;
    o.max_item_size = 1024;
    o.max_bytes = 6000;  // a few items: bytes, not slots, run out
    kill_test(o, true, 200);
}

TEST_CASE("200 SIGKILLs of producers and consumers moving runs with put_many and get_many", "[queue][crash][batch]") {
    shm::QueueOptions o;
    o.capacity = 64;
    o.max_item_size = 64;
    kill_test(o, false, 200, 7);
}

TEST_CASE("200 SIGKILLs of runs of mixed sizes under a byte budget", "[queue][crash][bytes][batch]") {
    shm::QueueOptions o;
    o.capacity = 64;
    o.max_item_size = 1024;
    o.max_bytes = 6000;  // a run often finds room for only part of itself
    kill_test(o, true, 200, 5);
}

namespace {
// After a process was killed in the middle of something: the queue yields
// only whole items made by sized_item (at most `expect` of them), then takes
// an item of its whole byte budget, twice, and every byte comes back. (A
// claim a dead process left behind is repaired when a producer needs the
// room it holds back, so the second such item is the proof.)
void check_whole(shm::Queue& q, int expect_at_most) {
    int got = 0;
    for (;;) {
        auto s = q.get_for(50ms);
        if (!s) break;
        REQUIRE(check_sized(*s));
        ++got;
    }
    CHECK(got <= expect_at_most);
    CHECK(q.qsize() == 0);
    const std::string whole(q.max_bytes(), 'w');
    for (int i = 0; i < 2; ++i) {
        REQUIRE(q.put_for(whole, 10s));
        CHECK(q.get() == whole);
    }
    CHECK(q.bytes_used() == 0);
}
}  // namespace

TEST_CASE("a process killed at every step of put, get and repair leaves whole items and all bytes", "[queue][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("steps", kSize);
    shm::QueueOptions o;
    o.capacity = 8;
    o.max_item_size = 1024;
    o.max_bytes = 1024;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    const std::uint64_t repairs0 = q.repairs();

    SECTION("producers") {
        int killed = 0;
        for (long n = 1;; ++n) {
            REQUIRE(n < 50);
            q.put(sized_item(0, 0, 300));  // bytes in use before, so the ring position moves
            pid_t c = test::spawn([&] {
                shm::testing::kill_at_crash_point(n);
                q.put(sized_item(1, static_cast<std::uint32_t>(n), 500));
                return 0;
            });
            test::Exit e = test::wait_for(c, 10s);
            REQUIRE((e.exited || e.signaled));
            if (e.signaled) ++killed;
            check_whole(q, 2);
            if (e.exited) {
                REQUIRE(e.code == 0);
                break;
            }
        }
        CHECK(killed >= 4);
        CHECK(q.repairs() > repairs0);
    }
    SECTION("consumers") {
        int killed = 0;
        for (long n = 1;; ++n) {
            REQUIRE(n < 50);
            q.put(sized_item(2, static_cast<std::uint32_t>(n), 700));
            pid_t c = test::spawn([&] {
                shm::testing::kill_at_crash_point(n);
                auto s = q.get();
                return check_sized(s) ? 0 : 1;
            });
            test::Exit e = test::wait_for(c, 10s);
            REQUIRE((e.exited || e.signaled));
            if (e.signaled) ++killed;
            check_whole(q, 1);
            if (e.exited) {
                REQUIRE(e.code == 0);
                break;
            }
        }
        CHECK(killed >= 3);
    }
    SECTION("repairers") {
        // A producer dies holding a slot (before and after it claimed its
        // bytes); a consumer repairing it is killed at every step.
        for (long producer_step : {1, 2, 3}) {
            int killed = 0;
            for (long n = 1;; ++n) {
                INFO("producer killed at step " << producer_step << ", repairer at step " << n);
                REQUIRE(n < 50);
                pid_t p = test::spawn([&] {
                    shm::testing::kill_at_crash_point(producer_step);
                    q.put(sized_item(3, static_cast<std::uint32_t>(n), 600));
                    return 0;
                });
                test::Exit pe = test::wait_for(p, 10s);
                REQUIRE(pe.signaled);
                pid_t r = test::spawn([&] {
                    shm::testing::kill_at_crash_point(n);
                    return q.get_for(100ms) ? 1 : 0;  // nothing was put
                });
                test::Exit e = test::wait_for(r, 10s);
                REQUIRE((e.exited || e.signaled));
                if (e.signaled) ++killed;
                check_whole(q, 0);
                if (e.exited) {
                    REQUIRE(e.code == 0);
                    break;
                }
            }
            CHECK(killed >= 3);
        }
    }
}

namespace {
// Run n of producer p: `count` items of 200, 250, ... bytes.
std::vector<std::string> sized_run(std::uint32_t p, std::uint32_t n, std::uint32_t count) {
    std::vector<std::string> v;
    for (std::uint32_t i = 0; i < count; ++i) v.push_back(sized_item(p, n * 16 + i, 200 + 50 * i));
    return v;
}
bool all_sized(const std::vector<std::string>& v) {
    for (const auto& s : v)
        if (!check_sized(s)) return false;
    return true;
}
}  // namespace

// put_many() and get_many() claim a run of tickets with one CAS; the cursor
// then names a batch, whose slots the next claimer (or a repairer) names
// the claimer in, from the top down.
TEST_CASE("a process killed at every step of put_many and get_many leaves whole items and all bytes",
          "[queue][crash][batch]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("runs", kSize);
    shm::QueueOptions o;
    o.capacity = 16;
    o.max_item_size = 2048;
    o.max_bytes = 2048;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    const std::uint64_t repairs0 = q.repairs();

    SECTION("producers") {
        int killed = 0;
        for (long n = 1;; ++n) {
            REQUIRE(n < 60);
            q.put(sized_item(0, 0, 300));  // bytes in use before, so the ring position moves
            pid_t c = test::spawn([&] {
                shm::testing::kill_at_crash_point(n);
                q.put_many(sized_run(1, static_cast<std::uint32_t>(n), 4));
                return 0;
            });
            test::Exit e = test::wait_for(c, 10s);
            REQUIRE((e.exited || e.signaled));
            if (e.signaled) ++killed;
            check_whole(q, 5);
            if (e.exited) {
                REQUIRE(e.code == 0);
                break;
            }
        }
        CHECK(killed >= 6);
        CHECK(q.repairs() > repairs0);
    }
    SECTION("consumers") {
        int killed = 0;
        for (long n = 1;; ++n) {
            REQUIRE(n < 60);
            q.put_many(sized_run(2, static_cast<std::uint32_t>(n), 4));
            pid_t c = test::spawn([&] {
                shm::testing::kill_at_crash_point(n);
                auto v = q.get_many(4, 10s);
                return v.size() == 4 && all_sized(v) ? 0 : 1;
            });
            test::Exit e = test::wait_for(c, 10s);
            REQUIRE((e.exited || e.signaled));
            if (e.signaled) ++killed;
            check_whole(q, 4);
            if (e.exited) {
                REQUIRE(e.code == 0);
                break;
            }
        }
        CHECK(killed >= 5);
        CHECK(q.repairs() > repairs0);
    }
    // A claimer dies with its run claimed; the next claimer, a process that
    // was already registered (a new one would inherit the dead one's id and
    // repair it at once), hands the run over and is killed at every step
    // of that. What is left must be repaired by whoever comes next.
    for (const bool put : {true, false}) {
        DYNAMIC_SECTION((put ? "the next producer" : "the next consumer") << " handing over a dead run") {
            auto& step = seg.construct<std::atomic<int>>("step", 0);
            int runs_left = 0;
            for (long dead_step = 1;; ++dead_step) {
                REQUIRE(dead_step < 40);
                int killed = 0;
                long n = 1;
                bool dead_finished = false;
                for (;; ++n) {
                    INFO("run claimer killed at step " << dead_step << ", next claimer at step " << n);
                    REQUIRE(n < 60);
                    step = 0;
                    pid_t w = test::spawn([&] {
                        (void)q.try_get();  // registers
                        step = 1;
                        while (step.load() != 2) std::this_thread::yield();
                        shm::testing::kill_at_crash_point(n);
                        if (put) return q.put_for(sized_item(5, 0, 100), 10s) ? 0 : 1;
                        auto s = q.get_for(10s);
                        return s && check_sized(*s) ? 0 : 1;
                    });
                    REQUIRE(test::eventually([&] { return step.load() == 1; }));
                    if (!put) q.put_many(sized_run(3, static_cast<std::uint32_t>(n), 3));
                    pid_t a = test::spawn([&] {
                        shm::testing::kill_at_crash_point(dead_step);
                        if (put) {
                            q.put_many(sized_run(4, static_cast<std::uint32_t>(n), 3));
                            return 0;
                        }
                        return q.get_many(3, 10s).size() == 3 ? 0 : 1;
                    });
                    test::Exit ae = test::wait_for(a, 10s);
                    REQUIRE((ae.exited || ae.signaled));
                    dead_finished = ae.exited;
                    if (!put) q.put(sized_item(5, 1, 100));  // for the next consumer
                    step = 2;
                    test::Exit e = test::wait_for(w, 10s);
                    REQUIRE((e.exited || e.signaled));
                    if (e.signaled) ++killed;
                    check_whole(q, 5);
                    if (dead_finished || e.exited) {
                        if (e.exited) REQUIRE(e.code == 0);
                        break;
                    }
                }
                if (dead_finished) break;
                ++runs_left;
                CHECK(killed >= 1);
            }
            CHECK(runs_left >= 3);
            CHECK(q.repairs() > repairs0);
        }
    }
}

// put_many() claims as many tickets as there is room for, and waits for
// room only when not even one fits; get_many() takes the run published.
TEST_CASE("put_many and get_many move runs whole and in order, within slots and bytes", "[queue][batch]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("runs", kSize);
    auto flags = [&](const char* name) {
        shm::detail::QueueControl* c = control_of(seg, name);
        return std::make_pair(c->tail.load() & shm::detail::kQueueBatchFlag, c->head.load() & shm::detail::kQueueBatchFlag);
    };
    SECTION("one claim for a run, in both directions") {
        shm::Queue q = shm::Queue::create(seg, "q");
        CHECK(q.put_many({"1", "2", "3"}) == 3);
        CHECK(flags("q").first != 0);  // the tail names a batch
        CHECK(q.get_many(3, 1s) == std::vector<std::string>{"1", "2", "3"});
        CHECK(flags("q").second != 0);
        q.put("4");  // one ticket: the tail names it alone
        CHECK(flags("q").first == 0);
        CHECK(q.get() == "4");
        CHECK(flags("q").second == 0);
        CHECK(q.bytes_used() == 0);
    }
    SECTION("a queue made before batch claims takes one ticket a claim") {
        shm::Queue q = shm::Queue::create(seg, "old");
        control_of(seg, "old")->magic = shm::kQueueMagicSingle;
        shm::Queue again = shm::Queue::open(seg, "old");
        CHECK(again.put_many({"1", "2", "3"}) == 3);
        CHECK(flags("old").first == 0);
        CHECK(again.get_many(3, 1s) == std::vector<std::string>{"1", "2", "3"});
        CHECK(flags("old").second == 0);
    }
    SECTION("runs larger than the queue, across processes and threads, exactly once and in order") {
        shm::QueueOptions o;
        o.capacity = 8;
        o.max_item_size = 1024;
        o.max_bytes = 3000;  // about four items of the larger sizes
        shm::Queue q = shm::Queue::create(seg, "small", o);
        // Three processes of two producer threads, two of two consumer
        // threads: threads of a process share its id, and each hands over
        // the others' runs. Under ThreadSanitizer one process runs all six
        // producers (see the test of threads above).
        constexpr std::uint32_t kProducers = 6, kRuns = 300;
#if defined(__SANITIZE_THREAD__)
        constexpr std::uint32_t kPerProcess = 6;
#else
        constexpr std::uint32_t kPerProcess = 2;
#endif
        struct Got {
            std::atomic<std::uint8_t> n[kProducers][kRuns * 16];
            std::atomic<int> bad{0}, out_of_order{0};
        };
        auto& got = seg.construct<Got>("got");
        std::vector<pid_t> producers, consumers;
        for (std::uint32_t first = 0; first < kProducers; first += kPerProcess)
            producers.push_back(test::spawn([&, first] {
                std::vector<std::thread> threads;
                for (std::uint32_t p = first; p < first + kPerProcess; ++p)
                    threads.emplace_back([&, p] {
                        for (std::uint32_t r = 0; r < kRuns; ++r) q.put_many(sized_run(p, r, 1 + (r + p) % 11));
                    });
                for (auto& t : threads) t.join();
                return 0;
            }));
        for (int proc = 0; proc < 2; ++proc)
            consumers.push_back(test::spawn([&, proc] {
                std::atomic<int> failed{0};
                auto consume = [&](int c) {
                    std::vector<std::string> v;
                    std::uint32_t last[kProducers] = {};
                    bool any[kProducers] = {};
                    for (std::uint32_t i = 0;; ++i) {
                        if (q.get_many(v, c % 2 ? 1 + i % 13 : 32, 10s) == 0) {
                            if (!q.closed()) ++failed;
                            return;
                        }
                        for (const auto& s : v) {
                            auto pk = check_sized(s);
                            if (!pk || pk->first >= kProducers || pk->second >= kRuns * 16) {
                                ++got.bad;
                                continue;
                            }
                            auto [p, k] = *pk;
                            // FIFO per producer, as one consumer thread sees it.
                            if (any[p] && k <= last[p]) ++got.out_of_order;
                            any[p] = true;
                            last[p] = k;
                            got.n[p][k].fetch_add(1);
                        }
                    }
                };
                std::thread other(consume, proc * 2 + 1);
                consume(proc * 2);
                other.join();
                return failed.load() == 0 ? 0 : 1;
            }));
        for (pid_t p : producers) test::require_exit_ok(p, 300s);
        q.close();
        for (pid_t c : consumers) test::require_exit_ok(c, 300s);
        int missing = 0, twice = 0;
        for (std::uint32_t p = 0; p < kProducers; ++p)
            for (std::uint32_t r = 0; r < kRuns; ++r)
                for (std::uint32_t i = 0; i < 1 + (r + p) % 11; ++i) {
                    const int n = got.n[p][r * 16 + i].load();
                    if (n == 0) ++missing;
                    if (n > 1) ++twice;
                }
        CHECK(missing == 0);
        CHECK(twice == 0);
        CHECK(got.bad == 0);
        CHECK(got.out_of_order == 0);
        CHECK(q.bytes_used() == 0);
    }
    SECTION("a closed queue takes no run, and a consumer drains what is there") {
        shm::Queue q = shm::Queue::create(seg, "closing");
        q.put_many({"a", "b"});
        q.close();
        CHECK_THROWS_AS(q.put_many({"c", "d"}), shm::closed);
        CHECK(q.get_many(5, 1s) == std::vector<std::string>{"a", "b"});
        CHECK(q.get_many(5, 1s).empty());
        CHECK(q.qsize() == 0);
    }
}

// A claim is named by its cursor (tail or head) until the next claim moves
// the cursor on; that process hands the claim over to its slot first. These
// kill the first claimer after the hand-over, and after a process has
// inherited its id, and check that the claim is still repaired.
TEST_CASE("a claim handed over to its slot is repaired when its claimer dies", "[queue][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("handover", kSize);
    shm::QueueOptions o;
    o.capacity = 2;
    o.max_item_size = 100;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    auto& holding = seg.construct<std::atomic<int>>("holding", 0);

    SECTION("a producer holding a reservation") {
        pid_t a = test::spawn([&] {
            auto r = q.reserve(100);  // claims ticket 0 and never commits
            holding = 1;
            for (;;) ::pause();
            return 0;
        });
        REQUIRE(test::eventually([&] { return holding.load() == 1; }));
        q.put("b");  // claims ticket 1: hands ticket 0 over to its slot
        test::kill_and_reap(a);
        const std::uint64_t repairs0 = q.repairs();
        CHECK(q.get_for(10s) == std::optional<std::string>("b"));
        CHECK(q.repairs() == repairs0 + 1);
        CHECK(q.bytes_used() == 0);
    }
    SECTION("a consumer in the middle of consume()") {
        q.put("1");
        q.put("2");
        pid_t a = test::spawn([&] {
            q.consume([&](const char*, std::size_t) {
                holding = 1;
                for (;;) ::pause();
            });
            return 0;
        });
        REQUIRE(test::eventually([&] { return holding.load() == 1; }));
        CHECK(q.get() == "2");  // claims ticket 1: hands ticket 0 over to its slot
        test::kill_and_reap(a);
        // Ticket 2 needs ticket 0's slot: the dead consumer's claim is released.
        REQUIRE(q.put_for("3", 10s));
        REQUIRE(q.put_for("4", 10s));
        CHECK(q.get() == "3");
        CHECK(q.get() == "4");
    }
}

TEST_CASE("a process that inherits a dead process's id repairs the claims its cursors name first",
          "[queue][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("inherit", kSize);
    shm::QueueOptions o;
    o.capacity = 2;
    o.max_item_size = 100;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    auto& step = seg.construct<std::atomic<int>>("step", 0);
    q.put("x");
    CHECK(q.get() == "x");  // the test process has id 1; the next process gets id 2

    SECTION("a claim to put") {
        pid_t a = test::spawn([&] {
            auto r = q.reserve(100);  // tail names id 2 as the claimer
            step = 1;
            for (;;) ::pause();
            return 0;
        });
        REQUIRE(test::eventually([&] { return step.load() == 1; }));
        test::kill_and_reap(a);
        // b takes over id 2. Were a's claim left to tail, b would hand it
        // over under id 2 (now alive) and nobody would ever repair it.
        pid_t b = test::spawn([&] {
            q.put("b");
            step = 2;
            for (;;) ::pause();  // stays alive while the test reads
            return 0;
        });
        REQUIRE(test::eventually([&] { return step.load() == 2; }));
        CHECK(q.get_for(10s) == std::optional<std::string>("b"));
        test::kill_and_reap(b);
    }
    SECTION("a claim to get") {
        q.put("1");
        q.put("2");
        pid_t a = test::spawn([&] {
            q.consume([&](const char*, std::size_t) {
                step = 1;
                for (;;) ::pause();
            });
            return 0;
        });
        REQUIRE(test::eventually([&] { return step.load() == 1; }));
        test::kill_and_reap(a);
        pid_t b = test::spawn([&] {
            if (q.get() != "2") return 1;
            step = 2;
            for (;;) ::pause();
            return 0;
        });
        REQUIRE(test::eventually([&] { return step.load() == 2; }));
        // The next put needs the slot a was reading, while b (id 2) lives.
        CHECK(q.put_for("3", 10s));
        CHECK(q.get() == "3");
        test::kill_and_reap(b);
    }
}


TEST_CASE("actor records name a process by its pid and full start time", "[queue][liveness]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("actors", kSize);
    shm::QueueOptions o;
    o.capacity = 2;
    o.max_item_size = 100;
    shm::Queue q = shm::Queue::create(seg, "q", o);
    shm::detail::QueueControl* c = control_of(seg, "q");
    REQUIRE(c != nullptr);
    const shm::core::ProcessId me = shm::core::liveness::self();

    SECTION("records of this pid with another start time, even one with the same low 32 bits, are dead") {
        for (auto& a : c->actors) {
            a.who.start_time.store(me.start_time + (std::uint64_t(1) << 32));
            a.who.tag.store((std::uint64_t(1) << shm::core::identity::kGenerationShift) |
                            static_cast<std::uint32_t>(me.pid));
        }
        // Were they alive, no id would be free (EUSERS).
        q.put("x");
        CHECK(q.get() == "x");
        int mine = 0;
        for (auto& a : c->actors) mine += shm::core::identity::read(a.who).id == me;
        CHECK(mine == 1);
    }
    SECTION("a claim under a record being taken over is its dead predecessor's, and is repaired") {
        q.put("x");
        CHECK(q.get() == "x");  // this process has id 1
        auto& held = seg.construct<std::atomic<int>>("held", 0);
        pid_t a = test::spawn([&] {
            auto r = q.reserve(100);  // claims ticket 1 under id 2, never commits
            held = 1;
            for (;;) ::pause();
            return 0;
        });
        REQUIRE(test::eventually([&] { return held.load() == 1; }));
        test::kill_and_reap(a);
        // Another process is taking id 2 over (it is between its CAS and
        // its last store): the record is pending. Whatever names id 2 was
        // left by the dead holder before it, and is repaired.
        pid_t b = test::spawn([] {
            for (;;) ::pause();
            return 0;
        });
        shm::core::IdentityRecord& r = c->actors[1].who;
        r.tag.store(((r.tag.load() >> shm::core::identity::kGenerationShift) + 1)
                        << shm::core::identity::kGenerationShift |
                    shm::core::identity::kPending | static_cast<std::uint32_t>(b));
        const std::uint64_t repairs0 = q.repairs();
        q.put("y");  // hands ticket 1 over to its slot, under id 2
        CHECK(q.get_for(10s) == std::optional<std::string>("y"));
        CHECK(q.repairs() == repairs0 + 1);
        CHECK(q.bytes_used() == 0);
        test::kill_and_reap(b);
    }
}

TEST_CASE("max_items bounds the queue exactly, below its power-of-two capacity", "[queue]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("qmax", kSize);
    shm::QueueOptions o;
    o.capacity = 3;
    o.max_items = 3;
    auto q = shm::Queue::create(seg, "q", o);
    CHECK(q.capacity() == 4);
    CHECK(q.max_items() == 3);
    for (int round = 0; round < 5; ++round) {  // again after the cursors wrap the ring
        for (int i = 0; i < 3; ++i) REQUIRE(q.try_put(std::to_string(i)));
        CHECK(q.full());
        CHECK_FALSE(q.try_put("x"));
        CHECK_THROWS_AS(q.put_nowait("x"), shm::full);
        CHECK_FALSE(q.put_for("x", 1ms));
        CHECK(q.qsize() == 3);
        CHECK(q.get() == "0");
        CHECK_FALSE(q.full());
        REQUIRE(q.try_put("3"));
        for (const char* want : {"1", "2", "3"}) CHECK(q.get() == want);
        CHECK(q.empty());
    }
    // The default is the capacity as rounded up; a limit above it is refused.
    o.max_items = 0;
    CHECK(shm::Queue::create(seg, "q2", o).max_items() == 4);
    o.max_items = 5;
    CHECK_THROWS_AS(shm::Queue::create(seg, "q3", o), shm::error);
    CHECK(seg.find<int>("q3") == nullptr);
    // An opened queue keeps its limit.
    CHECK(shm::Queue::open(seg, "q").max_items() == 3);
}
