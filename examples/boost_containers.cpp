// boost_containers: a boost::container::map in a libshm segment, kept
// whole across processes killed in the middle of changing it.
//
// shm::allocator (shm/allocator.hpp) gives Boost's containers the segment's
// heap, which is crash-safe: an allocation or free interrupted by SIGKILL is
// rolled back. The map itself is not: a process killed while the map
// rebalances its tree leaves it torn, and nothing in the map says so. This
// program shows the repair pattern of docs/boost-interprocess.md: the map
// is kept twice, each change is made to one copy and then to the other, and
// a word says which copy is being changed. Whoever takes the shm::Mutex
// from a dead owner (previous_owner_died()) rebuilds the torn copy from the
// intact one.
//
// Workers count words into the map; the parent kills them at random
// moments, 50 times. At the end both copies agree, and each word's count is
// exactly the number of completed steps that added it.
//
// Set SHM_DIR to use another directory than /dev/shm.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <thread>

#include <boost/container/map.hpp>
#include <boost/container/string.hpp>

#include <shm/allocator.hpp>
#include <shm/shm.hpp>

namespace {

namespace bc = boost::container;
using String = bc::basic_string<char, std::char_traits<char>, shm::allocator<char>>;
using Counts = bc::map<String, std::uint64_t, std::less<String>,
                       shm::allocator<std::pair<const String, std::uint64_t>>>;

const char* const kWords[] = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"};
constexpr std::uint64_t kWordCount = sizeof kWords / sizeof kWords[0];

// The guarded data, twice. `state` is steps << 2 | phase: phase 1 while
// copy 0 is being changed, 2 while copy 1 is, 0 between steps. The last
// store of a step sets the new step count and phase 0 at once.
struct Mirrored {
    shm::Mutex lock;
    std::atomic<std::uint64_t> state{0};
    std::uint64_t repairs = 0;
    Counts copy[2];
    explicit Mirrored(const shm::allocator<char>& a) : copy{Counts(a), Counts(a)} {}

    // For the holder of `lock` that found its previous owner dead.
    void repair() {
        const std::uint64_t s = state.load(), phase = s & 3, steps = s >> 2;
        if (phase == 0) return;  // it died between steps: both copies are whole
        // The torn copy cannot be trusted, not even to be freed: build a new
        // one over it from the intact copy (the torn one's blocks stay
        // allocated, a leak the heap's verify() does not mind).
        const int torn = phase == 1 ? 0 : 1;
        ::new (&copy[torn]) Counts(copy[1 - torn]);
        ++repairs;
        // Copy 1 torn means copy 0 had finished the step: it counts.
        state.store((phase == 2 ? steps + 1 : steps) << 2);
    }

    // Apply f to each copy in turn; the caller holds `lock`.
    template <class F>
    void update(F f) {
        const std::uint64_t steps = state.load() >> 2;
        state.store(steps << 2 | 1);
        f(copy[0]);
        state.store(steps << 2 | 2);
        f(copy[1]);
        state.store((steps + 1) << 2);
    }
};

// Step n adds one to the count of word n % kWordCount.
void step(Counts& c, std::uint64_t n, const shm::allocator<char>& a) {
    String w(kWords[n % kWordCount], a);
    auto it = c.find(w);
    if (it != c.end())
        ++it->second;
    else
        c.emplace(w, 1);
}

int work(shm::Segment& seg, Mirrored& m) {
    shm::allocator<char> a(seg);
    for (int i = 0; i < 1'000'000; ++i) {  // bounded; the parent kills it long before
        std::lock_guard<shm::Mutex> g(m.lock);
        if (m.lock.previous_owner_died()) m.repair();
        const std::uint64_t n = m.state.load() >> 2;
        m.update([&](Counts& c) { step(c, n, a); });
    }
    return 0;
}

}  // namespace

int main() {
    const std::string name = "boost-containers-" + std::to_string(::getpid());
    auto seg = shm::Segment::create(name, 16 << 20);
    Mirrored& m = seg.construct<Mirrored>("counts", shm::allocator<char>(seg));

    std::mt19937 rng(std::random_device{}());
    std::uniform_int_distribution<int> delay_us(100, 5000);
    for (int k = 0; k < 50; ++k) {
        std::fflush(nullptr);
        pid_t pid = ::fork();
        if (pid < 0) return 1;
        if (pid == 0) {
            ::prctl(PR_SET_PDEATHSIG, SIGKILL);
            ::_exit(work(seg, m));
        }
        std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
    }

    std::lock_guard<shm::Mutex> g(m.lock);
    if (m.lock.previous_owner_died()) m.repair();
    const std::uint64_t steps = m.state.load() >> 2;
    bool ok = m.copy[0] == m.copy[1];
    std::printf("%llu steps by 50 killed workers; %llu lock recoveries, %llu torn copies rebuilt\n",
                static_cast<unsigned long long>(steps), static_cast<unsigned long long>(m.lock.recoveries()),
                static_cast<unsigned long long>(m.repairs));
    for (std::uint64_t w = 0; w < kWordCount; ++w) {
        // Steps w, w + kWordCount, ... below `steps` added this word.
        const std::uint64_t want = steps > w ? (steps - w + kWordCount - 1) / kWordCount : 0;
        auto it = m.copy[0].find(String(kWords[w], shm::allocator<char>(seg)));
        const std::uint64_t got = it != m.copy[0].end() ? it->second : 0;
        std::printf("  %-8s %llu\n", kWords[w], static_cast<unsigned long long>(got));
        ok = ok && got == want;
    }
    shm::HeapReport r = seg.verify();
    std::printf("heap: %s; copies %s\n", r.ok ? "sound" : "CORRUPT", ok ? "agree and add up" : "DO NOT ADD UP");
    return r.ok && ok ? 0 : 1;
}
