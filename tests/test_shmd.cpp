// shmd: the real daemon on a private socket and shm directory. Reclamation
// after SIGKILL of clients, restarts under queue traffic, quotas, peer
// credentials, bad input, readiness notification, and the library's
// SHM_DAEMON modes.
#include <fcntl.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/un.h>

#include <cstring>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>
#include <shm/shm.hpp>

#include "client/daemon_client.hpp"
#include "client/daemon_protocol.hpp"
#include "platform/platform.hpp"
#include "daemon.hpp"
#include "process.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using nlohmann::json;

namespace {

constexpr std::size_t kSize = 256 * 1024;

using test::Daemon;
using test::Ready;

// A raw protocol connection (what a hostile or buggy client could send).
struct Raw {
    int fd = -1;
    explicit Raw(const std::string& path) {
        fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strcpy(a.sun_path, path.c_str());
        timeval tv{5, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    }
    ~Raw() { ::close(fd); }
    json ask(const std::string& m) {
        REQUIRE(::send(fd, m.data(), m.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(m.size()));
        return next();
    }
    json next() {
        std::string buf(1 << 18, '\0');
        ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
        if (n <= 0) return json();  // closed
        return json::parse(buf.substr(0, static_cast<std::size_t>(n)));
    }
    bool closed_by_peer() {
        char c;
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 5000) <= 0) return false;
        return ::recv(fd, &c, 1, MSG_DONTWAIT) == 0;
    }
};

std::string hello() {
    return json{{"v", 1}, {"op", "hello"}, {"start_time", shm::platform::self_start_time()},
                {"shm_dir", std::filesystem::weakly_canonical(shm::shm_directory()).string()}}
        .dump();
}

}  // namespace



TEST_CASE("shmd: a client registers, and status counts it", "[shmd]") {
    test::ShmDir dir;
    Daemon d(dir.path());
    auto s = shm::Segment::create("reg", kSize);
    REQUIRE(shm::daemon_client::connected());
    json st = d.status();
    CHECK(st["ok"] == true);
    CHECK(st["clients"] == 1);
    CHECK(st["segments"] == 1);
    CHECK(st["bytes"].get<std::uint64_t>() == kSize);
    CHECK(d.tracked() == std::set<std::string>{"reg"});
    s.detach();
    CHECK_FALSE(dir.has("reg"));
    CHECK(test::eventually([&] { return d.tracked().empty(); }, 10s));
}

TEST_CASE("shmd: reclaims the segments of SIGKILLed clients at once", "[shmd][crash]") {
    test::ShmDir dir;
    Daemon d(dir.path());
    // One segment we keep attached: killed clients' slots in it must be
    // cleared, and it must never be removed while we use it.
    shm::SegmentOptions so;
    so.max_attach = 256;
    auto shared = shm::Segment::create("shared", kSize, so);
    constexpr int kRounds = 120;
    int reclaimed = 0;
    for (int round = 0; round < kRounds; ++round) {
        std::string own = "own" + std::to_string(round);
        Ready ready;
        pid_t child = test::spawn([&] {
            auto a = shm::Segment::create(own, kSize);
            auto b = shm::Segment::open("shared");
            ready.signal();
            // Keep working (attach, detach, allocate) until killed.
            for (int i = 0;; ++i) {
                auto t = shm::Segment::open_or_create(own + "-tmp", kSize);
                void* p = a.allocate(64);
                a.deallocate(p);
                if (i % 2) t.detach();
            }
            return 0;
        });
        REQUIRE(ready.wait());
        std::this_thread::sleep_for(std::chrono::microseconds(test::rng()() % 3000));
        test::kill_and_reap(child);
        bool gone = test::eventually([&] { return !dir.has(own) && !dir.has(own + "-tmp"); }, 10s);
        INFO("round " << round << "\n" << d.log_text());
        REQUIRE(gone);
        REQUIRE(dir.has("shared"));
        ++reclaimed;
    }
    CHECK(reclaimed == kRounds);
    // Every dead slot in the shared segment is cleared: only ours is left.
    CHECK(test::eventually([&] {
        auto at = shared.attachments();
        return at.size() == 1 && at[0].self;
    }, 10s));
    json st = d.status();
    CHECK(st["reclaims"].get<std::uint64_t>() >= static_cast<std::uint64_t>(kRounds));
}

