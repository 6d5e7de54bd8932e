// The segment heap and its named objects, in one process.
#include <algorithm>
#include <array>
#include <cstring>
#include <map>

#include <shm/shm.hpp>

#include "store/heap.hpp"
#include "store/layout.hpp"
#include "support.hpp"

constexpr std::size_t kSize = 1 << 20;

TEST_CASE("allocate and free with coalescing: the heap returns to empty", "[heap]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("heap", kSize);
    const std::size_t empty_free = seg.free_memory();
    CHECK(seg.used_memory() == 0);
    CHECK(empty_free > kSize - 96 * 1024);  // header, attach table and journal take the rest

    std::vector<void*> ps;
    for (int i = 0; i < 200; ++i) {
        void* p = seg.allocate(1 + i * 37);
        REQUIRE(p);
        CHECK(reinterpret_cast<std::uintptr_t>(p) % 16 == 0);
        std::memset(p, 0xab, 1 + i * 37);
        ps.push_back(p);
    }
    auto r = seg.verify();
    INFO((r.problems.empty() ? std::string() : r.problems.front()));
    REQUIRE(r.ok);
    CHECK(r.used_blocks == 200);
    // Free every other one, then the rest: everything coalesces back.
    for (std::size_t i = 0; i < ps.size(); i += 2) seg.deallocate(ps[i]);
    REQUIRE(seg.verify().ok);
    for (std::size_t i = 1; i < ps.size(); i += 2) seg.deallocate(ps[i]);
    r = seg.verify();
    REQUIRE(r.ok);
    CHECK(r.used_blocks == 0);
    CHECK(r.free_blocks == 1);
    CHECK(seg.free_memory() == empty_free);
}

TEST_CASE("alignment up to 4096", "[heap]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("align", kSize);
    std::vector<void*> ps;
    for (std::size_t a : {1, 2, 8, 16, 32, 64, 128, 4096}) {
        for (int i = 0; i < 5; ++i) {
            void* p = seg.allocate(24 + i, a);
            CHECK(reinterpret_cast<std::uintptr_t>(p) % a == 0);
            std::memset(p, 1, 24 + i);
            ps.push_back(p);
        }
    }
    REQUIRE(seg.verify().ok);
    for (void* p : ps) seg.deallocate(p);
    auto r = seg.verify();
    REQUIRE(r.ok);
    CHECK(r.used_blocks == 0);
    REQUIRE_THROWS_AS(seg.allocate(8, 3), shm::error);
    REQUIRE_THROWS_AS(seg.allocate(8, 8192), shm::error);
}

TEST_CASE("out of space names the segment and the request and what is free", "[heap]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("tight", 160 * 1024);
    try {
        seg.allocate(1 << 20);
        FAIL("allocated more than the segment holds");
    } catch (const shm::out_of_space& e) {
        std::string w = e.what();
        CHECK(w.find("'tight'") != std::string::npos);
        CHECK(w.find("1.0 MiB") != std::string::npos);
        CHECK(w.find("free") != std::string::npos);
        CHECK(e.code().value() == ENOSPC);
    }
    // Fill it, then the failure leaves the heap unchanged.
    std::vector<void*> ps;
    try {
        for (;;) ps.push_back(seg.allocate(1000));
    } catch (const shm::out_of_space&) {
    }
    CHECK(ps.size() > 40);
    auto before = seg.verify();
    REQUIRE(before.ok);
    using Big = std::array<char, 4000>;
    REQUIRE_THROWS_AS(seg.construct<Big>("big"), shm::out_of_space);
    auto after = seg.verify();
    REQUIRE(after.ok);
    CHECK(after.used_bytes == before.used_bytes);
    CHECK(after.objects == 0);
    for (void* p : ps) seg.deallocate(p);
    CHECK(seg.verify().used_blocks == 0);
}

