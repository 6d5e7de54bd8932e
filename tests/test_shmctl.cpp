// shmctl: the real binary run against a private shm directory. Listings and
// their JSON schema, gc and rm on live, dead and persistent segments, foreign
// files in every state, /proc parsing, another user's view, status and the
// ls marker with and without a daemon (shmd), and an end-to-end run in a
// private 64 MiB tmpfs filled by killed libshm and Python programs.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <spawn.h>

#include <cstring>
#include <fstream>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <shm/admin.hpp>
#include <shm/shm.hpp>

#include "admin/proc_scan.hpp"
#include "store/layout.hpp"
#ifdef SHMD_PATH
#include "daemon.hpp"
#endif
#include "process.hpp"
#include "support.hpp"
#include "watchdog.hpp"

using namespace std::chrono_literals;
using nlohmann::json;
namespace admin = shm::admin;

namespace {

constexpr std::size_t kSize = 1 << 20;

using test::describe;
using test::EnvVar;
using test::Run;
using test::run;

Run shmctl(std::vector<std::string> args) {
    args.insert(args.begin(), SHMCTL_PATH);
    return run(args);
}

Run shmctl_as_nobody(std::vector<std::string> args) {
    std::vector<std::string> a = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", SHMCTL_PATH};
    a.insert(a.end(), args.begin(), args.end());
    return run(a);
}

json parse(const Run& r) {
    INFO(describe(r));
    json j;
    REQUIRE_NOTHROW(j = json::parse(r.out));
    return j;
}

// The ls entry of a file, or null.
json file_of(const json& ls, const std::string& name) {
    for (const json& f : ls.at("files"))
        if (f.at("name") == name) return f;
    return json(nullptr);
}

json object_of(const json& stat, const std::string& name) {
    for (const json& o : stat.at("segment").at("objects"))
        if (o.at("name") == name) return o;
    return json(nullptr);
}

void write_file(const std::string& path, std::size_t bytes) {
    std::ofstream(path, std::ios::binary) << std::string(bytes, 'x');
}

void age_file(const std::string& path, std::chrono::seconds by) {
    timespec t[2];
    ::clock_gettime(CLOCK_REALTIME, &t[0]);
    t[0].tv_sec -= by.count();
    t[1] = t[0];
    REQUIRE(::utimensat(AT_FDCWD, path.c_str(), t, AT_SYMLINK_NOFOLLOW) == 0);
}

bool exists(const std::string& path) {
    struct stat st;
    return ::lstat(path.c_str(), &st) == 0;
}

// A child that holds `path` open (mapped = false) or only mapped (the
// descriptor closed after mmap), until killed. Returns once it holds it.
pid_t hold(const std::string& path, bool mapped, const char* comm = nullptr) {
    int ready[2];
    REQUIRE(::pipe(ready) == 0);
    pid_t c = test::spawn([&]() -> int {
        if (comm) ::prctl(PR_SET_NAME, comm);
        int fd = ::open(path.c_str(), O_RDWR);
        if (fd < 0) return 2;
        if (mapped) {
            void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (p == MAP_FAILED) return 3;
            ::close(fd);
        }
        (void)!::write(ready[1], "r", 1);
        for (;;) ::pause();
    });
    ::close(ready[1]);
    char b;
    REQUIRE(::read(ready[0], &b, 1) == 1);
    ::close(ready[0]);
    return c;
}

// A libshm segment whose only user was SIGKILLed.
void make_dead_segment(const std::string& name, bool hold_mutex = false) {
    pid_t c = test::spawn([&] {
        auto s = shm::Segment::create(name, kSize);
        auto& m = s.construct<shm::Mutex>("lock");
        auto a = shm::SharedArray<std::int32_t>::create(s, "array", 4);
        if (hold_mutex) {
            m.lock();
            a.get_lock().lock();
        }
        ::raise(SIGKILL);
        return 0;
    });
    REQUIRE(test::wait_for(c).signaled);
}

void poke_u32(const std::string& path, off_t off, std::uint32_t v) {
    int fd = ::open(path.c_str(), O_RDWR);
    REQUIRE(fd >= 0);
    REQUIRE(::pwrite(fd, &v, 4, off) == 4);
    ::close(fd);
}

bool is_root() { return ::geteuid() == 0; }

}  // namespace

TEST_CASE("shmctl: help, version and usage errors", "[shmctl]") {
    test::ShmDir dir;
    Run v = shmctl({"-V"});
    INFO(describe(v));
    CHECK(v.code == 0);
    CHECK(v.out.find(shm::version()) != std::string::npos);
    CHECK(v.out.find("layout version " + std::to_string(shm::kLayoutVersion)) != std::string::npos);
    for (const char* sub : {"ls", "stat", "df", "gc", "rm", "status"}) {
        Run h = shmctl({sub, "--help"});
        INFO(sub << ": " << describe(h));
        CHECK(h.code == 0);
        CHECK(h.out.find(sub) != std::string::npos);
    }
    CHECK(shmctl({"--help"}).out.find("Exit status") != std::string::npos);
    CHECK(shmctl({}).code == 2);
    CHECK(shmctl({"frobnicate"}).code == 2);
    CHECK(shmctl({"ls", "--no-such-flag"}).code == 2);
    CHECK(shmctl({"stat"}).code == 2);
    CHECK(shmctl({"rm"}).code == 2);
    Run bad = shmctl({"gc", "--min-age", "soon"});
    CHECK(bad.code == 2);
    CHECK(bad.err.find("duration") != std::string::npos);
}

