// shm::Pool (shm/pool.hpp).
//
// Three kinds of process:
//   the pool's   submits tasks, and runs one thread (the supervisor) that
//                takes results, hears of workers' deaths, gives their tasks
//                back to the queue (WorkQueue::recover) and asks for new
//                workers;
//   the server   forked by the constructor before that thread exists; it
//                forks workers when asked, and reports each one's death
//                (pid and wait status) over a socket pair;
//   the workers  take tasks from the "tasks" WorkQueue under a lease, put
//                (id, ok, result) on the "results" WorkQueue, then
//                acknowledge the task.
// Messages on the socket are one Msg each (SOCK_SEQPACKET). The server and
// the workers die with their parent (PR_SET_PDEATHSIG), and the server
// kills the workers when the pool's process closes its end.
#include "shm/pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <unordered_map>
#include <string>
#include <utility>

#include "platform/testing.hpp"
#include "shm/queue.hpp"
#include "shm/segment.hpp"
#include "shm/work_queue.hpp"

namespace shm {

namespace {

struct Msg {
    std::int32_t kind;    // kSpawn (to the server), kSpawned, kDied, kSpawnFailed (from it)
    std::int32_t pid;
    std::int32_t status;  // wait status, for kDied; errno, for kSpawnFailed
};
constexpr std::int32_t kSpawn = 1, kSpawned = 2, kDied = 3, kSpawnFailed = 4;
constexpr auto kTick = std::chrono::milliseconds(20);

std::string encode_id(std::uint64_t id, char tag, std::string_view body) {
    std::string s(9 + body.size(), '\0');
    std::memcpy(s.data(), &id, 8);
    s[8] = tag;
    if (!body.empty()) std::memcpy(s.data() + 9, body.data(), body.size());
    return s;
}

bool decode_id(const std::string& s, std::uint64_t* id, char* tag, std::string_view* body) {
    if (s.size() < 9) return false;
    std::memcpy(id, s.data(), 8);
    *tag = s[8];
    *body = std::string_view(s).substr(9);
    return true;
}

std::string describe_status(int status) {
    if (WIFSIGNALED(status)) {
        const int sig = WTERMSIG(status);
        const char* name = sigabbrev_np(sig);
        return std::string("killed by SIG") + (name ? name : std::to_string(sig));
    }
    if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
    return "gone";
}

void die_with_parent(pid_t parent) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
}

bool send_msg(int fd, const Msg& m) {
    for (;;) {
        ssize_t n = ::send(fd, &m, sizeof m, MSG_NOSIGNAL);
        if (n == sizeof m) return true;
        if (n < 0 && errno == EINTR) continue;
        return false;
    }
}

[[noreturn]] void worker_main(const Pool::Function& fn, const PoolOptions& opt, WorkQueue& tasks,
                              WorkQueue& results) {
    int code = 0;
    try {
        if (opt.initializer) opt.initializer();
        for (unsigned done = 0; opt.max_tasks_per_child == 0 || done < opt.max_tasks_per_child; ++done) {
            std::optional<Lease> l;
            try {
                l = tasks.get();
            } catch (const closed&) {
                break;  // closed, and every task done
            }
            std::uint64_t id;
            char tag;
            std::string_view body;
            if (!decode_id(l->item(), &id, &tag, &body)) continue;
            std::string out;
            char ok = 'r';
            try {
                out = fn(body);
            } catch (const std::exception& e) {
                ok = 'e';
                out = e.what();
            } catch (...) {
                ok = 'e';
                out = "an exception that is not a std::exception";
            }
            results.put(encode_id(id, ok, out));
            l->ack();
        }
    } catch (...) {
        code = 3;
    }
    ::_exit(code);
}

// The fork server's loop: fork workers when asked, report deaths, and
// when the pool's end closes, kill the workers and leave.
[[noreturn]] void server_main(int fd, const Pool::Function& fn, const PoolOptions& opt, WorkQueue& tasks,
                              WorkQueue& results) {
    std::set<pid_t> workers;
    const pid_t me = ::getpid();
    bool open = true;
    while (open || !workers.empty()) {
        pollfd p{fd, POLLIN, 0};
        int r = open ? ::poll(&p, 1, static_cast<int>(kTick.count())) : 0;
        if (open && r > 0) {
            Msg m{};
            ssize_t n = ::recv(fd, &m, sizeof m, 0);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                open = false;
                for (pid_t w : workers) ::kill(w, SIGKILL);
            } else if (n == sizeof m && m.kind == kSpawn) {
                pid_t w = testing::fork_fails() ? (errno = EAGAIN, -1) : ::fork();
                if (w < 0) {
                    // Said, so that the pool asks again later: a request
                    // dropped here would leave it a worker short for good,
                    // and with none left, waiting forever.
                    send_msg(fd, Msg{kSpawnFailed, 0, errno});
                    continue;
                }
                if (w == 0) {
                    ::close(fd);
                    die_with_parent(me);
                    worker_main(fn, opt, tasks, results);
                }
                workers.insert(w);
                send_msg(fd, Msg{kSpawned, w, 0});
            }
        }
        int status = 0;
        pid_t w;
        while ((w = ::waitpid(-1, &status, open ? WNOHANG : 0)) > 0) {
            workers.erase(w);
            if (open) send_msg(fd, Msg{kDied, w, status});
            if (!open && workers.empty()) break;
        }
        if (w < 0 && errno == ECHILD) workers.clear();
    }
    ::_exit(0);
}

