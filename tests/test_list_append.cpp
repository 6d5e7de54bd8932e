// shm::List's append path and its growth: the table keeps spare capacity
// (an append into it writes the cell past the count and publishes it with
// one store of the count), and grows by doubling, in place where the heap
// block after it is free, else by a copy. Checked here: every operation
// across the growth boundaries against a model, appenders SIGKILLed at
// random points and at every crash point of a growth, refusals that change
// nothing, and a capacity the table's block does not have.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <shm/shm.hpp>

#include "objects/container_layout.hpp"
#include "platform/testing.hpp"
#include "store/layout.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shm::Dict;
using shm::List;
using shm::Value;
using shm::container_layout::CHdr;

namespace {

bool clean(const std::vector<std::string>& problems) {
    for (auto& p : problems) UNSCOPED_INFO(p);
    return problems.empty();
}

bool heap_ok(shm::Segment& seg) {
    auto r = seg.verify();
    for (auto& p : r.problems) UNSCOPED_INFO(p);
    return r.ok;
}

// The list's header in the segment (white-box: where its table is).
CHdr& header_of(shm::Segment& seg, const char* name) {
    auto* root = seg.find<shm::detail::ListRoot>(name);
    REQUIRE(root);
    REQUIRE(root->header.load() != 0);
    return *reinterpret_cast<CHdr*>(static_cast<char*>(seg.base()) + root->header.load());
}

std::uint64_t garbage_head(shm::Segment& seg) {
    return static_cast<shm::layout::Header*>(seg.base())->garbage_head.load();
}

// Every write frees a few pieces of garbage: run harmless ones until none is left.
void drain(shm::Segment& seg, Dict& d) {
    for (long ops = 0; garbage_head(seg) != 0; ++ops) {
        REQUIRE(ops < 1'000'000);
        d.erase("no such key");
    }
}

std::string text_for(std::uint64_t tag, std::uint64_t i) {
    std::string s = "t" + std::to_string(tag) + "." + std::to_string(i) + ":";
    s.resize(s.size() + (i * 7) % 40, static_cast<char>('a' + i % 26));
    return s;
}

}  // namespace

