// shm::Dict, shm::List and shm::Value: behaviour, processes sharing them,
// out of space, and SIGKILL at random moments and at every crash point.
#include <algorithm>
#include <map>

#include <shm/shm.hpp>

#include "support.hpp"
#include "platform/testing.hpp"

using namespace std::chrono_literals;
using shm::Dict;
using shm::List;
using shm::Value;
constexpr std::size_t kSize = 8 << 20;

namespace {
bool clean(const std::vector<std::string>& problems) {
    for (auto& p : problems) UNSCOPED_INFO(p);
    return problems.empty();
}
}  // namespace

TEST_CASE("Value conversions and equality", "[container][value]") {
    CHECK(Value().is_null());
    CHECK(Value(true).as<bool>());
    CHECK(Value(42).as<int>() == 42);
    CHECK(Value(42).as<double>() == 42.0);
    CHECK(Value(2.5).as<double>() == 2.5);
    CHECK(Value("hi").as<std::string>() == "hi");
    CHECK(Value::bytes(std::string("\0\1", 2)).as_bytes().size() == 2);
    CHECK(Value(300).type_name() == std::string("int"));
    try {
        Value("text").as<int>();
        FAIL("string read as int");
    } catch (const shm::value_type_error& e) {
        CHECK(std::string(e.what()).find("wanted int") != std::string::npos);
        CHECK(std::string(e.what()).find("string") != std::string::npos);
    }
    REQUIRE_THROWS_AS(Value(300).as<std::uint8_t>(), shm::value_type_error);
    REQUIRE_THROWS_AS(Value(-1).as<unsigned>(), shm::value_type_error);
    REQUIRE_THROWS_AS(Value(1.5).as<int>(), shm::value_type_error);
    REQUIRE_THROWS_AS(Value(1).as<bool>(), shm::value_type_error);
    CHECK(Value(1) == Value(1.0));
    CHECK(Value("a") != Value::bytes("a"));
    CHECK(Value() == Value(nullptr));
    CHECK(Value(true) != Value(1));
}

TEST_CASE("Dict: the Python dict operations", "[container][dict]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("dict", kSize);
    Dict d = Dict::open_or_create(seg, "results");
    CHECK(d.size() == 0);
    d.set("n", 3);
    d.set("name", "libshm");
    d.set("pi", 3.14);
    d.set("ok", true);
    d.set("none", nullptr);
    d.set("raw", Value::bytes("\x01\x02"));
    d.set("", "empty key");
    CHECK(d.size() == 7);
    CHECK(d.get<int>("n") == 3);
    CHECK(d.get<std::string>("name") == "libshm");
    CHECK(d.get<double>("pi") == 3.14);
    CHECK(d.get<bool>("ok"));
    CHECK(d.get("none").is_null());
    CHECK(d.get("raw").as_bytes() == "\x01\x02");
    CHECK(d.get<std::string>("") == "empty key");
    CHECK(d.at("n") == Value(3));
    CHECK(d.get("missing", 7).as<int>() == 7);
    CHECK(d.contains("n"));
    CHECK_FALSE(d.contains("missing"));
    try {
        d.get("missing");
        FAIL("no key_error");
    } catch (const shm::key_error& e) {
        CHECK(std::string(e.what()).find("'missing'") != std::string::npos);
    }
    REQUIRE_THROWS_AS(d.get<int>("name"), shm::value_type_error);

    d.set("n", "now a string");  // overwrite with another type
    CHECK(d.get<std::string>("n") == "now a string");
    CHECK(d.size() == 7);
    CHECK(d.erase("n"));
    CHECK_FALSE(d.erase("n"));
    CHECK(d.pop("pi").as<double>() == 3.14);
    CHECK(d.pop("pi", "gone").as<std::string>() == "gone");
    REQUIRE_THROWS_AS(d.pop("pi"), shm::key_error);
    CHECK(d.setdefault("count", 10).as<int>() == 10);
    CHECK(d.setdefault("count", 99).as<int>() == 10);
    d.update({{"a", 1}, {"b", 2}});
    auto keys = d.keys();
    std::sort(keys.begin(), keys.end());
    CHECK(keys == std::vector<std::string>{"", "a", "b", "count", "name", "none", "ok", "raw"});
    CHECK(d.items().size() == d.size());
    CHECK(d.values().size() == d.size());
    CHECK(d.increment("hits") == 1);
    CHECK(d.increment("hits", 41) == 42);
    CHECK(d.increment("ratio", 0.5) == 0.5);
    REQUIRE_THROWS_AS(d.increment("name"), shm::value_type_error);
    CHECK(d.update("name", [](const Value& v) { return Value(v.as_string() + "!"); }).as_string() == "libshm!");
    CHECK(d.update("fresh", [](const Value& v) { return Value(v.is_null() ? 1 : 2); }).as<int>() == 1);

    Dict other = Dict::open_or_create(seg, "other");
    other.set("a", 100);
    other.set("z", "zed");
    d.update(other);
    CHECK(d.get<int>("a") == 100);
    CHECK(d.get<std::string>("z") == "zed");
    CHECK(clean(d.verify()));
    d.clear();
    CHECK(d.size() == 0);
    CHECK(d.keys().empty());
    d.set("after", 1);
    CHECK(d.size() == 1);
    CHECK(clean(d.verify()));
    REQUIRE_THROWS_AS(List::open(seg, "results"), shm::type_mismatch);
    REQUIRE_THROWS_AS(Dict::open(seg, "nope"), shm::not_found);
}

