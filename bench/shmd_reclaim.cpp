// How long a killed process's segment outlives it: the delay from SIGKILL to
// the unlink of its segment file, with shmd (`./dev bench`, case
// shmd.reclaim_delay).
//
// It starts shmd on a private socket serving a private shm directory, then,
// round after round, forks a client that creates a segment (registering it
// with the daemon: SHM_DAEMON=required) and says it is ready, SIGKILLs it
// and times from kill() to the moment inotify reports the segment file
// deleted (at most 30 s a round). The alternative without a daemon is
// `shmctl gc`: the same rounds in another private directory with
// SHM_DAEMON=off, where shmctl gc is started as soon as the killed client
// has been reaped; that is its best case (in practice a timer runs it
// minutes later).
//
// It speaks bench/run.py's protocol: --list, --only PREFIX, and one JSON
// object a line on stdout,
//   {"bench": "shmd.reclaim_delay.p50" | ".p99", "impl": "shmd" | "shmctl_gc",
//    "value": MS, "unit": "ms", "note": ...}
// with the median and p99 in words on stderr. --seconds and --warmup are
// accepted and ignored: the work is a number of rounds (--rounds, default
// 200). Exit status 0 when every round's segment was reclaimed in time.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <shm/admin.hpp>
#include <shm/shm.hpp>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr const char* kCase = "shmd.reclaim_delay";
constexpr double kTargetMs = 10.0;  // the target for shmd's median
constexpr auto kRoundLimit = 30s;   // a segment not gone by then: the round failed (a busy machine is slow, not wrong)
constexpr int kMaxFailures = 3;     // stop after this many failed rounds
constexpr std::size_t kSegmentSize = 1 << 20;

volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

struct Options {
    std::vector<std::string> only;
    bool list = false;
    int rounds = 200;
    std::string shmd = SHMD_PATH;
#ifdef SHMCTL_PATH
    std::string shmctl = SHMCTL_PATH;
#else
    std::string shmctl;
#endif
};

Options parse(int argc, char** argv) {
    Options o;
    auto value = [&](int& i) -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(std::string(argv[i]) + " needs a value");
        return argv[++i];
    };
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--list") {
            o.list = true;
        } else if (a == "--only") {
            o.only.push_back(value(i));
        } else if (a == "--seconds" || a == "--warmup") {
            value(i);  // the work is counted in rounds
        } else if (a == "--rounds") {
            std::string v = value(i);
            char* end = nullptr;
            long n = std::strtol(v.c_str(), &end, 10);
            if (*end || n < 1 || n > 100000) throw std::invalid_argument("--rounds must be 1 to 100000");
            o.rounds = static_cast<int>(n);
        } else if (a == "--shmd") {
            o.shmd = value(i);
        } else if (a == "--shmctl") {
            o.shmctl = value(i);
        } else {
            throw std::invalid_argument("unknown option '" + std::string(a) +
                                        "' (options: --rounds N, --only PREFIX, --list, --shmd PATH, "
                                        "--shmctl PATH, --seconds S, --warmup S)");
        }
    }
    return o;
}

bool selected(const Options& o) {
    if (o.only.empty()) return true;
    std::string_view c = kCase;
    for (const std::string& p : o.only)
        if (c.substr(0, p.size()) == p || (p.size() > c.size() && p.compare(0, c.size(), c) == 0 && p[c.size()] == '.'))
            return true;
    return false;
}

double ms_since(Clock::time_point t0, Clock::time_point t1) {
    return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

bool exists(const std::string& path) {
    struct stat st;
    return ::lstat(path.c_str(), &st) == 0;
}

// Wait until `name` is deleted from the watched directory (or is gone
// already); the time it was seen gone, or nullopt after `limit`.
std::optional<Clock::time_point> wait_deleted(int ino, const std::string& dir, const std::string& name,
                                              Clock::time_point deadline) {
    const std::string path = dir + "/" + name;
    alignas(inotify_event) char buf[8192];
    for (;;) {
        ssize_t n = ::read(ino, buf, sizeof buf);  // non-blocking
        if (n > 0) {
            for (char* p = buf; p < buf + n;) {
                auto* ev = reinterpret_cast<inotify_event*>(p);
                if ((ev->mask & IN_DELETE) && ev->len && name == ev->name) return Clock::now();
                if (ev->mask & IN_Q_OVERFLOW) {
                    if (!exists(path)) return Clock::now();
                }
                p += sizeof(inotify_event) + ev->len;
            }
            continue;
        }
        auto now = Clock::now();
        if (now >= deadline || g_stop) return exists(path) ? std::nullopt : std::optional(now);
        int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count());
        pollfd p{ino, POLLIN, 0};
        ::poll(&p, 1, std::min(ms, 100));
    }
}