TEST_CASE("List: append, get, len, pop, set, insert and delete across growth boundaries match a model",
          "[container][list][growth]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("growth", 8 << 20);
    List l = List::open_or_create(seg, "l");
    List other = List::open_or_create(seg, "other");  // its blocks land after l's table at times
    Dict d = Dict::open_or_create(seg, "d");
    std::vector<Value> model, other_model;
    std::mt19937_64 r(12345);
    int grown_in_place = 0, grown_by_copy = 0;
    auto check_all = [&](int step) {
        INFO("step " << step << ", " << model.size() << " items");
        REQUIRE(l.size() == model.size());
        REQUIRE(l.snapshot() == model);
        REQUIRE(clean(l.verify()));
    };
    for (int step = 0; step < 20000; ++step) {
        const std::size_t n = model.size();
        CHdr& c = header_of(seg, "l");
        const std::uint64_t table = c.table.load(), cap = c.capacity.load();
        const int op = static_cast<int>(r() % 100);
        const std::int64_t k = static_cast<std::int64_t>(r() % 1000000);
        if (op < 45) {
            Value v = op % 3 == 0 ? Value(text_for(1, static_cast<std::uint64_t>(step))) : Value(k);
            l.append(v);
            model.push_back(v);
        } else if (op < 52) {
            Value v(text_for(2, static_cast<std::uint64_t>(step)));
            other.append(v);
            other_model.push_back(v);
            if (op % 2) d.set("s" + std::to_string(k % 50), text_for(3, static_cast<std::uint64_t>(k)));
        } else if (op < 62) {
            if (n) {
                const std::int64_t i = static_cast<std::int64_t>(r() % n);
                const bool from_end = op % 2 == 0;
                Value got = from_end ? l.pop() : l.pop(i);
                Value want = from_end ? model.back() : model[static_cast<std::size_t>(i)];
                model.erase(from_end ? model.end() - 1 : model.begin() + i);
                REQUIRE(got == want);
            } else {
                REQUIRE_THROWS_AS(l.pop(), shm::index_error);
            }
        } else if (op < 70) {
            if (n) {
                const std::int64_t i = static_cast<std::int64_t>(r() % n) - (op % 2 ? static_cast<std::int64_t>(n) : 0);
                Value v = op % 2 ? Value(text_for(4, static_cast<std::uint64_t>(k))) : Value(2.5 * static_cast<double>(k));
                l.set(i, v);
                model[static_cast<std::size_t>(i < 0 ? i + static_cast<std::int64_t>(n) : i)] = v;
            }
        } else if (op < 78) {
            const std::int64_t i = static_cast<std::int64_t>(r() % (n + 3)) - 1;
            l.insert(i, k);
            const std::int64_t at = i < 0 ? std::max<std::int64_t>(0, i + static_cast<std::int64_t>(n))
                                          : std::min<std::int64_t>(i, static_cast<std::int64_t>(n));
            model.insert(model.begin() + at, Value(k));
        } else if (op < 83) {
            if (n) {
                const Value v = model[static_cast<std::size_t>(r() % n)];
                l.remove(v);
                model.erase(std::find(model.begin(), model.end(), v));
            } else {
                REQUIRE_THROWS(l.remove(Value(k)));
            }
        } else if (op < 88) {
            std::vector<Value> more;
            for (std::uint64_t j = 0, m = r() % 20; j < m; ++j)
                more.push_back(j % 2 ? Value(text_for(5, j)) : Value(static_cast<std::int64_t>(j)));
            l.extend(more);
            model.insert(model.end(), more.begin(), more.end());
        } else if (op < 99) {
            if (n) {
                const std::int64_t i = static_cast<std::int64_t>(r() % n);
                REQUIRE(l.get(i) == model[static_cast<std::size_t>(i)]);
                REQUIRE(l.get(-1) == model.back());
            } else {
                REQUIRE_THROWS_AS(l.get(0), shm::index_error);
            }
            REQUIRE(l.size() == model.size());
        } else if (model.size() > 3000) {
            l.clear();
            model.clear();
        }
        const std::uint64_t cap2 = header_of(seg, "l").capacity.load();
        if (cap2 > cap && cap > 0) {
            if (header_of(seg, "l").table.load() == table)
                ++grown_in_place;
            else
                ++grown_by_copy;
        }
        // Every boundary of the table: at capacity, and just past it.
        if (cap2 && (model.size() + 1 >= cap2 || model.size() == cap2 / 2 + 1 || step % 500 == 0)) check_all(step);
    }
    check_all(-1);
    REQUIRE(other.snapshot() == other_model);
    REQUIRE(heap_ok(seg));
    WARN("the table grew in place " << grown_in_place << " times and by a copy " << grown_by_copy << " times");
    CHECK(grown_in_place > 0);
    CHECK(grown_by_copy > 0);
}

TEST_CASE("List: a table grows in place while the heap after it is free, and by a copy when it is not",
          "[container][list][growth]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("inplace", 4 << 20);
    List l = List::open_or_create(seg, "l");
    Dict d = Dict::open_or_create(seg, "d");
    d.set("made", 1);  // the dict's table stays after its last key goes
    d.erase("made");
    const std::size_t empty_use = seg.used_memory();
    l.append(0);
    const std::uint64_t table = header_of(seg, "l").table.load();
    for (std::int64_t i = 1; i < 1000; ++i) l.append(i);
    CHECK(header_of(seg, "l").table.load() == table);  // in place, every doubling
    CHECK(header_of(seg, "l").capacity.load() == 1024);
    for (std::int64_t i = 1000; i < 1024; ++i) l.append(i);
    d.set("after", std::string(100, 'x'));  // lands right after the table
    l.append(1024);                         // full: can only grow by a copy
    CHECK(header_of(seg, "l").table.load() != table);
    CHECK(header_of(seg, "l").capacity.load() == 2048);
    for (std::int64_t i = 0; i <= 1024; ++i) REQUIRE(l.get(i).as_int() == i);
    CHECK(clean(l.verify()));
    CHECK(heap_ok(seg));
    l.clear();
    d.erase("after");
    drain(seg, d);
    CHECK(seg.used_memory() == empty_use);  // nothing leaked by either kind of growth
}