TEST_CASE("shmd: a segment of a process that never registered is reclaimed too", "[shmd]") {
    test::ShmDir dir;
    Ready ready;
    // Created with no daemon and SHM_DAEMON=off: the daemon learns of it from
    // the header when it starts.
    ::setenv("SHM_DAEMON", "off", 1);
    pid_t child = test::spawn([&] {
        auto a = shm::Segment::create("early", kSize);
        ready.signal();
        ::pause();
        return 0;
    });
    ::unsetenv("SHM_DAEMON");
    REQUIRE(ready.wait());
    Daemon d(dir.path());
    CHECK(d.tracked() == std::set<std::string>{"early"});
    test::kill_and_reap(child);
    CHECK(test::eventually([&] { return !dir.has("early"); }, 10s));
}

TEST_CASE("shmd: a forked child keeps the segment alive and is watched", "[shmd]") {
    test::ShmDir dir;
    Daemon d(dir.path());
    Ready ready, child_ready;
    pid_t parent = test::spawn([&] {
        auto a = shm::Segment::create("forked", kSize);
        pid_t kid = test::spawn([&] {
            // The child has its own slot (taken at fork) and connects on its own.
            auto b = shm::Segment::open("forked");
            child_ready.signal();
            ::pause();
            return 0;
        });
        (void)kid;
        ready.signal();
        ::pause();
        return 0;
    });
    REQUIRE(ready.wait());
    REQUIRE(child_ready.wait());
    test::kill_and_reap(parent);  // the child dies with it (PDEATHSIG), a moment later
    CHECK(test::eventually([&] { return !dir.has("forked"); }, 10s));
}

TEST_CASE("shmd: a client that attaches while the daemon is down connects when it is back", "[shmd]") {
    test::ShmDir dir;
    Daemon d(dir.path());
    auto seg = shm::Segment::create("late", kSize);  // this process knows the daemon now
    REQUIRE(shm::daemon_client::connected());
    d.stop(SIGKILL);
    Ready attached, restarted;
    pid_t child = test::spawn([&] {
        // The child's first connection fails: nobody listens.
        auto s = shm::Segment::open("late");
        bool early = shm::daemon_client::connected();
        attached.signal();
        if (!restarted.wait(120s)) return 2;
        if (early) return 4;
        // No further attach or detach: the client itself must try again.
        return test::eventually([] { return shm::daemon_client::connected(); }, 60s) ? 0 : 3;
    });
    REQUIRE(attached.wait());
    d.start();
    restarted.signal();
    test::Exit e = test::wait_for(child, 120s);
    INFO(d.log_text());
    CHECK(e.exited);
    CHECK(e.code == 0);  // 3: never reconnected, 4: connected to a stopped daemon
}

// A process's first attach starts its watcher thread. A child forked while
// that thread was still starting copied the allocator's state mid-change
// (under AddressSanitizer, whose allocator fork() does not guard) and hung
// in its first allocations: about one fork in ten here, now none.
TEST_CASE("shmd: a child forked right after its parent's first attach does not hang", "[shmd]") {
    test::ShmDir dir;
    Daemon d(dir.path());
    auto seg = shm::Segment::create("forked", kSize);
    for (int round = 0; round < 100; ++round) {
        pid_t parent = test::spawn([] {
            auto s = shm::Segment::open("forked");  // this process's first attach
            pid_t child = test::spawn([] {
                std::vector<std::string> churn;  // enough frees to need fresh allocator state
                for (int k = 0; k < 20000; ++k) {
                    churn.emplace_back(100 + k % 300, 'x');
                    if (churn.size() > 64) churn.clear();
                }
                auto again = shm::Segment::open("forked");
                return 0;
            });
            test::Exit e = test::wait_for(child, 60s);
            return e.exited && e.code == 0 ? 0 : 1;
        });
        test::Exit e = test::wait_for(parent, 120s);
        INFO("round " << round << " (1: the forked child hung or failed)");
        REQUIRE(e.exited);
        REQUIRE(e.code == 0);
    }
}

