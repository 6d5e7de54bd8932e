// counter_demo: a shared counter that survives a process killed while it
// holds the lock.
//
// Four worker processes add 1 to a counter in shared memory, each under an
// shm::Mutex. Worker 0 (the victim) stops a quarter of the way through, with
// the lock held, and the parent kills it with SIGKILL. With a plain process-shared mutex the
// other workers would now block forever; with shm::Mutex the next one to lock
// acquires it, is told that the previous owner died, checks the shared state
// and carries on. At the end the counter must equal the number of increments
// every worker committed, and once the parent detaches, the segment file is
// gone from the shm directory: nothing is leaked, not even by the dead worker.
//
// Each surviving worker then hands its result back in a shared shm::Dict,
// the way Python programs collect return values with Manager().dict(), and
// the parent prints them.
//
// Run it with `./dev demo`. Set SHM_DIR to use another directory than
// /dev/shm.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <shm/shm.hpp>

using namespace std::chrono_literals;

namespace {

constexpr int kWorkers = 4;
constexpr std::uint64_t kIncrements = 200000;  // per worker
constexpr int kVictim = 0;                     // the worker that gets killed
constexpr std::uint64_t kVictimStopsAt = kIncrements / 4;
constexpr auto kTimeLimit = 60s;  // for the whole run

// The state the workers share. It lives in the segment, so it holds plain
// values only: no pointers, no std:: containers.
struct Shared {
    // Guarded by the mutex.
    std::uint64_t counter = 0;
    std::uint64_t committed[kWorkers] = {};  // increments each worker has made
    std::int32_t holder_pid = 0;             // who holds the lock right now

    // Set by the victim while it holds the lock, read by the parent.
    std::atomic<std::int32_t> victim_waiting{0};
};
static_assert(std::atomic<std::int32_t>::is_always_lock_free);

std::uint64_t committed_total(const Shared& s) {
    std::uint64_t sum = 0;
    for (std::uint64_t c : s.committed) sum += c;
    return sum;
}

// "worker 2 (pid 1234)", or "parent (pid 1230)" for id -1: how lines start.
std::string who(int id) {
    return (id < 0 ? std::string("parent") : "worker " + std::to_string(id)) + " (pid " +
           std::to_string(::getpid()) + ")";
}

// Called by whoever acquired the lock from a dead owner. The dead owner may
// have stopped anywhere inside its critical section, so check the data and
// repair it. Here the per-worker counts are the record of what was committed,
// and the counter must equal their sum.
void recover(Shared& s, int id) {
    const std::uint64_t expected = committed_total(s);
    if (s.counter == expected) {
        std::printf("%s: recovered the lock from a dead owner (pid %d); counter is consistent at %llu\n",
                    who(id).c_str(), s.holder_pid, static_cast<unsigned long long>(s.counter));
    } else {
        std::printf("%s: recovered the lock from a dead owner (pid %d); repaired the counter from %llu to %llu\n",
                    who(id).c_str(), s.holder_pid, static_cast<unsigned long long>(s.counter),
                    static_cast<unsigned long long>(expected));
        s.counter = expected;
    }
}

// A worker's life. `m` and `s` are the parent's objects: the mapping is
// inherited across fork(), and libshm gave this child its own attach slot.
void work(int id, shm::Segment& seg, shm::Mutex& m, Shared& s) {
    std::printf("%s: started, %llu increments to do\n", who(id).c_str(),
                static_cast<unsigned long long>(kIncrements));
    bool recovered_here = false;
    for (std::uint64_t i = 0; i < kIncrements; ++i) {
        std::lock_guard<shm::Mutex> lock(m);
        if (m.previous_owner_died()) {
            recover(s, id);
            recovered_here = true;
        }
        s.holder_pid = ::getpid();
        ++s.counter;
        ++s.committed[id];

        if (id == kVictim && i + 1 == kVictimStopsAt) {
            // Tell the parent, then wait for SIGKILL with the lock held.
            s.victim_waiting.store(1, std::memory_order_release);  // partner: the parent's acquire load
            for (;;) ::pause();
        }
    }
    // Hand the result back through the shared dict (no server round trip).
    shm::Dict results = shm::Dict::open_or_create(seg, "results");
    results.set("worker-" + std::to_string(id),
                shm::Value::new_dict({{"pid", ::getpid()}, {"increments", static_cast<std::int64_t>(kIncrements)},
                                      {"recovered_lock", recovered_here}}));
    std::printf("%s: done\n", who(id).c_str());
}

// Fork one worker. It dies with the parent (PR_SET_PDEATHSIG) and leaves with
// _exit(), so it never runs the parent's destructors or atexit handlers.
pid_t start_worker(int id, shm::Segment& seg, shm::Mutex& m, Shared& s) {
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid != 0) return pid;  // the parent (or -1 on failure)

    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);  // the parent died before prctl()
    int rc = 0;
    try {
        work(id, seg, m, s);
        seg.detach();  // _exit() skips destructors; the kernel would drop our slot anyway
    } catch (const std::exception& e) {
        std::printf("%s: error: %s\n", who(id).c_str(), e.what());
        rc = 1;
    }
    ::_exit(rc);
}

// Whether the process has ended, without reaping it.
bool has_ended(pid_t pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           info.si_pid == pid;
}

// waitpid() with a deadline: the wait status, or -1 if the process was still
// running at the deadline (it is then killed and reaped).
int wait_until(pid_t pid, std::chrono::steady_clock::time_point deadline) {
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return -1;
        }
        std::this_thread::sleep_for(1ms);
    }
    return status;
}

