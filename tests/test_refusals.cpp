// Dict and List: every refused operation changes nothing (contents, nested
// containers, heap use, verify()), operations as large as the free heap
// commit atomically, and a SIGKILL anywhere in a large operation leaves it
// done or not done.
#include <functional>
#include <map>
#include <stdexcept>

#include <shm/shm.hpp>

#include "store/layout.hpp"
#include "support.hpp"
#include "platform/testing.hpp"

using shm::Dict;
using shm::List;
using shm::Value;

namespace {

// The whole tree under a value, as text: nested containers are followed and
// dict items sorted, so two equal trees give the same text.
std::string dump(const Value& v, int depth = 0) {
    if (depth > 16) throw std::runtime_error("dump: nesting deeper than the tests make");
    if (v.type() == Value::Type::list && !v.is_new_container()) {
        std::string s = "[";
        for (auto& x : v.as_list().snapshot()) s += dump(x, depth + 1) + ",";
        return s + "]";
    }
    if (v.type() == Value::Type::dict && !v.is_new_container()) {
        std::map<std::string, std::string> items;
        for (auto& kv : v.as_dict().items()) items[kv.first] = dump(kv.second, depth + 1);
        std::string s = "{";
        for (auto& kv : items) s += kv.first + ":" + kv.second + ",";
        return s + "}";
    }
    return std::string(v.type_name()) + ":" + v.repr() + ":" + std::to_string(v.type() == Value::Type::string ? v.as_string().size() : 0);
}

// Everything a refused operation must leave as it was.
struct State {
    std::string dict, list;
    std::size_t used = 0;
    std::uint64_t garbage = 0;
    bool operator==(const State& o) const {
        return dict == o.dict && list == o.list && used == o.used && garbage == o.garbage;
    }
};

std::uint64_t garbage_head(shm::Segment& seg) {
    return static_cast<shm::layout::Header*>(seg.base())->garbage_head.load();
}

State state(shm::Segment& seg, Dict& d, List& l) {
    return State{dump(Value(d)), dump(Value(l)), seg.used_memory(), garbage_head(seg)};
}

// Every write operation frees a few pieces of garbage; run harmless ones
// (erasing a key that is not there) until none is left.
void drain(shm::Segment& seg, Dict& d) {
    for (long ops = 0; garbage_head(seg) != 0; ++ops) {
        REQUIRE(ops < 1'000'000);
        d.erase("no such key");
    }
}

bool clean(const std::vector<std::string>& problems) {
    for (auto& p : problems) UNSCOPED_INFO(p);
    return problems.empty();
}

void check_clean(shm::Segment& seg, Dict& d, List& l) {
    CHECK(clean(d.verify()));
    CHECK(clean(l.verify()));
    auto r = seg.verify();
    for (auto& p : r.problems) UNSCOPED_INFO(p);
    CHECK(r.ok);
}

// A dict and a list with every kind of value, nested containers included.
void populate(Dict& d, List& l) {
    d.update({{"a", 1}, {"s", "a string"}, {"f", 2.5}, {"n", nullptr}, {"t", true},
              {"b", Value::bytes(std::string("\0\1\2", 3))}, {"max", INT64_MAX},
              {"nested", Value::new_dict({{"x", Value::new_list({1, "two", 3.0})}, {"y", "z"}})}});
    for (int i = 0; i < 50; ++i) d.set("k" + std::to_string(i), std::string(static_cast<std::size_t>(i * 7), 'v'));
    l.extend({1, 2, 3, "four", 5.5, Value::new_list({"in", Value::new_dict({{"deep", 1}})}), Value::new_dict({{"q", 1}})});
    for (int i = 0; i < 30; ++i) l.append(std::string(static_cast<std::size_t>(i * 11), 'w'));
}

std::vector<Value> strings(std::size_t n, std::size_t len, const std::string& prefix = "s") {
    std::vector<Value> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        std::string s = prefix + std::to_string(i);
        s.resize(std::max(len, s.size()), '.');
        out.emplace_back(std::move(s));
    }
    return out;
}

std::vector<std::pair<std::string, Value>> items(std::size_t n, std::size_t len, const std::string& prefix = "u") {
    std::vector<std::pair<std::string, Value>> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i) out.emplace_back(prefix + std::to_string(i), std::string(len, 'i'));
    return out;
}