TEST_CASE("shmctl ls, stat and df on live, dead and persistent segments", "[shmctl]") {
    test::ShmDir dir;
    make_dead_segment("dead", true);
    pid_t keeper = test::spawn([] {
        shm::SegmentOptions o;
        o.persistent = true;
        auto s = shm::Segment::create("keep", kSize, o);
        return 0;
    });
    test::require_exit_ok(keeper);
    auto live = shm::Segment::create("live", kSize);
    auto& lock = live.construct<shm::Mutex>("lock");
    live.construct<shm::Semaphore>("items", 3u);
    live.construct<shm::BoundedSemaphore>("slots", 2u);
    live.construct<shm::Event>("ready").set();
    live.construct<shm::Barrier>("step", 3u);
    live.construct<shm::Condition>("cv");
    auto& rlock = live.construct<shm::RecursiveMutex>("rlock");
    live.construct<std::uint64_t>("answer", 42u);
    auto jobs = shm::Dict::open_or_create(live, "jobs");
    jobs.set("a", shm::Value(std::int64_t(1)));
    jobs.set("b", shm::Value(std::int64_t(2)));
    auto log = shm::List::open_or_create(live, "log");
    for (int i = 0; i < 5; ++i) log.append(shm::Value(std::int64_t(i)));
    shm::QueueOptions qo;
    qo.capacity = 16;
    qo.max_item_size = 64;
    auto q = shm::Queue::create(live, "jobs/queue", qo);
    for (int i = 0; i < 3; ++i) q.put("job" + std::to_string(i));
    (void)q.get();
    const std::uint64_t queue_bytes = q.bytes_used();  // (also frees what the get released)
    REQUIRE(queue_bytes == 16);                         // two 4-byte items, 8 bytes each
    auto weights = shm::SharedArray<double>::create(live, "weights", 1000);
    shm::SharedScalar<std::int32_t>::create(live, "count", 7, false);
    lock.lock();
    weights.get_lock().lock();
    rlock.lock();
    rlock.lock();

    SECTION("ls --json") {
        json ls = parse(shmctl({"ls", "--json"}));
        CHECK(ls.at("schema_version") == 1);
        CHECK(ls.at("dir") == dir.path());
        REQUIRE(ls.at("files").size() == 3);
        for (const json& f : ls.at("files"))
            for (const char* k : {"name", "path", "kind", "state", "note", "size", "allocated", "uid", "owner",
                                  "mode", "mtime", "age_seconds", "users", "segment"})
                CHECK(f.contains(k));
        json l = file_of(ls, "libshm.live");
        CHECK(l.at("kind") == "libshm");
        CHECK(l.at("state") == "in_use");
        CHECK(l.at("mode") == "0600");
        CHECK(l.at("allocated").get<std::uint64_t>() >= kSize);
        REQUIRE(l.at("users").size() == 1);
        CHECK(l.at("users")[0].at("pid") == ::getpid());
        CHECK(l.at("users")[0].at("attached") == true);
        CHECK(l.at("segment").at("status") == "ok");
        CHECK(l.at("segment").at("live_attachers") == 1);
        json d = file_of(ls, "libshm.dead");
        CHECK(d.at("state") == "leaked");
        CHECK(d.at("users").empty());
        CHECK(d.at("segment").at("dead_attachers") == 1);
        json k = file_of(ls, "libshm.keep");
        CHECK(k.at("state") == "persistent");
        CHECK(k.at("segment").at("persistent") == true);
    }
    SECTION("ls, human") {
        Run r = shmctl({"ls"});
        INFO(describe(r));
        REQUIRE(r.code == 0);
        CHECK(r.out.rfind("NAME", 0) == 0);
        CHECK(r.out.find("libshm.live") != std::string::npos);
        CHECK(r.out.find("in use") != std::string::npos);
        CHECK(r.out.find("leaked") != std::string::npos);
        CHECK(r.out.find("persistent") != std::string::npos);
        CHECK(r.out.find(std::to_string(::getpid())) != std::string::npos);
        Run nh = shmctl({"ls", "--noheadings", "-b"});
        CHECK(nh.out.find("NAME") == std::string::npos);
        CHECK(nh.out.find(std::to_string(kSize)) != std::string::npos);
    }
    SECTION("stat of a live segment shows every object's state") {
        json st = parse(shmctl({"stat", "live", "--json"}));
        CHECK(st.at("schema_version") == 1);
        CHECK(st.at("file").at("name") == "libshm.live");
        json s = st.at("segment");
        CHECK(s.at("name") == "live");
        CHECK(s.at("status") == "ok");
        CHECK(s.at("layout_version") == shm::kLayoutVersion);
        CHECK(s.at("total_size") == kSize);
        CHECK(s.at("heap_used").get<std::uint64_t>() > 0);
        CHECK(s.at("heap_free").get<std::uint64_t>() + s.at("heap_used").get<std::uint64_t>() ==
              s.at("heap_size").get<std::uint64_t>());
        CHECK(s.at("max_attach") == 128);
        CHECK(s.at("persistent") == false);
        CHECK(s.at("creator").at("pid") == ::getpid());
        CHECK(s.at("creator").at("alive") == true);
        CHECK(s.at("created_at").get<std::int64_t>() > 0);
        REQUIRE(s.at("attachments").size() == 1);
        CHECK(s.at("attachments")[0].at("pid") == ::getpid());
        CHECK(s.at("attachments")[0].at("alive") == true);
        CHECK(s.at("objects_read") == true);
        CHECK(s.at("directory_busy") == false);
        REQUIRE(s.at("objects").size() == 13);
        CHECK(s.at("objects")[0].at("name") == "lock");  // in creation order
        json m = object_of(st, "lock");
        CHECK(m.at("kind") == "mutex");
        CHECK(m.at("state").at("held") == true);
        CHECK(m.at("state").at("owner_pid") == ::getpid());
        CHECK(m.at("state").at("owner_alive") == true);
        CHECK(m.at("state").at("owner_died") == false);
        json r = object_of(st, "rlock");
        CHECK(r.at("kind") == "recursive_mutex");
        CHECK(r.at("state").at("depth") == 2);
        CHECK(object_of(st, "items").at("state").at("value") == 3);
        CHECK(object_of(st, "items").at("state").at("waiters") == 0);
        CHECK(object_of(st, "slots").at("kind") == "bounded_semaphore");
        CHECK(object_of(st, "slots").at("state").at("bound") == 2);
        CHECK(object_of(st, "ready").at("state").at("is_set") == true);
        json b = object_of(st, "step");
        CHECK(b.at("state").at("parties") == 3);
        CHECK(b.at("state").at("n_waiting") == 0);
        CHECK(b.at("state").at("broken") == false);
        CHECK(object_of(st, "cv").at("state").at("waiters") == 0);
        CHECK(object_of(st, "answer").at("kind") == "raw");
        CHECK(object_of(st, "answer").at("size") == 8);
        CHECK(object_of(st, "jobs").at("kind") == "dict");
        CHECK(object_of(st, "jobs").at("state").at("length") == 2);
        CHECK(object_of(st, "log").at("kind") == "list");
        CHECK(object_of(st, "log").at("state").at("length") == 5);
        json qs = object_of(st, "jobs/queue");
        CHECK(qs.at("kind") == "queue");
        CHECK(qs.at("state").at("depth") == 2);
        CHECK(qs.at("state").at("capacity") == 16);
        CHECK(qs.at("state").at("max_item_size") == 64);
        CHECK(qs.at("state").at("max_bytes") == 16 * 64);
        CHECK(qs.at("state").at("bytes_used") == queue_bytes);
        CHECK(qs.at("state").at("closed") == false);
        CHECK(qs.at("state").at("repairs") == 0);
        json w = object_of(st, "weights");
        CHECK(w.at("kind") == "shared_array");
        CHECK(w.at("state").at("element_type") == "c_double");
        CHECK(w.at("state").at("typecode") == "d");
        CHECK(w.at("state").at("element_size") == 8);
        CHECK(w.at("state").at("length") == 1000);
        CHECK(w.at("state").at("has_lock") == true);
        CHECK(w.at("state").at("held") == true);
        CHECK(w.at("state").at("owner_pid") == ::getpid());
        CHECK(w.at("state").at("owner_alive") == true);
        json c = object_of(st, "count");
        CHECK(c.at("kind") == "shared_scalar");
        CHECK(c.at("state").at("element_type") == "c_int");
        CHECK(c.at("state").at("typecode") == "i");
        CHECK(c.at("state").at("length") == 1);
        CHECK(c.at("state").at("has_lock") == false);
        CHECK_FALSE(c.at("state").contains("held"));

        Run h = shmctl({"stat", "libshm.live"});
        INFO(describe(h));
        CHECK(h.code == 0);
        CHECK(h.out.find("held by pid " + std::to_string(::getpid())) != std::string::npos);
        CHECK(h.out.find("value 3") != std::string::npos);
        CHECK(h.out.find("0 of 3 parties waiting") != std::string::npos);
        CHECK(h.out.find("1 alive, 0 dead") != std::string::npos);
        CHECK(h.out.find("2 keys") != std::string::npos);
        CHECK(h.out.find("5 items") != std::string::npos);
        CHECK(h.out.find("2 of 16 items") != std::string::npos);
        CHECK(h.out.find("1000 × c_double ('d'), lock held by pid " + std::to_string(::getpid())) != std::string::npos);
        CHECK(h.out.find("c_int ('i'), no lock") != std::string::npos);
    }
    SECTION("stat of a dead segment: its Mutex's owner died holding it") {
        json st = parse(shmctl({"stat", "dead", "--json"}));
        json s = st.at("segment");
        CHECK(s.at("creator").at("alive") == false);
        REQUIRE(s.at("attachments").size() == 1);
        CHECK(s.at("attachments")[0].at("alive") == false);
        json m = object_of(st, "lock");
        CHECK(m.at("state").at("owner_died") == true);
        CHECK(m.at("state").at("held") == false);
        CHECK(m.at("state").at("owner_pid") == s.at("creator").at("pid"));
        json a = object_of(st, "array");
        CHECK(a.at("kind") == "shared_array");
        CHECK(a.at("state").at("owner_died") == true);
        CHECK(a.at("state").at("held") == false);
        CHECK(a.at("state").at("owner_pid") == s.at("creator").at("pid"));
        Run h = shmctl({"stat", "dead"});
        CHECK(h.out.find("died holding it") != std::string::npos);
        CHECK(h.out.find("4 × c_int ('i'), lock free; its owner (pid") != std::string::npos);
        CHECK(h.out.find("0 alive, 1 dead") != std::string::npos);
    }
    SECTION("stat of nothing") {
        Run r = shmctl({"stat", "nope"});
        CHECK(r.code == 1);
        CHECK(r.err.find("no segment or file 'nope'") != std::string::npos);
    }
    SECTION("df") {
        json df = parse(shmctl({"df", "--json"}));
        CHECK(df.at("schema_version") == 1);
        CHECK(df.at("filesystem").at("size").get<std::uint64_t>() > 0);
        CHECK(df.at("filesystem").contains("used"));
        CHECK(df.at("filesystem").contains("free"));
        CHECK(df.at("libshm").at("in_use").at("files") == 1);
        CHECK(df.at("libshm").at("leaked").at("files") == 1);
        CHECK(df.at("libshm").at("persistent").at("files") == 1);
        CHECK(df.at("libshm").at("unknown").at("files") == 0);
        CHECK(df.at("libshm").at("leaked").at("bytes").get<std::uint64_t>() >= kSize);
        for (const char* k : {"in_use", "leaked", "unknown"}) CHECK(df.at("foreign").at(k).at("files") == 0);
        CHECK(df.contains("unlisted_bytes"));
        Run h = shmctl({"df"});
        CHECK(h.code == 0);
        CHECK(h.out.find("libshm leaked") != std::string::npos);
        CHECK(h.out.find("`shmctl gc` frees") != std::string::npos);
    }
    rlock.unlock();
    rlock.unlock();
    lock.unlock();
}

