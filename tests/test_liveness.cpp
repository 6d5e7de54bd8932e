// Liveness on its own (core/liveness.hpp): a process's identity, whether it
// is alive, and identity records taken over from dead holders.
//
// Every wait is bounded by a generous cap against hangs; nothing asserts on
// how long something took.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>

#include "core/liveness.hpp"
#include "platform/platform.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shm::core::ProcessId;
namespace liveness = shm::core::liveness;
namespace identity = shm::core::identity;

namespace {

// Memory shared with forked children.
template <class T>
T* shared() {
    void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    return ::new (p) T();
}
template <class T>
void unshare(T* p) {
    p->~T();
    ::munmap(p, sizeof(T));
}

// A child that waits until killed; its pid once it runs.
pid_t sleeper() {
    return test::spawn([] {
        for (;;) ::pause();
        return 0;
    });
}

// The state letter of /proc/<pid>/stat (after the command name).
char proc_state(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto p = s.rfind(')');
    return p == std::string::npos || p + 2 >= s.size() ? '?' : s[p + 2];
}

constexpr auto kCap = 60s;  // against hangs only

}  // namespace

// ---- liveness -----------------------------------------------------------------

TEST_CASE("liveness: this process is alive and known by pid and start time", "[core][liveness]") {
    const ProcessId me = liveness::self();
    CHECK(me.pid == ::getpid());
    CHECK(me.start_time != 0);
    CHECK(liveness::of(::getpid()) == me);
    CHECK(liveness::alive(me));
    CHECK_FALSE(liveness::alive(ProcessId{}));
    CHECK(liveness::of(0).empty());
    CHECK(liveness::of(-1).empty());
}

TEST_CASE("liveness: a reused pid with another start time is dead", "[core][liveness]") {
    const ProcessId me = liveness::self();
    // The same pid, started at any other time: another process.
    CHECK_FALSE(liveness::alive(ProcessId{me.pid, me.start_time + 1}));
    CHECK_FALSE(liveness::alive(ProcessId{me.pid, me.start_time - 1}));
    // All 64 bits count: the same low 32 bits do not make it the same process.
    CHECK_FALSE(liveness::alive(ProcessId{me.pid, me.start_time + (std::uint64_t(1) << 32)}));
    CHECK_FALSE(liveness::alive(ProcessId{me.pid, 0}));
}

TEST_CASE("liveness: a child is alive, then dead as a zombie and once reaped", "[core][liveness]") {
    const pid_t pid = sleeper();
    const ProcessId child = liveness::of(pid);
    REQUIRE(child.pid == pid);
    CHECK(liveness::alive(child));
    CHECK(child != liveness::self());

    ::kill(pid, SIGKILL);
    // Wait for its exit without reaping it: a zombie.
    siginfo_t si{};
    REQUIRE(::waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED | WNOWAIT) == 0);
    CHECK(proc_state(pid) == 'Z');
    CHECK_FALSE(liveness::alive(child));
    CHECK(liveness::of(pid).empty());

    int st;
    REQUIRE(::waitpid(pid, &st, 0) == pid);
    CHECK_FALSE(liveness::alive(child));
    CHECK(liveness::of(pid).empty());
}

TEST_CASE("liveness: a slot lock answers while its holder lives", "[core][liveness]") {
    test::ShmDir dir;
    const std::string path = dir.path() + "/slots";
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(::ftruncate(fd, 64) == 0);
    auto* locked = shared<std::atomic<int>>();
    const pid_t pid = test::spawn([&] {
        const int own = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
        if (own < 0 || !shm::platform::ofd_try_lock(own, 5)) return 1;
        locked->store(1);
        for (;;) ::pause();
        return 0;
    });
    REQUIRE(test::eventually([&] { return locked->load() == 1; }, kCap));
    CHECK(liveness::holds_lock(fd, 5));
    CHECK_FALSE(liveness::holds_lock(fd, 6));
    test::kill_and_reap(pid);
    CHECK_FALSE(liveness::holds_lock(fd, 5));
    ::close(fd);
    unshare(locked);
}

TEST_CASE("liveness: an identity record is taken only from a holder that is gone", "[core][liveness]") {
    auto* r = shared<shm::core::IdentityRecord>();
    const ProcessId me = liveness::self();

    // Free: anyone takes it, and the record then names the taker, complete.
    identity::Holder h = identity::read(*r);
    CHECK(h.id.empty());
    CHECK_FALSE(identity::alive(*r));
    int pending_runs = 0;
    const std::uint64_t tag = identity::take(*r, h, me, [&] {
        // Ours, and not complete yet: what names the record sees a dead holder.
        CHECK(identity::read(*r).pending);
        CHECK_FALSE(identity::alive(*r));
        ++pending_runs;
    });
    CHECK(pending_runs == 1);
    REQUIRE(tag != 0);
    h = identity::read(*r);
    CHECK(h.tag == tag);
    CHECK(h.id == me);
    CHECK_FALSE(h.pending);
    CHECK(identity::alive(*r));
    // A live holder is never replaced, nor is a stale reading of the record taken.
    CHECK(identity::take(*r, h, me, [] {}) == 0);
    CHECK(identity::take(*r, identity::Holder{}, me, [] {}) == 0);

    // A child takes it from nobody, then dies: the record is free to take again,
    // with a new generation.
    r->tag.store(0);
    const pid_t pid = test::spawn([&] {
        return identity::take(*r, identity::read(*r), liveness::self(), [] {}) != 0 ? 0 : 1;
    });
    test::require_exit_ok(pid);
    h = identity::read(*r);
    CHECK(h.id.pid == pid);
    CHECK_FALSE(identity::alive(*r));
    const std::uint64_t again = identity::take(*r, h, me, [] {});
    REQUIRE(again != 0);
    CHECK((again >> identity::kGenerationShift) == (h.tag >> identity::kGenerationShift) + 1);
    CHECK(identity::read(*r).id == me);
    unshare(r);
}

TEST_CASE("liveness: a pending identity record is kept while its pid lives", "[core][liveness]") {
    auto* r = shared<shm::core::IdentityRecord>();
    const pid_t pid = sleeper();
    // As a taker leaves it between its stores: pending, with a start time
    // that is not yet its own.
    r->start_time.store(12345);
    r->tag.store(identity::kPending | static_cast<std::uint32_t>(pid));
    identity::Holder h = identity::read(*r);
    CHECK(h.pending);
    CHECK_FALSE(identity::alive(*r));  // nothing may name it yet
    CHECK(identity::take(*r, h, liveness::self(), [] {}) == 0);
    test::kill_and_reap(pid);
    CHECK(identity::take(*r, identity::read(*r), liveness::self(), [] {}) != 0);
    CHECK(identity::alive(*r));
    unshare(r);
}

TEST_CASE("liveness: a pending record naming the taker's own pid was left by a dead process", "[core][liveness]") {
    auto* r = shared<shm::core::IdentityRecord>();
    const ProcessId me = liveness::self();
    // A process that had this pid before died between its CAS and its last
    // store; takers are one at a time per process, so it is not a thread of ours.
    r->start_time.store(me.start_time - 1);
    r->tag.store(identity::kPending | static_cast<std::uint32_t>(me.pid));
    CHECK(identity::take(*r, identity::read(*r), me, [] {}) != 0);
    CHECK(identity::read(*r).id == me);
    CHECK(identity::alive(*r));
    unshare(r);
}