TEST_CASE("Dict grows to 20000 keys and finds them all", "[container][dict]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("big", 32 << 20);
    Dict d = Dict::open_or_create(seg, "d");
    for (int i = 0; i < 20000; ++i) d.set("key-" + std::to_string(i), i);
    CHECK(d.size() == 20000);
    for (int i = 0; i < 20000; i += 97) CHECK(d.get<int>("key-" + std::to_string(i)) == i);
    for (int i = 0; i < 20000; i += 2) d.erase("key-" + std::to_string(i));
    CHECK(d.size() == 10000);
    CHECK_FALSE(d.contains("key-0"));
    CHECK(d.get<int>("key-1") == 1);
    CHECK(clean(d.verify()));
}

TEST_CASE("List: the Python list operations", "[container][list]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("list", kSize);
    List l = List::open_or_create(seg, "l");
    l.append(1);
    l.append("two");
    l.extend({3.0, true, nullptr});
    CHECK(l.size() == 5);
    CHECK(l.get<int>(0) == 1);
    CHECK(l.get<std::string>(1) == "two");
    CHECK(l.get(-1).is_null());
    CHECK(l.get<bool>(-2));
    try {
        l.get(5);
        FAIL("no index_error");
    } catch (const shm::index_error& e) {
        CHECK(std::string(e.what()).find("index 5") != std::string::npos);
    }
    REQUIRE_THROWS_AS(l.get(-6), shm::index_error);
    l.insert(0, "first");
    l.insert(100, "last");   // clamps like Python
    l.insert(-100, "zero");  // clamps to 0
    l.insert(3, "middle");
    auto s = l.snapshot();
    REQUIRE(s.size() == 9);
    CHECK(s[0] == Value("zero"));
    CHECK(s[1] == Value("first"));
    CHECK(s[3] == Value("middle"));
    CHECK(s[8] == Value("last"));
    l.set(-1, "LAST");
    CHECK(l.get<std::string>(8) == "LAST");
    CHECK(l.pop().as_string() == "LAST");
    CHECK(l.pop(0).as_string() == "zero");
    CHECK(l.index("middle") == 2);
    l.append(1);
    CHECK(l.count(1) == 2);
    CHECK(l.count(1.0) == 2);  // numbers compare by value
    l.remove(1);
    CHECK(l.count(1) == 1);
    REQUIRE_THROWS_AS(l.remove("absent"), shm::error);
    REQUIRE_THROWS_AS(l.index("absent"), shm::error);
    auto sl = l.slice(1, -1);
    CHECK(sl.size() == l.size() - 2);
    CHECK(l.slice(-2, 100).size() == 2);
    CHECK(l.slice(5, 2).empty());
    CHECK(l.update(0, [](const Value& v) { return Value(v.as_string() + "?"); }).as_string() == "first?");
    CHECK(clean(l.verify()));
    l.clear();
    CHECK(l.size() == 0);
    REQUIRE_THROWS_AS(l.pop(), shm::index_error);
    CHECK(clean(l.verify()));
}