TEST_CASE("shmctl gc reaps dead attachers and reclaims only dead segments, and --dry-run changes nothing", "[shmctl]") {
    test::ShmDir dir;
    auto live = shm::Segment::create("live", kSize);
    pid_t c = test::spawn([] {
        auto s = shm::Segment::open("live");
        ::raise(SIGKILL);
        return 0;
    });
    REQUIRE(test::wait_for(c).signaled);
    REQUIRE(live.attachments().size() == 3);  // ours, and two dead (see test_segment)
    make_dead_segment("dead");
    make_dead_segment("halfdead");
    // A process killed between marking a segment removed and unlinking it.
    poke_u32(dir.path() + "/libshm.halfdead", 12, shm::layout::kDead);
    make_dead_segment("future");
    poke_u32(dir.path() + "/libshm.future", 8, 99);  // another layout version
    pid_t keeper = test::spawn([] {
        shm::SegmentOptions o;
        o.persistent = true;
        auto s = shm::Segment::create("keep", kSize, o);
        return 0;
    });
    test::require_exit_ok(keeper);

    SECTION("another layout version is shown as such, never misread") {
        json ls = parse(shmctl({"ls", "--json"}));
        json f = file_of(ls, "libshm.future");
        CHECK(f.at("state") == "unknown");
        CHECK(f.at("segment").at("status") == "version_mismatch");
        CHECK(f.at("segment").at("layout_version") == 99);
        CHECK(f.at("note").get<std::string>().find("layout version 99") != std::string::npos);
        Run st = shmctl({"stat", "future"});
        CHECK(st.code == 1);
        CHECK(st.err.find("layout version 99") != std::string::npos);
        CHECK(file_of(ls, "libshm.halfdead").at("state") == "leaked");
    }
    SECTION("dry run, then the real thing") {
        auto before = dir.files();
        auto slots_before = live.attachments().size();
        Run dry = shmctl({"gc", "--dry-run", "--json"});
        json j = parse(dry);
        CHECK(dry.code == 0);
        CHECK(j.at("schema_version") == 1);
        CHECK(j.at("dry_run") == true);
        for (const char* k : {"actions", "files_reclaimed", "bytes_freed", "dead_slots_cleared", "failures",
                              "foreign_left", "min_age_seconds", "foreign", "dir"})
            CHECK(j.contains(k));
        std::map<std::string, std::string> outcome;
        for (const json& a : j.at("actions")) outcome[a.at("name")] = a.at("outcome");
        CHECK(outcome["libshm.dead"] == "reclaimed");
        CHECK(outcome["libshm.halfdead"] == "reclaimed");
        CHECK(outcome["libshm.live"] == "cleared");
        CHECK(outcome["libshm.future"] == "skipped");
        CHECK(outcome.count("libshm.keep") == 0);
        CHECK(j.at("files_reclaimed") == 2);
        CHECK(j.at("dead_slots_cleared") == 3);
        CHECK(j.at("bytes_freed").get<std::uint64_t>() >= 2 * kSize);
        CHECK(dir.files() == before);
        CHECK(live.attachments().size() == slots_before);
        Run dh = shmctl({"gc", "--dry-run"});
        CHECK(dh.out.find("would reclaim  libshm.dead") != std::string::npos);
        CHECK(dh.out.find("nothing was changed") != std::string::npos);
        CHECK(dir.files() == before);

        Run r = shmctl({"gc"});
        INFO(describe(r));
        CHECK(r.code == 0);
        CHECK(r.out.find("reclaimed  libshm.dead") != std::string::npos);
        CHECK(r.out.find("gc: reclaimed 2 files") != std::string::npos);
        CHECK(r.out.find("freed") != std::string::npos);
        CHECK(r.err.find("skipped libshm.future: layout version 99") != std::string::npos);
        CHECK_FALSE(dir.has("dead"));
        CHECK_FALSE(dir.has("halfdead"));
        CHECK(dir.has("live"));
        CHECK(dir.has("keep"));
        CHECK(dir.has("future"));
        CHECK(live.attachments().size() == 1);
        // A dead name is usable again at once.
        CHECK_NOTHROW(shm::Segment::create("halfdead", kSize));
        Run again = shmctl({"gc", "--json"});
        CHECK(parse(again).at("files_reclaimed") == 0);
    }
    poke_u32(dir.path() + "/libshm.future", 8, shm::kLayoutVersion);
}

TEST_CASE("shmctl rm refuses a live segment and names its users unless --force", "[shmctl]") {
    test::ShmDir dir;
    auto busy = shm::Segment::create("busy", kSize);
    auto& v = busy.construct<int>("v", 7);
    make_dead_segment("dead");
    write_file(dir.path() + "/psm_foreign", 4096);

    Run r = shmctl({"rm", "busy"});
    INFO(describe(r));
    CHECK(r.code == 1);
    CHECK(r.err.find("in use") != std::string::npos);
    CHECK(r.err.find("pid " + std::to_string(::getpid())) != std::string::npos);
    CHECK(dir.has("busy"));

    Run two = shmctl({"rm", "dead", "nosuch"});
    CHECK(two.code == 1);
    CHECK(two.out.find("removed segment 'dead'") != std::string::npos);
    CHECK(two.err.find("no segment 'nosuch'") != std::string::npos);
    CHECK_FALSE(dir.has("dead"));

    Run foreign = shmctl({"rm", "psm_foreign"});
    CHECK(foreign.code == 1);
    CHECK(exists(dir.path() + "/psm_foreign"));

    Run forced = shmctl({"rm", "--force", "libshm.busy"});
    INFO(describe(forced));
    CHECK(forced.code == 0);
    CHECK_FALSE(dir.has("busy"));
    CHECK(v == 7);  // still mapped here
    v = 8;
    CHECK(*busy.find<int>("v") == 8);
}

