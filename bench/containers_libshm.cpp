// libshm's Dict and List (impl "libshm"): the same cases, working set and
// harness as the floor (containers_floor.cpp) and Python's Manager
// (python_manager.py).
//
// Each case creates its own segment in the shm directory ($SHM_DIR or
// /dev/shm), named after the process id, fills the 1000 keys, forks the
// workers (each gets its own attach slot on fork), checks the outcome with
// verify() and exact totals, and removes the segment at the end.
#include <unistd.h>

#include <cstdint>
#include <string>
#include <string_view>

#include <shm/shm.hpp>

#include "harness.hpp"

namespace {

using bench::DictOp;

constexpr std::size_t kMiB = std::size_t(1) << 20;

// A segment that exists for one case only.
struct CaseSegment {
    std::string name;
    shm::Segment seg;
    CaseSegment(const std::string& tag, std::size_t bytes)
        : name("bench." + std::to_string(getpid()) + "." + tag),
          seg((bench::TempFiles::add(shm::segment_path(name).string()), shm::Segment::create(name, bytes))) {}
    ~CaseSegment() {
        // The name goes now. The case's Dict or List, made from seg, went
        // before this (declared after it); seg's destructor then drops the
        // last reference to the mapping, and it goes too.
        shm::Segment::unlink(name);
        bench::TempFiles::remove(shm::segment_path(name).string());
    }
};

void expect_verified(const std::vector<std::string>& problems) {
    std::string all;
    for (const auto& p : problems) all += (all.empty() ? "" : "; ") + p;
    bench::expect(problems.empty(), "verify(): " + all);
}

bench::CaseResult dict_case(const bench::Options& opt, DictOp which, int procs) {
    const auto keys = bench::make_keys();
    CaseSegment cs("dict", 64 * kMiB);
    shm::Dict d = shm::Dict::open_or_create(cs.seg, "d");
    for (const auto& k : keys) d.set(k, 0);

    auto r = bench::run_workers(opt, procs, [&](bench::Worker& w) {
        const std::uint64_t skew = bench::kKeys * static_cast<std::uint64_t>(w.index()) / static_cast<std::uint64_t>(w.procs());
        std::int64_t sink = 0;
        auto key = [&](std::uint64_t i) -> std::string_view { return keys[(i + skew) % bench::kKeys]; };
        switch (which) {
            case DictOp::set:
                w.run([&](std::uint64_t i) { d.set(key(i), static_cast<std::int64_t>(i)); });
                break;
            case DictOp::get:
                w.run([&](std::uint64_t i) { sink += d.get(key(i)).as_int(); });
                break;
            case DictOp::increment:
                w.run([&](std::uint64_t i) { sink += d.increment(key(i), 1); });
                break;
        }
        bench::expect(sink >= 0, "values read back");
        // Drops only the Segment handle's reference: d shares the mapping
        // and this worker's slot, which stay until the worker exits.
        cs.seg.detach();
    });

    expect_verified(d.verify());
    bench::expect(d.size() == bench::kKeys, "the dict holds the 1000 keys");
    if (which == DictOp::increment) {
        std::uint64_t sum = 0;
        for (const auto& v : d.values()) sum += static_cast<std::uint64_t>(v.as_int());
        bench::expect(sum == r.total_ops, "the increments add up to the operations done");
    }
    return r;
}

bench::CaseResult list_append_case(const bench::Options& opt, int procs) {
    // Items are 16-byte cells in a table that doubles: while it grows, the
    // old and the new table are both live (3 cells per item at worst).
    const std::uint64_t cap = bench::kAppendCap;
    CaseSegment cs("list", cap * procs * 48 + 16 * kMiB);
    shm::List l = shm::List::open_or_create(cs.seg, "l");

    auto r = bench::run_workers(opt, procs, [&](bench::Worker& w) {
        w.run([&](std::uint64_t i) { l.append(static_cast<std::int64_t>(i)); }, cap);
        cs.seg.detach();  // as in dict_case: l keeps the mapping and the slot
    });

    bench::expect(l.size() == r.total_ops, "the list holds every item appended");
    expect_verified(l.verify());
    return r;
}

// dict.scale.<N> (harness.hpp): N keys set in order, then get and set over
// all of them in turn, one process each; bytes per key is what the dict
// added to the segment's heap (Segment::used_memory(), block overhead
// included) over the N keys.
std::vector<bench::Figure> dict_scale_case(const bench::Options& opt, const std::string& name, std::uint64_t n) {
    const auto keys = bench::make_keys(n);
    CaseSegment cs("dscale", 64 * kMiB + n * 512);
    const std::uint64_t before = cs.seg.used_memory();
    shm::Dict d = shm::Dict::open_or_create(cs.seg, "d");
    for (std::uint64_t i = 0; i < n; ++i) d.set(keys[i], static_cast<std::int64_t>(i));
    const double per_key = static_cast<double>(cs.seg.used_memory() - before) / static_cast<double>(n);

    // A fresh worker first reads every key once, untimed: the figure is the
    // steady state, not the first touch of every page by a new process
    // (at a million keys that alone would fill the measured time).
    auto touch_all = [&] {
        std::int64_t sink = 0;
        for (std::uint64_t i = 0; i < n; ++i) sink += d.get(keys[i]).as_int();
        bench::expect(sink >= 0, "values read back");
    };
    auto get = bench::run_workers(opt, 1, [&](bench::Worker& w) {
        touch_all();
        std::int64_t sink = 0;
        w.run([&](std::uint64_t i) { sink += d.get(keys[i % n]).as_int(); });
        bench::expect(sink >= 0, "values read back");
        cs.seg.detach();
    });
    auto set = bench::run_workers(opt, 1, [&](bench::Worker& w) {
        touch_all();
        w.run([&](std::uint64_t i) { d.set(keys[i % n], static_cast<std::int64_t>(i % n)); });
        cs.seg.detach();
    });
    bench::expect(d.size() == n, "the dict holds its keys");
    for (std::uint64_t i = 0; i < n; i += 997)
        bench::expect(d.get(keys[i]).as_int() == static_cast<std::int64_t>(i), "a key's value read back");
    expect_verified(d.verify());
    return {{name + ".get", get.rate, "ops/s"}, {name + ".set", set.rate, "ops/s"},
            {name + ".bytes_per_key", per_key, "B/key"}};
}

}  // namespace

int main(int argc, char** argv) {
    return bench::run_cases("libshm", bench::container_cases(dict_case, list_append_case, dict_scale_case), argc,
                            argv);
}
