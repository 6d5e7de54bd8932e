// pool.map.tiny: shm::Pool's map of N tasks that return their argument, on
// 2 workers (impl "libshm"), against the WorkQueue round trip it is built
// on (impl "workqueue_round_trip"): the same N tasks put on one WorkQueue
// by the parent, got, answered on a second WorkQueue and acknowledged by 2
// forked workers, the answers got and acknowledged by a thread of the
// parent. Both count tasks per second over one run of N, after a warm-up
// run; both check every answer.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <shm/shm.hpp>

#include "harness.hpp"

namespace {

constexpr unsigned kWorkers = 2;

std::size_t task_count(const bench::Options& opt) {
    // 100,000 at --seconds 1 (the default); fewer for a shorter run.
    return std::max<std::size_t>(1000, static_cast<std::size_t>(100000 * std::min(1.0, opt.seconds)));
}

std::vector<std::string> tasks_of(std::size_t n) {
    std::vector<std::string> t;
    t.reserve(n);
    for (std::size_t i = 0; i < n; ++i) t.push_back(std::to_string(i));
    return t;
}

double pool_case(const bench::Options& opt) {
    shm::PoolOptions o;
    o.processes = kWorkers;
    shm::Pool pool([](std::string_view t) { return std::string(t); }, o);
    const auto tasks = tasks_of(task_count(opt));
    pool.map(tasks_of(1000));
    const auto t0 = std::chrono::steady_clock::now();
    auto out = pool.map(tasks);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    bench::expect(out == tasks, "pool.map: wrong results");
    pool.close();
    pool.join();
    return static_cast<double>(tasks.size()) / dt;
}

double round_trip_case(const bench::Options& opt) {
    const std::string name = "bench." + std::to_string(::getpid()) + ".workqueue";
    bench::TempFiles::add(shm::segment_path(name).string());
    double rate = 0;
    {
        shm::Segment seg = shm::Segment::create(name, 64u << 20);
        shm::WorkQueue tq = shm::WorkQueue::create(seg, "tasks", {4096, 4});
        shm::WorkQueue rq = shm::WorkQueue::create(seg, "results", {4096, 1});
        std::vector<pid_t> kids;
        for (unsigned w = 0; w < kWorkers; ++w) {
            pid_t p = ::fork();
            if (p == 0) {
                try {
                    for (;;) {
                        shm::Lease l = tq.get();
                        rq.put(l.item());
                        l.ack();
                    }
                } catch (const shm::closed&) {
                }
                ::_exit(0);
            }
            kids.push_back(p);
        }
        auto run = [&](const std::vector<std::string>& tasks) {
            std::size_t wrong = 0;
            std::thread reader([&] {
                std::vector<char> seen(tasks.size(), 0);
                for (std::size_t k = 0; k < tasks.size(); ++k) {
                    shm::Lease l = rq.get();
                    const std::size_t i = std::stoul(l.item());
                    if (i >= seen.size() || seen[i]++) ++wrong;
                    l.ack();
                }
            });
            for (const auto& t : tasks) tq.put(t);
            reader.join();
            bench::expect(wrong == 0, "workqueue round trip: wrong answers");
        };
        run(tasks_of(1000));
        const auto tasks = tasks_of(task_count(opt));
        const auto t0 = std::chrono::steady_clock::now();
        run(tasks);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        rate = static_cast<double>(tasks.size()) / dt;
        tq.close();
        for (pid_t p : kids) {
            int st = 0;
            ::waitpid(p, &st, 0);
            bench::expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "a round-trip worker failed");
        }
    }
    shm::Segment::unlink(name);
    bench::TempFiles::remove(shm::segment_path(name).string());
    return rate;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const bench::Options opt = bench::parse_options(argc, argv);
        if (opt.list) {
            std::puts("pool.map.tiny");
            return 0;
        }
        if (!opt.selected("pool.map.tiny")) return 0;
        bench::emit("pool.map.tiny", "libshm", pool_case(opt), "tasks/s");
        bench::emit("pool.map.tiny", "workqueue_round_trip", round_trip_case(opt), "tasks/s");
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_pool_libshm: %s\n", e.what());
        return 1;
    }
}