TEST_CASE("a long run of random allocate/free does not grow and stays consistent", "[heap]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("churn", 4 << 20);
    std::map<void*, std::pair<std::size_t, unsigned char>> live;
    auto& rng = test::rng();
    std::size_t peak_used = 0;
    for (int i = 0; i < 20000; ++i) {
        if (live.size() < 200 && (live.empty() || rng() % 2)) {
            std::size_t n = 1 + rng() % 2000;
            std::size_t a = std::size_t(1) << (rng() % 8);
            void* p = seg.allocate(n, a);
            unsigned char tag = static_cast<unsigned char>(rng());
            std::memset(p, tag, n);
            live[p] = {n, tag};
        } else {
            auto it = live.begin();
            std::advance(it, static_cast<long>(rng() % live.size()));
            auto* c = static_cast<unsigned char*>(it->first);
            bool intact = std::all_of(c, c + it->second.first, [&](unsigned char v) { return v == it->second.second; });
            REQUIRE(intact);
            seg.deallocate(it->first);
            live.erase(it);
        }
        peak_used = std::max(peak_used, seg.used_memory());
        if (i % 2000 == 0) REQUIRE(seg.verify().ok);
    }
    for (auto& kv : live) seg.deallocate(kv.first);
    auto r = seg.verify();
    REQUIRE(r.ok);
    CHECK(r.used_blocks == 0);
    CHECK(r.free_blocks == 1);
    CHECK(peak_used < (2u << 20));  // 200 live items of ≤ 2 KB never need 2 MiB
}

TEST_CASE("invalid frees are refused and not absorbed", "[heap]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("bad", kSize);
    void* p = seg.allocate(100);
    seg.deallocate(p);
    REQUIRE_THROWS_AS(seg.deallocate(p), shm::corrupted);  // double free
    void* q = seg.allocate(100);
    REQUIRE_THROWS_AS(seg.deallocate(static_cast<char*>(q) + 16), shm::corrupted);
    int local = 0;
    REQUIRE_THROWS_AS(seg.deallocate(&local), shm::error);
    REQUIRE(seg.verify().ok);
}

TEST_CASE("named objects: construct find find_or_construct destroy", "[heap][objects]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("objs", kSize);
    struct Point {
        double x, y;
        Point(double a, double b) : x(a), y(b) {}
    };
    auto& p = seg.construct<Point>("origin", 1.5, -2.0);
    CHECK(p.x == 1.5);
    CHECK(p.y == -2.0);
    REQUIRE_THROWS_AS(seg.construct<Point>("origin", 0.0, 0.0), shm::already_exists);
    CHECK(seg.find<Point>("origin") == &p);
    CHECK(seg.find<Point>("nowhere") == nullptr);
    CHECK(&seg.find_or_construct<Point>("origin", 9.0, 9.0) == &p);
    auto& q = seg.find_or_construct<Point>("other", 3.0, 4.0);
    CHECK(q.x == 3.0);
    auto& m = seg.construct<shm::Mutex>("jobs/lock");
    CHECK(reinterpret_cast<std::uintptr_t>(&m) % alignof(shm::Mutex) == 0);

    try {
        seg.find<int>("origin");
        FAIL("found a Point as an int");
    } catch (const shm::type_mismatch& e) {
        CHECK(std::string(e.what()).find("'origin'") != std::string::npos);
        CHECK(std::string(e.what()).find("'objs'") != std::string::npos);
    }
    REQUIRE_THROWS_AS(seg.find<int>("bad name"), shm::name_error);

    auto objs = seg.objects();
    REQUIRE(objs.size() == 3);
    std::map<std::string, shm::ObjectKind> kinds;
    for (auto& o : objs) kinds[o.name] = o.kind;
    CHECK(kinds["jobs/lock"] == shm::ObjectKind::mutex);
    CHECK(kinds["origin"] == shm::ObjectKind::raw);

    // Another process sees the same objects by name.
    pid_t c = test::spawn([] {
        auto s = shm::Segment::open("objs");
        auto* pt = s.find<Point>("origin");
        return pt && pt->x == 1.5 && s.find<shm::Mutex>("jobs/lock") ? 0 : 1;
    });
    test::require_exit_ok(c);

    CHECK(seg.destroy<Point>("origin"));
    CHECK_FALSE(seg.destroy<Point>("origin"));
    REQUIRE_THROWS_AS(seg.destroy<int>("other"), shm::type_mismatch);
    CHECK(seg.destroy<Point>("other"));
    CHECK(seg.destroy<shm::Mutex>("jobs/lock"));
    auto r = seg.verify();
    REQUIRE(r.ok);
    CHECK(r.objects == 0);
    CHECK(r.used_blocks == 0);
}

