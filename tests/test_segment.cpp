// Segments: header, errors, attach slots and liveness, lifetime, fork,
// racing creation, attach storms, crash during creation, out of space.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <optional>

#include <shm/admin.hpp>
#include <shm/shm.hpp>

#include "store/layout.hpp"
#include "support.hpp"
#include "platform/testing.hpp"

using namespace std::chrono_literals;
constexpr std::size_t kSize = 1 << 20;

namespace {
std::string read_file_bytes(const std::string& p, std::size_t n) {
    std::string s(n, '\0');
    std::ifstream f(p, std::ios::binary);
    f.read(&s[0], static_cast<std::streamsize>(n));
    return s;
}
template <class T>
T field_at(const std::string& bytes, std::size_t off) {
    T v;
    std::memcpy(&v, bytes.data() + off, sizeof v);
    return v;
}
}  // namespace

TEST_CASE("create writes a self-describing header", "[segment]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("hdr", kSize);
    REQUIRE(seg.created());
    REQUIRE(seg.size() == kSize);
    REQUIRE(seg.name() == "hdr");
    REQUIRE(seg.path() == dir.path() + "/libshm.hdr");

    struct stat st;
    REQUIRE(::stat(seg.path().c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(static_cast<std::size_t>(st.st_size) == kSize);
    // Space is reserved up front: every byte is allocated in the tmpfs.
    CHECK(static_cast<std::size_t>(st.st_blocks) * 512 >= kSize);

    // Pin the on-disk layout by reading the raw file, not through the structs.
    std::string b = read_file_bytes(seg.path(), 4096);
    CHECK(field_at<std::uint64_t>(b, 0) == shm::layout::kMagic);
    CHECK(b.substr(0, 8) == "libshmv1");
    CHECK(field_at<std::uint32_t>(b, 8) == shm::kLayoutVersion);
    CHECK(field_at<std::uint32_t>(b, 12) == shm::layout::kReady);
    CHECK(field_at<std::uint64_t>(b, 16) == kSize);
    CHECK(field_at<std::uint64_t>(b, 40) == 4096);  // attach table
    CHECK(field_at<std::uint32_t>(b, 48) == 128);   // default max_attach
    CHECK(field_at<std::uint64_t>(b, 24) == shm::layout::heap_offset_for(128));
    CHECK(field_at<std::uint32_t>(b, 904) == 0);  // journal: nothing uncommitted
    CHECK(field_at<std::uint32_t>(b, 908) == shm::layout::kJournalCapacity);
    CHECK(field_at<std::uint64_t>(b, 912) == 4096 + 128 * 32);  // journal after the attach table
    CHECK(field_at<std::int32_t>(b, 56) == ::getpid());
    CHECK(field_at<std::uint32_t>(b, 60) == ::getuid());
    CHECK(field_at<std::uint64_t>(b, 64) != 0);  // creator start time
    CHECK(field_at<std::int64_t>(b, 72) > 0);    // creation time
    CHECK(std::string(b.data() + 80) == "hdr");

    auto att = seg.attachments();
    REQUIRE(att.size() == 1);
    CHECK(att[0].pid == ::getpid());
    CHECK(att[0].alive);
    CHECK(att[0].self);
    CHECK(att[0].start_time != 0);
}

TEST_CASE("mode is honoured", "[segment]") {
    test::ShmDir dir;
    shm::SegmentOptions o;
    o.mode = 0640;
    auto seg = shm::Segment::create("mode", kSize, o);
    struct stat st;
    REQUIRE(::stat(seg.path().c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0640);
}

TEST_CASE("open and errors", "[segment]") {
    test::ShmDir dir;
    SECTION("open of a missing segment") {
        REQUIRE_THROWS_AS(shm::Segment::open("nope"), shm::not_found);
        try {
            shm::Segment::open("nope");
        } catch (const shm::error& e) {
            CHECK(std::string(e.what()).find("'nope'") != std::string::npos);
            CHECK(e.code().value() == ENOENT);
        }
    }
    SECTION("create of a live name") {
        auto a = shm::Segment::create("taken", kSize);
        REQUIRE_THROWS_AS(shm::Segment::create("taken", kSize), shm::already_exists);
        auto b = shm::Segment::open("taken");
        CHECK_FALSE(b.created());
        CHECK(b.attachments().size() == 2);
    }
    SECTION("a file that is not a segment") {
        std::ofstream(dir.path() + "/libshm.junk") << std::string(8192, 'x');
        REQUIRE_THROWS_AS(shm::Segment::open("junk"), shm::not_a_segment);
        REQUIRE_THROWS_AS(shm::Segment::open_or_create("junk", kSize), shm::not_a_segment);
        REQUIRE_THROWS_AS(shm::Segment::create("junk", kSize), shm::not_a_segment);
        // Refused, never overwritten.
        CHECK(read_file_bytes(dir.path() + "/libshm.junk", 4) == "xxxx");
    }
    SECTION("a symlink is refused") {
        std::ofstream(dir.path() + "/target") << "data";
        REQUIRE(::symlink((dir.path() + "/target").c_str(), (dir.path() + "/libshm.link").c_str()) == 0);
        REQUIRE_THROWS_AS(shm::Segment::open("link"), shm::not_a_segment);
        REQUIRE_THROWS_AS(shm::Segment::open_or_create("link", kSize), shm::error);
    }
    SECTION("another layout version is refused with both versions named") {
        auto a = shm::Segment::create("ver", kSize);
        int fd = ::open(a.path().c_str(), O_RDWR);
        std::uint32_t v = 99;
        REQUIRE(::pwrite(fd, &v, 4, 8) == 4);
        ::close(fd);
        try {
            shm::Segment::open("ver");
            FAIL("opened a version-99 segment");
        } catch (const shm::version_mismatch& e) {
            CHECK(e.found() == 99);
            CHECK(e.expected() == shm::kLayoutVersion);
            CHECK(std::string(e.what()).find("version 99") != std::string::npos);
        }
        v = shm::kLayoutVersion;
        fd = ::open(a.path().c_str(), O_RDWR);
        REQUIRE(::pwrite(fd, &v, 4, 8) == 4);
        ::close(fd);
    }
    SECTION("sizes and options are validated") {
        REQUIRE_THROWS_AS(shm::Segment::create("small", 100), shm::error);
        shm::SegmentOptions o;
        o.max_attach = 0;
        REQUIRE_THROWS_AS(shm::Segment::create("zero", kSize, o), shm::error);
        CHECK(dir.files().empty());
    }
}

TEST_CASE("attach table full names its capacity", "[segment]") {
    test::ShmDir dir;
    shm::SegmentOptions o;
    o.max_attach = 2;
    auto a = shm::Segment::create("full", kSize, o);
    auto b = shm::Segment::open("full");  // each handle is its own attacher
    try {
        auto c = shm::Segment::open("full");
        FAIL("third attach succeeded");
    } catch (const shm::attach_table_full& e) {
        CHECK(std::string(e.what()).find("all 2 attach slots") != std::string::npos);
    }
    b.detach();
    REQUIRE_NOTHROW(shm::Segment::open("full"));
}

TEST_CASE("liveness comes from the kernel lock and not the pid", "[segment][liveness]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("live", kSize);
    auto* h = static_cast<shm::layout::Header*>(seg.base());
    shm::layout::AttachSlot* s = shm::layout::slots(h);
    // Forge a slot claiming a process that exists (our parent, and ourselves)
    // but whose lock nobody holds: a reused pid must be seen as dead.
    s[5].pid.store(::getppid());
    s[5].start_time.store(12345);
    s[6].pid.store(::getpid());
    s[6].start_time.store(shm::layout::kMagic);
    auto att = seg.attachments();
    REQUIRE(att.size() == 3);
    for (auto& a : att) {
        INFO("slot " << a.slot);
        CHECK(a.alive == (a.slot == 0));
    }
    auto r = seg.reap_dead();
    CHECK(r.dead_slots_cleared == 2);
    CHECK(r.live_slots == 1);
    CHECK(seg.attachments().size() == 1);
}

TEST_CASE("lifetime: last detach unlinks and persistent survives", "[segment][lifetime]") {
    test::ShmDir dir;
    SECTION("last detach unlinks") {
        auto a = shm::Segment::create("life", kSize);
        auto b = shm::Segment::open("life");
        a.detach();
        CHECK(dir.has("life"));
        b.detach();
        CHECK_FALSE(dir.has("life"));
        CHECK(dir.files().empty());
    }
    SECTION("persistent survives, unlink removes") {
        shm::SegmentOptions o;
        o.persistent = true;
        {
            auto a = shm::Segment::create("keep", kSize, o);
            a.construct<std::uint64_t>("answer", 42u);
        }
        REQUIRE(dir.has("keep"));
        {
            auto a = shm::Segment::open("keep");
            REQUIRE(a.persistent());
            REQUIRE(*a.find<std::uint64_t>("answer") == 42u);
            a.set_persistent(false);
        }
        CHECK_FALSE(dir.has("keep"));
    }
    SECTION("unlink with users attached: they keep working, the name is free") {
        auto a = shm::Segment::create("gone", kSize);
        auto& v = a.construct<int>("v", 7);
        REQUIRE(shm::Segment::unlink("gone"));
        CHECK_FALSE(dir.has("gone"));
        CHECK(v == 7);
        auto fresh = shm::Segment::create("gone", kSize);
        CHECK(fresh.find<int>("v") == nullptr);
        a.detach();  // must not unlink the new segment of the same name
        CHECK(dir.has("gone"));
        CHECK_FALSE(shm::Segment::unlink("never-was"));
    }
}

TEST_CASE("unlink_if_unused refuses a segment with live users under its lock", "[segment][lifetime]") {
    test::ShmDir dir;
    shm::SegmentOptions o;
    o.persistent = true;
    { auto s = shm::Segment::create("maybe", kSize, o); }
    auto user = shm::Segment::open("maybe");
    std::vector<std::int32_t> live;
    CHECK(shm::Segment::unlink_if_unused("maybe", &live));
    CHECK(live == std::vector<std::int32_t>{::getpid()});
    CHECK(dir.has("maybe"));
    user.detach();  // persistent: still there, unused now
    REQUIRE(dir.has("maybe"));
    CHECK(shm::Segment::unlink_if_unused("maybe", &live));
    CHECK(live.empty());
    CHECK_FALSE(dir.has("maybe"));
    CHECK_FALSE(shm::Segment::unlink_if_unused("maybe", &live));
}

TEST_CASE("a SIGKILLed attacher is reaped and the name reused", "[segment][lifetime][crash]") {
    test::ShmDir dir;
    SECTION("reap_dead after the only user died") {
        pid_t c = test::spawn([] {
            auto s = shm::Segment::create("orphan", kSize);
            s.construct<int>("x", 1);
            ::raise(SIGKILL);
            return 0;
        });
        auto e = test::wait_for(c);
        REQUIRE(e.signaled);
        REQUIRE(dir.has("orphan"));
        auto r = shm::Segment::reap_dead("orphan");
        CHECK(r.dead_slots_cleared == 1);
        CHECK(r.live_slots == 0);
        CHECK(r.unlinked);
        CHECK(r.bytes >= kSize);
        CHECK_FALSE(dir.has("orphan"));
    }
    SECTION("reap_dead keeps a segment with a live user") {
        auto keep = shm::Segment::create("shared", kSize);
        pid_t c = test::spawn([] {
            auto s = shm::Segment::open("shared");
            ::raise(SIGKILL);
            return 0;
        });
        REQUIRE(test::wait_for(c).signaled);
        auto r = shm::Segment::reap_dead("shared");
        // Two: the slot the child took for the handle it inherited from the
        // fork, and the one of its own open().
        CHECK(r.dead_slots_cleared == 2);
        CHECK(r.live_slots == 1);
        CHECK_FALSE(r.unlinked);
        CHECK(dir.has("shared"));
    }
    SECTION("create and open_or_create reuse a dead name at once") {
        for (int round = 0; round < 3; ++round) {
            pid_t c = test::spawn([] {
                auto s = shm::Segment::open_or_create("reuse", kSize);
                s.find_or_construct<int>("gen", 0) += 1;
                ::raise(SIGKILL);
                return 0;
            });
            REQUIRE(test::wait_for(c).signaled);
        }
        auto s = shm::Segment::create("reuse", kSize);
        CHECK(s.created());
        CHECK(s.find<int>("gen") == nullptr);  // a fresh segment, not the dead one's
        s.detach();
        pid_t c = test::spawn([] {
            auto s = shm::Segment::open_or_create("reuse", kSize);
            ::raise(SIGKILL);
            return 0;
        });
        REQUIRE(test::wait_for(c).signaled);
        REQUIRE_THROWS_AS(shm::Segment::open("reuse"), shm::not_found);  // reclaimed, not resurrected
        CHECK(dir.files().empty());
    }
}

TEST_CASE("a segment left marked dead but still linked does not block its name", "[segment][crash]") {
    test::ShmDir dir;
    {
        auto s = shm::Segment::create("limbo", kSize);
        s.set_persistent(true);
    }
    // A remover killed between marking the segment dead and unlinking it.
    {
        int fd = ::open((dir.path() + "/libshm.limbo").c_str(), O_RDWR);
        REQUIRE(fd >= 0);
        std::uint32_t dead = shm::layout::kDead;
        REQUIRE(::pwrite(fd, &dead, 4, 12) == 4);
        ::close(fd);
    }
    // Bounded, should open() wait on the dead one again; long enough that a
    // busy machine never turns the right answer into a time-out.
    shm::SegmentOptions quick;
    quick.timeout = 60s;
    REQUIRE_THROWS_AS(shm::Segment::open("limbo", quick), shm::not_found);
    CHECK_FALSE(dir.has("limbo"));
    {
        auto s = shm::Segment::create("limbo", kSize);
        s.set_persistent(true);
    }
    int fd = ::open((dir.path() + "/libshm.limbo").c_str(), O_RDWR);
    std::uint32_t dead = shm::layout::kDead;
    REQUIRE(::pwrite(fd, &dead, 4, 12) == 4);
    ::close(fd);
    auto s = shm::Segment::open_or_create("limbo", kSize, quick);
    CHECK(s.created());
}

TEST_CASE("fork: the child takes its own slot and never releases the parent's", "[segment][fork]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("forked", kSize);
    int& x = seg.construct<int>("x", 0);
    pid_t c = test::spawn([&] {
        auto att = seg.attachments();
        int mine = 0;
        for (auto& a : att)
            if (a.self && a.pid == ::getpid() && a.alive) ++mine;
        bool parent_alive = false;
        for (auto& a : att)
            if (a.pid == ::getppid() && a.alive && !a.self) parent_alive = true;
        x = 1;
        seg.detach();  // the child's detach must leave the parent attached
        return (mine == 1 && parent_alive) ? 0 : 1;
    });
    test::require_exit_ok(c);
    CHECK(x == 1);
    auto att = seg.attachments();
    REQUIRE(att.size() == 1);
    CHECK(att[0].pid == ::getpid());
    CHECK(att[0].self);
    // A child that dies without detaching leaves a dead slot, not ours.
    c = test::spawn([&] { ::raise(SIGKILL); return 0; });
    REQUIRE(test::wait_for(c).signaled);
    auto r = seg.reap_dead();
    CHECK(r.dead_slots_cleared == 1);
    CHECK(r.live_slots == 1);
    CHECK(dir.has("forked"));
}

TEST_CASE("racing open_or_create from 8 processes: exactly one creates", "[segment][race]") {
    test::ShmDir dir;
    for (int round = 0; round < 20; ++round) {
        std::string name = "race" + std::to_string(round);
        // A pipe gate so all 8 start together.
        int gate[2];
        REQUIRE(::pipe(gate) == 0);
        std::vector<pid_t> kids;
        for (int i = 0; i < 8; ++i)
            kids.push_back(test::spawn([&] {
                ::close(gate[1]);
                char c;
                if (::read(gate[0], &c, 1) < 0) return 3;
                auto s = shm::Segment::open_or_create(name, kSize);
                auto& m = s.find_or_construct<shm::Mutex>("m");
                auto& n = s.find_or_construct<int>("n", 0);
                auto& creators = s.find_or_construct<int>("creators", 0);
                {
                    std::lock_guard<shm::Mutex> g(m);
                    ++n;
                    if (s.created()) ++creators;
                }
                // Stay attached until all 8 have counted, so the segment
                // lives through the round.
                auto deadline = std::chrono::steady_clock::now() + 30s;
                for (;;) {
                    {
                        std::lock_guard<shm::Mutex> g(m);
                        if (n == 8) return creators == 1 ? 0 : 2;
                    }
                    if (std::chrono::steady_clock::now() > deadline) return 4;
                    std::this_thread::sleep_for(100us);
                }
            }));
        ::close(gate[0]);
        ::close(gate[1]);
        for (pid_t k : kids) test::require_exit_ok(k);
        CHECK_FALSE(dir.has(name));  // the last to detach unlinked it
    }
    CHECK(dir.files().empty());
}

namespace {
// How one attacher of a storm fared.
struct StormCount {
    int attached = 0;  // including the one that created it
    int created = 0;
    int table_full = 0;
    int timed_out = 0;
    int other = 0;       // any other error (printed by the child)
    int unreported = 0;  // the watchdog fired first
    int bad_exits = 0;
};

// `n` processes, released together, each attach to `name` once (open(), or
// open_or_create() when `create`) and report how. Those that attached stay
// attached until all `n` have reported, so the table stays full while the
// others try. The parent must not be attached itself (a fork child would
// take a slot for it).
StormCount attach_storm(const std::string& name, int n, bool create, const shm::SegmentOptions& opt) {
    int gate[2], report[2], release[2];
    REQUIRE(::pipe(gate) == 0);
    REQUIRE(::pipe(report) == 0);
    REQUIRE(::pipe(release) == 0);
    std::vector<pid_t> kids;
    for (int i = 0; i < n; ++i)
        kids.push_back(test::spawn([&] {
            ::close(gate[1]);
            ::close(report[0]);
            ::close(release[1]);
            // End of file once every child has closed its copy of the write
            // end, and the parent its own: all start together.
            char c;
            if (::read(gate[0], &c, 1) != 0) return 3;
            char out = 'e';
            std::optional<shm::Segment> s;
            try {
                if (create)
                    s.emplace(shm::Segment::open_or_create(name, kSize, opt));
                else
                    s.emplace(shm::Segment::open(name, opt));
                out = s->created() ? 'c' : 'a';
            } catch (const shm::attach_table_full&) {
                out = 'f';
            } catch (const shm::timeout& e) {
                out = 't';
                std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
            } catch (const std::exception& e) {
                std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
            }
            if (::write(report[1], &out, 1) != 1) return 4;
            if (s) (void)::read(release[0], &c, 1);  // until the parent closes it
            return 0;
        }));
    ::close(gate[0]);
    ::close(gate[1]);
    ::close(report[1]);
    ::close(release[0]);
    StormCount r;
    // A watchdog against a true hang only: the storm itself takes seconds.
    auto deadline = std::chrono::steady_clock::now() + 300s;
    int got = 0;
    while (got < n && std::chrono::steady_clock::now() < deadline) {
        pollfd p{report[0], POLLIN, 0};
        if (::poll(&p, 1, 1000) <= 0) continue;
        char buf[512];
        ssize_t k = ::read(report[0], buf, sizeof buf);
        if (k <= 0) break;  // every child gone
        for (ssize_t i = 0; i < k; ++i, ++got) switch (buf[i]) {
                case 'c': ++r.created; [[fallthrough]];
                case 'a': ++r.attached; break;
                case 'f': ++r.table_full; break;
                case 't': ++r.timed_out; break;
                default: ++r.other;
            }
    }
    r.unreported = n - got;
    ::close(report[0]);
    ::close(release[1]);
    for (pid_t k : kids) {
        if (r.unreported > 0) {
            test::kill_and_reap(k);
            continue;
        }
        test::Exit e = test::wait_for(k);
        if (!e.exited || e.code != 0) ++r.bad_exits;
    }
    return r;
}
}  // namespace

TEST_CASE("an attach storm on a ready segment: every excess attacher gets attach_table_full",
          "[segment][race][storm]") {
    // Reported: 200 processes opening a segment with 128 slots; most of
    // those left over waited the full time-out and got shm::timeout
    // ("waiting for another process to finish creating it"). Attaching to a
    // ready segment never counts against the time-out, so the default one
    // is kept: any time-out here is the bug, however slow the machine.
    test::ShmDir dir;
    auto [slots, n] = GENERATE(std::make_pair(128u, 400), std::make_pair(5u, 200));
    INFO(n << " attachers, " << slots << " slots");
    shm::SegmentOptions o;
    o.max_attach = slots;
    o.persistent = true;  // ready and unattached before the storm
    shm::Segment::create("storm", kSize, o).detach();
    StormCount r = attach_storm("storm", n, false, shm::SegmentOptions{});
    CHECK(r.unreported == 0);
    CHECK(r.timed_out == 0);
    CHECK(r.other == 0);
    CHECK(r.created == 0);
    CHECK(r.attached == static_cast<int>(slots));
    CHECK(r.table_full == n - static_cast<int>(slots));
    CHECK(r.bad_exits == 0);
    CHECK(shm::Segment::unlink("storm"));
    CHECK(dir.files().empty());
}

TEST_CASE("an open_or_create storm on a missing segment: one creates, the rest attach or get attach_table_full",
          "[segment][race][storm]") {
    test::ShmDir dir;
    auto [slots, n] = GENERATE(std::make_pair(128u, 300), std::make_pair(3u, 200));
    INFO(n << " attachers, " << slots << " slots");
    shm::SegmentOptions o;
    o.max_attach = slots;
    // Here the attachers do wait for a creator, which the time-out bounds;
    // the storm's crowd slows the creator down by a share of the CPUs, so
    // only a hang may fail the test: the watchdog's.
    o.timeout = std::chrono::minutes(30);
    StormCount r = attach_storm("storm", n, true, o);
    CHECK(r.unreported == 0);
    CHECK(r.timed_out == 0);
    CHECK(r.other == 0);
    CHECK(r.created == 1);
    CHECK(r.attached == static_cast<int>(slots));
    CHECK(r.table_full == n - static_cast<int>(slots));
    CHECK(r.bad_exits == 0);
    CHECK(dir.files().empty());  // the last to detach unlinked it
}

TEST_CASE("a creator killed during initialisation never blocks the name", "[segment][crash]") {
    test::ShmDir dir;
    // Crash points in creation: after the file is made, after truncation,
    // after reserving space, with the identity written, with the heap laid
    // out, with the slot taken (before ready).
    int crashed = 0;
    for (long n = 1; n <= 6; ++n) {
        INFO("crash point " << n);
        pid_t c = test::spawn([n] {
            shm::testing::kill_at_crash_point(n);
            auto s = shm::Segment::create("halfway", kSize);
            return 7;  // got through
        });
        auto e = test::wait_for(c);
        REQUIRE((e.signaled || (e.exited && e.code == 7)));
        if (!e.signaled) {
            // Finished: a complete but orphaned segment.
            CHECK_NOTHROW(shm::Segment::reap_dead("halfway"));
            continue;
        }
        ++crashed;
        REQUIRE(dir.has("halfway"));  // left behind, half-initialised
        // open() does not hang on it: it reports it (bounded wait).
        shm::SegmentOptions quick;
        quick.timeout = 300ms;
        REQUIRE_THROWS_AS(shm::Segment::open("halfway", quick), shm::error);
        // open_or_create replaces it.
        {
            auto s = shm::Segment::open_or_create("halfway", kSize);
            CHECK(s.created());
            auto& m = s.construct<shm::Mutex>("m");
            std::lock_guard<shm::Mutex> g(m);
            CHECK(s.verify().ok);
        }
        CHECK_FALSE(dir.has("halfway"));
    }
    CHECK(crashed == 6);
}

TEST_CASE("a header with its magic but not yet its version is half-initialised, not another layout",
          "[segment][crash]") {
    test::ShmDir dir;
    // What a creator killed (or read) between writing magic and version leaves.
    {
        std::ofstream f(shm::segment_path("halfmagic"), std::ios::binary);
        std::string zeros(kSize, '\0');
        const std::uint64_t magic = shm::layout::kMagic;
        std::memcpy(&zeros[0], &magic, sizeof magic);
        f.write(zeros.data(), static_cast<std::streamsize>(zeros.size()));
    }
    auto info = shm::admin::inspect_segment(shm::segment_path("halfmagic").string(), false);
    CHECK(info.status == shm::admin::SegmentStatus::uninitialised);
    CHECK(info.being_created);  // a second old at most: perhaps still being made
    std::this_thread::sleep_for(2100ms);  // "over a second", counted in whole seconds
    info = shm::admin::inspect_segment(shm::segment_path("halfmagic").string(), false);
    CHECK(info.status == shm::admin::SegmentStatus::uninitialised);
    CHECK_FALSE(info.being_created);
    // Reclaimed like any file a dead creator left half-made.
    shm::ReapReport r = shm::Segment::reap_dead("halfmagic");
    CHECK(r.unlinked);
    CHECK_FALSE(dir.has("halfmagic"));
}

TEST_CASE("space is reserved up front: too large for the tmpfs is a clear error", "[segment][space]") {
    if (::geteuid() != 0) {
        WARN("skipped: needs root to mount a small tmpfs in a private mount namespace");
        return;
    }
    char tmpl[] = "/tmp/libshm-space.XXXXXX";
    REQUIRE(::mkdtemp(tmpl));
    std::string mnt = tmpl;
    // The mount happens in a child with its own mount namespace, so nothing
    // outside the test ever sees it.
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    pid_t c = test::spawn([&]() -> int {
        ::close(fds[0]);
        auto say = [&](const std::string& s) { (void)!::write(fds[1], s.data(), s.size()); };
        if (::unshare(CLONE_NEWNS) != 0) {
            say(std::string("SKIP unshare: ") + std::strerror(errno));
            return 0;
        }
        if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
            ::mount("libshm-test", mnt.c_str(), "tmpfs", 0, "size=4m") != 0) {
            say(std::string("SKIP mount: ") + std::strerror(errno));
            return 0;
        }
        ::setenv("SHM_DIR", mnt.c_str(), 1);
        int rc = 0;
        try {
            shm::Segment::create("huge", 16 << 20);
            say("created a 16 MiB segment in a 4 MiB tmpfs");
            rc = 1;
        } catch (const shm::out_of_space& e) {
            say(e.what());
        }
        // Nothing left behind, and a segment that fits still works.
        for (auto& f : std::filesystem::directory_iterator(mnt)) {
            say(" LEFT:" + f.path().string());
            rc = 1;
        }
        try {
            auto ok = shm::Segment::create("fits", 1 << 20);
        } catch (const std::exception& e) {
            say(std::string(" small create failed: ") + e.what());
            rc = 1;
        }
        return rc;
    });
    ::close(fds[1]);
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) msg.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    auto e = test::wait_for(c);
    ::rmdir(mnt.c_str());
    if (msg.rfind("SKIP", 0) == 0) {
        WARN("skipped: " << msg);
        return;
    }
    INFO(msg);
    REQUIRE(e.exited);
    CHECK(e.code == 0);
    CHECK(msg.find("'huge'") != std::string::npos);
    CHECK(msg.find("16.0 MiB") != std::string::npos);
    CHECK(msg.find("free") != std::string::npos);
    CHECK(msg.find("shmctl gc") != std::string::npos);
}