struct Refusal {
    std::string name;
    std::function<void(shm::Segment&, Dict&, List&)> op;
    std::function<bool(const std::exception&)> expected;
};

template <class E>
std::function<bool(const std::exception&)> is() {
    return [](const std::exception& e) { return dynamic_cast<const E*>(&e) != nullptr; };
}
std::function<bool(const std::exception&)> errno_is(int code) {
    return [code](const std::exception& e) {
        auto* se = dynamic_cast<const shm::error*>(&e);
        return se && se->code().value() == code;
    };
}

struct Thrown : std::runtime_error {
    Thrown() : std::runtime_error("thrown by the caller's function") {}
};

// Every operation kind against every refusal it can meet. The sizes are
// relative to the free heap, so the out-of-space ones run out part-way, after
// they have allocated and changed things.
std::vector<Refusal> refusals(std::size_t free) {
    const std::size_t huge = free + (1 << 20);
    auto too_many = [free](std::size_t len) { return free / len * 2 + 100; };
    auto oos = is<shm::out_of_space>();
    auto key = is<shm::key_error>();
    auto index = is<shm::index_error>();
    auto type = is<shm::value_type_error>();
    return {
        // Dict: missing key, wrong type, nested container in the way, overflow.
        {"dict get missing", [](auto&, Dict& d, List&) { d.get("missing"); }, key},
        {"dict pop missing", [](auto&, Dict& d, List&) { d.pop("missing"); }, key},
        {"dict increment a string", [](auto&, Dict& d, List&) { d.increment("s", 1); }, type},
        {"dict increment a nested dict", [](auto&, Dict& d, List&) { d.increment("nested", 1); }, type},
        {"dict increment a double into a string", [](auto&, Dict& d, List&) { d.increment("s", 1.5); }, type},
        {"dict increment past INT64_MAX", [](auto&, Dict& d, List&) { d.increment("max", 1); }, errno_is(EOVERFLOW)},
        {"dict update(key, fn) that throws",
         [](auto&, Dict& d, List&) { d.update("a", [](const Value&) -> Value { throw Thrown(); }); }, is<Thrown>()},
        {"dict update(key, fn) returning a handle",
         [](auto&, Dict& d, List&) {
             Value handle = d.get("nested");  // fn may not use the segment: it runs under its lock
             d.update("a", [&](const Value&) { return handle; });
         }, type},
        // Dict: out of space at every size of operation.
        {"dict set huge", [huge](auto&, Dict& d, List&) { d.set("k1", std::string(huge, 'h')); }, oos},
        {"dict set new key huge", [huge](auto&, Dict& d, List&) { d.set("new", std::string(huge, 'h')); }, oos},
        {"dict set a nested dict too large",
         [&, too_many](auto&, Dict& d, List&) {
             std::vector<std::pair<std::string, Value>> kv;
             for (auto& x : items(too_many(64), 40)) kv.push_back(x);
             d.set("nested", Value::new_dict(std::move(kv)));
         }, oos},
        {"dict setdefault huge", [huge](auto&, Dict& d, List&) { d.setdefault("new", std::string(huge, 'h')); }, oos},
        {"dict update(items) too large, part-way",
         [too_many](auto&, Dict& d, List&) {
             auto kv = items(too_many(96), 80);
             kv.emplace_back("a", 99);  // an existing key changed before the refusal
             std::rotate(kv.rbegin(), kv.rbegin() + 1, kv.rend());
             d.update(kv);
         }, oos},
        {"dict update(items) small, the last one huge",
         [huge](auto&, Dict& d, List&) { d.update({{"a", 2}, {"k3", "x"}, {"new", 1}, {"last", std::string(huge, 'h')}}); },
         oos},
        {"dict update(items) over existing keys, too large",
         [free](auto&, Dict& d, List&) {
             std::vector<std::pair<std::string, Value>> kv;
             for (int i = 0; i < 50; ++i) kv.emplace_back("k" + std::to_string(i), std::string(free / 40, 'r'));
             d.update(kv);
         }, oos},
        {"dict update(other) too large",
         [free](shm::Segment& seg, Dict& d, List&) {
             // The source dict takes over half the free heap (it fits), so
             // the copy into d cannot.
             Dict other = Dict::open(seg, "other");
             other.update(items(free * 6 / 10 / 520, 400, "o"));
             d.update(other);
         }, oos},
        {"dict update(key, fn) huge", [huge](auto&, Dict& d, List&) { d.update("k2", [huge](const Value&) { return Value(std::string(huge, 'u')); }); }, oos},
        {"nested dict update too large",
         [too_many](auto&, Dict& d, List&) { d.get("nested").as_dict().update(items(too_many(96), 80)); }, oos},
        // List: index out of range, missing value, empty.
        {"list get out of range", [](auto&, Dict&, List& l) { l.get(1000); }, index},
        {"list set out of range", [](auto&, Dict&, List& l) { l.set(-1000, 1); }, index},
        {"list pop out of range", [](auto&, Dict&, List& l) { l.pop(1000); }, index},
        {"list update out of range", [](auto&, Dict&, List& l) { l.update(1000, [](const Value& v) { return v; }); }, index},
        {"list remove missing", [](auto&, Dict&, List& l) { l.remove("not there"); }, errno_is(ENOENT)},
        {"list index missing", [](auto&, Dict&, List& l) { l.index("not there"); }, errno_is(ENOENT)},
        {"list pop of an empty nested list",
         [](auto&, Dict&, List& l) {
             List e = l.get(6).as_dict().setdefault("empty", Value::new_list()).as_list();
             e.pop();
         },
         index},
        {"list update(i, fn) that throws",
         [](auto&, Dict&, List& l) { l.update(3, [](const Value&) -> Value { throw Thrown(); }); }, is<Thrown>()},
        {"list update(i, fn) returning a handle",
         [](auto&, Dict&, List& l) {
             Value handle = l.get(5);
             l.update(3, [&](const Value&) { return handle; });
         }, type},
        // List: out of space.
        {"list append huge", [huge](auto&, Dict&, List& l) { l.append(std::string(huge, 'h')); }, oos},
        {"list insert huge", [huge](auto&, Dict&, List& l) { l.insert(2, std::string(huge, 'h')); }, oos},
        {"list set huge", [huge](auto&, Dict&, List& l) { l.set(3, std::string(huge, 'h')); }, oos},
        {"list extend too large, part-way",
         [too_many](auto&, Dict&, List& l) { l.extend(strings(too_many(48), 32)); }, oos},
        {"list extend small, the last one huge",
         [huge](auto&, Dict&, List& l) { l.extend({1, "two", std::string(huge, 'h')}); }, oos},
        {"list append a nested list too large",
         [too_many](auto&, Dict&, List& l) { l.append(Value::new_list(strings(too_many(48), 32))); }, oos},
        {"nested list extend too large",
         [too_many](auto&, Dict&, List& l) { l.get(5).as_list().extend(strings(too_many(48), 32)); }, oos},
        {"list assign too large", [too_many](auto&, Dict&, List& l) { l.assign(strings(too_many(48), 32)); }, oos},
        {"list assign_if too large",
         [too_many](auto&, Dict&, List& l) { l.assign_if(l.snapshot(), strings(too_many(48), 32)); }, oos},
    };
}

}  // namespace

