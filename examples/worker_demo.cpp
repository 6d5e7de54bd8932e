// worker_demo: a pool of workers, each with a scratch segment of its own,
// one of them SIGKILLed in the middle of its work. With shmd running, the
// killed worker's segment is reclaimed the moment it dies: nobody runs
// `shmctl gc`. Without a daemon the segment stays until `shmctl gc` (or the
// next process that opens it) finds its users dead.
//
// Nothing here talks to the daemon: the library registers on its own when
// a daemon is reachable (SHM_DAEMON_SOCKET, or the default socket).
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <shm/shm.hpp>

using namespace std::chrono_literals;

namespace {

constexpr int kWorkers = 3;
constexpr int kVictim = 1;
constexpr int kRounds = 400;

std::string scratch_name(int id) { return "demo-worker-" + std::to_string(id); }

// A worker: a 4 MiB scratch segment of its own, and results into the shared
// dict. Writes one byte to `ready` once it is at work.
int work(int id, int ready) {
    auto scratch = shm::Segment::create(scratch_name(id), 4 << 20);
    auto shared = shm::Segment::open("demo-pool");
    shm::Dict results = shm::Dict::open(shared, "results");
    (void)!::write(ready, "x", 1);
    for (int round = 0; round < kRounds; ++round) {
        void* p = scratch.allocate(64 * 1024);  // "work": fill a buffer in our scratch segment
        std::memset(p, id, 64 * 1024);
        scratch.deallocate(p);
        results.set("worker" + std::to_string(id), round + 1);
        std::this_thread::sleep_for(1ms);
    }
    return 0;
}

}  // namespace

int main() {
    auto shared = shm::Segment::create("demo-pool", 1 << 20);
    shm::Dict results = shm::Dict::open_or_create(shared, "results");
    std::printf("worker pool: %d workers, each with a 4 MiB scratch segment; worker %d is killed mid-work\n",
                kWorkers, kVictim);

    int ready[2];
    if (::pipe(ready) != 0) return 1;
    std::vector<pid_t> pids;
    for (int id = 0; id < kWorkers; ++id) {
        std::fflush(nullptr);
        pid_t parent = ::getpid();
        pid_t pid = ::fork();
        if (pid == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (::getppid() != parent) ::_exit(1);
            int rc = 1;
            try {
                rc = work(id, ready[1]);
            } catch (const std::exception& e) {
                std::printf("worker %d: error: %s\n", id, e.what());
            }
            ::_exit(rc);
        }
        pids.push_back(pid);
    }
    for (int i = 0; i < kWorkers; ++i) {
        char c;
        if (::read(ready[0], &c, 1) != 1) return 1;
    }

    std::this_thread::sleep_for(100ms);
    const std::string victim_file = shm::segment_path(scratch_name(kVictim)).string();
    auto killed_at = std::chrono::steady_clock::now();
    std::printf("parent: SIGKILL worker %d (pid %d) in the middle of its work\n", kVictim, pids[kVictim]);
    ::kill(pids[kVictim], SIGKILL);
    bool gone = false;
    while (std::chrono::steady_clock::now() - killed_at < 2s) {
        if (!std::filesystem::exists(victim_file)) {
            gone = true;
            break;
        }
        std::this_thread::sleep_for(100us);
    }
    auto waited = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - killed_at).count();
    if (gone)
        std::printf("parent: its scratch segment '%s' was reclaimed %.1f ms after the kill, by shmd\n",
                    scratch_name(kVictim).c_str(), waited);
    else
        std::printf("parent: its scratch segment '%s' is still there after %.0f ms: no daemon reclaimed it "
                    "(run shmctl gc, or start shmd)\n",
                    scratch_name(kVictim).c_str(), waited);

    int failures = 0;
    for (int id = 0; id < kWorkers; ++id) {
        int status = 0;
        ::waitpid(pids[id], &status, 0);
        bool ok = id == kVictim ? WIFSIGNALED(status) : (WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (!ok) ++failures;
        shm::Value v = results.get("worker" + std::to_string(id), shm::Value(std::int64_t(0)));
        std::printf("  worker %d: %s, %lld rounds recorded\n", id,
                    id == kVictim ? "killed" : (ok ? "finished" : "FAILED"), static_cast<long long>(v.as_int()));
    }
    for (int id = 0; id < kWorkers; ++id)
        if (id != kVictim && std::filesystem::exists(shm::segment_path(scratch_name(id)))) {
            std::printf("  FAILED: worker %d's scratch segment outlived it\n", id);
            ++failures;
        }
    std::printf(failures ? "worker pool: FAILED\n" : "worker pool: OK: the finished workers cleaned up after "
                                                       "themselves, the killed one was cleaned up after\n");
    return failures ? 1 : 0;
}
