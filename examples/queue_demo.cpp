// queue_demo: one producer, three consumers, one consumer killed half-way.
//
// Python's classic multiprocessing pattern (a producer puts jobs on a Queue,
// worker processes get them), across processes with shm::Queue. Half-way
// through, consumer 0 is SIGKILLed while it holds a job it has taken. The
// other consumers carry on; at the end every job is accounted for: handled
// by a live consumer, or the one the killed consumer had taken whole. No
// sentinel is needed: the producer closes the queue and the consumers drain
// it and stop.
//
// Also, a "crashed" helper process leaves a segment of its own behind on
// purpose, so that `./dev demo` can show `shmctl ls` and `shmctl gc` finding
// and reclaiming it.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <shm/shm.hpp>

using namespace std::chrono_literals;

namespace {

constexpr int kConsumers = 3;
constexpr int kJobs = 30000;
constexpr int kVictim = 0;

struct Tally {
    std::atomic<std::uint32_t> handled[kConsumers];  // jobs each consumer finished
    std::atomic<std::uint8_t> done[kJobs];           // 1 once a job is finished
    std::atomic<std::int32_t> victim_has_job{-1};    // the job the victim holds when killed
    Tally() {
        for (auto& h : handled) h = 0;
        for (auto& d : done) d = 0;
    }
};

pid_t spawn(const std::function<int()>& fn) {
    std::fflush(stdout);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid != 0) return pid;
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    int rc = 1;
    try {
        rc = fn();
    } catch (const std::exception& e) {
        std::printf("pid %d: error: %s\n", ::getpid(), e.what());
    }
    ::_exit(rc);
}

int run() {
    const std::string name = "demo-queue-" + std::to_string(::getpid());
    std::printf("libshm queue demo: 1 producer, %d consumers, %d jobs; consumer %d is killed half-way\n", kConsumers,
                kJobs, kVictim);
    shm::Segment seg = shm::Segment::create(name, 8 << 20);
    shm::QueueOptions opt;
    opt.capacity = 256;
    opt.max_item_size = 64;
    shm::Queue jobs = shm::Queue::create(seg, "jobs", opt);
    Tally& tally = seg.construct<Tally>("tally");

    std::vector<pid_t> consumers;
    for (int c = 0; c < kConsumers; ++c)
        consumers.push_back(spawn([&, c] {
            for (;;) {
                std::string job;
                try {
                    job = jobs.get();
                } catch (const shm::closed&) {
                    return 0;  // closed and drained: done
                }
                std::uint32_t id;
                std::memcpy(&id, job.data(), sizeof id);
                if (c == kVictim && id >= kJobs / 2) {
                    // Hold this job and wait to be killed.
                    tally.victim_has_job.store(static_cast<std::int32_t>(id));
                    for (;;) ::pause();
                }
                tally.done[id].store(1);
                tally.handled[c].fetch_add(1);
                jobs.task_done();
            }
        }));

    const pid_t producer = spawn([&] {
        for (std::uint32_t id = 0; id < kJobs; ++id) {
            std::string job(64, '\0');
            std::memcpy(&job[0], &id, sizeof id);
            jobs.put(job);
        }
        return 0;
    });

    // Kill the victim once it holds a job.
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (tally.victim_has_job.load() < 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(1ms);
    const std::int32_t lost_job = tally.victim_has_job.load();
    std::printf("parent: SIGKILL consumer %d (pid %d) while it holds job %d\n", kVictim, consumers[kVictim], lost_job);
    ::kill(consumers[kVictim], SIGKILL);

    int status = 0;
    ::waitpid(producer, &status, 0);
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    // Every job the live consumers took is done (the killed one's counts as
    // done), then close: the consumers drain and stop.
    jobs.join();
    jobs.close();
    for (int c = 0; c < kConsumers; ++c) {
        ::waitpid(consumers[c], &status, 0);
        if (c != kVictim) ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }

    int missing = 0, missing_other = 0;
    for (int id = 0; id < kJobs; ++id)
        if (!tally.done[id].load()) {
            ++missing;
            if (id != lost_job) ++missing_other;
        }
    std::printf("\nsummary:\n");
    for (int c = 0; c < kConsumers; ++c)
        std::printf("  consumer %d (pid %d): %5u jobs%s\n", c, consumers[c], tally.handled[c].load(),
                    c == kVictim ? ", then killed holding one" : "");
    std::printf("  jobs put: %d, handled: %d, not handled: %d (the killed consumer's job %d)\n", kJobs,
                kJobs - missing, missing, lost_job);
    if (missing_other == 0 && missing <= 1 && lost_job >= 0 && ok) {
        std::printf("  OK: nothing lost beyond the job the killed consumer had taken\n");
    } else {
        std::printf("  FAILED\n");
        ok = false;
    }
    // Drops seg's hold; `jobs` shares the attachment, which goes with it at
    // the end of run().
    seg.detach();

    // A helper that crashes while it has a segment of its own: the segment
    // is left behind for shmctl to find.
    const pid_t crasher = spawn([] {
        shm::Segment scratch = shm::Segment::create("demo-crashed-worker-" + std::to_string(::getpid()), 4 << 20);
        scratch.construct<shm::Mutex>("lock").lock();
        ::raise(SIGKILL);
        return 0;
    });
    ::waitpid(crasher, &status, 0);
    std::printf("parent: a helper (pid %d) was killed while it had a segment of its own; it is left behind\n",
                crasher);
    return ok ? 0 : 1;
}

}  // namespace

int main() {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    try {
        return run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "queue_demo: %s\n", e.what());
        return 1;
    }
}