TEST_CASE("every refused operation leaves containers and heap exactly as they were", "[refusal]") {
    test::ShmDir dir;
    int checked = 0;
    for (std::size_t seg_size : {std::size_t(1) << 20, std::size_t(4) << 20}) {
        auto seg = shm::Segment::create("refuse", seg_size);
        Dict d = Dict::open_or_create(seg, "d");
        List l = List::open_or_create(seg, "l");
        populate(d, l);
        // The "other" dict of one case, and the empty nested list of another,
        // are made before the snapshot (they are part of the setup, not of
        // the refused operation).
        Dict::open_or_create(seg, "other");
        l.get(6).as_dict().setdefault("empty", Value::new_list());
        for (auto& r : refusals(seg.free_memory())) {
            INFO("segment of " << seg_size << " bytes, operation: " << r.name);
            Dict::open(seg, "other").clear();
            drain(seg, d);
            State before = state(seg, d, l);
            bool refused = false;
            try {
                r.op(seg, d, l);
            } catch (const std::exception& e) {
                INFO("threw: " << e.what());
                CHECK(r.expected(e));
                refused = true;
            }
            REQUIRE(refused);
            Dict::open(seg, "other").clear();
            drain(seg, d);
            State after = state(seg, d, l);
            CHECK(after.dict == before.dict);
            CHECK(after.list == before.list);
            CHECK(after.used == before.used);
            check_clean(seg, d, l);
            ++checked;
        }
        // And the containers still work after all of that.
        l.append("after");
        d.set("after", 1);
        CHECK(l.get<std::string>(-1) == "after");
        check_clean(seg, d, l);
    }
    CHECK(checked == 2 * static_cast<int>(refusals(1 << 20).size()));
}