TEST_CASE("shmd: restarts under queue traffic lose no item and leak no segment", "[shmd][crash]") {
    test::ShmDir dir;
    Daemon d(dir.path());
    constexpr int kProducers = 2;
    constexpr std::uint64_t kLast = std::uint64_t(1) << 31;  // marks a producer's final item: its count
    // Persistent while the clients come and go; the test drops that at the end.
    shm::SegmentOptions so;
    so.persistent = true;
    auto seg = shm::Segment::create("traffic", 4 << 20, so);
    shm::QueueOptions qo;
    qo.capacity = 1024;
    qo.max_item_size = 64;
    shm::Queue q = shm::Queue::create(seg, "q", qo);
    shm::Event& stop = seg.find_or_construct<shm::Event>("stop");
    auto& got = seg.find_or_construct<std::atomic<std::uint64_t>>("got", 0);  // items the consumer took
    // Each client waits (bounded) until it is connected to the daemon again.
    auto reconnected = [] {
        return test::eventually([] { return shm::daemon_client::connected(); }, 60s);
    };
    std::vector<pid_t> producers;
    for (int p = 0; p < kProducers; ++p)
        producers.push_back(test::spawn([p, &reconnected] {
            auto s = shm::Segment::open("traffic");
            auto q = shm::Queue::open(s, "q");
            shm::Event& stop = *s.find<shm::Event>("stop");
            std::uint64_t i = 0;
            for (; !stop.is_set() && i < kLast; ++i) {
                std::uint64_t v = (std::uint64_t(p) << 32) | i;
                q.put(std::string_view(reinterpret_cast<const char*>(&v), sizeof v));
            }
            std::uint64_t v = (std::uint64_t(p) << 32) | kLast | i;
            q.put(std::string_view(reinterpret_cast<const char*>(&v), sizeof v));
            return reconnected() ? 0 : 3;
        }));
    pid_t consumer = test::spawn([&] {
        auto s = shm::Segment::open("traffic");
        auto q = shm::Queue::open(s, "q");
        auto& taken = *s.find<std::atomic<std::uint64_t>>("got");
        std::vector<std::uint64_t> next(kProducers, 0);
        for (int finished = 0; finished < kProducers;) {
            std::string item = q.get();
            std::uint64_t v;
            std::memcpy(&v, item.data(), sizeof v);
            int p = static_cast<int>(v >> 32);
            std::uint64_t i = v & 0xffffffffu;
            if (p >= kProducers) return 4;
            if (i & kLast) {
                if ((i & ~kLast) != next[p]) return 5;  // an item was lost
                ++finished;
                continue;
            }
            if (i != next[p]) return 6;  // lost, repeated or out of order
            ++next[p];
            taken.fetch_add(1);
        }
        return reconnected() ? 0 : 3;
    });
    // Restart the daemon twice while items flow: gracefully, then killed.
    // "Flow" is counted: a few hundred more items got before each step,
    // however slowly a busy machine runs them.
    auto flowed = [&] {
        const std::uint64_t from = got.load();
        REQUIRE(test::eventually([&] { return got.load() >= from + 300; }, 120s));
    };
    flowed();
    d.stop(SIGTERM);
    flowed();
    d.start();
    flowed();
    d.stop(SIGKILL);
    d.start();
    flowed();
    stop.set();
    std::vector<test::Exit> exits;
    for (pid_t p : producers) exits.push_back(test::wait_for(p, 120s));
    exits.push_back(test::wait_for(consumer, 120s));
    {
        INFO(d.log_text());
        for (const test::Exit& e : exits) {
            CHECK(e.exited);
            CHECK(e.code == 0);  // 3: not reconnected, 4-6: an item lost, repeated or out of order
        }
    }
    CHECK(q.qsize() == 0);
    // The restarted daemon knows the segment from its header: once it is no
    // longer persistent and its last user is killed, it is reclaimed.
    seg.set_persistent(false);
    Ready ready;
    pid_t last = test::spawn([&] {
        auto s = shm::Segment::open("traffic");
        ready.signal();
        ::pause();
        return 0;
    });
    REQUIRE(ready.wait());
    { shm::Queue drop = std::move(q); }  // the queue handle holds the attachment too
    seg.detach();
    REQUIRE(dir.has("traffic"));
    test::kill_and_reap(last);
    INFO(d.log_text());
    CHECK(test::eventually([&] { return !dir.has("traffic"); }, 10s));
    CHECK(dir.files().empty());
}

