// shm::allocator: Boost containers in a segment, shared by processes that
// map it at different addresses, refused cleanly when the heap is full,
// giving their memory back, and repairable after SIGKILL (allocator.hpp).
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <boost/container/flat_map.hpp>
#include <boost/container/map.hpp>
#include <boost/container/string.hpp>
#include <boost/container/vector.hpp>

#include <shm/allocator.hpp>
#include <shm/shm.hpp>

#include "support.hpp"

namespace bc = boost::container;

namespace {

template <class T>
using Alloc = shm::allocator<T>;
using Vec = bc::vector<std::uint64_t, Alloc<std::uint64_t>>;
using Str = bc::basic_string<char, std::char_traits<char>, Alloc<char>>;
using Map = bc::map<std::uint64_t, Str, std::less<std::uint64_t>, Alloc<std::pair<const std::uint64_t, Str>>>;
using Flat = bc::flat_map<std::uint64_t, std::uint64_t, std::less<std::uint64_t>,
                          Alloc<std::pair<std::uint64_t, std::uint64_t>>>;

constexpr std::size_t kSize = 8 << 20;

std::string text_of(std::uint64_t n) { return "value-" + std::to_string(n) + std::string(n % 40, 'x'); }

shm::HeapReport sound(const shm::Segment& seg) {
    shm::HeapReport r = seg.verify();
    INFO((r.problems.empty() ? std::string() : r.problems.front()));
    REQUIRE(r.ok);
    return r;
}

// Every container type at once, constructed empty in the segment.
struct All {
    shm::Mutex lock;
    Vec vec;
    Map map;
    Flat flat;
    Str str;
    explicit All(const Alloc<char>& a) : vec(a), map(a), flat(a), str(a) {}
};

}  // namespace

TEST_CASE("a child that maps the segment elsewhere writes every container and the parent reads them",
          "[allocator]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("boost", kSize);
    All& all = seg.construct<All>("all", Alloc<char>(seg));
    void* parent_base = seg.base();

    test::require_exit_ok(test::spawn([&] {
        // A second attachment of its own: another mapping, another address.
        auto mine = shm::Segment::open("boost");
        if (mine.base() == parent_base) return 2;
        All* a = mine.find<All>("all");
        if (!a || a == &all) return 3;
        if (a->vec.get_allocator() != Alloc<std::uint64_t>(mine)) return 4;
        std::lock_guard<shm::Mutex> g(a->lock);
        Alloc<char> al(mine);
        for (std::uint64_t i = 0; i < 1000; ++i) {
            a->vec.push_back(i * 3);
            a->map.emplace(i, Str(text_of(i).c_str(), al));
            a->flat.emplace(i, i * i);
        }
        a->str.assign(text_of(4242).c_str());
        a->str.append(200, 'z');
        return 0;
    }));

    std::lock_guard<shm::Mutex> g(all.lock);
    REQUIRE(all.vec.size() == 1000);
    REQUIRE(all.map.size() == 1000);
    REQUIRE(all.flat.size() == 1000);
    for (std::uint64_t i = 0; i < 1000; ++i) {
        CHECK(all.vec[i] == i * 3);
        CHECK(all.map.at(i) == text_of(i).c_str());
        CHECK(all.flat.at(i) == i * i);
    }
    CHECK(all.str == (text_of(4242) + std::string(200, 'z')).c_str());
    // The blocks the child allocated are the parent's to free.
    all.vec.erase(all.vec.begin(), all.vec.begin() + 500);
    all.vec.shrink_to_fit();
    all.map.erase(all.map.begin(), all.map.find(500));
    CHECK(all.vec.front() == 1500);
    CHECK(all.map.begin()->first == 500);
    sound(seg);
}

TEST_CASE("two mappings in one process see and change the same containers", "[allocator]") {
    test::ShmDir dir;
    auto a = shm::Segment::create("twice", kSize);
    auto b = shm::Segment::open("twice");
    REQUIRE(a.base() != b.base());
    auto& va = a.construct<Vec>("vec", Alloc<std::uint64_t>(a));
    auto& ma = a.construct<Map>("map", Alloc<char>(a));
    for (std::uint64_t i = 0; i < 100; ++i) {
        va.push_back(i);
        ma.emplace(i, Str(text_of(i).c_str(), Alloc<char>(a)));
    }
    Vec* vb = b.find<Vec>("vec");
    Map* mb = b.find<Map>("map");
    REQUIRE(vb);
    REQUIRE(mb);
    REQUIRE(static_cast<void*>(vb) != static_cast<void*>(&va));
    // The allocator inside the container is relative too: through b it
    // names b's mapping.
    CHECK(vb->get_allocator() == Alloc<std::uint64_t>(b));
    CHECK(va.get_allocator() == Alloc<std::uint64_t>(a));
    CHECK(vb->get_allocator() != va.get_allocator());
    for (std::uint64_t i = 100; i < 300; ++i) {  // reallocates through b
        vb->push_back(i);
        mb->emplace(i, Str(text_of(i).c_str(), Alloc<char>(b)));
    }
    REQUIRE(va.size() == 300);
    REQUIRE(ma.size() == 300);
    for (std::uint64_t i = 0; i < 300; ++i) {
        CHECK(va[i] == i);
        CHECK(ma.at(i) == text_of(i).c_str());
    }
    REQUIRE(shm::destroy_container<Map>(b, "map"));
    REQUIRE(shm::destroy_container<Vec>(a, "vec"));
    CHECK(sound(a).used_blocks == 0);
}