TEST_CASE("shmctl and foreign files: only the unused and old one is removed", "[shmctl][foreign]") {
    test::ShmDir dir;
    const std::string d = dir.path();
    write_file(d + "/psm_open", 8192);
    write_file(d + "/psm_mapped", 8192);
    write_file(d + "/sem.mp-old", 4096);
    write_file(d + "/torch_1_new", 4096);
    write_file(d + "/other_old", 4096);
    std::filesystem::create_directory(d + "/sub");
    write_file(d + "/sub/target", 4096);
    REQUIRE(::symlink((d + "/sub/target").c_str(), (d + "/psm_link").c_str()) == 0);
    for (const char* f : {"/psm_open", "/psm_mapped", "/sem.mp-old", "/other_old", "/sub/target", "/psm_link"})
        age_file(d + f, 1h);
    pid_t opener = hold(d + "/psm_open", false);
    pid_t mapper = hold(d + "/psm_mapped", true);

    json ls = parse(shmctl({"ls", "--all", "--json"}));
    CHECK(ls.at("files").size() == 5);  // regular files only: no symlink, no directory
    CHECK(file_of(ls, "psm_link").is_null());
    json o = file_of(ls, "psm_open");
    CHECK(o.at("kind") == "python");
    CHECK(o.at("state") == "in_use");
    REQUIRE(o.at("users").size() == 1);
    CHECK(o.at("users")[0].at("pid") == opener);
    CHECK(o.at("users")[0].at("open") == true);
    CHECK(o.at("users")[0].at("mapped") == false);
    json m = file_of(ls, "psm_mapped");
    CHECK(m.at("state") == "in_use");
    REQUIRE(m.at("users").size() == 1);
    CHECK(m.at("users")[0].at("pid") == mapper);
    CHECK(m.at("users")[0].at("mapped") == true);
    CHECK(m.at("users")[0].at("open") == false);
    CHECK(file_of(ls, "sem.mp-old").at("kind") == "python");
    CHECK(file_of(ls, "sem.mp-old").at("state") == "leaked");
    CHECK(file_of(ls, "sem.mp-old").at("age_seconds").get<long>() >= 3500);
    CHECK(file_of(ls, "torch_1_new").at("kind") == "pytorch");
    CHECK(file_of(ls, "torch_1_new").at("state") == "leaked");
    CHECK(file_of(ls, "other_old").at("kind") == "other");
    // Without --all: libshm segments and what looks leaked.
    json def = parse(shmctl({"ls", "--json"}));
    CHECK(def.at("files").size() == 3);
    CHECK(def.at("hidden") == 2);

    // Without --foreign nothing foreign is touched, and gc says what it left.
    Run plain = shmctl({"gc"});
    CHECK(plain.code == 0);
    CHECK(plain.out.find("3 foreign files") != std::string::npos);
    Run dry = shmctl({"gc", "--foreign", "--min-age", "1m", "--dry-run"});
    CHECK(dry.out.find("would reclaim  other_old") != std::string::npos);
    CHECK(dry.out.find("would reclaim  sem.mp-old") != std::string::npos);
    CHECK(dir.files().size() == 7);

    Run r = shmctl({"gc", "--foreign", "--min-age", "1m", "--json"});
    json j = parse(r);
    CHECK(r.code == 0);
    std::set<std::string> reclaimed;
    for (const json& a : j.at("actions"))
        if (a.at("outcome") == "reclaimed") reclaimed.insert(a.at("name"));
    CHECK(reclaimed == std::set<std::string>{"other_old", "sem.mp-old"});
    CHECK(j.at("bytes_freed").get<std::uint64_t>() >= 2 * 4096);
    CHECK(j.at("foreign_left").at("files") == 1);  // torch_1_new: too young
    CHECK_FALSE(exists(d + "/other_old"));
    CHECK_FALSE(exists(d + "/sem.mp-old"));
    for (const char* f : {"/psm_open", "/psm_mapped", "/torch_1_new", "/psm_link", "/sub/target"})
        CHECK(exists(d + f));

    test::kill_and_reap(opener);
    test::kill_and_reap(mapper);
    Run after = shmctl({"gc", "--foreign", "--min-age", "0"});
    INFO(describe(after));
    CHECK(after.code == 0);
    CHECK(after.out.find("gc: reclaimed 3 files") != std::string::npos);
    CHECK(exists(d + "/psm_link"));
    CHECK(exists(d + "/sub/target"));
}

TEST_CASE("/proc parsing: names with spaces and parentheses, deleted files", "[shmctl][proc]") {
    admin::ProcStat st;
    std::string line = "4242 (a b) (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
    REQUIRE(admin::parse_proc_stat(line, st));
    CHECK(st.pid == 4242);
    CHECK(st.comm == "a b) (c");
    CHECK(st.state == 'S');
    CHECK(st.ppid == 1);
    CHECK(st.flags == 4194560);
    CHECK(st.start_time == 987654);
    CHECK_FALSE(admin::parse_proc_stat("4242 (unterminated S 1", st));
    CHECK_FALSE(admin::parse_proc_stat("4242 (short) S 1 2 3", st));

    admin::MapsLine ml;
    REQUIRE(admin::parse_maps_line(
        "7f1c2b0d4000-7f1c2b0d5000 rw-s 00000000 00:1a 123456                     /dev/shm/psm_x (deleted)", ml));
    CHECK(ml.dev_major == 0);
    CHECK(ml.dev_minor == 0x1a);
    CHECK(ml.inode == 123456);
    CHECK(ml.path == "/dev/shm/psm_x");
    CHECK(ml.deleted);
    REQUIRE(admin::parse_maps_line("7ffd-7ffe r-xp 00000000 fd:101 42 /usr/lib/a b.so", ml));
    CHECK(ml.dev_major == 0xfd);
    CHECK(ml.dev_minor == 0x101);
    CHECK(ml.path == "/usr/lib/a b.so");
    CHECK_FALSE(ml.deleted);
    REQUIRE(admin::parse_maps_line("7ffd-7ffe rw-p 00000000 00:00 0", ml));
    CHECK(ml.inode == 0);
    CHECK(ml.path.empty());
    CHECK_FALSE(admin::parse_maps_line("garbage", ml));

    SECTION("a live process named with spaces and parentheses") {
        test::ShmDir dir;
        write_file(dir.path() + "/psm_named", 4096);
        pid_t c = hold(dir.path() + "/psm_named", false, "a b) (c");
        json ls = parse(shmctl({"ls", "--all", "--json"}));
        json f = file_of(ls, "psm_named");
        REQUIRE(f.at("users").size() == 1);
        CHECK(f.at("users")[0].at("pid") == c);
        CHECK(f.at("users")[0].at("comm") == "a b) (c");
        Run h = shmctl({"ls", "--all"});
        CHECK(h.out.find(std::to_string(c) + " a b) (c") != std::string::npos);
        test::kill_and_reap(c);
    }
    SECTION("deleted files are matched by inode, not by name") {
        test::ShmDir dir;
        const std::string p = dir.path() + "/psm_reused";
        write_file(p, 4096);
        pid_t c = hold(p, true);
        // The mapped file is unlinked and a new file takes its name: the
        // new one is unused although /proc/<pid>/maps shows its path.
        REQUIRE(::unlink(p.c_str()) == 0);
        write_file(p, 4096);
        json f = file_of(parse(shmctl({"ls", "--all", "--json"})), "psm_reused");
        CHECK(f.at("state") == "leaked");
        CHECK(f.at("users").empty());
        test::kill_and_reap(c);
    }
}