// Refusals and operations as large as the heap: test_refusals.cpp.

TEST_CASE("nested containers are shared and changed from another process", "[container][nested]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("nest", kSize);
    Dict d = Dict::open_or_create(seg, "d");
    d.set("jobs", Value::new_list({1, 2}));
    d.set("meta", Value::new_dict({{"owner", "me"}, {"tags", Value::new_list({"a"})}}));
    pid_t c = test::spawn([] {
        auto s = shm::Segment::open("nest");
        Dict dd = Dict::open(s, "d");
        List jobs = dd.get("jobs").as_list();
        jobs.append(3);
        Dict meta = dd.get<Dict>("meta");
        meta.set("owner", "child");
        meta.get<List>("tags").append("b");
        return 0;
    });
    test::require_exit_ok(c);
    List jobs = d.get<List>("jobs");
    CHECK(jobs.snapshot() == std::vector<Value>{1, 2, 3});
    Dict meta = d.get<Dict>("meta");
    CHECK(meta.get<std::string>("owner") == "child");
    CHECK(meta.get<List>("tags").size() == 2);
    // Storing a handle stores a copy; popping a container returns a copy.
    d.set("jobs_copy", jobs);
    jobs.append(4);
    CHECK(d.get<List>("jobs_copy").size() == 3);
    Value popped = d.pop("meta");
    REQUIRE(popped.is_new_container());
    CHECK(popped.new_dict_items().size() == 2);
    CHECK(clean(d.verify()));
    // The popped container's memory is reclaimed as later operations run.
    for (int i = 0; i < 50; ++i) d.set("tick", i);
    CHECK(clean(d.verify()));
}

TEST_CASE("the seeds' pattern: workers append results and the parent reads them all", "[container][processes]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("collect", kSize);
    List results = List::open_or_create(seg, "results");
    Dict by_worker = Dict::open_or_create(seg, "by_worker");
    std::vector<pid_t> kids;
    for (int w = 0; w < 4; ++w)
        kids.push_back(test::spawn([w] {
            auto s = shm::Segment::open("collect");
            List r = List::open(s, "results");
            Dict b = Dict::open(s, "by_worker");
            for (int i = 0; i < 250; ++i) r.append(w * 1000 + i * i % 1000);
            b.set("worker-" + std::to_string(w), Value::new_dict({{"items", 250}, {"pid", ::getpid()}}));
            return 0;
        }));
    for (pid_t k : kids) test::require_exit_ok(k);
    CHECK(results.size() == 1000);
    std::map<int, int> per;
    for (auto& v : results.snapshot()) ++per[v.as<int>() / 1000];
    for (int w = 0; w < 4; ++w) CHECK(per[w] == 250);
    CHECK(by_worker.size() == 4);
    CHECK(by_worker.get<Dict>("worker-2").get<int>("items") == 250);
}

TEST_CASE("concurrent increments from 4 processes end exact", "[container][processes]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("incr", kSize);
    Dict d = Dict::open_or_create(seg, "d");
    List l = List::open_or_create(seg, "l");
    std::vector<pid_t> kids;
    for (int w = 0; w < 4; ++w)
        kids.push_back(test::spawn([] {
            auto s = shm::Segment::open("incr");
            Dict dd = Dict::open(s, "d");
            List ll = List::open(s, "l");
            for (int i = 0; i < 5000; ++i) {
                dd.increment("total");
                dd.increment("k" + std::to_string(i % 10), 2);
                if (i % 50 == 0) ll.append(i);
            }
            return 0;
        }));
    for (pid_t k : kids) test::require_exit_ok(k, 120s);
    CHECK(d.get<int>("total") == 20000);
    for (int k = 0; k < 10; ++k) CHECK(d.get<int>("k" + std::to_string(k)) == 4000);
    CHECK(l.size() == 400);
    CHECK(clean(d.verify()));
}