// ---- refusals ------------------------------------------------------------------

TEST_CASE("List: an append refused (out of space, value too large) changes nothing, at every fill level",
          "[container][list][growth]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("refuse", 128 << 10);
    List l = List::open_or_create(seg, "l");
    Dict d = Dict::open_or_create(seg, "d");
    int refused = 0, refused_growth = 0;
    for (std::int64_t i = 0;; ++i) {
        REQUIRE(i < 100000);
        const auto before = l.snapshot();
        const std::size_t used = seg.used_memory();
        const CHdr& c = header_of(seg, "l");
        const std::uint64_t table = c.table.load(), cap = c.capacity.load();
        // A value larger than the segment is refused whatever the fill level.
        REQUIRE_THROWS_AS(l.append(std::string(200 << 10, 'z')), shm::out_of_space);
        ++refused;
        CHECK(l.snapshot() == before);
        CHECK(seg.used_memory() == used);
        CHECK(c.table.load() == table);
        CHECK(c.capacity.load() == cap);
        try {
            l.append(i % 2 ? Value(i) : Value(text_for(6, static_cast<std::uint64_t>(i))));
        } catch (const shm::out_of_space&) {
            // Out of space for the value or for the growth: nothing changed.
            if (l.size() == cap) ++refused_growth;
            CHECK(l.snapshot() == before);
            CHECK(seg.used_memory() == used);
            CHECK(c.table.load() == table);
            CHECK(c.capacity.load() == cap);
            CHECK(clean(l.verify()));
            CHECK(heap_ok(seg));
            ++refused;
            // Fill what is left with ints (no block of their own) until
            // even the growth is refused.
            for (std::int64_t j = 0;; ++j) {
                REQUIRE(j < 100000);
                const std::uint64_t cap_now = c.capacity.load();
                const std::size_t size_now = l.size(), used_now = seg.used_memory();
                try {
                    l.append(j);
                } catch (const shm::out_of_space&) {
                    CHECK(size_now == cap_now);  // an int is refused only when the table must grow
                    CHECK(l.size() == size_now);
                    CHECK(c.capacity.load() == cap_now);
                    CHECK(seg.used_memory() == used_now);
                    ++refused_growth;
                    break;
                }
            }
            break;
        }
    }
    CHECK(clean(l.verify()));
    CHECK(heap_ok(seg));
    CHECK(refused_growth > 0);
    // Room again after a pop: an append into the spare slot needs nothing new.
    Value last = l.pop();
    l.append(last);
    CHECK(l.get(-1) == last);
    CHECK(clean(l.verify()));
}

TEST_CASE("List: a capacity its table's block does not have is refused as corrupted, and nothing is written",
          "[container][list][growth]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("badcap", 1 << 20);
    List l = List::open_or_create(seg, "l");
    Dict d = Dict::open_or_create(seg, "d");
    for (std::int64_t i = 0; i < 8; ++i) l.append(i);
    d.set("neighbour", std::string(64, 'n'));  // the block after the table
    CHdr& c = header_of(seg, "l");
    REQUIRE(c.capacity.load() == 8);
    c.capacity.store(64);  // the file says so; the block holds 8 cells
    const std::size_t used = seg.used_memory();
    CHECK_THROWS_AS(l.append(8), shm::corrupted);
    CHECK_THROWS_AS(l.get(0), shm::corrupted);
    CHECK_FALSE(l.verify().empty());
    c.capacity.store(8);
    CHECK(l.size() == 8);
    CHECK(d.get("neighbour") == Value(std::string(64, 'n')));  // never written over
    CHECK(seg.used_memory() == used);
    CHECK(clean(l.verify()));
    CHECK(heap_ok(seg));
}