TEST_CASE("/proc scan: processes vanishing during the scan are skipped", "[shmctl][proc]") {
    test::ShmDir dir;
    const std::string p = dir.path() + "/psm_held";
    write_file(p, 4096);
    struct stat st;
    REQUIRE(::stat(p.c_str(), &st) == 0);
    pid_t holder = hold(p, true);
    // A child that keeps starting processes which map the file and exit.
    pid_t churn = test::spawn([&] {
        for (;;) {
            pid_t g = ::fork();
            if (g == 0) {
                int fd = ::open(p.c_str(), O_RDONLY);
                if (fd >= 0) ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, fd, 0);
                ::_exit(0);
            }
            if (g > 0) ::waitpid(g, nullptr, 0);
        }
        return 0;
    });
    // A number of scans, not a time: each one races the churn.
    constexpr int kScans = 30;
    int scans = 0;
    while (scans < kScans) {
        admin::ProcessScan s;
        REQUIRE_NOTHROW(s = admin::ProcessScan::run(st.st_dev));
        const auto* users = s.users(st.st_ino);
        REQUIRE(users);
        bool found = false;
        for (const admin::FileUse& u : *users)
            if (u.pid == holder) found = u.mapped;
        CHECK(found);
        ++scans;
    }
    test::kill_and_reap(churn);
    test::kill_and_reap(holder);
}

TEST_CASE("/proc scan: a process we may not inspect makes the files it could open unknown", "[shmctl][proc]") {
    admin::ProcessScan s;
    admin::HiddenProcess h;
    h.pid = 77;
    h.comm = "other";
    h.uids = {1000, 1000, 1000, 1000};
    h.gids = {1000, 1000, 1000, 1000, 27};
    s.hidden.push_back(h);
    CHECK(s.could_use(1000, 5, 0600).size() == 1);  // its own file
    CHECK(s.could_use(2000, 5, 0600).empty());      // another user's private file
    CHECK(s.could_use(2000, 27, 0640).size() == 1);  // its supplementary group may read
    CHECK(s.could_use(2000, 5, 0644).size() == 1);   // anyone may read
    s.hidden[0].privileged = true;
    CHECK(s.could_use(2000, 5, 0600).size() == 1);  // bypasses permissions
}

TEST_CASE("shmctl as another user: root's segments can be neither removed nor reclaimed", "[shmctl][permissions]") {
    if (!is_root()) {
        WARN("skipped: needs root to run shmctl as another user");
        return;
    }
    test::ShmDir dir;
    const std::string d = dir.path();
    REQUIRE(::chmod(d.c_str(), 01777) == 0);  // like /dev/shm
    auto live = shm::Segment::create("rootlive", kSize);
    make_dead_segment("rootdead");
    // Foreign files: nobody's own, unused and old (nobody may reclaim it),
    // and root's readable one, unused and old (nobody may not).
    write_file(d + "/psm_nobody", 4096);
    REQUIRE(::chown((d + "/psm_nobody").c_str(), 65534, 65534) == 0);
    write_file(d + "/psm_root", 4096);
    REQUIRE(::chmod((d + "/psm_root").c_str(), 0644) == 0);
    age_file(d + "/psm_nobody", 1h);
    age_file(d + "/psm_root", 1h);

    Run probe = shmctl_as_nobody({"-V"});
    if (probe.code != 0) {
        WARN("skipped: cannot run shmctl as uid 65534: " << describe(probe));
        return;
    }
    Run ls = shmctl_as_nobody({"ls", "--all", "--json"});
    INFO(describe(ls));
    REQUIRE(ls.code == 0);
    json j = parse(ls);
    json dead = file_of(j, "libshm.rootdead");
    CHECK(dead.at("owner") == "root");
    CHECK(dead.at("state") == "unknown");
    CHECK(dead.at("segment").at("status") == "unreadable");
    CHECK(dead.at("note").get<std::string>().find("Permission denied") != std::string::npos);
    CHECK(file_of(j, "libshm.rootlive").at("state") == "unknown");
    CHECK(file_of(j, "psm_nobody").at("state") == "leaked");
    CHECK(file_of(j, "psm_root").at("state") == "unknown");
    CHECK(shmctl_as_nobody({"ls", "--all"}).code == 0);
    CHECK(shmctl_as_nobody({"df"}).code == 0);

    Run rm = shmctl_as_nobody({"rm", "rootdead"});
    INFO(describe(rm));
    CHECK(rm.code == 1);
    CHECK(rm.err.find("Permission denied") != std::string::npos);
    CHECK(rm.err.find("uid 0") != std::string::npos);
    Run force = shmctl_as_nobody({"rm", "--force", "rootlive"});
    CHECK(force.code == 1);
    CHECK(force.err.find("Permission denied") != std::string::npos);

    Run st = shmctl_as_nobody({"stat", "rootdead"});
    CHECK(st.code == 1);
    CHECK(st.err.find("Permission denied") != std::string::npos);

    Run gc = shmctl_as_nobody({"gc", "--foreign", "--min-age", "1m"});
    INFO(describe(gc));
    CHECK(gc.code == 0);
    CHECK(gc.err.find("skipped libshm.rootdead") != std::string::npos);
    CHECK(gc.err.find("Permission denied") != std::string::npos);
    CHECK(gc.out.find("reclaimed  psm_nobody") != std::string::npos);
    CHECK(dir.has("rootdead"));
    CHECK(dir.has("rootlive"));
    CHECK(exists(d + "/psm_root"));
    CHECK_FALSE(exists(d + "/psm_nobody"));
    // Root reclaims its own.
    CHECK(shmctl({"gc"}).code == 0);
    CHECK_FALSE(dir.has("rootdead"));
}

// ---- end to end -----------------------------------------------------------------

namespace {

// A process of the end-to-end test, driven through its stdin and stdout.
struct Prog {
    pid_t pid = -1;  // also its process group
    int in = -1, out = -1;
    std::string buffered;

    // "ready ..." within the limit, or "".
    std::string line(std::chrono::milliseconds limit = 20s) { return test::read_line(out, buffered, limit); }
    std::string ask(const std::string& cmd) {
        std::string c = cmd + "\n";
        if (::write(in, c.data(), c.size()) != static_cast<ssize_t>(c.size())) return "";
        return line();
    }
    // SIGKILL the whole process group (Python's resource tracker included).
    void kill_group() {
        ::kill(-pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        ::close(in);
        ::close(out);
    }
};

// Start fn (or exec argv, if fn is empty) in a new process group with its
// stdin and stdout on pipes.
Prog start(const std::vector<std::string>& argv, const std::function<int(int, int)>& fn = {}) {
    Prog p;
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return p;
    std::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) {
        ::setpgid(0, 0);
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        ::close(in[1]);
        ::close(out[0]);
        if (fn) ::_exit(fn(in[0], out[1]));
        ::dup2(in[0], 0);
        ::dup2(out[1], 1);
        std::vector<char*> a;
        for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
        a.push_back(nullptr);
        ::execvp(a[0], a.data());
        ::_exit(127);
    }
    ::setpgid(pid, pid);
    ::close(in[0]);
    ::close(out[1]);
    p.pid = pid;
    p.in = in[1];
    p.out = out[0];
    return p;
}

void say(int fd, const std::string& s) { (void)!::write(fd, s.data(), s.size()); }

// A libshm program: creates `name`, says "ready", answers "check" with "ok"
// while its data is intact, until stdin closes or it is killed.
Prog start_libshm(const std::string& name, std::size_t size) {
    return start({}, [name, size](int in, int out) {
        try {
            auto seg = shm::Segment::create(name, size);
            auto& v = seg.construct<std::uint64_t>("v", 42u);
            say(out, "ready " + name + "\n");
            char c;
            std::string cmd;
            while (::read(in, &c, 1) == 1) {
                if (c != '\n') {
                    cmd += c;
                    continue;
                }
                bool ok = v == 42u && seg.find<std::uint64_t>("v") == &v;
                // The name still leads to this very segment.
                auto again = shm::Segment::open(name);
                ok = ok && *again.find<std::uint64_t>("v") == 42u;
                say(out, ok ? "ok\n" : "bad\n");
                cmd.clear();
            }
        } catch (const std::exception& e) {
            say(out, std::string("error ") + e.what() + "\n");
        }
        return 0;
    });
}

Prog start_python(const std::string& mode, const std::string& name, std::size_t size) {
    return start({PYTHON3_PATH, SHM_TESTS_DIR "/shmctl_python.py", mode, name, std::to_string(size)});
}

std::uint64_t free_bytes(const std::string& dir) {
    struct statvfs sv;
    if (::statvfs(dir.c_str(), &sv) != 0) return 0;
    return std::uint64_t(sv.f_bavail) * sv.f_frsize;
}

}  // namespace