TEST_CASE("the reported cases: large extend and update commit, and leave the rest intact", "[refusal][large]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("reported", 8 << 20);
    List l = List::open_or_create(seg, "l");
    l.extend({1, 2, 3, "four", 5.5});
    auto many = strings(300, 20);
    l.extend(many);
    REQUIRE(l.size() == 305);
    CHECK(l.get<std::int64_t>(1) == 2);
    CHECK(l.get<double>(4) == 5.5);
    CHECK(l.get<std::string>(3) == "four");
    CHECK(l.get(304) == many.back());

    Dict d = Dict::open_or_create(seg, "d");
    d.set("a", "kept");
    d.update(items(3000, 10));
    CHECK(d.size() == 3001);
    CHECK(d.get<std::string>("a") == "kept");
    Dict other = Dict::open_or_create(seg, "other");
    other.update(items(3000, 12, "w"));
    d.update(other);
    CHECK(d.size() == 6001);
    CHECK(d.get<std::string>("w2999") == std::string(12, 'i'));
    CHECK(clean(d.verify()));
    CHECK(clean(l.verify()));
}

TEST_CASE("operations as large as the free heap commit atomically", "[refusal][large]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("large", 96 << 20);
    Dict d = Dict::open_or_create(seg, "d");
    List l = List::open_or_create(seg, "l");
    Dict other = Dict::open_or_create(seg, "other");
    const std::size_t empty_use = seg.used_memory();

    SECTION("list extend with 10,000 strings") {
        l.append("first");
        auto many = strings(10000, 24);
        l.extend(many);
        REQUIRE(l.size() == 10001);
        auto snap = l.snapshot();
        CHECK(snap.front() == Value("first"));
        CHECK(std::equal(many.begin(), many.end(), snap.begin() + 1));
        CHECK(clean(l.verify()));
    }
    SECTION("dict update from a 100,000-item mapping, then from another dict, then replacing every value") {
        d.set("first", 1);
        auto kv = items(100000, 16);
        d.update(kv);
        REQUIRE(d.size() == 100001);
        CHECK(d.get<std::string>("u99999") == std::string(16, 'i'));
        other.update(items(20000, 8, "o"));
        d.update(other);
        CHECK(d.size() == 120001);
        // Replacing every value drops 100,000 old strings in one operation.
        d.update(items(100000, 20));
        CHECK(d.size() == 120001);
        CHECK(d.get<std::string>("u5") == std::string(20, 'i'));
        CHECK(clean(d.verify()));
        // The dropped strings are freed a few per later operation; none leak.
        d.clear();
        other.clear();
        drain(seg, d);
        CHECK(seg.used_memory() == empty_use);
        CHECK(d.size() == 0);
        CHECK(clean(d.verify()));
    }
    SECTION("a nested dict of 50,000 items stored in one set, then dropped") {
        std::vector<std::pair<std::string, Value>> kv;
        for (int i = 0; i < 50000; ++i)
            kv.emplace_back("n" + std::to_string(i), Value::new_list({i, std::string(10, 'n')}));
        d.set("big", Value::new_dict(std::move(kv)));
        Dict big = d.get("big").as_dict();
        CHECK(big.size() == 50000);
        CHECK(big.get("n49999").as_list().get<std::int64_t>(0) == 49999);
        CHECK(clean(d.verify()));
        d.erase("big");
        d.clear();  // and d's own table
        drain(seg, d);
        CHECK(seg.used_memory() == empty_use);
    }
    CHECK(clean(seg.verify().problems));
}

TEST_CASE("memory dropped by large operations all comes back", "[refusal][large]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("back", 32 << 20);
    Dict d = Dict::open_or_create(seg, "d");
    List l = List::open_or_create(seg, "l");
    const std::size_t empty_use = seg.used_memory();
    for (int round = 0; round < 3; ++round) {
        d.update(items(20000, 24));
        d.update(items(20000, 40));  // replaces every value
        l.extend(strings(20000, 30));
        l.extend({Value::new_list(strings(5000, 8)), Value::new_dict(items(5000, 8))});
        d.clear();
        l.clear();
        drain(seg, d);
        INFO("round " << round);
        CHECK(seg.used_memory() == empty_use);
        CHECK(clean(d.verify()));
        CHECK(clean(l.verify()));
    }
}