TEST_CASE("processes appending under one shm::Mutex: every element arrives", "[allocator]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("append", 32 << 20);
    All& all = seg.construct<All>("all", Alloc<char>(seg));
    constexpr std::uint64_t kProcs = 4, kEach = 2000;
    std::vector<pid_t> kids;
    for (std::uint64_t p = 0; p < kProcs; ++p)
        kids.push_back(test::spawn([&, p] {
            auto mine = shm::Segment::open("append");  // its own address, as an unrelated process
            All& a = *mine.find<All>("all");
            Alloc<char> al(mine);
            for (std::uint64_t i = 0; i < kEach; ++i) {
                const std::uint64_t v = p * 1'000'000 + i;
                std::lock_guard<shm::Mutex> g(a.lock);
                a.vec.push_back(v);
                a.map.emplace(v, Str(text_of(v).c_str(), al));
                a.flat.emplace(v, p);
                a.str.push_back(static_cast<char>('a' + p));
            }
            return 0;
        }));
    for (pid_t k : kids) test::require_exit_ok(k);

    std::lock_guard<shm::Mutex> g(all.lock);
    REQUIRE(all.vec.size() == kProcs * kEach);
    REQUIRE(all.map.size() == kProcs * kEach);
    REQUIRE(all.flat.size() == kProcs * kEach);
    REQUIRE(all.str.size() == kProcs * kEach);
    std::vector<std::uint64_t> next(kProcs, 0);  // each process's values arrive in its order
    for (std::uint64_t v : all.vec) {
        const std::uint64_t p = v / 1'000'000;
        REQUIRE(p < kProcs);
        CHECK(v % 1'000'000 == next[p]++);
    }
    for (std::uint64_t p = 0; p < kProcs; ++p) {
        CHECK(next[p] == kEach);
        CHECK(std::count(all.str.begin(), all.str.end(), static_cast<char>('a' + p)) == kEach);
        for (std::uint64_t i = 0; i < kEach; ++i) {
            const std::uint64_t v = p * 1'000'000 + i;
            auto it = all.map.find(v);
            REQUIRE(it != all.map.end());
            CHECK(it->second == text_of(v).c_str());
            CHECK(all.flat.at(v) == p);
        }
    }
    sound(seg);
}

TEST_CASE("a full heap refuses with shm::out_of_space and the container and the heap stay as they were",
          "[allocator]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("full", 256 << 10);
    auto& vec = seg.construct<Vec>("vec", Alloc<std::uint64_t>(seg));
    auto& map = seg.construct<Map>("map", Alloc<char>(seg));
    auto& str = seg.construct<Str>("str", Alloc<char>(seg));

    // Each kind of growth in turn until the heap refuses it; every refusal
    // must leave the container and the heap exactly as before the call.
    auto until_refused = [&](auto grow, auto snapshot) {
        for (std::uint64_t i = 0; i < 1'000'000; ++i) {
            const auto before = snapshot();
            const std::size_t used_before = seg.used_memory();
            try {
                grow(i);
            } catch (const shm::out_of_space& e) {
                CHECK(e.code().value() == ENOSPC);
                CHECK(snapshot() == before);
                CHECK(seg.used_memory() == used_before);
                sound(seg);
                return i;
            }
        }
        FAIL("the heap never filled");
        return std::uint64_t(0);
    };
    const std::uint64_t pushed = until_refused([&](std::uint64_t i) { vec.push_back(i); },
                                               [&] { return std::make_tuple(std::vector<std::uint64_t>(vec.begin(), vec.end()),
                                                                            vec.capacity(), vec.data()); });
    CHECK(pushed > 1000);
    // The vector is usable after the refusal, and its buffer freed gives room.
    vec.pop_back();
    CHECK(vec.size() == pushed - 1);
    Vec(vec.get_allocator()).swap(vec);
    auto snap_map = [&] {
        std::map<std::uint64_t, std::string> m;
        for (auto& kv : map) m.emplace(kv.first, std::string(kv.second.begin(), kv.second.end()));
        return m;
    };
    const std::uint64_t inserted = until_refused(
        [&](std::uint64_t i) { map.emplace(i, Str(text_of(i).c_str(), Alloc<char>(seg))); }, snap_map);
    CHECK(inserted > 100);
    map.clear();
    const std::uint64_t appended = until_refused([&](std::uint64_t) { str.append(1000, 'q'); },
                                                 [&] { return std::make_pair(std::string(str.begin(), str.end()), str.capacity()); });
    CHECK(appended > 10);
    sound(seg);
}