TEST_CASE("List::assign and assign_if replace the whole list in one step", "[container][list]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("assign", kSize);
    List l = List::open_or_create(seg, "l");
    l.extend({3, "one", Value::new_list({1, 2}), 2.5});
    std::vector<Value> before = l.snapshot();

    SECTION("assign") {
        l.assign({"a", Value::new_dict({{"k", 1}}), 7});
        REQUIRE(l.size() == 3);
        CHECK(l.get<std::string>(0) == "a");
        CHECK(l.get(1).as_dict().get<int>("k") == 1);
        CHECK(l.get<int>(2) == 7);
        l.assign({});
        CHECK(l.empty());
    }
    SECTION("assign_if against the snapshot it was computed from") {
        std::vector<Value> reversed(before.rbegin(), before.rend());
        CHECK(l.assign_if(before, reversed));
        REQUIRE(l.size() == 4);
        CHECK(l.get<double>(0) == 2.5);
        // The nested list was copied in (as extend() copies a handle), so
        // it is a new container with the same items.
        CHECK(l.get(1).as_list().snapshot() == std::vector<Value>{1, 2});
        CHECK(l.get<std::string>(2) == "one");
        CHECK(l.get<int>(3) == 3);
    }
    SECTION("assign_if refuses, changing nothing, once the list has changed") {
        std::size_t used = seg.used_memory();
        l.append(4);
        std::vector<Value> now = l.snapshot();
        used = seg.used_memory();
        CHECK_FALSE(l.assign_if(before, {"x"}));
        CHECK(l.snapshot() == now);
        CHECK(seg.used_memory() == used);
        l.set(0, 30);  // same length, one item differs
        now = l.snapshot();
        CHECK_FALSE(l.assign_if(std::vector<Value>(now.begin(), now.end() - 1), {"x"}));
        std::vector<Value> stale = now;
        stale[0] = 3;
        CHECK_FALSE(l.assign_if(stale, {"x"}));
        CHECK(l.snapshot() == now);
    }
    CHECK(clean(l.verify()));
}

TEST_CASE("assign_if loses no append made by other processes meanwhile", "[container][processes]") {
    // One process appends; another rewrites the list again and again (a
    // reversal computed from a snapshot, written with assign_if, retried
    // when it changed). Every append survives every rewrite.
    test::ShmDir dir;
    auto seg = shm::Segment::create("cas", kSize);
    List l = List::open_or_create(seg, "l");
    constexpr int kAppends = 3000;
    pid_t appender = test::spawn([] {
        auto s = shm::Segment::open("cas");
        List ll = List::open(s, "l");
        for (int i = 0; i < kAppends; ++i) ll.append(i);
        return 0;
    });
    pid_t rewriter = test::spawn([] {
        auto s = shm::Segment::open("cas");
        List ll = List::open(s, "l");
        for (int r = 0; r < 300; ++r) {
            for (;;) {
                std::vector<Value> snap = ll.snapshot();
                std::vector<Value> rev(snap.rbegin(), snap.rend());
                if (ll.assign_if(snap, rev)) break;
            }
        }
        return 0;
    });
    test::require_exit_ok(appender, 120s);
    test::require_exit_ok(rewriter, 120s);
    std::vector<int> got;
    for (auto& v : l.snapshot()) got.push_back(v.as<int>());
    std::sort(got.begin(), got.end());
    REQUIRE(got.size() == std::size_t(kAppends));
    for (int i = 0; i < kAppends; ++i) CHECK(got[std::size_t(i)] == i);
    CHECK(clean(l.verify()));
}

