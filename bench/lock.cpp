// The lock itself: ns per lock + unlock of one mutex in shared memory.
//
//  - lock.uncontended: one process locks and unlocks (and between the two
//    adds one to a counter beside the mutex), nobody else near it.
//  - lock.2proc: two processes do the same on the same mutex at once. Both
//    run until the first one's measured time is up (it raises a stop word the
//    other reads every 64 operations), so the two contend throughout; the
//    figure is the span from the first one's start to the last one's end
//    over the operations of both. The counter, only ever added to under the
//    lock, must equal the operations done (warm-up included): a lock that
//    let two holders in loses increments and fails the case.
//
// The mutexes, each placed (constructed in place) in an anonymous MAP_SHARED
// mapping made before the workers fork, on a cache line of its own:
//  - libshm: shm::Mutex (robust, error-checking, records its holder)
//  - libshm_recursive: shm::RecursiveMutex
//  - boost_interprocess_mutex: boost::interprocess::interprocess_mutex
//  - robust_pthread: a bare pthread mutex, PTHREAD_PROCESS_SHARED and
//    PTHREAD_MUTEX_ROBUST, owner death taken over with
//    pthread_mutex_consistent(): the floor libshm's mutex is built on
//  - std_mutex_shm: a std::mutex placed in the mapping. It is not
//    process-shared: glibc gives it a private futex, whose wake-ups do not
//    cross processes, so a waiter in another process may sleep for ever.
//    It has a figure for lock.uncontended only.
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include <boost/interprocess/sync/interprocess_mutex.hpp>
#include <shm/shm.hpp>

#include "harness.hpp"
#include "queue_harness.hpp"

namespace {

using bench::Options;

class RobustPthread {
public:
    RobustPthread() {
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
        const int rc = pthread_mutex_init(&m_, &a);
        pthread_mutexattr_destroy(&a);
        if (rc != 0) throw std::system_error(rc, std::generic_category(), "pthread_mutex_init");
    }
    ~RobustPthread() { pthread_mutex_destroy(&m_); }
    RobustPthread(const RobustPthread&) = delete;
    RobustPthread& operator=(const RobustPthread&) = delete;
    void lock() {
        int rc = pthread_mutex_lock(&m_);
        if (rc == EOWNERDEAD) rc = pthread_mutex_consistent(&m_);
        if (rc != 0) throw std::system_error(rc, std::generic_category(), "pthread_mutex_lock");
    }
    void unlock() { pthread_mutex_unlock(&m_); }

private:
    pthread_mutex_t m_;
};

// The mutex and the counter it guards, on lines of their own; the stop word
// on a third.
template <class M>
struct alignas(64) Place {
    M m;
    alignas(64) std::uint64_t counter = 0;
    alignas(64) std::atomic<int> stop{0};
};

constexpr std::uint64_t kBatch = 64;  // operations between clock reads

template <class M>
double ns_per_op(const Options& opt, int procs) {
    qbench::SharedBox<Place<M>> place;
    qbench::SharedBox<qbench::Shared> sh;
    qbench::run_procs(opt, procs, *sh, [&](qbench::Proc& p) {
        auto& pl = *place;
        std::uint64_t ops = 0;
        auto batch = [&] {
            for (std::uint64_t b = 0; b < kBatch; ++b) {
                pl.m.lock();
                ++pl.counter;
                pl.m.unlock();
            }
            ops += kBatch;
        };
        p.start();
        const std::int64_t warm_end = qbench::now_ns() + static_cast<std::int64_t>(opt.warmup * 1e9);
        while (qbench::now_ns() < warm_end && !pl.stop.load(std::memory_order_relaxed)) batch();
        const std::uint64_t first = ops;
        const std::int64_t t0 = qbench::now_ns();
        const std::int64_t end = t0 + static_cast<std::int64_t>(opt.seconds * 1e9);
        std::int64_t t1 = t0;
        // At least one batch, however late this process runs.
        do {
            batch();
            t1 = qbench::now_ns();
        } while (t1 < end && !pl.stop.load(std::memory_order_relaxed));
        pl.stop.store(1, std::memory_order_relaxed);
        auto& me = p.slot();
        me.t0 = t0;
        me.t1 = t1;
        me.put_measured = ops - first;
        me.put_total = ops;
    });
    std::int64_t t0 = INT64_MAX, t1 = 0;
    std::uint64_t measured = 0, total = 0;
    for (int w = 0; w < procs; ++w) {
        const auto& s = sh->slot[w];
        t0 = std::min(t0, s.t0);
        t1 = std::max(t1, s.t1);
        measured += s.put_measured;
        total += s.put_total;
    }
    bench::expect(place->counter == total, "the counter (" + std::to_string(place->counter) +
                                               ") equals the lock + unlock pairs done (" + std::to_string(total) +
                                               "): one holder at a time");
    if (t1 <= t0 || measured == 0) throw bench::Failure("nothing measured");
    return static_cast<double>(t1 - t0) / static_cast<double>(measured);
}

struct Impl {
    const char* name;
    const char* note;
    double (*run)(const Options&, int procs);
    bool cross_process;  // whether a waiter in another process is woken
};

const std::vector<Impl>& impls() {
    static const std::vector<Impl> v{
        {"libshm", "shm::Mutex", ns_per_op<shm::Mutex>, true},
        {"libshm_recursive", "shm::RecursiveMutex", ns_per_op<shm::RecursiveMutex>, true},
        {"boost_interprocess_mutex", "boost::interprocess::interprocess_mutex",
         ns_per_op<boost::interprocess::interprocess_mutex>, true},
        {"robust_pthread", "pthread mutex, PTHREAD_PROCESS_SHARED + PTHREAD_MUTEX_ROBUST", ns_per_op<RobustPthread>,
         true},
        {"std_mutex_shm", "std::mutex placed in shared memory (not process-shared)", ns_per_op<std::mutex>, false},
    };
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<qbench::QCase> cases;
    for (int procs : {1, 2}) {
        const std::string name = procs == 1 ? "lock.uncontended" : "lock.2proc";
        cases.push_back({name, [=](const Options& o) {
                             bool failed = false;
                             for (const Impl& i : impls()) {
                                 if (procs > 1 && !i.cross_process) {
                                     qbench::emit_skipped(name, i.name,
                                                          "not process-shared: its futex wake-ups do not reach a "
                                                          "waiter in another process, which may then sleep for ever");
                                     continue;
                                 }
                                 try {
                                     qbench::emit(name, i.name, i.run(o, procs), "ns", i.note);
                                 } catch (const std::exception& e) {
                                     std::fprintf(stderr, "%s %s: FAILED: %s\n", i.name, name.c_str(), e.what());
                                     failed = true;
                                 }
                             }
                             if (failed) throw bench::Failure("an implementation failed");
                         }});
    }
    return qbench::run_qcases("lock", cases, argc, argv);
}