TEST_CASE("destroyed containers give back every byte", "[allocator]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("back", kSize);
    const std::size_t free_before = seg.free_memory();
    const std::uint64_t blocks_before = sound(seg).used_blocks;
    {
        auto& vec = seg.construct<Vec>("vec", Alloc<std::uint64_t>(seg));
        auto& map = seg.construct<Map>("map", Alloc<char>(seg));
        auto& flat = seg.construct<Flat>("flat", Alloc<char>(seg));
        auto& str = seg.construct<Str>("str", Alloc<char>(seg));
        for (std::uint64_t i = 0; i < 3000; ++i) {
            vec.push_back(i);
            map.emplace(i, Str(text_of(i).c_str(), Alloc<char>(seg)));
            flat.emplace(i * 7919 % 3001, i);
            str += text_of(i).c_str();
        }
        map.erase(map.find(10), map.find(2000));  // some freed already, some left
        CHECK(seg.free_memory() < free_before);
    }
    REQUIRE(shm::destroy_container<Vec>(seg, "vec"));
    REQUIRE(shm::destroy_container<Map>(seg, "map"));
    REQUIRE(shm::destroy_container<Flat>(seg, "flat"));
    REQUIRE(shm::destroy_container<Str>(seg, "str"));
    CHECK_FALSE(shm::destroy_container<Str>(seg, "str"));
    CHECK(seg.free_memory() == free_before);
    auto r = sound(seg);
    CHECK(r.used_blocks == blocks_before);
    CHECK(r.objects == 0);
}

TEST_CASE("allocating inside construct() is refused and nothing is made", "[allocator]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("inside", kSize);
    const std::size_t free_before = seg.free_memory();
    try {
        seg.construct<Vec>("vec", std::size_t(10), std::uint64_t(1), Alloc<std::uint64_t>(seg));
        FAIL("construct() of a vector that allocates succeeded");
    } catch (const shm::error& e) {
        CHECK(e.code().value() == EDEADLK);
        CHECK(std::string(e.what()).find("construct containers empty") != std::string::npos);
    }
    CHECK(seg.find<Vec>("vec") == nullptr);
    CHECK(seg.free_memory() == free_before);
    sound(seg);
}

// ---- the repair pattern of docs/boost-interprocess.md, under SIGKILL ------

namespace {

// The guarded data: a vector, a map of strings, a flat_map and a string,
// changed together by each step; Plain is its process-local twin, which
// replays the steps to say what the data must hold.
struct Boosted {
    Vec log;
    Map names;
    Flat counts;
    Str text;
    explicit Boosted(const Alloc<char>& a) : log(a), names(a), counts(a), text(a) {}
};

struct Plain {
    std::vector<std::uint64_t> log;
    std::map<std::uint64_t, std::string> names;
    std::map<std::uint64_t, std::uint64_t> counts;
    std::string text;
};

// Step n, the same for both kinds: allocations and frees of every container.
template <class D, class MakeStr>
void step(D& d, std::uint64_t n, MakeStr make) {
    d.log.push_back(n);
    if (d.log.size() > 300) {
        d.log.erase(d.log.begin(), d.log.begin() + 150);
        if (n % 3 == 0) d.log.shrink_to_fit();
    }
    auto it = d.names.find(n % 64);
    if (it != d.names.end())
        it->second = make(text_of(n));
    else
        d.names.emplace(n % 64, make(text_of(n)));
    if (n % 5 == 0) d.names.erase((n * 7) % 64);
    auto c = d.counts.find(n % 97);
    if (c != d.counts.end())
        ++c->second;
    else
        d.counts.emplace(n % 97, 1);
    if (n % 11 == 0) d.counts.erase((n * 3) % 97);
    d.text.push_back(static_cast<char>('a' + n % 26));
    if (d.text.size() > 200) {
        d.text.erase(0, 100);
        if (n % 2) d.text.shrink_to_fit();
    }
}

bool same(const Boosted& b, const Plain& p) {
    if (!std::equal(b.log.begin(), b.log.end(), p.log.begin(), p.log.end())) return false;
    if (b.names.size() != p.names.size() || b.counts.size() != p.counts.size()) return false;
    auto n = p.names.begin();
    for (auto& kv : b.names) {
        if (kv.first != n->first || std::string(kv.second.begin(), kv.second.end()) != n->second) return false;
        ++n;
    }
    auto c = p.counts.begin();
    for (auto& kv : b.counts) {
        if (kv.first != c->first || kv.second != c->second) return false;
        ++c;
    }
    return std::string(b.text.begin(), b.text.end()) == p.text;
}

bool same(const Boosted& a, const Boosted& b) {
    return a.log == b.log && a.names == b.names && a.counts == b.counts && a.text == b.text;
}

// The data twice, changed one copy after the other. `state` is
// steps << 2 | phase: phase 1 while copy 0 changes, 2 while copy 1 changes,
// 0 between steps; the step's last store sets steps + 1 and phase 0 at once.
struct Mirrored {
    shm::Mutex lock;
    std::atomic<std::uint64_t> state{0};
    std::uint64_t torn_repaired = 0;
    Boosted copy[2];
    explicit Mirrored(const Alloc<char>& a) : copy{Boosted(a), Boosted(a)} {}