std::atomic<unsigned> pool_count{0};

}  // namespace

struct Pool::Impl {
    Function fn;
    PoolOptions opt;
    Segment seg;
    WorkQueue tasks;
    WorkQueue results;
    int fd = -1;          // the pool's end of the socket pair
    pid_t server = -1;
    std::thread supervisor;

    mutable std::mutex mu;
    // The tasks of one map() or imap_unordered(): each result settles into
    // its slot, with no promise per task (a promise costs an allocation and,
    // in libstdc++, a system call to set).
    struct Batch {
        std::vector<std::string> out;
        std::vector<std::exception_ptr> err;  // a failed task's error, by index
        std::vector<std::size_t> ready;       // settled, not yet handed out (imap_unordered)
        std::size_t left = 0;                 // not yet settled
        bool each = false;                    // wake the reader at each result, not only the last
        std::condition_variable cv;           // under Impl::mu
    };
    struct Pending {
        std::promise<std::string> promise;  // submit()
        std::shared_ptr<Batch> batch;       // or a batch's slot
        std::size_t index = 0;
    };
    std::unordered_map<std::uint64_t, Pending> pending;
    std::set<pid_t> live;
    std::map<pid_t, int> exits;  // wait statuses of workers that died
    std::uint64_t next_id = 0;
    bool closing = false, stopping = false, joined = false;

    Impl(Function f, PoolOptions o, Segment s)
        : fn(std::move(f)), opt(std::move(o)), seg(std::move(s)),
          tasks(WorkQueue::create(seg, "tasks", {opt.capacity, opt.max_retries + 1})),
          results(WorkQueue::create(seg, "results", {opt.capacity, 1})) {}

    // The promises of failed tasks, kept until a submitting thread (or the
    // pool's destructor) lets go of them: the exception a future carries is
    // then freed by the thread that submitted, not by the supervisor, after
    // the future's reader is done with it. (Freed by the supervisor, its
    // last reference would be dropped inside libstdc++'s exception_ptr,
    // which ThreadSanitizer cannot see, and it would report the reader.)
    std::vector<std::promise<std::string>> failed;

    // A task's outcome: its value, or (value ignored) the error e.
    void settle(std::uint64_t id, std::string value, std::exception_ptr e = nullptr) {
        // The batch's reference is dropped under the lock, so that its
        // reader, who waits for that lock, drops the last one (and frees
        // the errors it holds: see `failed`).
        {
            std::lock_guard<std::mutex> g(mu);
            auto it = pending.find(id);
            if (it == pending.end()) return;  // a second result of a task that ran twice
            Pending& p = it->second;
            if (p.batch) {
                Batch& b = *p.batch;
                if (e) b.err[p.index] = std::move(e);
                else b.out[p.index] = std::move(value);
                --b.left;
                if (b.each) b.ready.push_back(p.index);
                if (b.each || b.left == 0) b.cv.notify_all();
            } else if (e) {
                p.promise.set_exception(std::move(e));
                failed.push_back(std::move(p.promise));
            } else {
                p.promise.set_value(std::move(value));
            }
            pending.erase(it);
        }
    }
    // Make `e` in a statement of its own, before this call: make_exception_ptr
    // copies the exception it is given, and the copy shares the original's
    // reference-counted message. An original still alive here would be
    // destroyed after the error is published, perhaps after its reader has
    // dropped the copy, and would then free the message in this thread with
    // a decrement ThreadSanitizer cannot see (inside libstdc++).
    void fail(std::uint64_t id, std::exception_ptr e) { settle(id, {}, std::move(e)); }

    void ask_spawn() { send_msg(fd, Msg{kSpawn, 0, 0}); }