TEST_CASE("shmd: quotas refuse a create before any file is made", "[shmd]") {
    test::ShmDir dir;
    REQUIRE(::chmod(dir.path().c_str(), 01777) == 0);
    SECTION("per-user limit") {
        Daemon d(dir.path(), {"--user-quota", "1M"});
        pid_t child = test::spawn([] {
            if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 2;
            auto a = shm::Segment::create("q1", 512 * 1024);  // fits
            try {
                auto b = shm::Segment::create("q2", 768 * 1024);  // 1.25 MiB in all: refused
                return 3;
            } catch (const shm::out_of_space& e) {
                std::string m = e.what();
                if (m.find("per-user limit of 1.0 MiB") == std::string::npos) {
                    std::fprintf(stderr, "message: %s\n", e.what());
                    return 4;
                }
            }
            if (std::filesystem::exists(shm::segment_path("q2"))) return 5;
            a.detach();
            auto c = shm::Segment::create("q3", 768 * 1024);  // fits again
            return 0;
        });
        test::require_exit_ok(child);
        // Root is not limited by the per-user quota.
        auto big = shm::Segment::create("root-big", 2 << 20);
    }
    SECTION("reserve of the filesystem") {
        // A filesystem of its own: the shared /dev/shm's free space moves
        // with whatever else runs (another test suite, say) between the
        // measure below and the create it decides.
        struct Tmpfs {
            std::string path;
            bool mounted;
            explicit Tmpfs(std::string p) : path(std::move(p)) {
                mounted = ::mount("tmpfs", path.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=96m,mode=0700") == 0;
            }
            ~Tmpfs() {
                if (mounted) ::umount2(path.c_str(), MNT_DETACH);
            }
        } fs(dir.path());
        if (!fs.mounted) {
            WARN("cannot mount a private tmpfs (" << std::strerror(errno) << "): the reserve is not tested");
            return;
        }
        struct statvfs vs;
        REQUIRE(::statvfs(dir.path().c_str(), &vs) == 0);
        std::uint64_t avail = std::uint64_t(vs.f_bavail) * vs.f_frsize;
        REQUIRE(avail > (64u << 20));
        std::uint64_t keep = avail - (2u << 20);  // leaves room for about 2 MiB
        Daemon d(dir.path(), {"--reserve", std::to_string(keep)});
        auto small = shm::Segment::create("fits", 256 * 1024);
        try {
            auto big = shm::Segment::create("too-big", 8 << 20);
            FAIL("a create that eats into the reserve was allowed");
        } catch (const shm::out_of_space& e) {
            CHECK_THAT(e.what(), Catch::Contains("kept free (shmd --reserve)"));
        }
        CHECK_FALSE(dir.has("too-big"));
    }
}

TEST_CASE("shmd: another user can neither detach nor remove root's segments", "[shmd]") {
    test::ShmDir dir;
    REQUIRE(::chmod(dir.path().c_str(), 0755) == 0);
    Daemon d(dir.path());
    auto mine = shm::Segment::create("roots", kSize);
    std::string sock = d.socket();
    pid_t child = test::spawn([&] {
        if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 2;
        Raw r(sock);
        json h = r.ask(hello());
        if (h["ok"] != true) return 3;
        json rm = r.ask(R"({"v":1,"op":"remove","segment":"roots","force":true})");
        if (rm["ok"] != false || rm["error"] != "unauthorised") return 4;
        json det = r.ask(R"({"v":1,"op":"detach","segment":"roots","pid":1})");
        if (det["ok"] != false || det["error"] != "unauthorised") return 5;
        json att = r.ask(R"({"v":1,"op":"attach","segment":"roots"})");
        if (att["ok"] != false || att["error"] != "unauthorised") return 6;
        // Speaking for another process: a start time that is not ours.
        Raw r2(sock);
        json fake = r2.ask(json{{"v", 1}, {"op", "hello"}, {"start_time", 1},
                                {"shm_dir", std::filesystem::weakly_canonical(shm::shm_directory()).string()}}
                               .dump());
        if (fake["ok"] != false || fake["error"] != "unauthorised") return 7;
        return 0;
    });
    test::Exit e = test::wait_for(child);
    INFO(d.log_text());
    REQUIRE(e.exited);
    if (e.code == 2) {
        WARN("skipped: cannot switch to uid 65534 here");
        return;
    }
    CHECK(e.code == 0);
    CHECK(dir.has("roots"));
    auto live = mine.attachments();
    live.erase(std::remove_if(live.begin(), live.end(), [](const shm::AttachInfo& a) { return !a.alive; }),
               live.end());
    CHECK(live.size() == 1);  // ours (the forked child's slot died with it)
    CHECK(d.tracked().count("roots") == 1);
    // Root (the owner) may remove it through the daemon; not while in use without force.
    Raw r(d.socket());
    json busy = r.ask(R"({"v":1,"op":"remove","segment":"roots"})");
    CHECK(busy["error"] == "in_use");
    json gone = r.ask(R"({"v":1,"op":"remove","segment":"roots","force":true})");
    CHECK(gone["ok"] == true);
    CHECK_FALSE(dir.has("roots"));
}

TEST_CASE("shmd: bad requests get an error, the connection closes, others are served", "[shmd]") {
    test::ShmDir dir;
    // Reservations that outlive the test: the limit below is a count, however
    // slowly the 1024 requests go (a sanitizer build takes more than the
    // default 10 s).
    Daemon d(dir.path(), {"--reservation-life", "1h"});
    Raw good(d.socket());
    {
        Raw r(d.socket());
        json e = r.ask("this is not json");
        CHECK(e["error"] == "malformed");
        CHECK(r.closed_by_peer());
    }
    {
        Raw r(d.socket());
        std::string big(shm::proto::kMaxMessage + 100, ' ');
        json e = r.ask(big);
        CHECK(e["error"] == "malformed");
        CHECK(r.closed_by_peer());
    }
    {
        Raw r(d.socket());
        json e = r.ask(R"({"v":1,"op":"attach","segment":"../etc/passwd"})");
        CHECK(e["error"] == "malformed");
    }
    {
        Raw r(d.socket());
        json e = r.ask(R"({"v":1,"op":"attach","segment":"x"})");
        CHECK(e["error"] == "malformed");  // before hello
        json u = r.ask(R"({"v":1,"op":"frobnicate","id":7})");
        CHECK(u["error"] == "unknown_op");
        CHECK(u["id"] == 7);
    }
    {
        Raw r(d.socket());
        json e = r.ask(R"({"v":2,"op":"status"})");
        CHECK(e["error"] == "unsupported_version");
    }
    {
        // Asking to create without ever creating is bounded per user.
        Raw r(d.socket());
        REQUIRE(r.ask(hello())["ok"] == true);
        json last;
        int asked = 0;
        for (; asked < 2000; ++asked) {
            last = r.ask(json{{"v", 1}, {"op", "reserve"}, {"segment", "n" + std::to_string(asked)}, {"bytes", 4096}}.dump());
            if (last["ok"] != true) break;
        }
        CHECK(last["error"] == "limit");
        CHECK(asked == 1024);
    }
    json st = good.ask(R"({"v":1,"op":"status","id":1})");
    CHECK(st["ok"] == true);
    CHECK(st["id"] == 1);
    CHECK(st["refused"].get<int>() >= 5);
}

TEST_CASE("shmd: READY=1 at start and STOPPING=1 on SIGTERM, through NOTIFY_SOCKET", "[shmd]") {
    test::ShmDir dir;
    std::string path = "/tmp/shmd-test-notify." + std::to_string(::getpid()) + ".sock";
    ::unlink(path.c_str());
    int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path.c_str());
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    auto next = [&] {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 20000) <= 0) return std::string();
        char buf[4096];
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
    };
    {
        // WATCHDOG_USEC as systemd sets it for WatchdogSec=: pings every half of it.
        ::setenv("WATCHDOG_USEC", "200000", 1);
        Daemon d(dir.path(), {}, path);
        ::unsetenv("WATCHDOG_USEC");
        std::string ready = next();
        CHECK_THAT(ready, Catch::Contains("READY=1"));
        CHECK_THAT(ready, Catch::Contains("MAINPID=" + std::to_string(d.pid())));
        CHECK(next() == "WATCHDOG=1");
        CHECK(next() == "WATCHDOG=1");
        CHECK(d.stop(SIGTERM) == 0);
        std::string last;
        for (std::string m = next(); !m.empty(); m = next()) {
            last = m;
            if (m.find("STOPPING=1") != std::string::npos) break;
        }
        CHECK_THAT(last, Catch::Contains("STOPPING=1"));
    }
    ::close(fd);
    ::unlink(path.c_str());
}

