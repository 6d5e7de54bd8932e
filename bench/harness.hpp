// A small multi-process benchmark harness.
//
// A case runs in N forked worker processes at once (the parent only
// orchestrates). Each worker sets itself up, says it is ready, waits for the
// common start signal, runs the operation for a short warm-up, then for a
// fixed time (or until a cap on operations), and records what it did in an
// anonymous shared mapping. The case's rate is the operations of all workers
// divided by the span from the first worker's measured start to the last
// one's end, both read from steady_clock (CLOCK_MONOTONIC, one clock for
// every process of the host).
//
// Every program built on it prints one JSON object per line on stdout,
//   {"bench": CASE, "impl": IMPL, "value": NUMBER, "unit": UNIT}
// and its progress and errors on stderr. A run is always bounded: a worker
// that does not finish in time is killed and the case reported as failed.
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace bench {

using Clock = std::chrono::steady_clock;

// The working set every dict case cycles through: "k0" .. "k999".
inline constexpr std::uint64_t kKeys = 1000;

// list.append grows a list without bound, so it stops after this many
// appends per worker (warm-up included) even when time is left; a fast
// implementation then measures for a shorter time.
inline constexpr std::uint64_t kAppendCap = 3'000'000;

inline std::vector<std::string> make_keys(std::uint64_t n = kKeys) {
    std::vector<std::string> keys;
    keys.reserve(n);
    for (std::uint64_t i = 0; i < n; ++i) keys.push_back("k" + std::to_string(i));
    return keys;
}

// The dict's scale family: dict.scale.<N> fills a dict with N keys
// ("k0" .. ) in one process, then reports .get and .set (ops/s, one
// process, every key in turn) and .bytes_per_key (the bytes the dict's keys,
// values and tables take in the mapping, per key). dict.scale.1M is left out
// of a default `./dev bench` (see bench/run.py).
struct DictScale {
    const char* name;
    std::uint64_t keys;
};
inline const std::vector<DictScale>& dict_scales() {
    static const std::vector<DictScale> v{{"dict.scale.1k", 1000}, {"dict.scale.100k", 100'000},
                                          {"dict.scale.1M", 1'000'000}};
    return v;
}

struct Options {
    double seconds = 1.0;              // measured time per case
    double warmup = 0.1;               // untimed time before it, per case
    std::vector<std::string> only;     // case-name prefixes; empty: all
    bool list = false;                 // print the case names and stop
    std::vector<std::string> exact;    // the --only values that name a case: that case alone

    // An --only value that is the name of a case selects that case alone,
    // not the cases whose names extend it (queue.1to1.64B, not
    // queue.1to1.64B.d256): bench/run.py runs one case at a time so.
    void resolve(const std::vector<std::string>& names) {
        std::vector<std::string> prefixes;
        for (auto& p : only)
            (std::find(names.begin(), names.end(), p) != names.end() ? exact : prefixes).push_back(p);
        only = std::move(prefixes);
    }
    bool selected(std::string_view name) const {
        if (only.empty() && exact.empty()) return true;
        for (const auto& p : exact)
            if (name == p) return true;
        for (const auto& p : only)
            if (name.substr(0, p.size()) == p) return true;
        return false;
    }
};

inline Options parse_options(int argc, char** argv) {
    Options o;
    auto number = [&](int& i) {
        if (i + 1 >= argc) throw std::invalid_argument(std::string(argv[i]) + " needs a value");
        char* end = nullptr;
        double v = std::strtod(argv[++i], &end);
        if (*end != '\0' || !(v >= 0) || v > 3600)
            throw std::invalid_argument(std::string("bad number '") + argv[i] + "'");
        return v;
    };
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--seconds") {
            o.seconds = number(i);
        } else if (a == "--warmup") {
            o.warmup = number(i);
        } else if (a == "--only") {
            if (i + 1 >= argc) throw std::invalid_argument("--only needs a case-name prefix");
            o.only.emplace_back(argv[++i]);
        } else if (a == "--list") {
            o.list = true;
        } else {
            throw std::invalid_argument("unknown option '" + std::string(a) +
                                        "' (options: --seconds S, --warmup S, --only PREFIX, --list)");
        }
    }
    if (o.seconds <= 0) throw std::invalid_argument("--seconds must be above 0");
    return o;
}