    // Queue a task: its future, or (with a batch) its slot `index` there.
    std::future<std::string> submit(const std::string& task, const std::shared_ptr<Batch>& batch = nullptr,
                                    std::size_t index = 0) {
        std::uint64_t id;
        std::future<std::string> f;
        std::vector<std::promise<std::string>> drop;  // freed here, after the lock
        {
            std::lock_guard<std::mutex> g(mu);
            if (!failed.empty()) drop.swap(failed);
            if (closing || stopping) throw closed("shm::Pool: closed");
            id = next_id++;
            Pending& p = pending[id];
            if (batch) {
                p.batch = batch;
                p.index = index;
                ++batch->left;
            } else {
                f = p.promise.get_future();
            }
        }
        try {
            tasks.put(encode_id(id, 't', task));
        } catch (...) {
            std::lock_guard<std::mutex> g(mu);
            if (batch) --batch->left;
            pending.erase(id);
            throw;
        }
        return f;
    }

    // Submit every task into a new batch. If a submit fails, the tasks
    // already submitted still settle into the batch (which they keep alive).
    std::shared_ptr<Batch> submit_all(const std::vector<std::string>& ts, bool each) {
        auto b = std::make_shared<Batch>();
        b->out.resize(ts.size());
        b->err.resize(ts.size());
        b->each = each;
        if (each) b->ready.reserve(ts.size());
        for (std::size_t i = 0; i < ts.size(); ++i) submit(ts[i], b, i);
        return b;
    }

    // The supervisor: results, deaths, replacements.
    void run() {
        for (std::uint32_t turn = 0;; ) {
            if (auto r = results.get_for(kTick)) {
                std::uint64_t id;
                char tag;
                std::string_view body;
                if (decode_id(r->item(), &id, &tag, &body)) {
                    if (tag == 'r') {
                        settle(id, std::string(body));
                    } else {
                        std::exception_ptr e = std::make_exception_ptr(task_error(std::string(body)));
                        fail(id, std::move(e));  // (see fail())
                    }
                }
                r->ack();
                // The rest (the server's news, dead letters) every 32
                // results while they flow, and whenever they pause.
                if (++turn % 32 != 0) continue;
            }
            Msg m{};
            bool died = false;
            // Workers that could not be forked last turn are asked for
            // again now: a turn later (20 ms when idle), not at once, so
            // that a fork that keeps failing is retried at that pace.
            bool refill = spawn_failed;
            spawn_failed = false;
            while (::recv(fd, &m, sizeof m, MSG_DONTWAIT) == sizeof m) {
                std::lock_guard<std::mutex> g(mu);
                if (m.kind == kSpawned || m.kind == kSpawnFailed) {
                    // It answers one asked for (a negative placeholder).
                    if (!live.empty() && *live.begin() < 0) live.erase(live.begin());
                }
                if (m.kind == kSpawned) live.insert(m.pid);
                if (m.kind == kSpawnFailed) spawn_failed = true;
                if (m.kind == kDied) {
                    live.erase(m.pid);
                    exits[m.pid] = m.status;
                    died = true;
                }
            }
            if (died || refill) after_deaths();
            drain_dead();
            std::lock_guard<std::mutex> g(mu);
            if (stopping) return;
            if (closing && live.empty() && pending.empty()) return;
        }
    }

    // Dead letters wait here until the server has reported how their last
    // worker died (a getter may recover a lease before that report comes).
    struct Held {
        DeadLetter d;
        int turns = 0;
    };
    std::vector<Held> held;
    static constexpr int kReportTurns = 500;  // then fail it without the report

    void drain_dead() {
        while (auto d = tasks.try_get_dead()) held.push_back(Held{std::move(*d)});
        for (std::size_t i = 0; i < held.size();) {
            Held& h = held[i];
            std::optional<int> status;
            {
                std::lock_guard<std::mutex> g(mu);
                auto it = exits.find(h.d.last_pid);
                if (it != exits.end()) status = it->second;
            }
            if (!status && ++h.turns < kReportTurns) {
                ++i;
                continue;
            }
            std::uint64_t id;
            char tag;
            std::string_view body;
            if (decode_id(h.d.item, &id, &tag, &body)) {
                std::exception_ptr e = std::make_exception_ptr(worker_lost(
                    "shm::Pool: task " + std::to_string(id) + ": its worker (pid " + std::to_string(h.d.last_pid) +
                    ") was " + (status ? describe_status(*status) : "gone") + ", on each of " +
                    std::to_string(h.d.deliveries) + " tries (max_retries " + std::to_string(opt.max_retries) + ")"));
                fail(id, std::move(e));  // (see fail())
            }
            held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
        }
    }

    void after_deaths() {
        tasks.recover();
        std::size_t want = 0;
        {
            std::lock_guard<std::mutex> g(mu);
            const bool needed = !stopping && (!closing || tasks.unfinished() > 0);
            if (needed && live.size() < opt.processes) want = opt.processes - live.size();
            // Counted at once, so that the next death does not ask again.
            for (std::size_t i = 0; i < want; ++i) live.insert(-static_cast<pid_t>(++spawning));
        }
        for (std::size_t i = 0; i < want; ++i) ask_spawn();
    }
    pid_t spawning = 0;
    bool spawn_failed = false;  // a fork failed this turn (the supervisor's own)
};