TEST_CASE("snapshots are consistent while another process writes", "[container][processes]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("snap", kSize);
    Dict d = Dict::open_or_create(seg, "d");
    List l = List::open_or_create(seg, "l");
    d.update({{"a", 0}, {"b", 0}});
    auto& stop = seg.construct<std::atomic<int>>("stop", 0);
    pid_t w = test::spawn([&] {
        for (int i = 1; !stop.load() && i < 1000000; ++i) {
            d.update({{"a", i}, {"b", -i}});  // one atomic update keeps a + b == 0
            l.extend({i, -i});                // pairs always appear together
            if (l.size() > 200) l.clear();
        }
        return 0;
    });
    int torn = 0, snaps = 0;
    for (int i = 0; i < 2000; ++i) {
        auto items = d.items();
        std::map<std::string, std::int64_t> m;
        for (auto& kv : items) m[kv.first] = kv.second.as_int();
        if (m["a"] + m["b"] != 0) ++torn;
        auto s = l.snapshot();
        if (s.size() % 2 != 0) ++torn;
        for (std::size_t k = 0; k + 1 < s.size(); k += 2)
            if (s[k].as_int() + s[k + 1].as_int() != 0) ++torn;
        ++snaps;
    }
    stop = 1;
    test::require_exit_ok(w);
    CHECK(snaps == 2000);
    CHECK(torn == 0);
}

TEST_CASE("out of space leaves the container unchanged and freed memory is reused", "[container][space]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("small", 256 << 10);
    Dict d = Dict::open_or_create(seg, "d");
    d.set("keep", "value");
    std::string big(40000, 'x');
    int stored = 0;
    try {
        for (;; ++stored) d.set("big" + std::to_string(stored), big);
    } catch (const shm::out_of_space& e) {
        std::string w = e.what();
        CHECK(w.find("'small'") != std::string::npos);
        CHECK(w.find("256.0 KiB") != std::string::npos);
        CHECK(w.find("used") != std::string::npos);
    }
    CHECK(stored >= 2);
    CHECK(d.size() == std::size_t(stored) + 1);
    CHECK_FALSE(d.contains("big" + std::to_string(stored)));
    CHECK(clean(d.verify()));
    // A long run of set/erase does not grow use.
    for (int i = 0; i < stored; ++i) d.erase("big" + std::to_string(i));
    const std::size_t base = seg.used_memory();
    for (int i = 0; i < 2000; ++i) {
        d.set("churn" + std::to_string(i % 7), std::string(1000 + i % 500, 'y'));
        if (i % 3 == 0) d.erase("churn" + std::to_string((i + 3) % 7));
    }
    for (int i = 0; i < 7; ++i) d.erase("churn" + std::to_string(i));
    CHECK(seg.used_memory() <= base + 4096);
    // clear() of a full dict: the space comes back (drained on demand).
    for (int i = 0; i < stored; ++i) d.set("big" + std::to_string(i), big);
    d.clear();
    for (int i = 0; i < stored; ++i) d.set("again" + std::to_string(i), big);
    CHECK(d.size() == std::size_t(stored));
    CHECK(clean(d.verify()));
}

// ---- crash tests ---------------------------------------------------------------