inline void emit(std::string_view bench, std::string_view impl, double value, std::string_view unit) {
    std::printf("{\"bench\": \"%.*s\", \"impl\": \"%.*s\", \"value\": %.1f, \"unit\": \"%.*s\"}\n",
                static_cast<int>(bench.size()), bench.data(), static_cast<int>(impl.size()),
                impl.data(), value, static_cast<int>(unit.size()), unit.data());
    std::fflush(stdout);
}

// Files a case creates in the shm directory, removed even when the program
// is interrupted (SIGINT, SIGTERM, SIGHUP): a benchmark must not leak what
// libshm exists to reclaim. The handler only calls unlink(), which is
// async-signal-safe, then dies of the signal as it would have.
class TempFiles {
public:
    static void add(const std::string& path) {
        install();
        for (auto& slot : paths())
            if (slot[0] == '\0' && path.size() < sizeof(slot)) {
                std::memcpy(slot, path.c_str(), path.size() + 1);
                return;
            }
    }
    static void remove(const std::string& path) {
        for (auto& slot : paths())
            if (path == slot) slot[0] = '\0';
    }

private:
    using Paths = char[4][4096];
    static Paths& paths() {
        static Paths p = {};
        return p;
    }
    static void on_signal(int sig) {
        for (auto& slot : paths())
            if (slot[0] != '\0') ::unlink(slot);
        ::signal(sig, SIG_DFL);
        ::raise(sig);
    }
    static void install() {
        static bool done = false;
        if (done) return;
        done = true;
        for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::signal(sig, on_signal);
    }
};

inline constexpr int kMaxProcs = 16;

// What the parent and the workers of one case share (an anonymous
// MAP_SHARED mapping, so it needs no name and nothing to clean up).
struct Control {
    std::atomic<int> ready{0};  // workers set up and waiting for `go`
    std::atomic<int> go{0};     // set once by the parent
    struct Slot {
        std::atomic<std::uint64_t> ops{0};    // measured operations
        std::atomic<std::uint64_t> total{0};  // warm-up included
        std::atomic<std::int64_t> t0{0};      // steady_clock ns, measured start
        std::atomic<std::int64_t> t1{0};      // steady_clock ns, measured end
    } slot[kMaxProcs];
};
static_assert(std::atomic<int>::is_always_lock_free);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

inline std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
}

// Handed to the body of a case in each worker process.
class Worker {
public:
    Worker(Control& c, int index, int procs, const Options& o)
        : c_(c), index_(index), procs_(procs), opt_(o) {}

    int index() const noexcept { return index_; }
    int procs() const noexcept { return procs_; }

    // Run op(i) for i = 0, 1, 2, ...: first for the warm-up, then measured,
    // until the time is up or `cap` operations (warm-up included) are done;
    // then `last` (if given), inside the measured time: work the operations
    // left to finish (pipelined writes waiting for their answers). Call it
    // once, after the worker's own set-up.
    template <class Op>
    void run(Op&& op, std::uint64_t cap = std::numeric_limits<std::uint64_t>::max(),
             const std::function<void()>& last = {}) {
        auto& me = c_.slot[index_];
        // Pairs with the parent's acquire load of `ready`.
        c_.ready.fetch_add(1, std::memory_order_release);
        while (c_.go.load(std::memory_order_acquire) == 0) std::this_thread::yield();

        constexpr std::uint64_t kBatch = 32;  // operations between clock reads
        std::uint64_t i = 0;
        const std::int64_t warm_end = now_ns() + static_cast<std::int64_t>(opt_.warmup * 1e9);
        const std::uint64_t warm_cap = cap / 10;  // leave most of a capped run to be measured
        while (i < warm_cap && now_ns() < warm_end)
            for (std::uint64_t b = 0; b < kBatch && i < warm_cap; ++b) op(i++);
        const std::uint64_t first = i;
        const std::int64_t t0 = now_ns();
        const std::int64_t end = t0 + static_cast<std::int64_t>(opt_.seconds * 1e9);
        std::int64_t t1 = t0;
        while (i < cap && t1 < end) {
            for (std::uint64_t b = 0; b < kBatch && i < cap; ++b) op(i++);
            t1 = now_ns();
        }
        if (last) {
            last();
            t1 = now_ns();
        }
        me.ops.store(i - first, std::memory_order_relaxed);
        me.total.store(i, std::memory_order_relaxed);
        me.t0.store(t0, std::memory_order_relaxed);
        me.t1.store(t1, std::memory_order_relaxed);
        // The parent reads these after waitpid(), which orders them.
    }

private:
    Control& c_;
    int index_;
    int procs_;
    const Options& opt_;
};