TEST_CASE("end to end: gc frees a full /dev/shm left by killed libshm and Python programs", "[shmctl][e2e]") {
    if (!is_root()) {
        WARN("skipped: needs root to mount a 64 MiB tmpfs over /dev/shm in a private mount namespace");
        return;
    }
    if (::access(PYTHON3_PATH, X_OK) != 0) {
        WARN("skipped: no " PYTHON3_PATH " (./dev deps installs python3)");
        return;
    }
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    // Everything happens in a child with its own mount namespace, so nothing
    // outside the test sees the small /dev/shm; the child's children (libshm
    // and Python programs, shmctl) see only that one.
    pid_t lab = test::spawn([&]() -> int {
        ::close(fds[0]);
        auto log = [&](const std::string& s) { say(fds[1], s + "\n"); };
        if (::unshare(CLONE_NEWNS) != 0) {
            log(std::string("SKIP unshare: ") + std::strerror(errno));
            return 0;
        }
        if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
            ::mount("libshm-e2e", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777") != 0) {
            log(std::string("SKIP mount: ") + std::strerror(errno));
            return 0;
        }
        ::setenv("SHM_DIR", "/dev/shm", 1);
        ::prctl(PR_SET_CHILD_SUBREAPER, 1);
        int rc = 0;
        auto fail = [&](const std::string& s) {
            log("FAIL " + s);
            rc = 1;
        };
        constexpr std::size_t MiB = 1 << 20;

        // Programs that keep running: they must be left alone.
        std::vector<Prog> live = {start_libshm("live", 4 * MiB), start_python("live-shm", "psm_live", 4 * MiB),
                                  start_python("live-open", "psm_open_only", 2 * MiB),
                                  start_python("live-mapped", "psm_mapped_only", 2 * MiB)};
        for (Prog& p : live) {
            std::string l = p.line();
            log("live pid " + std::to_string(p.pid) + ": " + l);
            if (l.rfind("ready", 0) != 0) fail("a live program did not start");
        }

        // Leak until an 8 MiB segment no longer fits.
        int leaks = 0;
        std::string full_error;
        for (int round = 0; round < 40 && rc == 0; ++round) {
            try {
                shm::Segment::create("probe", 8 * MiB);  // detached (and unlinked) at once
            } catch (const shm::out_of_space& e) {
                full_error = e.what();
                break;
            }
            std::uint64_t free = free_bytes("/dev/shm");
            std::size_t size = std::min<std::uint64_t>(6 * MiB, free > 2 * MiB ? free - 2 * MiB : MiB);
            Prog p = round % 2 ? start_python("leak", "-", size) : start_libshm("leak" + std::to_string(round), size);
            std::string l = p.line();
            if (l.rfind("ready", 0) != 0) fail("leaker did not start: " + l);
            p.kill_group();
            ++leaks;
        }
        if (full_error.empty()) fail("/dev/shm never filled up");
        log("full after " + std::to_string(leaks) + " killed programs: " + full_error);
        if (full_error.find("shmctl gc") == std::string::npos) fail("the out-of-space error does not point to shmctl gc");
        std::uint64_t free_before = free_bytes("/dev/shm");
        int leaked_files = 0;
        for (auto& f : std::filesystem::directory_iterator("/dev/shm")) {
            std::string n = f.path().filename().string();
            if (n.rfind("libshm.leak", 0) == 0 || n.rfind("sem.mp-", 0) == 0 ||
                (n.rfind("psm_", 0) == 0 && n != "psm_live" && n != "psm_open_only" && n != "psm_mapped_only"))
                ++leaked_files;
        }
        log("leaked files: " + std::to_string(leaked_files));
        if (leaked_files < leaks) fail("fewer leaked files than killed programs");

        Run df = run({SHMCTL_PATH, "df"});
        log("--- shmctl df\n" + df.out + df.err);
        Run gc = run({SHMCTL_PATH, "gc", "--foreign", "--min-age", "0"});
        log("--- shmctl gc --foreign --min-age 0\n" + gc.out + gc.err);
        if (gc.code != 0) fail("gc exit " + std::to_string(gc.code));
        std::uint64_t free_after = free_bytes("/dev/shm");
        log("free before " + std::to_string(free_before) + ", after " + std::to_string(free_after));
        if (free_after < free_before + 8 * MiB) fail("gc freed less than 8 MiB");

        std::set<std::string> left;
        for (auto& f : std::filesystem::directory_iterator("/dev/shm")) left.insert(f.path().filename().string());
        std::set<std::string> want = {"libshm.live", "psm_live", "psm_open_only", "psm_mapped_only"};
        if (left != want) {
            std::string l;
            for (auto& n : left) l += n + " ";
            fail("left after gc: " + l);
        }
        for (Prog& p : live) {
            std::string a = p.ask("check");
            if (a != "ok") fail("live pid " + std::to_string(p.pid) + " answered '" + a + "' after gc");
        }
        try {
            auto fits = shm::Segment::create("probe", 8 * MiB);
            log("an 8 MiB segment fits again");
        } catch (const std::exception& e) {
            fail(std::string("an 8 MiB segment still does not fit: ") + e.what());
        }
        for (Prog& p : live) p.kill_group();
        while (::waitpid(-1, nullptr, WNOHANG) > 0) {
        }
        return rc;
    });
    ::close(fds[1]);
    std::string msg;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0) msg.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    auto e = test::wait_for(lab, 120s);
    if (msg.rfind("SKIP", 0) == 0) {
        WARN("skipped: " << msg);
        return;
    }
    INFO(msg);
    REQUIRE(e.exited);
    CHECK(e.code == 0);
    CHECK(msg.find("FAIL") == std::string::npos);
}

// ---- the daemon: shmctl status, and what ls marks -----------------------------

namespace {

// Sets an environment variable for one scope, restoring what was there.
#ifdef SHMD_PATH
using test::Daemon;
#endif

// The SHMD column of `name`'s row in `shmctl ls` text output ("" if there is
// no such row or column).
std::string shmd_column(const std::string& out, const std::string& name) {
    std::istringstream in(out);
    std::string header, line;
    std::getline(in, header);
    std::size_t col = header.find("SHMD");
    std::size_t end = header.find("USERS");
    if (col == std::string::npos || end == std::string::npos) return "";
    while (std::getline(in, line))
        if (line.compare(0, name.size() + 1, name + " ") == 0 && line.size() > col) {
            std::string v = line.substr(col, end - col);
            while (!v.empty() && v.back() == ' ') v.pop_back();
            return v;
        }
    return "";
}

}  // namespace