TEST_CASE("verify() names the item a problem is in: the list index and the dict key, nested",
          "[container][list][verify]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("vpath", 1 << 20);
    List l = List::open_or_create(seg, "l");
    for (std::int64_t i = 0; i < 1000; ++i) l.append(i);
    l.append(Value::new_dict({{"key", Value::new_list({Value(std::int64_t{7}), Value(std::int64_t{8})})}}));
    REQUIRE(clean(l.verify()));

    char* base = static_cast<char*>(seg.base());
    CHdr& top = header_of(seg, "l");
    auto* cells = reinterpret_cast<shm::container_layout::Cell*>(base + top.table.load());
    // Item 517 of the top list, and item 1 of the list under ['key'] of item 1000.
    const std::uint64_t meta517 = cells[517].meta.load();
    cells[517].meta.store(0xfe);
    CHdr& dh = *reinterpret_cast<CHdr*>(base + cells[1000].data.load());
    auto* entries = reinterpret_cast<shm::container_layout::DEntry*>(base + dh.table.load());
    CHdr* lh = nullptr;
    for (std::uint64_t i = 0; i < dh.capacity.load(); ++i)
        if (entries[i].key_len.load() == 3) lh = reinterpret_cast<CHdr*>(base + entries[i].v.data.load());
    REQUIRE(lh);
    auto* deep_cells = reinterpret_cast<shm::container_layout::Cell*>(base + lh->table.load());
    const std::uint64_t meta_deep = deep_cells[1].meta.load();
    deep_cells[1].meta.store(0xfd);

    const auto problems = l.verify();
    REQUIRE(problems.size() == 2);
    CHECK(problems[0] == "list[517]: unknown value type");
    CHECK(problems[1] == "list[1000]['key'][1]: unknown value type");

    cells[517].meta.store(meta517);
    deep_cells[1].meta.store(meta_deep);
    CHECK(clean(l.verify()));
    CHECK(l.get(517) == Value(std::int64_t{517}));
}

// ---- crash tests ---------------------------------------------------------------

namespace {
constexpr int kAppenders = 4;
struct Acks {
    std::atomic<std::uint64_t> acked[kAppenders];
    std::atomic<int> round{0};
};

// Item i of appender k in round `round`: an int, or every third one a
// string of its own (a block allocated by the append).
Value item(int round, int k, std::uint64_t i) {
    const std::uint64_t tag = static_cast<std::uint64_t>(round) * kAppenders + static_cast<std::uint64_t>(k);
    if (i % 3 == 2) return Value(text_for(tag, i));
    return Value(static_cast<std::int64_t>((tag << 32) | i));
}
}  // namespace