TEST_CASE("refused segment operations leave the heap and the object directory as they were", "[refusal][segment]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("seg-refuse", 1 << 20);
    seg.construct<std::int64_t>("n", 5);
    Dict d = Dict::open_or_create(seg, "d");
    d.set("x", "y");
    void* raw = seg.allocate(100);
    auto names = [&] {
        std::string s;
        for (auto& o : seg.objects()) s += o.name + "@" + std::to_string(o.offset) + ";";
        return s;
    };
    const std::string objects = names();
    const std::size_t used = seg.used_memory();
    struct Big {
        char bytes[2 << 20];
    };
    std::vector<std::pair<std::string, std::function<void()>>> ops = {
        {"construct too large", [&] { seg.construct<Big>("big"); }},
        {"construct an existing name", [&] { seg.construct<std::int64_t>("n", 1); }},
        {"find as another type", [&] { seg.find<double>("n"); }},
        {"find_or_construct as another type", [&] { seg.find_or_construct<double>("n", 1.0); }},
        {"destroy as another type", [&] { seg.destroy<double>("n"); }},
        {"open a dict as a list", [&] { List::open(seg, "d"); }},
        {"open a missing list", [&] { List::open(seg, "nothing"); }},
        {"allocate too much", [&] { seg.allocate(2 << 20); }},
        {"free an address inside a block", [&] { seg.deallocate(static_cast<char*>(raw) + 16); }},
        {"free twice", [&] {
             void* p = seg.allocate(64);
             seg.deallocate(p);
             seg.deallocate(p);
         }},
        {"invalid object name", [&] { seg.construct<int>("/starts-with-a-slash", 1); }},
    };
    for (auto& [name, op] : ops) {
        INFO(name);
        CHECK_THROWS_AS(op(), shm::error);
        CHECK(names() == objects);
        CHECK(seg.used_memory() == used);
        CHECK(d.get<std::string>("x") == "y");
        auto r = seg.verify();
        for (auto& p : r.problems) UNSCOPED_INFO(p);
        CHECK(r.ok);
    }
}

// ---- crash tests for large operations ------------------------------------------

namespace {
struct Big {
    std::string name;
    std::function<void(Dict&, List&)> op;
};

std::vector<Big> big_ops() {
    return {
        {"extend 2000 strings", [](Dict&, List& l) { l.extend(strings(2000, 24)); }},
        {"assign_if 2000 strings over 100", [](Dict&, List& l) {
             if (!l.assign_if(l.snapshot(), strings(2000, 24))) throw std::logic_error("assign_if refused");
         }},
        {"update 2000 items, half replacing", [](Dict& d, List&) {
             auto kv = items(1000, 30, "k");  // k0..k999 exist: their strings are dropped
             auto more = items(1000, 20, "new");
             kv.insert(kv.end(), more.begin(), more.end());
             kv.emplace_back("nested", Value::new_list({1, 2}));  // drops a nested container
             d.update(kv);
         }},
        {"set a nested dict of 1000 lists", [](Dict& d, List&) {
             std::vector<std::pair<std::string, Value>> kv;
             for (int i = 0; i < 1000; ++i) kv.emplace_back("n" + std::to_string(i), Value::new_list({i, "x"}));
             d.set("tree", Value::new_dict(std::move(kv)));
         }},
    };
}

void setup_big(Dict& d, List& l) {
    d.update(items(1000, 12, "k"));
    d.set("nested", Value::new_dict({{"x", Value::new_list({1, 2, 3})}}));
    l.extend(strings(100, 10, "l"));
}
}  // namespace