int run() {
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + kTimeLimit;
    const std::string name = "demo-counter-" + std::to_string(::getpid());

    std::printf("libshm counter demo: %d worker processes x %llu locked increments; "
                "worker %d is killed while it holds the lock\n",
                kWorkers, static_cast<unsigned long long>(kIncrements), kVictim);

    // Create the segment (1 MiB, reserved in the shm filesystem up front) and
    // the two objects the workers share.
    shm::Segment seg = shm::Segment::create(name, 1 << 20);
    shm::Mutex& m = seg.find_or_construct<shm::Mutex>("lock");
    Shared& s = seg.find_or_construct<Shared>("state");
    std::printf("parent (pid %d): created segment '%s' at %s\n", ::getpid(), name.c_str(),
                seg.path().c_str());

    std::vector<pid_t> pids;
    for (int id = 0; id < kWorkers; ++id) {
        std::fflush(stdout);  // so the child does not inherit unwritten output
        const pid_t pid = start_worker(id, seg, m, s);
        if (pid < 0) {
            std::perror("fork");
            for (pid_t p : pids) ::kill(p, SIGKILL);
            return 1;
        }
        pids.push_back(pid);
    }

    // Wait until the victim holds the lock, then kill it.
    bool ok = true;
    while (s.victim_waiting.load(std::memory_order_acquire) == 0) {  // partner: the victim's release store
        if (std::chrono::steady_clock::now() > deadline || has_ended(pids[kVictim])) break;
        std::this_thread::sleep_for(1ms);
    }
    if (s.victim_waiting.load(std::memory_order_acquire) != 0) {
        std::printf("parent: SIGKILL worker %d (pid %d) while it holds the lock\n", kVictim,
                    pids[kVictim]);
        ::kill(pids[kVictim], SIGKILL);
    } else {
        std::printf("parent: worker %d never took the lock to be killed\n", kVictim);
        ok = false;
    }

    // Collect every worker, within the time limit.
    std::vector<std::string> outcome(kWorkers);
    for (int id = 0; id < kWorkers; ++id) {
        const int status = wait_until(pids[id], deadline);
        const bool expected_death = id == kVictim;
        if (status == -1) {
            outcome[id] = "FAILED: still running after the time limit, killed";
            ok = false;
        } else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && expected_death) {
            outcome[id] = "killed holding the lock";
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && !expected_death) {
            outcome[id] = "finished";
        } else {
            outcome[id] = "FAILED: ended unexpectedly";
            ok = false;
        }
    }

    // Every worker is gone, so the parent may read the shared state; it takes
    // the lock anyway, as any user of the data should.
    std::uint64_t counter = 0, expected = 0, recoveries = 0;
    {
        std::lock_guard<shm::Mutex> lock(m);
        if (m.previous_owner_died()) recover(s, -1);  // nobody else was left to do it
        counter = s.counter;
        expected = committed_total(s);
        recoveries = m.recoveries();
        std::printf("\nsummary:\n");
        for (int id = 0; id < kWorkers; ++id)
            std::printf("  worker %d (pid %d): %7llu increments, %s\n", id, pids[id],
                        static_cast<unsigned long long>(s.committed[id]), outcome[id].c_str());
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("  final counter: %llu\n", static_cast<unsigned long long>(counter));
    std::printf("  expected:      %llu (the sum of the committed increments)\n",
                static_cast<unsigned long long>(expected));
    std::printf("  lock recovered from a dead owner %llu time(s); %.1f s\n",
                static_cast<unsigned long long>(recoveries), seconds);
    if (counter == expected && recoveries >= 1) {
        std::printf("  OK: no increment lost or counted twice\n");
    } else {
        std::printf("  FAILED: the counter does not match, or the dead owner was never detected\n");
        ok = false;
    }

    // The results the workers handed back, read from the shared dict. Its
    // handles (and the Values holding nested ones) keep the segment attached
    // like seg does: they go at the end of this block.
    {
        shm::Dict results = shm::Dict::open_or_create(seg, "results");
        auto items = results.items();
        std::sort(items.begin(), items.end(), [](auto& a, auto& b) { return a.first < b.first; });
        std::printf("\nresults collected in a shared shm::Dict (like Python's Manager().dict()):\n");
        for (auto& [key, value] : items) {
            shm::Dict r = value.as_dict();
            std::printf("  %s: pid %lld, %lld increments%s\n", key.c_str(),
                        static_cast<long long>(r.get<std::int64_t>("pid")),
                        static_cast<long long>(r.get<std::int64_t>("increments")),
                        r.get<bool>("recovered_lock") ? ", recovered the lock from the dead worker" : "");
        }
        if (items.size() != kWorkers - 1) {
            std::printf("  FAILED: expected %d results (every worker but the killed one)\n", kWorkers - 1);
            ok = false;
        }
    }

    // The parent is the last live process attached, and seg the last holder
    // of its attachment, so detaching unlinks the segment. The victim never
    // detached: its slot died with it.
    const std::filesystem::path file = shm::segment_path(name);
    seg.detach();
    if (std::filesystem::exists(file)) {
        std::printf("FAILED: %s is still there after the last detach\n", file.c_str());
        return 1;
    }
    std::printf("parent: detached; segment file %s removed, nothing left in %s\n", file.c_str(),
                shm::shm_directory().c_str());
    return ok ? 0 : 1;
}

}  // namespace

int main() {
    // One write per line, so lines from several processes never interleave,
    // and nothing is lost in a buffer when a worker calls _exit().
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    try {
        return run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "counter_demo: %s\n", e.what());
        return 1;
    }
}
