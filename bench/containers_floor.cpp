// The floor for the Dict/List benchmarks (impl "mutex_unordered_map"): the
// least a shared dict can do. A boost::unordered_map from strings to int64
// (and, for list.append, a boost::interprocess::vector<int64_t>) in a
// Boost.Interprocess managed file in the shm directory, under one
// process-shared robust pthread mutex placed in the same mapping. No value
// types, no journal, no crash repair: plain data under one lock.
//
// Same cases, working set and harness as containers_libshm.cpp.
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include <boost/interprocess/allocators/allocator.hpp>
#include <boost/interprocess/containers/string.hpp>
#include <boost/interprocess/containers/vector.hpp>
#include <boost/interprocess/managed_mapped_file.hpp>
#include <boost/unordered_map.hpp>

#include <shm/names.hpp>

#include "harness.hpp"

namespace bip = boost::interprocess;

namespace {

using SegmentManager = bip::managed_mapped_file::segment_manager;
using ShmString = bip::basic_string<char, std::char_traits<char>, bip::allocator<char, SegmentManager>>;

// Hashing and comparison that also take a std::string_view, so a lookup
// builds no string in the mapping.
struct KeyHash {
    std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    std::size_t operator()(const ShmString& s) const noexcept { return (*this)(std::string_view(s.data(), s.size())); }
};
struct KeyEq {
    static std::string_view sv(std::string_view s) noexcept { return s; }
    static std::string_view sv(const ShmString& s) noexcept { return {s.data(), s.size()}; }
    template <class A, class B>
    bool operator()(const A& a, const B& b) const noexcept { return sv(a) == sv(b); }
};

using Map = boost::unordered_map<ShmString, std::int64_t, KeyHash, KeyEq,
                                 bip::allocator<std::pair<const ShmString, std::int64_t>, SegmentManager>>;
using Vec = bip::vector<std::int64_t, bip::allocator<std::int64_t, SegmentManager>>;

// A process-shared robust pthread mutex; a dead owner's lock is taken over.
struct RobustMutex {
    pthread_mutex_t m;
    RobustMutex() {
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        int rc = pthread_mutex_init(&m, &a);
        pthread_mutexattr_destroy(&a);
        if (rc != 0) throw std::system_error(rc, std::generic_category(), "pthread_mutex_init");
    }
    void lock() {
        int rc = pthread_mutex_lock(&m);
        if (rc == EOWNERDEAD) rc = pthread_mutex_consistent(&m);
        if (rc != 0) throw std::system_error(rc, std::generic_category(), "pthread_mutex_lock");
    }
    void unlock() { pthread_mutex_unlock(&m); }
};

// A managed file in the shm directory, removed when the case ends.
class Mapping {
public:
    Mapping(const std::string& tag, std::size_t bytes)
        : path_((shm::shm_directory() / ("bench-floor." + std::to_string(getpid()) + "." + tag)).string()) {
        bip::file_mapping::remove(path_.c_str());
        bench::TempFiles::add(path_);
        try {
            file_ = bip::managed_mapped_file(bip::create_only, path_.c_str(), bytes);
        } catch (const bip::interprocess_exception& e) {
            throw std::runtime_error("cannot create " + path_ + ": " + e.what());
        }
        // Reserve the memory up front, as libshm does: the same page-fault
        // costs for both, and a full shm directory is an error here, not a
        // SIGBUS later.
        int fd = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
        int rc = fd < 0 ? errno : ::posix_fallocate(fd, 0, static_cast<off_t>(bytes));
        if (fd >= 0) ::close(fd);
        if (rc != 0) {
            file_ = bip::managed_mapped_file();
            bip::file_mapping::remove(path_.c_str());
            throw std::system_error(rc, std::generic_category(),
                                    "reserving " + std::to_string(bytes >> 20) + " MiB for " + path_);
        }
    }
    ~Mapping() {
        file_ = bip::managed_mapped_file();
        bip::file_mapping::remove(path_.c_str());
        bench::TempFiles::remove(path_);
    }
    bip::managed_mapped_file& file() { return file_; }

private:
    std::string path_;
    bip::managed_mapped_file file_;
};

constexpr std::size_t kMiB = std::size_t(1) << 20;

using bench::DictOp;

bench::CaseResult dict_case(const bench::Options& opt, DictOp which, int procs) {
    const auto keys = bench::make_keys();
    Mapping mapping("dict", 64 * kMiB);
    auto& f = mapping.file();
    auto* lock = f.construct<RobustMutex>("lock")();
    auto* map = f.construct<Map>("map")(2 * bench::kKeys, KeyHash(), KeyEq(), f.get_segment_manager());
    for (const auto& k : keys) map->emplace(ShmString(k.c_str(), f.get_segment_manager()), 0);

    auto r = bench::run_workers(opt, procs, [&](bench::Worker& w) {
        const std::uint64_t skew = bench::kKeys * static_cast<std::uint64_t>(w.index()) / static_cast<std::uint64_t>(w.procs());
        std::int64_t sink = 0;
        auto key = [&](std::uint64_t i) -> std::string_view { return keys[(i + skew) % bench::kKeys]; };
        switch (which) {
            case DictOp::set:
                w.run([&](std::uint64_t i) {
                    std::string_view k = key(i);
                    lock->lock();
                    auto it = map->find(k, KeyHash(), KeyEq());
                    if (it != map->end())
                        it->second = static_cast<std::int64_t>(i);
                    else
                        map->emplace(ShmString(k.data(), k.size(), f.get_segment_manager()), static_cast<std::int64_t>(i));
                    lock->unlock();
                });
                break;
            case DictOp::get:
                w.run([&](std::uint64_t i) {
                    std::string_view k = key(i);
                    lock->lock();
                    auto it = map->find(k, KeyHash(), KeyEq());
                    std::int64_t v = it != map->end() ? it->second : -1;
                    lock->unlock();
                    sink += v;
                });
                break;
            case DictOp::increment:
                w.run([&](std::uint64_t i) {
                    std::string_view k = key(i);
                    lock->lock();
                    auto it = map->find(k, KeyHash(), KeyEq());
                    if (it != map->end())
                        ++it->second;
                    else
                        map->emplace(ShmString(k.data(), k.size(), f.get_segment_manager()), 1);
                    lock->unlock();
                });
                break;
        }
        bench::expect(sink >= 0, "every key present");
    });

    bench::expect(map->size() == bench::kKeys, "the dict holds the 1000 keys");
    if (which == DictOp::increment) {
        std::uint64_t sum = 0;
        for (const auto& kv : *map) sum += static_cast<std::uint64_t>(kv.second);
        bench::expect(sum == r.total_ops, "the increments add up to the operations done");
    }
    return r;
}

bench::CaseResult list_append_case(const bench::Options& opt, int procs) {
    // While the vector grows, the old and the new buffer are both live.
    const std::uint64_t cap = bench::kAppendCap;
    Mapping mapping("list", 3 * cap * procs * sizeof(std::int64_t) + 16 * kMiB);
    auto& f = mapping.file();
    auto* lock = f.construct<RobustMutex>("lock")();
    auto* vec = f.construct<Vec>("list")(f.get_segment_manager());

    auto r = bench::run_workers(opt, procs, [&](bench::Worker& w) {
        w.run([&](std::uint64_t i) {
            lock->lock();
            vec->push_back(static_cast<std::int64_t>(i));
            lock->unlock();
        }, cap);
    });
    bench::expect(vec->size() == r.total_ops, "the list holds every item appended");
    return r;
}

// dict.scale.<N> (harness.hpp), as containers_libshm.cpp: the map grows as
// the keys go in (no bucket count given up front); bytes per key is what
// the map and its strings took from the managed mapping, over the N keys.
std::vector<bench::Figure> dict_scale_case(const bench::Options& opt, const std::string& name, std::uint64_t n) {
    const auto keys = bench::make_keys(n);
    Mapping mapping("dscale", 64 * kMiB + n * 256);
    auto& f = mapping.file();
    auto* lock = f.construct<RobustMutex>("lock")();
    const std::uint64_t before = f.get_size() - f.get_free_memory();
    auto* map = f.construct<Map>("map")(f.get_segment_manager());
    for (std::uint64_t i = 0; i < n; ++i)
        map->emplace(ShmString(keys[i].c_str(), f.get_segment_manager()), static_cast<std::int64_t>(i));
    const double per_key = static_cast<double>(f.get_size() - f.get_free_memory() - before) / static_cast<double>(n);

    // A fresh worker first reads every key once, untimed (as in
    // containers_libshm.cpp): the steady state, not the first touch.
    auto touch_all = [&] {
        std::int64_t sink = 0;
        for (std::uint64_t i = 0; i < n; ++i) {
            lock->lock();
            auto it = map->find(std::string_view(keys[i]), KeyHash(), KeyEq());
            sink += it != map->end() ? it->second : -1;
            lock->unlock();
        }
        bench::expect(sink >= 0, "every key present");
    };
    auto get = bench::run_workers(opt, 1, [&](bench::Worker& w) {
        touch_all();
        std::int64_t sink = 0;
        w.run([&](std::uint64_t i) {
            std::string_view k = keys[i % n];
            lock->lock();
            auto it = map->find(k, KeyHash(), KeyEq());
            std::int64_t v = it != map->end() ? it->second : -1;
            lock->unlock();
            sink += v;
        });
        bench::expect(sink >= 0, "every key present");
    });
    auto set = bench::run_workers(opt, 1, [&](bench::Worker& w) {
        touch_all();
        w.run([&](std::uint64_t i) {
            std::string_view k = keys[i % n];
            lock->lock();
            auto it = map->find(k, KeyHash(), KeyEq());
            if (it != map->end())
                it->second = static_cast<std::int64_t>(i % n);
            else
                map->emplace(ShmString(k.data(), k.size(), f.get_segment_manager()), static_cast<std::int64_t>(i % n));
            lock->unlock();
        });
    });
    bench::expect(map->size() == n, "the map holds its keys");
    for (std::uint64_t i = 0; i < n; i += 997) {
        auto it = map->find(std::string_view(keys[i]), KeyHash(), KeyEq());
        bench::expect(it != map->end() && it->second == static_cast<std::int64_t>(i), "a key's value read back");
    }
    return {{name + ".get", get.rate, "ops/s"}, {name + ".set", set.rate, "ops/s"},
            {name + ".bytes_per_key", per_key, "B/key"}};
}

}  // namespace

int main(int argc, char** argv) {
    return bench::run_cases("mutex_unordered_map",
                            bench::container_cases(dict_case, list_append_case, dict_scale_case), argc, argv);
}