TEST_CASE("appenders SIGKILLed at random points: every acknowledged append is there once, nothing torn, nothing leaked",
          "[container][list][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("appenders", 64 << 20);
    List l = List::open_or_create(seg, "l");
    Dict d = Dict::open_or_create(seg, "d");
    auto& acks = seg.construct<Acks>("acks");
    const std::size_t empty_use = seg.used_memory();
    constexpr int kRounds = 150;
    int kills = 0, in_flight_committed = 0, recovered = 0;
    int first_round_kept = 0;  // rounds before this one were cleared away
    for (int round = 0; round < kRounds; ++round) {
        for (auto& a : acks.acked) a = 0;
        pid_t pids[kAppenders];
        for (int k = 0; k < kAppenders; ++k)
            pids[k] = test::spawn([&, k] {
                // Bounded per round (the segment's size); then it waits to be killed.
                for (std::uint64_t i = 0; i < 30'000; ++i) {
                    l.append(item(round, k, i));
                    acks.acked[k].store(i + 1);  // acknowledged: append returned
                }
                for (;;) std::this_thread::sleep_for(1s);
                return 0;
            });
        REQUIRE(test::eventually([&] {
            for (auto& a : acks.acked)
                if (a.load() == 0) return false;
            return true;
        }, 60s));
        // Kill them at varied moments: together, or one by one.
        for (int k = 0; k < kAppenders; ++k) {
            if (k == 0 || test::rng()() % 2) std::this_thread::sleep_for(std::chrono::microseconds(test::rng()() % 3000));
            test::kill_and_reap(pids[k]);
            ++kills;
        }
        if (seg.verify().recovered) ++recovered;
        INFO("round " << round);
        REQUIRE(clean(l.verify()));
        // Every item of this round is appender k's item i, for i = 0, 1, ...
        // in order, each once; acknowledged ones all there, at most one more.
        std::uint64_t next[kAppenders] = {};
        const auto items = l.snapshot();
        std::size_t seen_earlier = 0;
        for (const Value& v : items) {
            int k = -1;
            std::uint64_t i = 0;
            int rnd = -1;
            if (v.type() == Value::Type::integer) {
                const std::uint64_t x = static_cast<std::uint64_t>(v.as_int());
                const std::uint64_t tag = x >> 32;
                rnd = static_cast<int>(tag / kAppenders);
                k = static_cast<int>(tag % kAppenders);
                i = x & 0xffffffffu;
            } else {
                REQUIRE(v.type() == Value::Type::string);
                const std::string& s = v.as_string();
                unsigned long long tag = 0, ii = 0;
                REQUIRE(std::sscanf(s.c_str(), "t%llu.%llu:", &tag, &ii) == 2);
                rnd = static_cast<int>(tag / kAppenders);
                k = static_cast<int>(tag % kAppenders);
                i = ii;
            }
            REQUIRE(rnd >= first_round_kept);
            REQUIRE(rnd <= round);
            REQUIRE(item(rnd, k, i) == v);  // not torn: exactly what was appended
            if (rnd < round) {
                ++seen_earlier;
                continue;
            }
            REQUIRE(i == next[k]);  // in order, none missing, none twice
            ++next[k];
        }
        for (int k = 0; k < kAppenders; ++k) {
            const std::uint64_t a = acks.acked[k].load();
            INFO("appender " << k << ": acknowledged " << a << ", present " << next[k]);
            REQUIRE(next[k] >= a);
            REQUIRE(next[k] <= a + 1);
            if (next[k] == a + 1) ++in_flight_committed;
        }
        // Every few rounds, empty the list (its garbage is freed by later
        // operations); otherwise the earlier rounds must stay intact.
        if (round % 4 == 3) {
            l.clear();
            first_round_kept = round + 1;
        }
    }
    l.clear();
    drain(seg, d);
    CHECK(clean(l.verify()));
    CHECK(heap_ok(seg));
    CHECK(seg.used_memory() == empty_use);  // nothing leaked by a killed append or growth
    WARN(kills << " appenders killed; " << recovered << " rounds left an operation to roll back; the append in flight had committed "
               << in_flight_committed << " times");
    CHECK(recovered > 0);
}