void drain(int ino) {
    char buf[8192];
    while (::read(ino, buf, sizeof buf) > 0) {
    }
}

pid_t spawn(const std::vector<std::string>& argv) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    std::vector<char*> a;
    for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, a[0], &fa, nullptr, a.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("cannot run " + argv[0] + ": " + std::strerror(rc));
    return pid;
}

int wait_exit(pid_t pid) {
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

// What one run works in: a private shm directory, and for shmd a private
// socket and the daemon itself. Everything goes at the end.
struct Lab {
    std::string dir, run_dir, socket;
    pid_t daemon = -1;
    int ino = -1;

    explicit Lab(const char* tag) {
        std::string t = std::string("/dev/shm/libshm-bench-") + tag + ".XXXXXX";
        if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp " + t + ": " + std::strerror(errno));
        dir = t;
        ino = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (ino < 0 || ::inotify_add_watch(ino, dir.c_str(), IN_DELETE) < 0)
            throw std::runtime_error(std::string("inotify: ") + std::strerror(errno));
    }
    ~Lab() {
        if (daemon > 0) {
            ::kill(daemon, SIGTERM);
            auto deadline = Clock::now() + 10s;
            int st;
            while (::waitpid(daemon, &st, WNOHANG) == 0) {
                if (Clock::now() > deadline) {
                    ::kill(daemon, SIGKILL);
                    ::waitpid(daemon, &st, 0);
                    break;
                }
                ::usleep(1000);
            }
        }
        if (ino >= 0) ::close(ino);
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
        if (!run_dir.empty()) std::filesystem::remove_all(run_dir, ec);
    }

    void start_daemon(const std::string& shmd) {
        char t[] = "/tmp/shmd-bench.XXXXXX";
        if (!::mkdtemp(t)) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
        run_dir = t;
        socket = run_dir + "/shmd.sock";
        std::vector<std::string> args = {shmd, "--socket", socket, "--shm-dir", dir, "--config", "/dev/null",
                                         "--no-notify", "--log-level", "warn"};
        std::fflush(nullptr);
        pid_t parent = ::getpid();
        daemon = ::fork();
        if (daemon < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
        if (daemon == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::_exit(1);
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(argv[0], argv.data());
            std::fprintf(stderr, "shmd bench: cannot run %s: %s\n", argv[0], std::strerror(errno));
            ::_exit(127);
        }
        auto deadline = Clock::now() + 20s;
        while (!shm::admin::daemon_status(socket, 1000ms).running) {
            int st;
            if (::waitpid(daemon, &st, WNOHANG) == daemon) {
                daemon = -1;
                throw std::runtime_error("shmd exited at start (" + shmd + ")");
            }
            if (Clock::now() > deadline || g_stop) throw std::runtime_error("shmd did not answer within 20 s");
            ::usleep(2000);
        }
    }

    // Fork a client that creates segment `name` and waits to be killed.
    // Returns its pid once the segment exists (and, with a daemon, is
    // registered), or -1.
    pid_t client(const std::string& name, const char* daemon_mode) {
        int ready[2];
        if (::pipe2(ready, O_CLOEXEC) != 0) return -1;
        std::fflush(nullptr);
        pid_t parent = ::getpid();
        pid_t c = ::fork();
        if (c < 0) {
            ::close(ready[0]);
            ::close(ready[1]);
            return -1;
        }
        if (c == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(1);
            ::setenv("SHM_DIR", dir.c_str(), 1);
            ::setenv("SHM_DAEMON", daemon_mode, 1);
            if (!socket.empty()) ::setenv("SHM_DAEMON_SOCKET", socket.c_str(), 1);
            try {
                auto s = shm::Segment::create(name, kSegmentSize);
                (void)!::write(ready[1], "r", 1);
                for (;;) ::pause();
            } catch (const std::exception& e) {
                std::fprintf(stderr, "shmd bench: client: %s\n", e.what());
            }
            ::_exit(2);
        }
        ::close(ready[1]);
        pollfd p{ready[0], POLLIN, 0};
        char b;
        bool ok = ::poll(&p, 1, 30000) == 1 && ::read(ready[0], &b, 1) == 1;
        ::close(ready[0]);
        if (!ok) {
            ::kill(c, SIGKILL);
            wait_exit(c);
            return -1;
        }
        return c;
    }
};

struct Figures {
    std::vector<double> ms;
    int failures = 0;
};

// Rounds with shmd: kill, then wait for the daemon to unlink.
Figures run_shmd(const Options& o) {
    Lab lab("shmd");
    lab.start_daemon(o.shmd);
    Figures f;
    for (int i = 0; i < o.rounds && f.failures < kMaxFailures && !g_stop; ++i) {
        std::string seg = "r" + std::to_string(i);
        drain(lab.ino);
        pid_t c = lab.client(seg, "required");
        if (c < 0) {
            std::fprintf(stderr, "shmd bench: round %d: the client did not create its segment\n", i);
            ++f.failures;
            continue;
        }
        auto t0 = Clock::now();
        ::kill(c, SIGKILL);
        auto gone = wait_deleted(lab.ino, lab.dir, "libshm." + seg, t0 + kRoundLimit);
        wait_exit(c);
        if (!gone) {
            std::fprintf(stderr, "shmd bench: round %d: segment still there %lld s after SIGKILL\n", i,
                         static_cast<long long>(kRoundLimit.count()));
            ++f.failures;
            ::unlink((lab.dir + "/libshm." + seg).c_str());
            continue;
        }
        f.ms.push_back(ms_since(t0, *gone));
    }
    return f;
}

// Rounds without a daemon: kill, reap, run shmctl gc at once.
Figures run_gc(const Options& o) {
    Lab lab("gc");
    Figures f;
    for (int i = 0; i < o.rounds && f.failures < kMaxFailures && !g_stop; ++i) {
        std::string seg = "g" + std::to_string(i);
        drain(lab.ino);
        pid_t c = lab.client(seg, "off");
        if (c < 0) {
            ++f.failures;
            continue;
        }
        auto t0 = Clock::now();
        ::kill(c, SIGKILL);
        wait_exit(c);
        pid_t gc = spawn({o.shmctl, "--dir", lab.dir, "gc"});
        auto gone = wait_deleted(lab.ino, lab.dir, "libshm." + seg, t0 + kRoundLimit);
        int rc = wait_exit(gc);
        if (!gone || rc != 0) {
            std::fprintf(stderr, "shmd bench: round %d: shmctl gc exited %d, segment %s\n", i, rc,
                         gone ? "gone" : "still there");
            ++f.failures;
            ::unlink((lab.dir + "/libshm." + seg).c_str());
            continue;
        }
        f.ms.push_back(ms_since(t0, *gone));
    }
    return f;
}

// Nearest-rank percentile of sorted values.
double percentile(const std::vector<double>& sorted, double p) {
    std::size_t rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
    return sorted[std::min(sorted.size() - 1, rank ? rank - 1 : 0)];
}

void emit(const std::string& bench, const char* impl, double ms, const std::string& note) {
    std::printf("{\"bench\": \"%s\", \"impl\": \"%s\", \"value\": %.4f, \"unit\": \"ms\", \"note\": \"%s\"}\n",
                bench.c_str(), impl, ms, note.c_str());
    std::fflush(stdout);
}

bool report(const char* impl, Figures f, int rounds, const std::string& how) {
    if (f.ms.empty()) {
        std::fprintf(stderr, "shmd bench: %s: no round succeeded\n", impl);
        return false;
    }
    std::sort(f.ms.begin(), f.ms.end());
    double p50 = percentile(f.ms, 50), p99 = percentile(f.ms, 99);
    std::string note = how + ", " + std::to_string(f.ms.size()) + " rounds";
    emit(std::string(kCase) + ".p50", impl, p50, note);
    emit(std::string(kCase) + ".p99", impl, p99, note);
    std::fprintf(stderr, "shmd bench: %-9s SIGKILL to unlink: median %.3f ms, p99 %.3f ms, max %.3f ms (%zu of %d rounds)\n",
                 impl, p50, p99, f.ms.back(), f.ms.size(), rounds);
    return f.failures == 0;
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "shmd bench: %s\n", e.what());
        return 2;
    }
    if (o.list) {
        std::printf("%s\n", kCase);
        return 0;
    }
    if (!selected(o)) return 0;
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
    bool ok = true;
    try {
        Figures d = run_shmd(o);
        ok = report("shmd", d, o.rounds, "1 MiB segment, its client SIGKILLed; inotify sees the unlink") && ok;
        if (!d.ms.empty()) {
            std::vector<double> s = d.ms;
            std::sort(s.begin(), s.end());
            double p50 = percentile(s, 50);
            std::fprintf(stderr, "shmd bench: target: median under %g ms: %s (%.3f ms)\n", kTargetMs,
                         p50 < kTargetMs ? "met" : "MISSED", p50);
        }
        if (o.shmctl.empty()) {
            std::fprintf(stderr, "shmd bench: no shmctl: the gc comparison is left out\n");
        } else if (!g_stop) {
            ok = report("shmctl_gc", run_gc(o), o.rounds,
                        "no daemon; shmctl gc started once the client is reaped (a timer runs it later)") &&
                 ok;
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "shmd bench: %s\n", e.what());
        return 1;
    }
    return ok && !g_stop ? 0 : 1;
}