    // Only for the holder of `lock` that found its previous owner dead.
    void repair() {
        const std::uint64_t s = state.load();
        const std::uint64_t phase = s & 3, steps = s >> 2;
        if (phase == 0) return;  // died between steps: both copies whole
        // The torn copy cannot be trusted even to be freed: it is built
        // anew over itself (its blocks leak) from the intact one.
        const int torn = phase == 1 ? 0 : 1;
        ::new (&copy[torn]) Boosted(copy[1 - torn]);
        ++torn_repaired;
        // Copy 1 torn: copy 0 had finished the step, which therefore counts.
        state.store((phase == 2 ? steps + 1 : steps) << 2);
    }

    template <class F>
    void update(F f) {
        const std::uint64_t steps = state.load() >> 2;
        state.store(steps << 2 | 1);
        f(copy[0]);
        state.store(steps << 2 | 2);
        f(copy[1]);
        state.store((steps + 1) << 2);
    }
};

}  // namespace

TEST_CASE("containers killed mid-update 200 times: the heap stays sound and the repaired data whole",
          "[allocator][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("killed", 64 << 20);
    Mirrored& m = seg.construct<Mirrored>("mirrored", Alloc<char>(seg));
    const std::size_t free_at_start = seg.free_memory();

    auto check = [&](std::uint64_t* steps_out) {
        std::lock_guard<shm::Mutex> g(m.lock);
        if (m.lock.previous_owner_died()) m.repair();
        REQUIRE((m.state.load() & 3) == 0);
        const std::uint64_t steps = m.state.load() >> 2;
        Plain p;
        for (std::uint64_t n = 0; n < steps; ++n) step(p, n, [](const std::string& s) { return s; });
        REQUIRE(same(m.copy[0], m.copy[1]));
        REQUIRE(same(m.copy[0], p));
        *steps_out = steps;
    };

    std::uniform_int_distribution<int> delay_us(0, 3000);
    constexpr int kKills = 200;
    std::uint64_t steps = 0;
    for (int k = 0; k < kKills; ++k) {
        const std::uint64_t before = m.state.load() >> 2;
        pid_t pid = test::spawn([&] {
            Alloc<char> al(seg);
            for (int i = 0; i < 100'000; ++i) {
                std::lock_guard<shm::Mutex> g(m.lock);
                if (m.lock.previous_owner_died()) m.repair();
                const std::uint64_t n = m.state.load() >> 2;
                m.update([&](Boosted& d) { step(d, n, [&](const std::string& s) { return Str(s.c_str(), al); }); });
            }
            return 0;
        });
        std::this_thread::sleep_for(std::chrono::microseconds(delay_us(test::rng())));
        // Every 25th child is killed only once it has committed a step (a
        // slow start, as under a sanitizer, must not leave the test without
        // any); a generous cap ends a true hang.
        if (k % 25 == 0)
            for (int w = 0; w < 600'000 && (m.state.load() >> 2) <= before; ++w)
                std::this_thread::sleep_for(std::chrono::microseconds(100));
        test::kill_and_reap(pid);
        if (k % 25 == 24) {
            sound(seg);
            check(&steps);
        }
    }
    sound(seg);
    check(&steps);
    INFO("steps " << steps << ", lock recoveries " << m.lock.recoveries() << ", torn copies rebuilt "
                  << m.torn_repaired << ", leaked " << (free_at_start - seg.free_memory()) << " bytes");
    CHECK(steps > 0);
    CHECK(m.lock.recoveries() > 0);
}