Pool::Pool(Function fn, PoolOptions opt) {
    if (!fn) throw error(EINVAL, "shm::Pool: no task function");
    if (opt.processes == 0) opt.processes = std::max(1u, std::thread::hardware_concurrency());
    const std::string name = "pool." + std::to_string(::getpid()) + "." + std::to_string(++pool_count);
    Segment seg = Segment::create(name, opt.segment_size);
    impl_ = std::make_unique<Impl>(std::move(fn), std::move(opt), std::move(seg));
    Impl& im = *impl_;
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
        throw error(errno, "shm::Pool: socketpair");
    const pid_t parent = ::getpid();
    const pid_t server = ::fork();
    if (server < 0) {
        const int e = errno;
        ::close(sv[0]);
        ::close(sv[1]);
        throw error(e, "shm::Pool: fork of the fork server");
    }
    if (server == 0) {
        ::close(sv[0]);
        die_with_parent(parent);
        server_main(sv[1], im.fn, im.opt, im.tasks, im.results);
    }
    ::close(sv[1]);
    im.fd = sv[0];
    im.server = server;
    // Placeholders until the server reports each worker.
    for (unsigned i = 0; i < im.opt.processes; ++i) im.live.insert(-static_cast<pid_t>(++im.spawning));
    for (unsigned i = 0; i < im.opt.processes; ++i) im.ask_spawn();
    im.supervisor = std::thread([&im] { im.run(); });
}

Pool::~Pool() {
    if (impl_ && !impl_->joined) terminate();
}

std::future<std::string> Pool::submit(std::string task) { return impl_->submit(task); }

std::vector<std::string> Pool::map(const std::vector<std::string>& tasks) {
    Impl& im = *impl_;
    auto b = im.submit_all(tasks, false);
    {
        std::unique_lock<std::mutex> g(im.mu);
        b->cv.wait(g, [&] { return b->left == 0; });
    }
    for (auto& e : b->err)
        if (e) std::rethrow_exception(e);
    return std::move(b->out);
}

void Pool::imap_unordered(const std::vector<std::string>& tasks,
                          const std::function<void(std::size_t, std::future<std::string>&)>& fn) {
    Impl& im = *impl_;
    auto b = im.submit_all(tasks, true);
    for (std::size_t n = 0; n < tasks.size(); ++n) {
        std::size_t i;
        std::promise<std::string> p;
        {
            std::unique_lock<std::mutex> g(im.mu);
            b->cv.wait(g, [&] { return !b->ready.empty(); });
            i = b->ready.back();
            b->ready.pop_back();
            if (b->err[i]) p.set_exception(std::move(b->err[i]));
            else p.set_value(std::move(b->out[i]));
        }
        std::future<std::string> f = p.get_future();
        fn(i, f);
    }
}

void Pool::close() {
    Impl& im = *impl_;
    {
        std::lock_guard<std::mutex> g(im.mu);
        if (im.closing || im.stopping) return;
        im.closing = true;
    }
    im.tasks.close();
}

void Pool::join() {
    Impl& im = *impl_;
    {
        std::lock_guard<std::mutex> g(im.mu);
        if (!im.closing && !im.stopping) throw error(EINVAL, "shm::Pool::join: close() or terminate() first");
    }
    if (im.supervisor.joinable()) im.supervisor.join();
    if (im.fd >= 0) {
        ::close(im.fd);  // the server kills what is left, and leaves
        im.fd = -1;
    }
    if (im.server > 0) {
        int st;
        while (::waitpid(im.server, &st, 0) < 0 && errno == EINTR) {
        }
        im.server = -1;
    }
    im.joined = true;
}

void Pool::terminate() {
    Impl& im = *impl_;
    {
        std::lock_guard<std::mutex> g(im.mu);
        im.stopping = true;
    }
    try {
        im.tasks.close();
    } catch (...) {
    }
    join();
    std::vector<std::uint64_t> left;
    {
        std::lock_guard<std::mutex> g(im.mu);
        for (auto& [id, p] : im.pending) left.push_back(id);
    }
    for (std::uint64_t id : left) {
        std::exception_ptr e = std::make_exception_ptr(closed("shm::Pool: terminated"));
        im.fail(id, std::move(e));  // (see Impl::fail())
    }
}

unsigned Pool::processes() const noexcept { return impl_->opt.processes; }

std::vector<int> Pool::worker_pids() const {
    std::lock_guard<std::mutex> g(impl_->mu);
    std::vector<int> out;
    for (pid_t p : impl_->live)
        if (p > 0) out.push_back(p);
    return out;
}

std::uint64_t Pool::redeliveries() const { return impl_->tasks.redeliveries(); }

}  // namespace shm