TEST_CASE("shmd: SHM_DAEMON=required fails without a daemon, off never connects", "[shmd]") {
    test::ShmDir dir;
    ::setenv("SHM_DAEMON_SOCKET", "/tmp/shmd-test-nobody-listens-here.sock", 1);
    pid_t req = test::spawn([] {
        ::setenv("SHM_DAEMON", "required", 1);
        try {
            auto s = shm::Segment::create("req", kSize);
            return 3;
        } catch (const shm::error& e) {
            if (std::string(e.what()).find("SHM_DAEMON=required") == std::string::npos) return 4;
        }
        return std::filesystem::exists(shm::segment_path("req")) ? 5 : 0;
    });
    test::require_exit_ok(req);
    pid_t autom = test::spawn([] {
        auto s = shm::Segment::create("auto", kSize);  // works without a daemon
        return shm::daemon_client::connected() ? 3 : 0;
    });
    test::require_exit_ok(autom);
    {
        Daemon d(dir.path());
        pid_t off = test::spawn([] {
            ::setenv("SHM_DAEMON", "off", 1);
            auto s = shm::Segment::create("off", kSize);
            return shm::daemon_client::connected() ? 3 : 0;
        });
        test::require_exit_ok(off);
        pid_t bad = test::spawn([] {
            ::setenv("SHM_DAEMON", "sometimes", 1);
            try {
                auto s = shm::Segment::create("bad", kSize);
            } catch (const shm::error& e) {
                return std::string(e.what()).find("auto, required or off") != std::string::npos ? 0 : 4;
            }
            return 3;
        });
        test::require_exit_ok(bad);
    }
    ::unsetenv("SHM_DAEMON_SOCKET");
}