namespace {
// The model a killed child's operations are checked against.
struct Model {
    std::map<std::string, Value> dict;
    std::vector<Value> list;
};

// Operation i of a seeded sequence, applied to the real containers or to
// the model.
struct Step {
    int kind;
    std::string key;
    std::int64_t n;
};
Step step_for(std::uint64_t seed, std::uint64_t i) {
    std::uint64_t x = (seed * 0x9e3779b97f4a7c15ull) ^ (i * 0xbf58476d1ce4e5b9ull);
    x ^= x >> 31;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 29;
    return Step{static_cast<int>(x % 7), "k" + std::to_string((x >> 8) % 12), static_cast<std::int64_t>((x >> 16) % 1000)};
}

void apply(Dict& d, List& l, const Step& s) {
    switch (s.kind) {
        case 0: d.set(s.key, std::string(static_cast<std::size_t>(s.n % 300), 'v')); break;
        case 1: d.erase(s.key); break;
        case 2: d.increment("count:" + s.key, s.n); break;
        case 3: d.update(s.key, [&](const Value& v) { return Value(v.type() == Value::Type::integer ? v.as_int() + 1 : s.n); }); break;
        case 4: l.append(s.key + ":" + std::to_string(s.n)); break;
        case 5: if (l.size() > 0) l.pop(); break;
        default: if (l.size() > 40) l.clear(); else l.insert(s.n % 5, s.n); break;
    }
}

void apply(Model& m, const Step& s) {
    switch (s.kind) {
        case 0: m.dict[s.key] = std::string(static_cast<std::size_t>(s.n % 300), 'v'); break;
        case 1: m.dict.erase(s.key); break;
        case 2: {
            auto& v = m.dict["count:" + s.key];
            v = Value((v.is_null() ? 0 : v.as_int()) + s.n);
            break;
        }
        case 3: {
            auto it = m.dict.find(s.key);
            Value cur = it == m.dict.end() ? Value() : it->second;
            m.dict[s.key] = Value(cur.type() == Value::Type::integer ? cur.as_int() + 1 : s.n);
            break;
        }
        case 4: m.list.push_back(s.key + ":" + std::to_string(s.n)); break;
        case 5: if (!m.list.empty()) m.list.pop_back(); break;
        default:
            if (m.list.size() > 40) m.list.clear();
            else m.list.insert(m.list.begin() + static_cast<long>(std::min<std::size_t>(static_cast<std::size_t>(s.n % 5), m.list.size())), Value(s.n));
            break;
    }
}

bool same(Dict& d, List& l, const Model& m) {
    auto items = d.items();
    if (items.size() != m.dict.size()) return false;
    for (auto& kv : items) {
        auto it = m.dict.find(kv.first);
        if (it == m.dict.end() || !(it->second == kv.second)) return false;
    }
    return l.snapshot() == m.list;
}

struct Progress {
    std::atomic<std::uint64_t> acked{0};  // operations completed by the child
    std::atomic<int> started{0};
};
}  // namespace

TEST_CASE("1000 SIGKILLs at random points: every acknowledged operation is there and nothing is torn",
          "[container][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("crash", 16 << 20);
    Dict d = Dict::open_or_create(seg, "d");
    List l = List::open_or_create(seg, "l");
    auto& pr = seg.construct<Progress>("progress");
    Model model;
    int in_flight_done = 0, recovered = 0;
    for (int round = 0; round < 1000; ++round) {
        pr.acked = 0;
        pr.started = 0;
        const std::uint64_t seed = static_cast<std::uint64_t>(round) + 1;
        pid_t c = test::spawn([&] {
            pr.started = 1;
            for (std::uint64_t i = 0; i < 1000000; ++i) {
                apply(d, l, step_for(seed, i));
                pr.acked.store(i + 1);  // acknowledged: the operation returned
            }
            return 0;
        });
        // Once it is in its loop, so that the random pause lands wherever
        // it is, however late a busy machine ran it.
        REQUIRE(test::eventually([&] { return pr.acked.load() >= 1; }, 30s));
        std::this_thread::sleep_for(std::chrono::microseconds(test::rng()() % 1500));
        test::kill_and_reap(c);

        if (seg.verify().recovered) ++recovered;  // the child died inside an operation
        auto problems = d.verify();
        auto lp = l.verify();
        problems.insert(problems.end(), lp.begin(), lp.end());
        INFO("round " << round);
        REQUIRE(clean(problems));
        // The state is the model after every acknowledged operation, or
        // after one more (the one in flight, if it committed).
        std::uint64_t acked = pr.acked.load();
        for (std::uint64_t i = 0; i < acked; ++i) apply(model, step_for(seed, i));
        if (!same(d, l, model)) {
            Model next = model;
            apply(next, step_for(seed, acked));
            REQUIRE(same(d, l, next));
            model = std::move(next);
            ++in_flight_done;
        }
    }
    WARN("1000 kills: " << recovered << " inside an operation (rolled back), the operation in flight had committed "
                        << in_flight_done << " times");
    CHECK(recovered > 100);
}