TEST_CASE("shmctl status and ls with no daemon: exit 3, and ls unchanged", "[shmctl][shmd]") {
    test::ShmDir dir;
    std::string missing = dir.path() + ".no-daemon.sock";
    EnvVar socket("SHM_DAEMON_SOCKET", missing);
    EnvVar mode("SHM_DAEMON", "auto");
    auto live = shm::Segment::create("live", kSize);

    Run st = shmctl({"status"});
    INFO(describe(st));
    CHECK(st.code == 3);
    CHECK(st.out.empty());
    CHECK(st.err.find("shmd is not running: no daemon listens at " + missing) != std::string::npos);

    json j = parse(shmctl({"status", "--json"}));
    CHECK(j.at("running") == false);
    CHECK(j.at("socket") == missing);
    CHECK(j.at("error").get<std::string>().find(missing) != std::string::npos);
    CHECK(shmctl({"status", "--json"}).code == 3);

    // --socket wins over the variable; a socket file nobody listens on (left
    // by a daemon that died) is no daemon either.
    std::string stale = dir.path() + ".stale.sock";
    {
        int fd = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
        sockaddr_un a{};
        a.sun_family = AF_UNIX;
        std::strcpy(a.sun_path, stale.c_str());
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
        ::close(fd);
    }
    Run st2 = shmctl({"status", "--json", "--socket", stale});
    ::unlink(stale.c_str());
    INFO(describe(st2));
    CHECK(st2.code == 3);
    CHECK(parse(st2).at("socket") == stale);

    // ls: no column, tracked is null, and nothing else changes.
    Run ls = shmctl({"ls"});
    INFO(describe(ls));
    CHECK(ls.code == 0);
    CHECK(ls.out.find("SHMD") == std::string::npos);
    CHECK(ls.err.find("shmd") == std::string::npos);
    Run ls_off = [] {
        EnvVar off("SHM_DAEMON", "off");
        return shmctl({"ls", "--noheadings"});
    }();
    Run ls_quiet = shmctl({"ls", "--noheadings"});
    // The same rows; only an age may have ticked over between the two runs.
    auto ages_masked = [](const std::string& out) {
        static const std::regex age(R"(\b\d+[smhd]\b)");
        return std::regex_replace(out, age, "AGE");
    };
    CHECK(ages_masked(ls_quiet.out) == ages_masked(ls_off.out));
    json lj = parse(shmctl({"ls", "--json"}));
    CHECK(lj.at("daemon").is_null());
    REQUIRE(file_of(lj, "libshm.live").is_object());
    CHECK(file_of(lj, "libshm.live").at("tracked").is_null());
}

#ifdef SHMD_PATH
TEST_CASE("shmctl status and ls against a running shmd", "[shmctl][shmd]") {
    test::ShmDir dir;
    // Before the daemon starts: a dead segment (its first sweep reclaims it),
    // a live one, and more than one page of the daemon's list (it adopts
    // live segments from their headers).
    make_dead_segment("dead");
    auto live = shm::Segment::create("live", kSize);
    constexpr std::size_t kSmall = 128 * 1024;
    constexpr int kMany = 300;  // over the 256 of one list page
    std::vector<shm::Segment> many;
    for (int i = 0; i < kMany; ++i) {
        char n[16];
        std::snprintf(n, sizeof n, "p%03d", i);
        many.push_back(shm::Segment::create(n, kSmall));
    }
    write_file(dir.path() + "/psm_leaked", 4096);

    Daemon d(dir.path(), {"--sweep-interval", "0"});
    INFO(d.log_text());
    EnvVar socket("SHM_DAEMON_SOCKET", d.socket());
    // Made after the daemon's sweep by a process not connected to it: not
    // tracked until the next sweep.
    auto later = shm::Segment::create("later", kSize);
    REQUIRE_FALSE(dir.has("dead"));

    SECTION("status --json: the daemon's fields") {
        Run r = shmctl({"status", "--json"});
        INFO(describe(r));
        CHECK(r.code == 0);
        json j = parse(r);
        CHECK(j.at("schema_version") == 1);
        CHECK(j.at("running") == true);
        CHECK(j.at("socket") == d.socket());
        CHECK(j.at("pid") == d.pid());
        CHECK(j.at("shm_dir") == std::filesystem::weakly_canonical(dir.path()).string());
        CHECK(j.at("uptime_s").get<double>() >= 0);
        CHECK(j.at("connections").get<int>() >= 1);
        CHECK(j.at("clients").is_number());
        CHECK(j.at("processes") == 1);  // this test process
        CHECK(j.at("segments") == kMany + 1);
        CHECK(j.at("bytes") == kSize + kMany * kSmall);
        CHECK(j.at("reclaims") == 1);
        CHECK(j.at("reclaimed_bytes").get<std::uint64_t>() >= kSize);
        CHECK(j.at("sweeps") == 1);
        CHECK(j.at("last_sweep_s_ago").get<double>() >= 0);
        CHECK(j.at("sweep_interval_s") == 0);
        CHECK(j.at("user_quota") == 0);
        CHECK(j.contains("reserve"));
        CHECK(j.at("reclaim_foreign") == false);
        CHECK_FALSE(j.contains("ok"));
        CHECK_FALSE(j.contains("v"));
    }

    SECTION("status: words") {
        Run r = shmctl({"status"});
        INFO(describe(r));
        CHECK(r.code == 0);
        for (std::string w : {"listening on " + d.socket(), std::string("uptime:"),
                              std::to_string(kMany + 1) + " segments", std::string("reclaimed:  1 file"),
                              std::string("sweeps:     1"), std::string("quotas:")})
            CHECK(r.out.find(w) != std::string::npos);
        // --socket instead of the variable
        EnvVar elsewhere("SHM_DAEMON_SOCKET", dir.path() + ".nowhere");
        CHECK(shmctl({"status"}).code == 3);
        CHECK(shmctl({"status", "--socket", d.socket()}).code == 0);
        CHECK(shmctl({"--socket", d.socket(), "status"}).code == 0);
    }

    SECTION("ls marks what the daemon tracks, every page of it") {
        json lj = parse(shmctl({"ls", "--json"}));
        REQUIRE(lj.at("daemon").is_object());
        CHECK(lj.at("daemon").at("socket") == d.socket());
        CHECK(lj.at("daemon").at("segments") == kMany + 1);
        std::size_t tracked = 0;
        for (const json& f : lj.at("files")) {
            INFO(f.dump());
            REQUIRE(f.at("tracked").is_boolean());
            if (f.at("tracked") == true) ++tracked;
        }
        CHECK(tracked == kMany + 1);
        CHECK(file_of(lj, "libshm.live").at("tracked") == true);
        CHECK(file_of(lj, "libshm.p299").at("tracked") == true);
        CHECK(file_of(lj, "libshm.later").at("tracked") == false);
        CHECK(file_of(lj, "psm_leaked").at("tracked") == false);

        Run ls = shmctl({"ls"});
        INFO(describe(ls));
        CHECK(ls.code == 0);
        CHECK(shmd_column(ls.out, "libshm.live") == "tracked");
        CHECK(shmd_column(ls.out, "libshm.p000") == "tracked");
        CHECK(shmd_column(ls.out, "libshm.later") == "-");
        CHECK(shmd_column(ls.out, "psm_leaked") == "-");

        // A sweep (SIGHUP) adopts the one made meanwhile.
        ::kill(d.pid(), SIGHUP);
        CHECK(test::eventually([&] {
            return file_of(parse(shmctl({"ls", "--json"})), "libshm.later").at("tracked") == true;
        }, 20s));
    }

    SECTION("a daemon serving another directory marks nothing here") {
        char tmpl[] = "/dev/shm/libshm-test-other.XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        std::string other = tmpl;
        Run r = shmctl({"--dir", other, "ls", "--all", "--json"});
        Run t = shmctl({"--dir", other, "ls", "--all"});
        std::filesystem::remove_all(other);
        json lj = parse(r);
        REQUIRE(lj.at("daemon").is_object());
        CHECK(lj.at("daemon").at("shm_dir") == std::filesystem::weakly_canonical(dir.path()).string());
        INFO(describe(t));
        CHECK(t.err.find("serves " + std::filesystem::weakly_canonical(dir.path()).string()) != std::string::npos);
    }
}
#endif