TEST_CASE("shmd: keeps serving while clients send thousands of bad requests", "[shmd][fuzz]") {
    test::ShmDir dir;
    Daemon d(dir.path());
    auto seg = shm::Segment::create("keep", kSize);
    const std::vector<std::string> seeds = {
        hello(), R"({"v":1,"op":"attach","segment":"keep"})", R"({"v":1,"op":"reserve","segment":"a","bytes":1})",
        R"({"v":1,"op":"remove","segment":"keep"})", R"({"v":1,"op":"list","after":"k"})"};
    std::mt19937_64 r(test::rng()());
    int sent = 0;
    for (int conn = 0; conn < 100; ++conn) {
        Raw raw(d.socket());
        for (int i = 0; i < 30; ++i) {
            std::string m = seeds[r() % seeds.size()];
            for (int k = static_cast<int>(r() % 4); k > 0 && !m.empty(); --k) m[r() % m.size()] = static_cast<char>(r());
            if (r() % 10 == 0) m.assign(r() % 64, static_cast<char>(r()));
            if (m.empty()) m = " ";
            if (::send(raw.fd, m.data(), m.size(), MSG_NOSIGNAL) < 0) break;  // closed on us: fine
            ++sent;
            if (raw.next().is_null()) break;
        }
    }
    INFO(sent << " messages sent");
    json st = d.status();
    CHECK(st["ok"] == true);
    CHECK(dir.has("keep"));  // a mutated remove never removes a segment in use
    CHECK(d.tracked().count("keep") == 1);
    // A well-behaved client is still served.
    pid_t child = test::spawn([] {
        auto s = shm::Segment::create("after", kSize);
        return shm::daemon_client::connected() ? 0 : 3;
    });
    test::require_exit_ok(child);
    CHECK(test::eventually([&] { return !dir.has("after"); }, 10s));
}