TEST_CASE("killed at every crash point of container operations: before or after, never between",
          "[container][crash]") {
    test::ShmDir dir;
    int killed = 0;
    // Each operation is checked alone: the state must equal the model before
    // it or after it.
    for (int kind = 0; kind < 7; ++kind) {
        for (long n = 1;; ++n) {
            REQUIRE(n < 3000);
            auto seg = shm::Segment::create("points", 4 << 20);
            Dict d = Dict::open_or_create(seg, "d");
            List l = List::open_or_create(seg, "l");
            Model before;
            for (std::uint64_t i = 0; i < 60; ++i) {
                Step s = step_for(99, i);
                if (s.kind == 6) s.kind = 4;  // keep the list from being cleared in the setup
                apply(d, l, s);
                apply(before, s);
            }
            d.set("nested", Value::new_list({1, Value::new_dict({{"x", "y"}})}));
            before.dict["nested"] = Value();  // compared separately below
            Step s{kind, kind == 1 || kind == 3 ? "k3" : "k5", 45};
            if (kind == 6) s = Step{6, "k1", 2};
            pid_t c = test::spawn([&] {
                shm::testing::kill_at_crash_point(n);
                apply(d, l, s);
                if (kind == 1) d.erase("nested");  // frees a nested container too
                return 7;
            });
            auto e = test::wait_for(c);
            REQUIRE((e.signaled || e.exited));
            auto problems = d.verify();
            auto lp = l.verify();
            problems.insert(problems.end(), lp.begin(), lp.end());
            INFO("operation kind " << kind << " crash point " << n);
            REQUIRE(clean(problems));
            Model after = before;
            apply(after, s);
            before.dict.erase("nested");
            after.dict.erase("nested");
            Dict dcopy = d;
            auto strip = [&](Model& m) {
                if (d.contains("nested")) m.dict["nested"] = d.get("nested");
            };
            strip(before);
            strip(after);
            CHECK((same(dcopy, l, before) || same(dcopy, l, after)));
            if (e.exited) {
                REQUIRE(e.code == 7);
                break;
            }
            ++killed;
        }
    }
    WARN("container operations killed at " << killed << " crash points");
    CHECK(killed > 200);
}

TEST_CASE("multi-item operations are all or nothing at every crash point", "[container][crash]") {
    test::ShmDir dir;
    int killed = 0;
    for (int which = 0; which < 2; ++which) {
        for (long n = 1;; ++n) {
            REQUIRE(n < 1000);
            auto seg = shm::Segment::create("multi", 1 << 20);
            Dict d = Dict::open_or_create(seg, "d");
            List l = List::open_or_create(seg, "l");
            d.update({{"a", 1}, {"b", 2}, {"c", 3}});
            l.extend({1, 2});
            pid_t c = test::spawn([&] {
                shm::testing::kill_at_crash_point(n);
                if (which == 0)
                    d.update({{"a", 10}, {"b", 20}, {"c", 30}});  // each alone would be one store
                else
                    l.extend({3, 4, 5});
                return 7;
            });
            auto e = test::wait_for(c);
            REQUIRE((e.signaled || e.exited));
            INFO("operation " << which << " crash point " << n);
            REQUIRE(clean(d.verify()));
            REQUIRE(clean(l.verify()));
            if (which == 0) {
                std::int64_t a = d.get<std::int64_t>("a"), b = d.get<std::int64_t>("b"), cc = d.get<std::int64_t>("c");
                CHECK(((a == 1 && b == 2 && cc == 3) || (a == 10 && b == 20 && cc == 30)));
            } else {
                CHECK((l.size() == 2 || l.size() == 5));
            }
            if (e.exited) break;
            ++killed;
        }
    }
    CHECK(killed > 10);
}
