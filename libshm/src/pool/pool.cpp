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
#include <string>
#include <utility>

#include "shm/queue.hpp"
#include "shm/segment.hpp"
#include "shm/work_queue.hpp"

namespace shm {

namespace {

struct Msg {
    std::int32_t kind;    // kSpawn (to the server), kSpawned, kDied (from it)
    std::int32_t pid;
    std::int32_t status;  // wait status, for kDied
};
constexpr std::int32_t kSpawn = 1, kSpawned = 2, kDied = 3;
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
                pid_t w = ::fork();
                if (w == 0) {
                    ::close(fd);
                    die_with_parent(me);
                    worker_main(fn, opt, tasks, results);
                }
                if (w > 0) {
                    workers.insert(w);
                    send_msg(fd, Msg{kSpawned, w, 0});
                }
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
    std::condition_variable cv;
    struct Pending {
        std::promise<std::string> promise;
        std::function<void()> done;  // after the promise is set (imap_unordered)
    };
    std::map<std::uint64_t, Pending> pending;
    std::set<pid_t> live;
    std::map<pid_t, int> exits;  // wait statuses of workers that died
    std::uint64_t next_id = 0;
    bool closing = false, stopping = false, joined = false;

    Impl(Function f, PoolOptions o, Segment s)
        : fn(std::move(f)), opt(std::move(o)), seg(std::move(s)),
          tasks(WorkQueue::create(seg, "tasks", {opt.capacity, opt.max_retries + 1})),
          results(WorkQueue::create(seg, "results", {opt.capacity, 1})) {}

    void settle(std::uint64_t id, bool ok, std::string value) {
        if (!ok) return fail(id, std::make_exception_ptr(task_error(value)));
        std::function<void()> done;
        {
            std::lock_guard<std::mutex> g(mu);
            auto it = pending.find(id);
            if (it == pending.end()) return;  // a second result of a task that ran twice
            it->second.promise.set_value(std::move(value));
            done = std::move(it->second.done);
            pending.erase(it);
        }
        cv.notify_all();
        if (done) done();
    }

    // The promises of failed tasks, kept until a submitting thread (or the
    // pool's destructor) lets go of them: the exception a future carries is
    // then freed by the thread that submitted, not by the supervisor, after
    // the future's reader is done with it. (Freed by the supervisor, its
    // last reference would be dropped inside libstdc++'s exception_ptr,
    // which ThreadSanitizer cannot see, and it would report the reader.)
    std::vector<std::promise<std::string>> failed;

    void fail(std::uint64_t id, std::exception_ptr e) {
        std::function<void()> done;
        {
            std::lock_guard<std::mutex> g(mu);
            auto it = pending.find(id);
            if (it == pending.end()) return;
            it->second.promise.set_exception(std::move(e));
            failed.push_back(std::move(it->second.promise));
            done = std::move(it->second.done);
            pending.erase(it);
        }
        cv.notify_all();
        if (done) done();
    }

    void ask_spawn() { send_msg(fd, Msg{kSpawn, 0, 0}); }

    // Queue a task; `done` (if any) runs once its future is set.
    std::future<std::string> submit(const std::string& task, std::function<void()> done) {
        std::uint64_t id;
        std::future<std::string> f;
        std::vector<std::promise<std::string>> drop;  // freed here, after the lock
        {
            std::lock_guard<std::mutex> g(mu);
            drop.swap(failed);
            if (closing || stopping) throw closed("shm::Pool: closed");
            id = next_id++;
            Pending& p = pending[id];
            p.done = std::move(done);
            f = p.promise.get_future();
        }
        try {
            tasks.put(encode_id(id, 't', task));
        } catch (...) {
            std::lock_guard<std::mutex> g(mu);
            pending.erase(id);
            throw;
        }
        return f;
    }

    // The supervisor: results, deaths, replacements.
    void run() {
        for (std::uint32_t turn = 0;; ) {
            if (auto r = results.get_for(kTick)) {
                std::uint64_t id;
                char tag;
                std::string_view body;
                if (decode_id(r->item(), &id, &tag, &body)) settle(id, tag == 'r', std::string(body));
                r->ack();
                // The rest (the server's news, dead letters) every 32
                // results while they flow, and whenever they pause.
                if (++turn % 32 != 0) continue;
            }
            Msg m{};
            bool died = false;
            while (::recv(fd, &m, sizeof m, MSG_DONTWAIT) == sizeof m) {
                std::lock_guard<std::mutex> g(mu);
                if (m.kind == kSpawned) {
                    // It takes the place of one asked for (a negative placeholder).
                    if (!live.empty() && *live.begin() < 0) live.erase(live.begin());
                    live.insert(m.pid);
                }
                if (m.kind == kDied) {
                    live.erase(m.pid);
                    exits[m.pid] = m.status;
                    died = true;
                }
            }
            if (died) after_deaths();
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
            if (decode_id(h.d.item, &id, &tag, &body))
                fail(id, std::make_exception_ptr(worker_lost(
                             "shm::Pool: task " + std::to_string(id) + ": its worker (pid " +
                             std::to_string(h.d.last_pid) + ") was " + (status ? describe_status(*status) : "gone") +
                             ", on each of " + std::to_string(h.d.deliveries) + " tries (max_retries " +
                             std::to_string(opt.max_retries) + ")")));
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

std::future<std::string> Pool::submit(std::string task) { return impl_->submit(task, nullptr); }

std::vector<std::string> Pool::map(const std::vector<std::string>& tasks) {
    std::vector<std::future<std::string>> fs;
    fs.reserve(tasks.size());
    for (const auto& t : tasks) fs.push_back(submit(t));
    std::vector<std::string> out;
    out.reserve(tasks.size());
    for (auto& f : fs) out.push_back(f.get());
    return out;
}

void Pool::imap_unordered(const std::vector<std::string>& tasks,
                          const std::function<void(std::size_t, std::future<std::string>&)>& fn) {
    Impl& im = *impl_;
    struct Done {
        std::mutex mu;
        std::condition_variable cv;
        std::vector<std::size_t> ready;
    };
    auto done = std::make_shared<Done>();
    std::vector<std::future<std::string>> fs(tasks.size());
    for (std::size_t i = 0; i < tasks.size(); ++i) {
        fs[i] = im.submit(tasks[i], [done, i] {
            std::lock_guard<std::mutex> g(done->mu);
            done->ready.push_back(i);
            done->cv.notify_all();
        });
    }
    for (std::size_t n = 0; n < tasks.size(); ++n) {
        std::size_t i;
        {
            std::unique_lock<std::mutex> g(done->mu);
            done->cv.wait(g, [&] { return !done->ready.empty(); });
            i = done->ready.back();
            done->ready.pop_back();
        }
        fn(i, fs[i]);
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
    for (std::uint64_t id : left) im.fail(id, std::make_exception_ptr(closed("shm::Pool: terminated")));
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
