// shm::Pool — a process pool that runs a killed worker's task again.
//
//     shm::Pool pool([](std::string_view task) { return resize(task); }, {.processes = 8});
//     std::future<std::string> f = pool.submit("photo 17");
//     std::vector<std::string> out = pool.map(tasks);      // in order
//
// Tasks and results are byte strings. The task function is registered
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

}  // namespace shm
