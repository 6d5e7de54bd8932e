// Boost containers with shm::allocator in a libshm segment (impl
// "shm_allocator_map", or "shm_allocator_flat_map" when built with
// SHM_BENCH_FLAT_MAP=1): what a program moving from managed_shared_memory
// to libshm pays for the same data. A boost::container::map (or flat_map)
// from strings to int64, and for list.append a boost::container::vector of
// int64, under one shm::Mutex in the same segment; every allocation is a
// transaction of the segment's crash-safe heap. No journal of the
// containers' own updates: like the floor (containers_floor.cpp), plain
// data under one lock.
//
// Same cases, working set and harness as containers_floor.cpp and
// containers_libshm.cpp.
#include <unistd.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>

#include <boost/container/flat_map.hpp>
#include <boost/container/map.hpp>
#include <boost/container/string.hpp>
#include <boost/container/vector.hpp>

#include <shm/allocator.hpp>
#include <shm/shm.hpp>

#include "harness.hpp"

#ifndef SHM_BENCH_FLAT_MAP
#define SHM_BENCH_FLAT_MAP 0
#endif

namespace {

using bench::DictOp;
namespace bc = boost::container;

constexpr std::size_t kMiB = std::size_t(1) << 20;

using ShmString = bc::basic_string<char, std::char_traits<char>, shm::allocator<char>>;

// Ordering that also takes a std::string_view, so a lookup builds no string
// in the segment.
struct KeyLess {
    using is_transparent = void;
    static std::string_view sv(std::string_view s) noexcept { return s; }
    static std::string_view sv(const ShmString& s) noexcept { return {s.data(), s.size()}; }
    template <class A, class B>
    bool operator()(const A& a, const B& b) const noexcept { return sv(a) < sv(b); }
};

#if SHM_BENCH_FLAT_MAP
constexpr const char* kImpl = "shm_allocator_flat_map";
using Map = bc::flat_map<ShmString, std::int64_t, KeyLess, shm::allocator<std::pair<ShmString, std::int64_t>>>;
#else
constexpr const char* kImpl = "shm_allocator_map";
using Map = bc::map<ShmString, std::int64_t, KeyLess, shm::allocator<std::pair<const ShmString, std::int64_t>>>;
#endif
using Vec = bc::vector<std::int64_t, shm::allocator<std::int64_t>>;

// A segment that exists for one case only.
struct CaseSegment {
    std::string name;
    shm::Segment seg;
    CaseSegment(const std::string& tag, std::size_t bytes)
        : name("bench." + std::to_string(getpid()) + "." + tag),
          seg((bench::TempFiles::add(shm::segment_path(name).string()), shm::Segment::create(name, bytes))) {}
    ~CaseSegment() {
        shm::Segment::unlink(name);
        bench::TempFiles::remove(shm::segment_path(name).string());
    }
};

void expect_verified(const shm::Segment& seg) {
    shm::HeapReport r = seg.verify();
    bench::expect(r.ok, "verify(): " + (r.problems.empty() ? std::string() : r.problems.front()));
}

bench::CaseResult dict_case(const bench::Options& opt, DictOp which, int procs) {
    const auto keys = bench::make_keys();
    CaseSegment cs("dict", 64 * kMiB);
    shm::allocator<char> alloc(cs.seg);
    auto& lock = cs.seg.construct<shm::Mutex>("lock");
    auto& map = cs.seg.construct<Map>("map", KeyLess(), alloc);
    for (const auto& k : keys) map.emplace(ShmString(k.c_str(), alloc), 0);

    auto r = bench::run_workers(opt, procs, [&](bench::Worker& w) {
        const std::uint64_t skew = bench::kKeys * static_cast<std::uint64_t>(w.index()) / static_cast<std::uint64_t>(w.procs());
        std::int64_t sink = 0;
        auto key = [&](std::uint64_t i) -> std::string_view { return keys[(i + skew) % bench::kKeys]; };
        switch (which) {
            case DictOp::set:
                w.run([&](std::uint64_t i) {
                    std::string_view k = key(i);
                    std::lock_guard<shm::Mutex> g(lock);
                    auto it = map.find(k);
                    if (it != map.end())
                        it->second = static_cast<std::int64_t>(i);
                    else
                        map.emplace(ShmString(k.data(), k.size(), alloc), static_cast<std::int64_t>(i));
                });
                break;
            case DictOp::get:
                w.run([&](std::uint64_t i) {
                    std::string_view k = key(i);
                    std::lock_guard<shm::Mutex> g(lock);
                    auto it = map.find(k);
                    sink += it != map.end() ? it->second : -1;
                });
                break;
            case DictOp::increment:
                w.run([&](std::uint64_t i) {
                    std::string_view k = key(i);
                    std::lock_guard<shm::Mutex> g(lock);
                    auto it = map.find(k);
                    if (it != map.end())
                        ++it->second;
                    else
                        map.emplace(ShmString(k.data(), k.size(), alloc), 1);
                });
                break;
        }
        bench::expect(sink >= 0, "every key present");
    });

    expect_verified(cs.seg);
    bench::expect(map.size() == bench::kKeys, "the dict holds the 1000 keys");
    if (which == DictOp::increment) {
        std::uint64_t sum = 0;
        for (const auto& kv : map) sum += static_cast<std::uint64_t>(kv.second);
        bench::expect(sum == r.total_ops, "the increments add up to the operations done");
    }
    return r;
}

bench::CaseResult list_append_case(const bench::Options& opt, int procs) {
    // While the vector grows, the old and the new buffer are both live.
    const std::uint64_t cap = bench::kAppendCap;
    CaseSegment cs("list", 3 * cap * procs * sizeof(std::int64_t) + 16 * kMiB);
    auto& lock = cs.seg.construct<shm::Mutex>("lock");
    auto& vec = cs.seg.construct<Vec>("list", shm::allocator<std::int64_t>(cs.seg));

    auto r = bench::run_workers(opt, procs, [&](bench::Worker& w) {
        w.run([&](std::uint64_t i) {
            std::lock_guard<shm::Mutex> g(lock);
            vec.push_back(static_cast<std::int64_t>(i));
        }, cap);
    });
    bench::expect(vec.size() == r.total_ops, "the list holds every item appended");
    expect_verified(cs.seg);
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    return bench::run_cases(kImpl, bench::container_cases(dict_case, list_append_case), argc, argv);
}