struct CaseResult {
    double rate = 0;             // measured operations per second, all workers
    std::uint64_t total_ops = 0; // every operation done, warm-up included
};

class Failure : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Fork `procs` workers that each run body(worker) and _exit. Throws Failure
// if a worker fails, crashes or does not finish in time.
inline CaseResult run_workers(const Options& opt, int procs, const std::function<void(Worker&)>& body) {
    if (procs < 1 || procs > kMaxProcs) throw Failure("bad process count");
    void* mem = mmap(nullptr, sizeof(Control), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) throw Failure(std::string("mmap: ") + std::strerror(errno));
    Control* c = new (mem) Control();
    struct Unmap {
        Control* c;
        ~Unmap() {
            c->~Control();
            munmap(c, sizeof(Control));
        }
    } unmap{c};

    std::fflush(nullptr);  // nothing buffered may be written twice
    std::vector<pid_t> pids;
    const pid_t parent = getpid();
    for (int w = 0; w < procs; ++w) {
        pid_t pid = fork();
        if (pid < 0) {
            for (pid_t p : pids) kill(p, SIGKILL);
            for (pid_t p : pids) waitpid(p, nullptr, 0);
            throw Failure(std::string("fork: ") + std::strerror(errno));
        }
        if (pid == 0) {
            // A worker never outlives an interrupted benchmark.
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(1);
            int rc = 0;
            try {
                Worker worker(*c, w, procs, opt);
                body(worker);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "worker %d: %s\n", w, e.what());
                rc = 1;
            } catch (...) {
                std::fprintf(stderr, "worker %d: unknown exception\n", w);
                rc = 1;
            }
            std::fflush(nullptr);
            _exit(rc);  // no destructors of the parent's objects in the child
        }
        pids.push_back(pid);
    }

    // Bounded waits: set-up, then the run itself with a generous margin.
    // Any worker that fails, or a deadline passing, ends the case: the
    // others are killed and every worker is reaped.
    std::string failure;
    std::vector<bool> reaped(pids.size(), false);
    std::size_t left = pids.size();
    auto poll = [&] {
        for (std::size_t k = 0; k < pids.size(); ++k) {
            int status = 0;
            if (reaped[k] || waitpid(pids[k], &status, WNOHANG) != pids[k]) continue;
            reaped[k] = true;
            --left;
            if (failure.empty() && WIFSIGNALED(status))
                failure = "worker " + std::to_string(k) + " killed by signal " + std::to_string(WTERMSIG(status));
            else if (failure.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                failure = "worker " + std::to_string(k) + " failed";
            else if (failure.empty() && c->go.load(std::memory_order_relaxed) == 0)
                failure = "worker " + std::to_string(k) + " exited before it was ready";
        }
    };
    auto deadline = Clock::now() + std::chrono::seconds(30);
    while (c->ready.load(std::memory_order_acquire) < procs && failure.empty()) {
        poll();
        if (failure.empty() && Clock::now() > deadline) failure = "workers not ready after 30 s";
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (failure.empty()) c->go.store(1, std::memory_order_release);

    deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(opt.warmup + opt.seconds + 30.0));
    while (true) {
        poll();
        if (left == 0) break;
        if (!failure.empty() || Clock::now() > deadline) {
            if (failure.empty()) failure = "workers did not finish in time";
            for (std::size_t k = 0; k < pids.size(); ++k)
                if (!reaped[k]) kill(pids[k], SIGKILL);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!failure.empty()) throw Failure(failure);

    std::uint64_t ops = 0, total = 0;
    std::int64_t t0 = std::numeric_limits<std::int64_t>::max(), t1 = 0;
    for (int w = 0; w < procs; ++w) {
        const auto& s = c->slot[w];
        ops += s.ops.load(std::memory_order_relaxed);
        total += s.total.load(std::memory_order_relaxed);
        t0 = std::min(t0, s.t0.load(std::memory_order_relaxed));
        t1 = std::max(t1, s.t1.load(std::memory_order_relaxed));
    }
    if (t1 <= t0 || ops == 0) throw Failure("no operation measured");
    return {static_cast<double>(ops) / (static_cast<double>(t1 - t0) / 1e9), total};
}

// One benchmark case of a program: its name, how many processes, and a
// function that sets the case up, runs it (through run_workers) and checks
// the outcome.
// A figure a case reports under a name of its own (that extends the case's).
struct Figure {
    std::string bench;
    double value;
    std::string unit;
};

// A case either runs once and reports its rate in ops/s (run), or reports
// several figures (figures, when set).
struct Case {
    std::string name;
    std::function<CaseResult(const Options&)> run;
    std::function<std::vector<Figure>(const Options&)> figures = {};
};

// Run the selected cases, print each result as a JSON line; returns the
// process exit code (1 if any case failed, after running the others).
inline int run_cases(std::string_view impl, const std::vector<Case>& cases, int argc, char** argv) {
    Options opt;
    try {
        opt = parse_options(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
    {
        std::vector<std::string> names;
        for (const auto& c : cases) names.push_back(c.name);
        opt.resolve(names);
    }
    int rc = 0;
    for (const auto& c : cases) {
        if (!opt.selected(c.name)) continue;
        if (opt.list) {
            std::printf("%s\n", c.name.c_str());
            continue;
        }
        try {
            if (c.figures) {
                for (const auto& f : c.figures(opt)) emit(f.bench, impl, f.value, f.unit);
                continue;
            }
            CaseResult r = c.run(opt);
            emit(c.name, impl, r.rate, "ops/s");
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%.*s %s: FAILED: %s\n", static_cast<int>(impl.size()), impl.data(),
                         c.name.c_str(), e.what());
            rc = 1;
        }
    }
    return rc;
}

// The Dict/List cases every implementation runs, in this order. A program
// supplies how it runs a dict operation and list.append with N processes.
enum class DictOp { set, get, increment };

using DictScaleFn = std::function<std::vector<Figure>(const Options&, const std::string& name, std::uint64_t keys)>;

inline std::vector<Case> container_cases(
    const std::function<CaseResult(const Options&, DictOp, int procs)>& dict,
    const std::function<CaseResult(const Options&, int procs)>& list_append, const DictScaleFn& scale = nullptr) {
    std::vector<Case> cases;
    for (int procs : {1, 2}) {
        const std::string suffix = "." + std::to_string(procs) + "proc";
        for (auto [name, op] : {std::pair{"dict.set", DictOp::set}, std::pair{"dict.get", DictOp::get},
                                std::pair{"dict.increment", DictOp::increment}})
            cases.push_back({name + suffix, [=](const Options& o) { return dict(o, op, procs); }});
    }
    for (int procs : {1, 2})
        cases.push_back({"list.append." + std::to_string(procs) + "proc",
                         [=](const Options& o) { return list_append(o, procs); }});
    if (scale)
        for (const auto& d : dict_scales()) {
            const std::string name = d.name;
            const std::uint64_t keys = d.keys;
            cases.push_back({name, nullptr, [=](const Options& o) { return scale(o, name, keys); }});
        }
    return cases;
}

// A check of a case's outcome that failed.
inline void expect(bool ok, const std::string& what) {
    if (!ok) throw Failure("check failed: " + what);
}

}  // namespace bench
