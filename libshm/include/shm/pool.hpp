// shm::Pool — a process pool that runs a killed worker's task again.
//
//     shm::Pool pool([](std::string_view task) { return resize(task); }, {.processes = 8});
//     std::future<std::string> f = pool.submit("photo 17");
//     std::vector<std::string> out = pool.map(tasks);      // in order
//
// Tasks and results are byte strings (shm::Pool), or values of any types
// with a shm::queue_codec (shm::TypedPool, below). The task function is registered
// before the workers start: workers are processes forked from a fork
// server, itself forked by the constructor before the pool starts any
// thread, so a worker is a copy of the program as it was then (construct a
// Pool early, before the program starts threads of its own: a fork copies
// only the forking thread, and a lock another thread held stays held in
// the copy).
//
// Tasks go through a shm::WorkQueue: a worker takes one under a lease and
// acknowledges it once its result is sent. When a worker dies (a signal, a
// crash, exit()), its task goes back to the front of the queue and another
// worker runs it; the pool starts a new worker in its place. A task whose
// workers died on each of its 1 + max_retries tries fails alone, with
// shm::worker_lost naming the last worker, how it died and the tries. An
// exception thrown by the task function comes back as shm::task_error for
// that task only. Tasks run at least once (a worker killed after sending its
// result runs again elsewhere; the first result is kept).
//
// If the pool's process dies, the fork server and the workers are killed
// (PR_SET_PDEATHSIG), and the pool's segment goes with the last of them.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "shm/error.hpp"
#include "shm/queue.hpp"  // queue_codec

namespace shm {

// A task's own failure: the exception its function threw (what()).
class task_error : public error {
public:
    explicit task_error(const std::string& what) : error(EIO, what) {}
};

// A task whose worker died on each of its tries.
class worker_lost : public task_error {
public:
    explicit worker_lost(const std::string& what) : task_error(what) {}
};

struct PoolOptions {
    unsigned processes = 0;             // 0: the number of CPUs
    std::function<void()> initializer;  // run by each worker before its first task
    unsigned max_tasks_per_child = 0;   // a worker exits after this many (0: never), and is replaced
    unsigned max_retries = 3;           // runs of a task after its worker died running it
    std::uint32_t capacity = 4096;      // tasks queued, running or dead at once (submit blocks beyond)
    std::size_t segment_size = 64u << 20;  // the pool's segment: room for queued tasks and results
};

class Pool {
public:
    using Function = std::function<std::string(std::string_view task)>;

    // Start the fork server and the workers. shm::error if a process or the
    // pool's segment cannot be made.
    explicit Pool(Function fn, PoolOptions opt = {});
    ~Pool();  // terminate() unless joined
    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    // Queue a task; blocks while `capacity` tasks are queued or running.
    // shm::closed after close() or terminate().
    std::future<std::string> submit(std::string task);
    // Every task's result, in order. Once all have settled, throws the
    // first failure (in order), if any.
    std::vector<std::string> map(const std::vector<std::string>& tasks);
    // Each task's result as it comes: fn(index, result), or fn(index, error)
    // with the exception; returns once all have come.
    void imap_unordered(const std::vector<std::string>& tasks,
                        const std::function<void(std::size_t, std::future<std::string>&)>& fn);

    // No more tasks: the workers finish what is queued, then exit.
    void close();
    // After close(): wait until every task is done and every worker has exited.
    void join();
    // Stop now: kill the workers; tasks not done fail with shm::closed.
    void terminate();

    unsigned processes() const noexcept;
    std::vector<int> worker_pids() const;  // live workers, now
    std::uint64_t redeliveries() const;    // tasks run again after a worker died

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// A Pool of typed tasks and results, each turned into bytes and back by its
// shm::queue_codec (queue.hpp: trivially copyable types and std::string are
// provided; specialise it for others):
//
//     shm::TypedPool<Point, double> pool([](const Point& p) { return std::hypot(p.x, p.y); });
//     std::vector<double> d = pool.map(points);
//
// A task or result that does not decode fails that task alone
// (shm::task_error), as an exception of the function does.
template <class Task, class Result>
class TypedPool {
public:
    template <class F>  // Result(const Task&)
    explicit TypedPool(F fn, PoolOptions opt = {})
        : pool_(
              [fn = std::move(fn)](std::string_view task) -> std::string {
                  const Result r = fn(queue_codec<Task>::decode(task));
                  return std::string(queue_codec<Result>::encode(r));
              },
              std::move(opt)) {}

    std::future<Result> submit(const Task& task) {
        return decoded(pool_.submit(std::string(queue_codec<Task>::encode(task))));
    }
    std::vector<Result> map(const std::vector<Task>& tasks) {
        std::vector<Result> out;
        out.reserve(tasks.size());
        for (std::string& r : pool_.map(encoded(tasks))) out.push_back(queue_codec<Result>::decode(r));
        return out;
    }
    void imap_unordered(const std::vector<Task>& tasks,
                        const std::function<void(std::size_t, std::future<Result>&)>& fn) {
        pool_.imap_unordered(encoded(tasks), [&](std::size_t i, std::future<std::string>& r) {
            std::future<Result> f = decoded(std::move(r));
            fn(i, f);
        });
    }

    void close() { pool_.close(); }
    void join() { pool_.join(); }
    void terminate() { pool_.terminate(); }
    unsigned processes() const noexcept { return pool_.processes(); }
    std::vector<int> worker_pids() const { return pool_.worker_pids(); }
    std::uint64_t redeliveries() const { return pool_.redeliveries(); }
    Pool& raw() noexcept { return pool_; }

private:
    static std::vector<std::string> encoded(const std::vector<Task>& tasks) {
        std::vector<std::string> out;
        out.reserve(tasks.size());
        for (const Task& t : tasks) out.emplace_back(queue_codec<Task>::encode(t));
        return out;
    }
    // The result decoded when the future is read, by its reader.
    static std::future<Result> decoded(std::future<std::string> f) {
        return std::async(std::launch::deferred,
                          [f = std::move(f)]() mutable { return queue_codec<Result>::decode(f.get()); });
    }
    Pool pool_;
};

}  // namespace shm