TEST_CASE("shmctl stat: a work queue's counts and who holds its leases, alive or dead", "[shmctl]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("work", kSize);
    auto tasks = shm::WorkQueue::create(seg, "tasks", {16, 2});
    auto poison = shm::WorkQueue::create(seg, "poison", {4, 1});
    shm::WorkQueue::create(seg, "unused", {8, 3});
    // A root whose first handle never came (its maker died between the two).
    seg.construct<shm::detail::WorkQueueRoot>("bare", 8u, 3u);
    for (int i = 0; i < 5; ++i) tasks.put("task " + std::to_string(i));
    poison.put("bad");
    // This process holds one lease; a child takes two of tasks and the one
    // of poison, and dies holding them.
    shm::Lease mine = tasks.get();
    pid_t child = test::spawn([&] {
        auto a = tasks.get(), b = tasks.get(), c = poison.get();
        return 0;  // (no ack)
    });
    test::require_exit_ok(child);
    poison.close();
    REQUIRE(poison.recover() == 1);  // delivered max_deliveries (1) times: a dead letter
    const pid_t me = ::getpid();

    json st = parse(shmctl({"stat", "work", "--json"}));
    json t = object_of(st, "tasks");
    CHECK(t.at("kind") == "work_queue");
    CHECK(t.at("problem") == "");
    json ts = t.at("state");
    CHECK(ts.at("made") == true);
    CHECK(ts.at("waiting") == 2);
    CHECK(ts.at("leased") == 3);
    CHECK(ts.at("dead_letters") == 0);
    CHECK(ts.at("unfinished") == 5);
    CHECK(ts.at("redeliveries") == 0);
    CHECK(ts.at("capacity") == 16);
    CHECK(ts.at("max_deliveries") == 2);
    CHECK(ts.at("closed") == false);
    REQUIRE(ts.at("lease_holders").size() == 2);
    for (const json& h : ts.at("lease_holders")) {
        if (h.at("pid") == me) {
            CHECK(h.at("alive") == true);
            CHECK(h.at("leases") == 1);
        } else {
            CHECK(h.at("pid") == child);
            CHECK(h.at("alive") == false);
            CHECK(h.at("leases") == 2);
        }
    }
    json ps = object_of(st, "poison").at("state");
    CHECK(ps.at("waiting") == 0);
    CHECK(ps.at("leased") == 0);
    CHECK(ps.at("dead_letters") == 1);
    CHECK(ps.at("unfinished") == 1);
    CHECK(ps.at("redeliveries") == 1);
    CHECK(ps.at("closed") == true);
    CHECK(ps.at("lease_holders").empty());
    json us = object_of(st, "unused").at("state");
    CHECK(us.at("made") == true);
    CHECK(us.at("waiting") == 0);
    CHECK(us.at("unfinished") == 0);
    json bs = object_of(st, "bare").at("state");
    CHECK(bs.at("made") == false);
    CHECK(bs.at("capacity") == 8);
    CHECK(bs.at("max_deliveries") == 3);

    Run h = shmctl({"stat", "work"});
    INFO(describe(h));
    CHECK(h.code == 0);
    const std::string mine_text = "pid " + std::to_string(me) + ": 1";
    const std::string dead_text = "pid " + std::to_string(child) + ", dead: 2";
    CHECK(h.out.find("2 waiting, 3 leased (" + (me < child ? mine_text + "; " + dead_text : dead_text + "; " + mine_text) +
                     "), 0 dead letters; 5 unfinished; capacity 16, up to 2 deliveries; 0 redeliveries") !=
          std::string::npos);
    CHECK(h.out.find("0 waiting, 0 leased, 1 dead letter; 1 unfinished; capacity 4, up to 1 delivery; 1 redelivery; "
                     "closed") != std::string::npos);
    CHECK(h.out.find("0 waiting, 0 leased, 0 dead letters; 0 unfinished; capacity 8, up to 3 deliveries") !=
          std::string::npos);
    CHECK(h.out.find("no state yet (its first handle makes it); capacity 8, up to 3 deliveries") != std::string::npos);

    // The dead child's leases go back: stat shows them waiting again.
    REQUIRE(tasks.recover() == 2);
    ts = object_of(parse(shmctl({"stat", "work", "--json"})), "tasks").at("state");
    CHECK(ts.at("waiting") == 4);
    CHECK(ts.at("leased") == 1);
    CHECK(ts.at("redeliveries") == 2);
    REQUIRE(ts.at("lease_holders").size() == 1);
    CHECK(ts.at("lease_holders")[0].at("pid") == me);
    mine.ack();
}

// ---- the test suite's own watchdog (watchdog.hpp) ------------------------------------

TEST_CASE("watchdog: a hung test leaves every process's stacks and its segments' state", "[shmctl][watchdog]") {
    // The "hung test": a child that starts a watchdog of 1 s, as a test
    // binary's main does, with its stderr in a pipe; then it and a child of
    // its own wait on an empty queue (for at most 100 s). The pipe is read
    // until the watchdog's last line; then the hung test is killed.
    test::ShmDir dir;
    int err[2];
    REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
    pid_t pid = test::spawn([&] {
        ::dup2(err[1], 2);
        {
            test::EnvVar wd("SHM_TEST_WATCHDOG", "1");
            test::watchdog::start();
        }
        auto seg = shm::Segment::create("hung", 1 << 20);
        auto q = shm::Queue::create(seg, "jobs");
        pid_t waiter = test::spawn([&] { return q.get_for(100s) ? 1 : 0; });
        const bool got = q.get_for(100s).has_value();
        test::kill_and_reap(waiter);
        return got ? 1 : 0;
    });
    ::close(err[1]);
    std::string out, buffered, line;
    const auto cap = std::chrono::steady_clock::now() + 180s;  // gdb on every process: seconds each
    while (std::chrono::steady_clock::now() < cap) {
        line = test::read_line(err[0], buffered, 5s);
        out += line + "\n";
        if (line.rfind("==== watchdog: end", 0) == 0) break;
        pollfd p{err[0], POLLIN, 0};
        if (line.empty() && ::poll(&p, 1, 0) == 1 && !(p.revents & POLLIN)) break;  // every writer gone
    }
    ::close(err[0]);
    test::kill_and_reap(pid);
    INFO(out);
    REQUIRE(out.find("==== watchdog: test process " + std::to_string(pid) + " still runs after 1 s") !=
            std::string::npos);
    CHECK(out.find("==== watchdog: end") != std::string::npos);
    // The test process and its child, each with its threads' stacks.
    CHECK(out.find("==== pid " + std::to_string(pid) + " ") != std::string::npos);
    std::size_t pids = 0, stacks = 0;
    for (std::size_t at = 0; (at = out.find("\n==== pid ", at)) != std::string::npos; ++at) ++pids;
    for (std::size_t at = 0; (at = out.find("\nThread 1 ", at)) != std::string::npos; ++at) ++stacks;
    CHECK(pids == 2);
    CHECK(stacks == 2);
    CHECK(out.find("\n#0 ") != std::string::npos);
    // The segment it maps, read by shmctl stat: its queue, empty.
    CHECK(out.find("==== segment ") != std::string::npos);
    CHECK(out.find("/libshm.hung") != std::string::npos);
    CHECK(out.find("jobs") != std::string::npos);
}