TEST_CASE("a scalar appended into spare room, killed at every crash point: before or after, never between",
          "[container][list][crash]") {
    test::ShmDir dir;
    // way 0: an int into spare room, no garbage (the short path: one
    // store publishes it); way 1: a double with garbage waiting (the
    // general path, which frees some of it); way 2: null, with the
    // table full (growth first).
    for (int way = 0; way < 3; ++way) {
        long killed = 0;
        for (long n = 1;; ++n) {
            REQUIRE(n < 3000);
            auto seg = shm::Segment::create("scalarpoints", 1 << 20);
            List l = List::open_or_create(seg, "l");
            Dict d = Dict::open_or_create(seg, "d");
            std::vector<Value> before;
            for (std::int64_t i = 0; i < (way == 2 ? 16 : 11); ++i) {
                l.append(i);
                before.push_back(i);
            }
            if (way == 1) {
                d.set("big", Value::new_list(std::vector<Value>(200, Value(std::string(20, 'g')))));
                d.erase("big");  // a nested container on the garbage list
                REQUIRE(garbage_head(seg) != 0);
            } else {
                drain(seg, d);
            }
            const Value added = way == 0 ? Value(std::int64_t{1234}) : way == 1 ? Value(2.5) : Value();
            pid_t c = test::spawn([&] {
                shm::testing::kill_at_crash_point(n);
                l.append(added);
                return 7;
            });
            auto e = test::wait_for(c);
            REQUIRE((e.signaled || e.exited));
            INFO("way " << way << " crash point " << n);
            REQUIRE(clean(l.verify()));
            REQUIRE(heap_ok(seg));
            std::vector<Value> after = before;
            after.push_back(added);
            const auto now = l.snapshot();
            REQUIRE((now == before || now == after));
            // The list works on.
            for (std::int64_t i = 0; i < 40; ++i) l.append(i);
            drain(seg, d);
            REQUIRE(clean(l.verify()));
            REQUIRE(heap_ok(seg));
            if (e.exited) {
                REQUIRE(e.code == 7);
                REQUIRE(now == after);
                break;
            }
            ++killed;
        }
        INFO("way " << way);
        CHECK(killed >= 2);  // before and after the store that publishes it, at least
    }
}

TEST_CASE("an append that grows the table, killed at every crash point: before or after, never between",
          "[container][list][crash]") {
    test::ShmDir dir;
    int killed = 0;
    // way 0: grows in place; way 1: by a copy (a block sits after the table);
    // way 2: in place with a string of its own; way 3: extend() past capacity.
    for (int way = 0; way < 4; ++way) {
        for (long n = 1;; ++n) {
            REQUIRE(n < 3000);
            auto seg = shm::Segment::create("growpoints", 1 << 20);
            List l = List::open_or_create(seg, "l");
            Dict d = Dict::open_or_create(seg, "d");
            std::vector<Value> before;
            for (std::int64_t i = 0; i < 16; ++i) {
                l.append(i);
                before.push_back(i);
            }
            if (way == 1) d.set("after", std::string(40, 'a'));
            drain(seg, d);
            const std::size_t used_before = seg.used_memory();
            const std::uint64_t table = header_of(seg, "l").table.load();
            REQUIRE(header_of(seg, "l").capacity.load() == 16);
            std::vector<Value> added = way == 2 ? std::vector<Value>{Value(std::string(50, 's'))}
                                     : way == 3 ? std::vector<Value>{100, "x", 102, std::string(30, 'y'), 104}
                                                : std::vector<Value>{100};
            pid_t c = test::spawn([&] {
                shm::testing::kill_at_crash_point(n);
                if (way == 3)
                    l.extend(added);
                else
                    l.append(added[0]);
                return 7;
            });
            auto e = test::wait_for(c);
            REQUIRE((e.signaled || e.exited));
            INFO("way " << way << " crash point " << n);
            REQUIRE(clean(l.verify()));
            REQUIRE(heap_ok(seg));
            std::vector<Value> after = before;
            after.insert(after.end(), added.begin(), added.end());
            const auto now = l.snapshot();
            REQUIRE((now == before || now == after));
            if (now == before) {
                CHECK(header_of(seg, "l").capacity.load() == 16);
                CHECK(header_of(seg, "l").table.load() == table);
                CHECK(seg.used_memory() == used_before);
            } else {
                CHECK(header_of(seg, "l").capacity.load() == 32);
                CHECK((header_of(seg, "l").table.load() == table) == (way != 1));
            }
            // The list works on: the next appends fill the spare room.
            for (std::int64_t i = 0; i < 40; ++i) l.append(i);
            REQUIRE(clean(l.verify()));
            REQUIRE(heap_ok(seg));
            if (e.exited) {
                REQUIRE(e.code == 7);
                break;
            }
            ++killed;
        }
    }
    WARN("growing appends killed at " << killed << " crash points");
    CHECK(killed > 40);
}