TEST_CASE("a throwing constructor leaves nothing behind", "[heap][objects]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("throws", kSize);
    struct Bomb {
        explicit Bomb(int) { throw std::runtime_error("boom"); }
    };
    REQUIRE_THROWS_AS(seg.construct<Bomb>("b", 1), std::runtime_error);
    auto r = seg.verify();
    REQUIRE(r.ok);
    CHECK(r.objects == 0);
    CHECK(r.used_blocks == 0);
    CHECK(seg.find<Bomb>("b") == nullptr);
}

// ---- transactions: the rules that let one operation be as large as the heap ----

namespace {
std::uint64_t off(shm::Segment& seg, void* p) { return seg.offset_of(p); }
char* at(shm::Segment& seg, std::uint64_t o) { return static_cast<char*>(seg.base()) + o; }
}  // namespace

TEST_CASE("a block freed in a transaction is not handed out again by it, so an undo brings it back", "[heap][txn]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("txn", kSize);
    auto* h = static_cast<shm::layout::Header*>(seg.base());
    // Two live blocks with known contents, and nothing else free nearby that
    // would be picked first.
    void* a = seg.allocate(4000);
    void* b = seg.allocate(4000);
    std::memset(a, 'A', 4000);
    std::memset(b, 'B', 4000);
    const std::size_t used = seg.used_memory();
    const std::uint64_t oa = off(seg, a);
    {
        shm::heap::Txn t(h);
        shm::heap::deallocate(t, oa);
        CHECK(t.deferred_count() == 1);
        // Same size again: must not be a's block, whose bytes an undo needs.
        std::uint64_t p = shm::heap::allocate(t, 4000, 16);
        REQUIRE(p != 0);
        CHECK(p != oa);
        std::memset(at(seg, p), 'X', 4000);  // plain writes to fresh memory
        // No commit: the destructor rolls back.
    }
    CHECK(std::all_of(at(seg, oa), at(seg, oa) + 4000, [](char c) { return c == 'A'; }));
    CHECK(std::all_of(static_cast<char*>(b), static_cast<char*>(b) + 4000, [](char c) { return c == 'B'; }));
    CHECK(seg.used_memory() == used);
    REQUIRE(seg.verify().ok);
    // Committed, the deferred free happens at commit.
    {
        shm::heap::Txn t(h);
        shm::heap::deallocate(t, oa);
        CHECK(seg.used_memory() == used);
        t.commit();
    }
    CHECK(seg.used_memory() < used);
    REQUIRE(seg.verify().ok);
}

TEST_CASE("one transaction allocates and frees thousands of blocks: journaled once per old word", "[heap][txn]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("big-txn", 16 << 20);
    auto* h = static_cast<shm::layout::Header*>(seg.base());
    std::vector<void*> old;
    for (int i = 0; i < 3000; ++i) old.push_back(seg.allocate(48));
    const std::size_t used = seg.used_memory();
    for (bool commit : {false, true}) {
        INFO("commit " << commit);
        std::vector<std::uint64_t> got;
        {
            shm::heap::Txn t(h);
            // 20,000 allocations (some freed again at once) and 3,000 frees of
            // old blocks: far more changes than the journal has entries.
            for (int i = 0; i < 20000; ++i) {
                std::uint64_t p = shm::heap::allocate(t, 16 + (i % 7) * 24, 16);
                REQUIRE(p != 0);
                std::memset(at(seg, p), 'n', 16);
                if (i % 3 == 0)
                    shm::heap::deallocate(t, p);
                else
                    got.push_back(p);
            }
            for (void* p : old) shm::heap::deallocate(t, off(seg, p));
            CHECK(h->journal_count.load() < h->journal_capacity);
            if (commit) t.commit();
        }
        auto r = seg.verify();
        for (auto& p : r.problems) UNSCOPED_INFO(p);
        REQUIRE(r.ok);
        if (!commit) {
            CHECK(seg.used_memory() == used);
            CHECK(r.used_blocks == old.size());
        } else {
            CHECK(r.used_blocks == got.size());
            for (std::uint64_t p : got) seg.deallocate(at(seg, p));
            CHECK(seg.used_memory() == 0);
            CHECK(seg.verify().free_blocks == 1);
        }
    }
}