TEST_CASE("shmd: the periodic sweep reclaims what nobody reported, foreign files only when asked", "[shmd]") {
    test::ShmDir dir;
    auto leak = [&](const std::string& name) {
        // A process that opted out of the daemon dies with a segment.
        Ready ready;
        pid_t child = test::spawn([&] {
            ::setenv("SHM_DAEMON", "off", 1);
            auto s = shm::Segment::create(name, kSize);
            ready.signal();
            ::pause();
            return 0;
        });
        REQUIRE(ready.wait());
        test::kill_and_reap(child);
    };
    auto foreign = [&](const std::string& name) {
        std::string path = dir.path() + "/" + name;
        { std::ofstream f(path); f << "left by someone else"; }
        REQUIRE(std::filesystem::exists(path));
    };
    SECTION("libshm segments") {
        Daemon d(dir.path(), {"--sweep-interval", "300ms"});
        leak("unreported");
        foreign("psm_kept");
        CHECK(test::eventually([&] { return !dir.has("unreported"); }, 10s));
        // Two more sweeps, counted (not slept for: a busy machine delays them).
        const int sweeps = d.status()["sweeps"].get<int>();
        CHECK(sweeps >= 1);
        CHECK(test::eventually([&] {
            if (d.status()["sweeps"].get<int>() >= sweeps + 2) return true;
            std::this_thread::sleep_for(10ms);  // asking less often than the test kit's poll
            return false;
        }, 60s));
        CHECK(std::filesystem::exists(dir.path() + "/psm_kept"));
    }
    SECTION("foreign files with --reclaim-foreign") {
        Daemon d(dir.path(), {"--sweep-interval", "300ms", "--reclaim-foreign", "--foreign-min-age", "0"});
        foreign("psm_leaked");
        CHECK(test::eventually([&] { return !std::filesystem::exists(dir.path() + "/psm_leaked"); }, 10s));
        // (the line is written right after the unlink)
        CHECK(test::eventually([&] { return d.log_text().find("sweep reclaimed file 'psm_leaked'") != std::string::npos; },
                               10s));
    }
}

TEST_CASE("shmd: options from a config file, and clear errors for bad ones", "[shmd]") {
    test::ShmDir dir;
    std::string conf = dir.path() + "-shmd.conf";
    {
        std::ofstream f(conf);
        f << "# shmd settings\nreserve = \"5%\"\nuser-quota = \"64M\"\nsweep-interval = \"10s\"\n";
    }
    {
        Daemon d(dir.path(), {"--config", conf});
        json st = d.status();
        CHECK(st["reserve"] == "5%");
        CHECK(st["user_quota"] == 64u << 20);
        CHECK(st["sweep_interval_s"] == 10.0);
    }
    std::filesystem::remove(conf);
    auto run = [&](std::vector<std::string> args, std::string socket = "/tmp/shmd-test-bad.sock") {
        std::string cmd = std::string(SHMD_PATH) + " --no-notify --socket " + socket;
        if (std::find(args.begin(), args.end(), "--config") == args.end()) cmd += " --config /dev/null";
        for (auto& a : args) cmd += " '" + a + "'";
        cmd += " 2>&1";
        std::string out;
        FILE* p = ::popen(cmd.c_str(), "r");
        char buf[512];
        while (std::fgets(buf, sizeof buf, p)) out += buf;
        int st = ::pclose(p);
        return std::make_pair(WEXITSTATUS(st), out);
    };
    auto [c1, o1] = run({"--reserve", "lots"});
    CHECK(c1 == 2);
    CHECK_THAT(o1, Catch::Contains("--reserve: 'lots' is neither a percentage"));
    auto [c2, o2] = run({"--sweep-interval", "soon"});
    CHECK(c2 == 2);
    CHECK_THAT(o2, Catch::Contains("is not a duration"));
    auto [c3, o3] = run({"--user-quota", "12X"});
    CHECK(c3 == 2);
    auto [c6, o6] = run({"--reservation-life", "0"});
    CHECK(c6 == 2);
    CHECK_THAT(o6, Catch::Contains("--reservation-life: '0' is not a positive duration"));
    auto [c4, o4] = run({"--config", "/nonexistent/shmd.conf"});
    CHECK(c4 != 0);
    // A second daemon on a socket in use refuses to start and says why.
    Daemon d(dir.path());
    auto [c5, o5] = run({"--shm-dir", dir.path()}, d.socket());
    CHECK(c5 == 1);
    CHECK_THAT(o5, Catch::Contains("another shmd is already listening"));
}