TEST_CASE("large operations killed at crash points all through them: before or after, never between",
          "[refusal][large][crash]") {
    test::ShmDir dir;
    int killed = 0;
    for (auto& b : big_ops()) {
        // The states before and after, from an uninterrupted run.
        std::string want_before_d, want_before_l, want_after_d, want_after_l;
        std::size_t before_use = 0;
        {
            auto seg = shm::Segment::create("model", 4 << 20);
            Dict d = Dict::open_or_create(seg, "d");
            List l = List::open_or_create(seg, "l");
            setup_big(d, l);
            want_before_d = dump(Value(d));
            want_before_l = dump(Value(l));
            before_use = seg.used_memory();
            b.op(d, l);
            want_after_d = dump(Value(d));
            want_after_l = dump(Value(l));
        }
        // Every crash point at the start, then spread evenly over the rest.
        long n = 1, stride = 1;
        for (int tries = 0;; ++tries) {
            REQUIRE(tries < 5000);
            auto seg = shm::Segment::create("points", 4 << 20);
            Dict d = Dict::open_or_create(seg, "d");
            List l = List::open_or_create(seg, "l");
            setup_big(d, l);
            pid_t c = test::spawn([&] {
                shm::testing::kill_at_crash_point(n);
                b.op(d, l);
                return 7;
            });
            auto e = test::wait_for(c);
            INFO(b.name << ", crash point " << n);
            REQUIRE((e.signaled || (e.exited && e.code == 7)));
            CHECK(clean(d.verify()));
            CHECK(clean(l.verify()));
            std::string got_d = dump(Value(d)), got_l = dump(Value(l));
            bool was_before = got_d == want_before_d && got_l == want_before_l;
            bool was_after = got_d == want_after_d && got_l == want_after_l;
            CHECK((was_before || was_after));
            if (was_before) CHECK(seg.used_memory() == before_use);
            if (e.exited) break;
            ++killed;
            if (n >= 100) stride = 211;  // a prime, so the points fall at varied steps
            n += stride;
        }
    }
    WARN("large operations killed at " << killed << " crash points");
    CHECK(killed > 450);
}

TEST_CASE("large operations under 200 SIGKILLs at random moments: before or after, never between",
          "[refusal][large][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("random", 64 << 20);
    Dict d = Dict::open_or_create(seg, "d");
    List l = List::open_or_create(seg, "l");
    struct Progress {
        std::atomic<std::uint64_t> done{0};
        std::atomic<int> started{0};
    };
    auto& pr = seg.construct<Progress>("progress");
    int in_operation = 0, committed = 0;
    for (int round = 0; round < 200; ++round) {
        // Each round: one large operation whose result is known; killed at a
        // random moment, or not at all if it finishes first.
        const int r = round;
        auto op = [r](Dict& dd, List& ll) {
            if (r % 2 == 0)
                ll.extend(strings(1000, 16, "r" + std::to_string(r) + "."));
            else
                dd.update(items(1000, 8 + static_cast<std::size_t>(r % 13), "k"));
        };
        std::string before_d = dump(Value(d)), before_l = dump(Value(l));
        pr.done = 0;
        pr.started = 0;
        pid_t c = test::spawn([&] {
            pr.started = 1;
            op(d, l);
            pr.done = 1;
            return 0;
        });
        REQUIRE(test::eventually([&] { return pr.started.load() == 1; }));
        // A random number of yields: no clock decides what is checked.
        for (auto k = test::rng()() % 3000; k > 0 && pr.done.load() == 0; --k) std::this_thread::yield();
        test::kill_and_reap(c);
        if (seg.verify().recovered) ++in_operation;
        INFO("round " << round);
        REQUIRE(clean(d.verify()));
        REQUIRE(clean(l.verify()));
        std::string got_d = dump(Value(d)), got_l = dump(Value(l));
        if (got_d == before_d && got_l == before_l) {
            REQUIRE(pr.done.load() == 0);  // an acknowledged operation is never lost
            op(d, l);                      // bring the state to "after" for the next round
        } else {
            ++committed;
        }
        // The state is now exactly "after": check by doing it again on a copy.
        if (r % 2 == 0) {
            auto snap = l.snapshot();
            auto want = strings(1000, 16, "r" + std::to_string(r) + ".");
            REQUIRE(snap.size() >= want.size());
            CHECK(std::equal(want.begin(), want.end(), snap.end() - static_cast<long>(want.size())));
        } else {
            CHECK(d.get<std::string>("k999") == std::string(8 + static_cast<std::size_t>(r % 13), 'i'));
        }
        if (l.size() > 10000) l.clear();
    }
    WARN("200 kills: " << in_operation << " inside an operation (rolled back), " << committed
                       << " after the operation committed");
}
