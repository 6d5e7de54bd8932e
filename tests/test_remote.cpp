// shm::remote against real nats-server processes (tests/nats_cluster.hpp):
// the same behavioural test bodies run on the local objects (a segment)
// and on the remote ones (a server), then the remote-only faults: servers
// killed, frozen and restarted, consumers and lock holders killed.
//
// Child processes are this program run again (`test_remote --child ROLE
// ...`), never forked copies: a NATS client's threads do not survive
// fork().
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <nats/nats.h>

#include "nats_cluster.hpp"
#include "shm/container.hpp"
#include "shm/mutex.hpp"
#include "shm/remote.hpp"
#include "shm/segment.hpp"
#include "shm/sync.hpp"
#include "shm/work_queue.hpp"
#include "support.hpp"
#include "watchdog.hpp"

namespace remote = shm::remote;
using namespace std::chrono_literals;

namespace {

std::string self_exe() {
    char buf[4096];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) std::abort();
    return std::string(buf, static_cast<std::size_t>(n));
}

// Names unique to this process and call, so that tests never meet each
// other's objects on a shared server.
std::string unique(const std::string& base) {
    static std::atomic<int> n{0};
    return base + "-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
}


std::string read_text(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void write_file(const std::string& path, const std::string& text) {
    std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp);
        f << text;
    }
    std::rename(tmp.c_str(), path.c_str());
}

// A scratch directory for the children's files.
struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/libshm-remote-test.XXXXXX";
        if (!::mkdtemp(tmpl)) std::abort();
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

// ---- the two backends ----------------------------------------------------------
// Each gives the objects of one test by name, and the arguments a child
// process needs to open the same ones.

struct LocalBackend {
    static constexpr const char* kName = "local";
    test::ShmDir dir;
    std::string seg_name = "remote-mirror";
    shm::Segment seg = shm::Segment::create(seg_name, 32 << 20);

    shm::WorkQueue queue(const std::string& name, std::uint32_t capacity) {
        return shm::WorkQueue::open_or_create(seg, name, {capacity, 4});
    }
    shm::Dict dict(const std::string& name) { return shm::Dict::open_or_create(seg, name); }
    shm::List list(const std::string& name) { return shm::List::open_or_create(seg, name); }
    shm::Mutex& lock(const std::string& name) { return seg.find_or_construct<shm::Mutex>(name); }
    shm::Event& event(const std::string& name) { return seg.find_or_construct<shm::Event>(name); }
    std::string target() const { return seg_name; }
    template <class T>
    void settle(T&) {}
};

struct RemoteBackend {
    static constexpr const char* kName = "remote";
    test::NatsCluster server{1};
    remote::Store store = remote::connect(server.urls());

    remote::Queue queue(const std::string& name, std::uint32_t capacity) {
        remote::QueueOptions o;
        o.max_items = capacity;
        return remote::Queue::open_or_create(store, name, o);
    }
    remote::Dict dict(const std::string& name) { return remote::Dict::open_or_create(store, name); }
    remote::List list(const std::string& name) { return remote::List::open_or_create(store, name); }
    remote::Lock lock(const std::string& name) { return remote::Lock::open_or_create(store, name); }
    remote::Event event(const std::string& name) { return remote::Event::open_or_create(store, name); }
    std::string target() const { return server.urls(); }
    template <class T>
    void settle(T&) {}
};

// The remote Dict and List again, answering reads from a watched local copy.
struct RemoteCopyBackend : RemoteBackend {
    static remote::ObjectOptions copy() {
        remote::ObjectOptions o;
        o.local_copy = true;
        return o;
    }
    remote::Dict dict(const std::string& name) {
        auto d = remote::Dict::open_or_create(store, name, copy());
        if (!d.has_local_copy()) throw std::logic_error("no local copy");  // (called from threads: no REQUIRE)
        return d;
    }
    remote::List list(const std::string& name) {
        auto l = remote::List::open_or_create(store, name, copy());
        if (!l.has_local_copy()) throw std::logic_error("no local copy");
        return l;
    }
    // Another handle's writes reach a copy after a network delay: wait for them.
    template <class T>
    void settle(T& o) {
        o.sync();
    }
};

// ---- child processes -----------------------------------------------------------

// Increment a counter in a Dict `rounds` times under the lock, by a plain
// read and write (a lost update shows if the lock fails to exclude).
int child_lock_counter(const std::string& backend, const std::string& target, const std::string& prefix, int rounds) {
    if (backend == "local") {
        auto seg = shm::Segment::open(target);
        shm::Mutex& m = seg.find_or_construct<shm::Mutex>(prefix + "lock");
        shm::Dict d = shm::Dict::open_or_create(seg, prefix + "counter");
        for (int i = 0; i < rounds; ++i) {
            std::lock_guard<shm::Mutex> g(m);
            std::int64_t v = d.get("n", 0).as_int();
            d.set("n", v + 1);
        }
        return 0;
    }
    remote::Store store = remote::connect(target);
    remote::Lock l = remote::Lock::open_or_create(store, prefix + "lock");
    remote::Dict d = remote::Dict::open_or_create(store, prefix + "counter");
    std::uint64_t last_token = 0;
    for (int i = 0; i < rounds; ++i) {
        std::lock_guard<remote::Lock> g(l);
        if (l.token() <= last_token) {
            std::fprintf(stderr, "token %llu after %llu\n", (unsigned long long)l.token(), (unsigned long long)last_token);
            return 3;
        }
        last_token = l.token();
        std::int64_t v = d.get("n", 0).as_int();
        d.set("n", v + 1);
    }
    return 0;
}

// Take n items and hold them, unacknowledged, until killed.
int child_hold(const std::string& url, const std::string& queue, int n, const std::string& ready) {
    remote::Store store = remote::connect(url);
    remote::Queue q = remote::Queue::open(store, queue);
    std::vector<remote::Lease> held;
    std::string got;
    while (static_cast<int>(held.size()) < n) {
        auto l = q.get_for(30s);
        if (!l) return 4;
        got += l->item() + "\n";
        held.push_back(std::move(*l));
    }
    write_file(ready, got);
    for (;;) ::pause();
}

// Take the lock and hold it until killed; its token goes to `ready`.
int child_lock_hold(const std::string& url, const std::string& name, const std::string& ready) {
    remote::Store store = remote::connect(url);
    remote::Lock l = remote::Lock::open_or_create(store, name);
    l.lock();
    write_file(ready, std::to_string(l.token()));
    for (;;) ::pause();
}

remote::StoreOptions fault_options() {
    // Elections after a server is lost take seconds on a loaded machine:
    // a generous bound for every call.
    remote::StoreOptions o;
    o.request_timeout = 30s;
    o.replicas = 3;
    return o;
}

// For the child that pipelines puts through a server's death: a put gives up only
// after its servers have not answered for this long, and under a sanitizer
// on a loaded machine the clients' reconnection and the stream's new
// leader have taken over 30 s. A cap for a true hang, not a speed bound.
remote::StoreOptions pipelining_producer_options() {
    remote::StoreOptions o = fault_options();
    o.request_timeout = 120s;
    return o;
}

// Put items [from, to) in chunks; after each chunk, whose put_many()
// returned (every item acknowledged by the servers), the count so far goes
// to `progress`.
int child_produce(const std::string& urls, const std::string& queue, int from, int to, const std::string& progress) {
    remote::Store store = remote::connect(urls, fault_options());
    remote::Queue q = remote::Queue::open(store, queue);
    const int chunk = 1000;
    for (int i = from; i < to; i += chunk) {
        std::vector<std::string> items;
        for (int j = i; j < std::min(to, i + chunk); ++j) items.push_back(std::to_string(j));
        q.put_many(items);
        write_file(progress, std::to_string(std::min(to, i + chunk)));
        std::fprintf(stderr, "put %d\n", std::min(to, i + chunk));
    }
    return 0;
}

// The same with pipelined puts: put_async() one item at a time, flush()
// every `chunk` items, then the count so far goes to `progress`.
int child_produce_async(const std::string& urls, const std::string& queue, int from, int to, int chunk,
                        const std::string& progress) {
    remote::Store store = remote::connect(urls, pipelining_producer_options());
    remote::Queue q = remote::Queue::open(store, queue);
    for (int i = from; i < to; ++i) {
        q.put_async(std::to_string(i));
        if ((i + 1 - from) % chunk == 0 || i + 1 == to) {
            q.flush();
            write_file(progress, std::to_string(i + 1));
        }
    }
    return 0;
}

// Pipelined sets of keys "k0".."k6": set i writes i to key "k<i % 7>";
// every `chunk` sets a flush, then `progress` says how many are stored.
int child_set_async(const std::string& urls, const std::string& dict, int chunk, const std::string& progress) {
    remote::Store store = remote::connect(urls, fault_options());
    remote::Dict d = remote::Dict::open(store, dict);
    for (int i = 0; i < 10000000; ++i) {
        d.set_async("k" + std::to_string(i % 7), i);
        if ((i + 1) % chunk == 0) {
            d.flush();
            write_file(progress, std::to_string(i + 1));
        }
    }
    return 0;
}

// Take and acknowledge items until `done` exists and the queue gave
// nothing for a while; every delivery, and every ack the servers did not
// confirm, is written to `out` ("d N" / "u N").
int child_consume(const std::string& urls, const std::string& queue, const std::string& done, const std::string& out) {
    remote::Store store = remote::connect(urls, fault_options());
    remote::Queue q = remote::Queue::open(store, queue);
    std::string log;
    for (;;) {
        auto fetched = std::chrono::steady_clock::now();
        // Small batches: an ack of an item whose lease ran out and that
        // another consumer acknowledged meanwhile gets no answer, and
        // waits out the request time-out.
        std::vector<remote::Lease> ls = q.get_many(8, 2s);
        if (ls.empty()) {
            if (::access(done.c_str(), F_OK) == 0) break;
            continue;
        }
        for (auto& l : ls) {
            log += "d " + l.item() + "\n";
            // Unconfirmed, or confirmed after the lease ran out (counted
            // from the request that fetched it, before the server's
            // clock started): it may rightly be delivered again.
            if (!l.ack() || std::chrono::steady_clock::now() - fetched >= q.lease())
                log += "u " + l.item() + "\n";
        }
    }
    write_file(out, log);
    return 0;
}

int run_child(int argc, char** argv) {
    std::vector<std::string> a(argv + 2, argv + argc);
    try {
        if (a.at(0) == "lock-counter") return child_lock_counter(a.at(1), a.at(2), a.at(3), std::stoi(a.at(4)));
        if (a.at(0) == "hold") return child_hold(a.at(1), a.at(2), std::stoi(a.at(3)), a.at(4));
        if (a.at(0) == "lock-hold") return child_lock_hold(a.at(1), a.at(2), a.at(3));
        if (a.at(0) == "produce") return child_produce(a.at(1), a.at(2), std::stoi(a.at(3)), std::stoi(a.at(4)), a.at(5));
        if (a.at(0) == "produce-async")
            return child_produce_async(a.at(1), a.at(2), std::stoi(a.at(3)), std::stoi(a.at(4)), std::stoi(a.at(5)),
                                       a.at(6));
        if (a.at(0) == "set-async") return child_set_async(a.at(1), a.at(2), std::stoi(a.at(3)), a.at(4));
        if (a.at(0) == "consume") return child_consume(a.at(1), a.at(2), a.at(3), a.at(4));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "child %s: %s\n", a.empty() ? "?" : a[0].c_str(), e.what());
        return 99;
    }
    std::fprintf(stderr, "unknown child role\n");
    return 98;
}

pid_t spawn_child(const std::vector<std::string>& args, const std::string& log = "") {
    std::vector<std::string> argv = {self_exe(), "--child"};
    argv.insert(argv.end(), args.begin(), args.end());
    pid_t pid = test::spawn(argv, log);
    REQUIRE(pid > 0);
    return pid;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc > 2 && std::string(argv[1]) == "--child") return run_child(argc, argv);
    test::watchdog::start();  // before any thread or segment
    test::require_nats_server();
    return Catch::Session().run(argc, argv);
}

// ---- one body, two backends ---------------------------------------------------------

TEMPLATE_TEST_CASE("queue: FIFO, leases, time-outs, a full queue refuses and changes nothing", "[remote]",
                   LocalBackend, RemoteBackend) {
    TestType b;
    auto q = b.queue(unique("q"), 4);
    CHECK(!q.try_get());
    CHECK(!q.get_for(50ms));
    for (int i = 0; i < 4; ++i) q.put("item " + std::to_string(i));
    // (unfinished(), not qsize(): a remote get that timed out may have
    // left a request on the server that an item was sent to, leased.)
    CHECK(q.unfinished() == 4);
    // Full: refused, within the wait asked for, and nothing changes.
    CHECK(!q.try_put("extra"));
    CHECK(!q.put_for("extra", 100ms));
    CHECK(q.unfinished() == 4);
    for (int i = 0; i < 4; ++i) {
        auto l = q.get();
        CHECK(l.item() == "item " + std::to_string(i));
        CHECK(l.deliveries() == 1);
        CHECK(l.ack());
        CHECK(!l.ack());  // once
    }
    CHECK(!q.try_get());
    CHECK(q.qsize() == 0);
    CHECK(q.unfinished() == 0);
    CHECK(q.join_until(shm::detail::Deadline::in(30s)));
    // Room again after the acks.
    CHECK(q.try_put("again"));
    auto l = q.get_for(5s);
    REQUIRE(l);
    CHECK(l->item() == "again");
    CHECK(!q.join_until(shm::detail::Deadline::in(50ms)));  // leased, not acknowledged
    CHECK(l->ack());
    CHECK(q.join_until(shm::detail::Deadline::in(30s)));
}

TEMPLATE_TEST_CASE("queue: a consumer thread gets what a producer thread puts, in order", "[remote]", LocalBackend,
                   RemoteBackend) {
    TestType b;
    const std::string name = unique("q");
    auto q = b.queue(name, 64);
    const int n = 300;
    std::thread producer([&] {
        auto p = b.queue(name, 64);
        for (int i = 0; i < n; ++i) p.put(std::to_string(i));
    });
    for (int i = 0; i < n; ++i) {
        auto l = q.get_for(30s);
        REQUIRE(l);
        CHECK(l->item() == std::to_string(i));
        l->ack();
    }
    producer.join();
}

TEMPLATE_TEST_CASE("dict: set, get, update, increment, erase, keys, with odd keys", "[remote]", LocalBackend,
                   RemoteBackend, RemoteCopyBackend) {
    TestType b;
    auto d = b.dict(unique("d"));
    const std::vector<std::string> keys = {"",        "plain", "with space", "a/b/c", "dots.and..more.", "*>",
                                           "ünïcødé", std::string("nul\0byte", 8), "$KV.x", "k"};
    CHECK(d.size() == 0);
    for (std::size_t i = 0; i < keys.size(); ++i) d.set(keys[i], static_cast<std::int64_t>(i));
    CHECK(d.size() == keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) CHECK(d.get(keys[i]).as_int() == static_cast<std::int64_t>(i));
    auto got = d.keys();
    CHECK(std::set<std::string>(got.begin(), got.end()) == std::set<std::string>(keys.begin(), keys.end()));
    CHECK_THROWS_AS(d.get("missing"), shm::key_error);
    CHECK(d.get("missing", 7).as_int() == 7);
    CHECK(!d.find("missing"));
    CHECK(!d.contains("missing"));
    CHECK(d.contains("with space"));

    // Values of every scalar type come back as they went in.
    d.set("null", nullptr);
    d.set("bool", true);
    d.set("double", 2.5);
    d.set("string", "text");
    d.set("bytes", shm::Value::bytes(std::string("\0\1\2", 3)));
    CHECK(d.get("null").is_null());
    CHECK(d.get("bool").as_bool());
    CHECK(d.get("double").as_double() == 2.5);
    CHECK(d.get("string").as_string() == "text");
    CHECK(d.get("bytes").as_bytes() == std::string("\0\1\2", 3));

    CHECK(d.increment("count") == 1);
    CHECK(d.increment("count", 41) == 42);
    CHECK(d.increment("real", 0.5) == 0.5);
    CHECK_THROWS_AS(d.increment("string"), shm::value_type_error);
    CHECK(d.get("string").as_string() == "text");  // a refused increment changes nothing
    CHECK(d.update("count", [](const shm::Value& v) { return shm::Value(v.as_int() * 2); }).as_int() == 84);
    CHECK(d.get("count").as_int() == 84);
    CHECK_THROWS(d.update("count", [](const shm::Value&) -> shm::Value { throw std::runtime_error("no"); }));
    CHECK(d.get("count").as_int() == 84);
    CHECK(d.setdefault("count", 1).as_int() == 84);
    CHECK(d.setdefault("fresh", 5).as_int() == 5);

    CHECK(d.erase("a/b/c"));
    CHECK(!d.erase("a/b/c"));
    CHECK(!d.contains("a/b/c"));
    CHECK(d.pop("").as_int() == 0);
    CHECK_THROWS_AS(d.pop(""), shm::key_error);
    CHECK(d.pop("", "dflt").as_string() == "dflt");
    d.set("a/b/c", "back");  // set again after an erase
    CHECK(d.get("a/b/c").as_string() == "back");
    d.clear();
    CHECK(d.size() == 0);
    CHECK(d.keys().empty());
}

TEMPLATE_TEST_CASE("dict: concurrent increments lose nothing", "[remote]", LocalBackend, RemoteBackend,
                   RemoteCopyBackend) {
    TestType b;
    const std::string name = unique("d");
    auto d = b.dict(name);
    const int threads = 3, rounds = 40;
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
        ts.emplace_back([&] {
            auto mine = b.dict(name);
            for (int i = 0; i < rounds; ++i) mine.increment("n");
        });
    for (auto& t : ts) t.join();
    b.settle(d);
    CHECK(d.get("n").as_int() == threads * rounds);
}

TEMPLATE_TEST_CASE("list: append, get, set, insert, pop, len, errors change nothing", "[remote]", LocalBackend,
                   RemoteBackend, RemoteCopyBackend) {
    TestType b;
    auto l = b.list(unique("l"));
    CHECK(l.size() == 0);
    CHECK_THROWS_AS(l.get(0), shm::index_error);
    CHECK_THROWS_AS(l.pop(), shm::index_error);
    l.append(1);
    l.append("two");
    l.append(3.0);
    CHECK(l.size() == 3);
    CHECK(l.get(0).as_int() == 1);
    CHECK(l.get(-1).as_double() == 3.0);
    l.set(1, "TWO");
    CHECK(l.get(1).as_string() == "TWO");
    CHECK_THROWS_AS(l.set(3, 0), shm::index_error);
    CHECK_THROWS_AS(l.get(-4), shm::index_error);
    CHECK(l.size() == 3);
    l.insert(0, "first");
    l.insert(100, "last");
    CHECK(l.size() == 5);
    CHECK(l.get(0).as_string() == "first");
    CHECK(l.get(4).as_string() == "last");
    CHECK(l.pop().as_string() == "last");
    CHECK(l.pop(0).as_string() == "first");
    CHECK(l.index(shm::Value("TWO")) == 1);
    CHECK(l.count(shm::Value(1)) == 1);
    l.extend({4, 5});
    auto s = l.snapshot();
    REQUIRE(s.size() == 5);
    CHECK(s[4].as_int() == 5);
    auto sl = l.slice(1, 3);
    REQUIRE(sl.size() == 2);
    CHECK(sl[0].as_string() == "TWO");
    CHECK(l.update(0, [](const shm::Value& v) { return shm::Value(v.as_int() + 10); }).as_int() == 11);
    CHECK(l.assign_if(l.snapshot(), {shm::Value("only")}));
    CHECK(!l.assign_if({shm::Value("not this")}, {shm::Value("never")}));
    CHECK(l.size() == 1);
    l.clear();
    CHECK(l.size() == 0);
}

TEMPLATE_TEST_CASE("lock: excludes, Lockable, and no lost update between processes", "[remote]", LocalBackend,
                   RemoteBackend) {
    TestType b;
    const std::string prefix = unique("p");
    {
        auto&& m = b.lock(prefix + "lock");
        CHECK(m.try_lock());
        m.unlock();
        {
            std::lock_guard<std::decay_t<decltype(m)>> g(m);
            // Held by us: another handle (remote) or thread (local) cannot take it.
            std::thread other([&] {
                auto&& m2 = b.lock(prefix + "lock");
                CHECK(!m2.try_lock());
                CHECK(!m2.try_lock_for(100ms));
            });
            other.join();
        }
        CHECK(m.try_lock_for(5s));
        m.unlock();
    }
    b.dict(prefix + "counter").set("n", 0);
    const int children = 3, rounds = 25;
    std::vector<pid_t> pids;
    for (int i = 0; i < children; ++i)
        pids.push_back(spawn_child({"lock-counter", TestType::kName, b.target(), prefix, std::to_string(rounds)}));
    for (pid_t p : pids) CHECK(test::wait_exit(p, std::chrono::seconds(240)) == 0);
    CHECK(b.dict(prefix + "counter").get("n").as_int() == children * rounds);
}

TEMPLATE_TEST_CASE("event: set, clear, wait, wait_for", "[remote]", LocalBackend, RemoteBackend) {
    TestType b;
    const std::string name = unique("e");
    auto&& e = b.event(name);
    CHECK(!e.is_set());
    CHECK(!e.wait_for(50ms));
    e.set();
    CHECK(e.is_set());
    CHECK(e.wait_for(1s));
    e.clear();
    CHECK(!e.is_set());
    std::atomic<bool> woke{false};
    std::thread waiter([&] {
        auto&& e2 = b.event(name);
        woke = e2.wait_for(60s);
    });
    std::this_thread::sleep_for(100ms);
    e.set();
    waiter.join();
    CHECK(woke);
}

// ---- remote only ------------------------------------------------------------------

TEST_CASE("remote: values, nested containers and keys survive the encoding", "[remote]") {
    using shm::Value;
    Value nested = Value::new_list({1, "two", Value::new_dict({{"k", 3.5}, {"", nullptr}}), Value::bytes("b")});
    Value back = remote::decode_value(remote::encode_value(nested));
    REQUIRE(back.type() == Value::Type::list);
    REQUIRE(back.is_new_container());
    const auto& items = back.new_list_items();
    REQUIRE(items.size() == 4);
    CHECK(items[0].as_int() == 1);
    CHECK(items[1].as_string() == "two");
    CHECK(items[2].new_dict_items().at(0).second.as_double() == 3.5);
    CHECK(items[2].new_dict_items().at(1).second.is_null());
    CHECK(items[3].as_bytes() == "b");
    for (std::string k : {std::string(), std::string("a"), std::string("ab"), std::string("abc"),
                          std::string("\xff\x00\x80", 3), std::string("with space/and.dots")}) {
        std::string enc = remote::encode_key(k);
        CHECK(enc.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") ==
              std::string::npos);
        CHECK(remote::decode_key(enc) == k);
    }
    // Bytes it did not make are refused, never misread.
    CHECK_THROWS_AS(remote::decode_value(""), shm::corrupted);
    CHECK_THROWS_AS(remote::decode_value("I\x01"), shm::corrupted);
    CHECK_THROWS_AS(remote::decode_value("L\xff\xff\xff\x7f"), shm::corrupted);
    CHECK_THROWS_AS(remote::decode_value("NN"), shm::corrupted);
    CHECK_THROWS_AS(remote::decode_value("?"), shm::corrupted);
    CHECK_THROWS_AS(remote::decode_key("x"), shm::corrupted);
    CHECK_THROWS_AS(remote::decode_key("k*"), shm::corrupted);
}

TEST_CASE("remote: a handle with prefetch 1 leaves the other items to the other consumers", "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("q");
    auto a = remote::Queue::open_or_create(store, name);
    auto b = remote::Queue::open(store, name);
    CHECK(a.prefetch() == 32);
    a.set_prefetch(1);
    CHECK(a.prefetch() == 1);
    a.set_prefetch(0);  // clamped: a get asks for at least one
    CHECK(a.prefetch() == 1);
    a.put_many({"1", "2", "3"});
    auto first = a.get_for(30s);
    REQUIRE(first);
    CHECK(first->item() == "1");
    // Nothing else is leased to a: b gets the other two at once.
    for (const char* want : {"2", "3"}) {
        auto l = b.get_for(30s);
        REQUIRE(l);
        CHECK(l->item() == want);
        CHECK(l->deliveries() == 1);
        l->ack();
    }
    first->ack();
    CHECK(a.unfinished() == 0);

    // Without set_prefetch(), a handle taking from a backlog fetches more
    // at a time, but never holds more than 256 leased; every item comes
    // once, in order.
    auto c = remote::Queue::open(store, name);
    std::vector<std::string> items;
    for (int i = 0; i < 1000; ++i) items.push_back(std::to_string(i));
    a.put_many(items);
    std::size_t most_leased = 0;
    for (int i = 0; i < 1000; ++i) {  // max_items is 1024
        auto l = c.get_for(30s);
        REQUIRE(l);
        REQUIRE(l->item() == items[static_cast<std::size_t>(i)]);
        REQUIRE(l->deliveries() == 1u);
        REQUIRE(l->ack());  // confirmed: leased() then counts only what c holds
        if (i % 100 == 50) most_leased = std::max(most_leased, c.leased());
    }
    INFO("most leased at once: " << most_leased);
    CHECK(most_leased <= 256u);
    CHECK(c.prefetch() == 32u);
    CHECK(test::eventually([&] { return a.unfinished() == 0; }, 30s));
}

TEST_CASE("remote: put_async pipelines in the handle's order, blocks while full, and flushes on destruction",
          "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("q");
    remote::QueueOptions o;
    o.max_items = 16;
    auto q = remote::Queue::open_or_create(store, name, o);
    auto other = remote::Queue::open(store, name);
    auto drain = [&](std::size_t n) {
        std::vector<std::string> got;
        while (got.size() < n) {
            auto l = other.get_for(30s);
            REQUIRE(l);
            got.push_back(l->item());
            CHECK(l->deliveries() == 1);
            REQUIRE(l->ack());
        }
        return got;
    };

    CHECK(q.flush() == 0);  // nothing sent yet
    for (int i = 0; i < 10; ++i) q.put_async("a" + std::to_string(i));
    CHECK(q.unflushed() <= 10u);
    CHECK(q.flush() <= 10u);
    CHECK(q.unflushed() == 0u);
    CHECK(q.unfinished() == 10u);
    // A put() after pipelined ones comes after them, as does put_many().
    q.put_async("a10");
    q.put("a11");
    q.put_async("a12");
    q.put_many({"a13"});
    std::vector<std::string> want;
    for (int i = 0; i < 14; ++i) want.push_back("a" + std::to_string(i));
    CHECK(drain(14) == want);

    // Full: a bounded put_async sends nothing and returns false; the
    // queue is unchanged.
    for (int i = 0; i < 16; ++i) q.put_async("b" + std::to_string(i));
    CHECK(!q.put_async_for("refused", 300ms));
    CHECK(q.unflushed() == 0u);  // settled while it looked for room
    CHECK(q.unfinished() == 16u);
    CHECK(q.flush() == 0u);
    // An unbounded one waits for room: a consumer makes it.
    std::atomic<bool> put_done{false};
    std::thread producer([&] {
        q.put_async("b16");
        q.flush();
        put_done = true;
    });
    std::this_thread::sleep_for(200ms);
    const bool waited = !put_done;  // not asserted: a slow machine may run the thread late
    want.clear();
    for (int i = 0; i < 17; ++i) want.push_back("b" + std::to_string(i));
    auto got = drain(17);
    producer.join();
    INFO("the producer " << (waited ? "waited for room" : "had not started"));
    CHECK(got == want);
    CHECK(q.unfinished() == 0u);

    // A handle destroyed with items unconfirmed stores them first.
    {
        remote::Store own = remote::connect(server.urls());  // and its connection closed after
        auto h = remote::Queue::open(own, name);
        for (int i = 0; i < 12; ++i) h.put_async("c" + std::to_string(i));
    }
    CHECK(q.unfinished() == 12u);
    want.clear();
    for (int i = 0; i < 12; ++i) want.push_back("c" + std::to_string(i));
    CHECK(drain(12) == want);

    // join() on the producing handle counts its own unconfirmed puts.
    q.put_async("d0");
    CHECK(!q.join_for(100ms));
    CHECK(drain(1) == std::vector<std::string>{"d0"});
    CHECK(q.join_for(30s));

    // While one thread puts, another may join() (and so settle) the same
    // handle; a third consumes: every item once, in order.
    {
        std::atomic<bool> putting{true};
        std::thread joiner([&] {
            while (putting) q.join_for(5ms);
        });
        std::vector<std::string> got_e;
        std::thread consumer([&] {
            while (got_e.size() < 300) {
                auto l = other.get_for(30s);
                if (!l) return;
                got_e.push_back(l->item());
                l->ack();
            }
        });
        for (int i = 0; i < 300; ++i) q.put_async("e" + std::to_string(i));
        q.flush();
        putting = false;
        joiner.join();
        consumer.join();
        want.clear();
        for (int i = 0; i < 300; ++i) want.push_back("e" + std::to_string(i));
        CHECK(got_e == want);
    }

    // Too large: refused at once, nothing sent.
    const std::string big(q.max_item_size() + 1, 'x');
    CHECK_THROWS_AS(q.put_async(big), shm::error);
    CHECK(q.unflushed() == 0u);
    CHECK(q.unfinished() == 0u);
}

TEST_CASE("remote: a producer SIGKILLed in the middle of pipelined puts: what it flushed is there, once, in order",
          "[remote][crash]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("q");
    remote::QueueOptions o;
    o.max_items = 1 << 20;
    auto q = remote::Queue::open_or_create(store, name, o);
    TempDir tmp;
    int next = 0;  // the first item of the next producer
    std::vector<int> got;
    // Killed at varied points: after its first flush, and further in.
    for (int round = 0; round < 3; ++round) {
        const std::string progress = tmp.path + "/progress" + std::to_string(round);
        const int from = next, kill_after = from + 97 * (1 + round * 3);
        pid_t producer = spawn_child({"produce-async", server.urls(), name, std::to_string(from),
                                      std::to_string(from + 1000000), "97", progress},
                                     tmp.path + "/producer.log");
        REQUIRE(test::eventually(
            [&] { return ::access(progress.c_str(), F_OK) == 0 && std::stoi(read_text(progress)) >= kill_after; },
            120s));
        test::kill_and_reap(producer);
        const int flushed = std::stoi(read_text(progress));
        // Everything it stored, in order: at least what it flushed.
        const int before = static_cast<int>(got.size());
        while (q.unfinished() > 0) {  // the producer is dead: nothing more comes
            auto l = q.get_for(60s);
            REQUIRE(l);
            got.push_back(std::stoi(l->item()));
            REQUIRE(l->ack());
        }
        INFO("round " << round << ": flushed up to " << flushed << ", got " << got.size() - before << " items");
        REQUIRE(static_cast<int>(got.size()) - before >= flushed - from);
        for (int i = before; i < static_cast<int>(got.size()); ++i) REQUIRE(got[i] == from + (i - before));
        next = got.back() + 1;
    }
    CHECK(q.unfinished() == 0u);
}

TEST_CASE("remote: set_async keeps a dict handle's order, reads its own writes, and flushes on destruction",
          "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("d");
    auto d = remote::Dict::open_or_create(store, name);
    auto other = remote::Dict::open(store, name);
    remote::ObjectOptions copy;
    copy.local_copy = true;

    CHECK(d.flush() == 0u);  // nothing sent yet
    for (int i = 0; i < 300; ++i) d.set_async("k" + std::to_string(i % 10), i);
    CHECK(d.unflushed() <= 300u);
    // Without a local copy, a read of the handle stores its sets first.
    CHECK(d.get<int>("k3") == 293);
    CHECK(d.unflushed() == 0u);
    for (int k = 0; k < 10; ++k) CHECK(other.get<int>("k" + std::to_string(k)) == 290 + k);

    // The handle's other operations come after its pipelined sets.
    d.set_async("x", 1);
    CHECK(d.erase("x"));
    CHECK(!other.contains("x"));
    d.set_async("x", 2);
    CHECK(d.increment("x", 5) == 7);
    d.set_async("x", 10);
    CHECK(d.pop("x") == shm::Value(10));
    d.set_async("y", 1);
    CHECK(d.size() == 11u);
    d.set_async("y", 2);
    CHECK(d.setdefault("y", 0) == shm::Value(2));
    d.set_async("y", 3);
    d.set("y", 4);
    d.set_async("z", 0);
    d.clear();
    CHECK(other.size() == 0u);

    // With a local copy: its own writes at once, however many are out.
    auto lc = remote::Dict::open(store, name, copy);
    for (int i = 0; i < 500; ++i) {
        lc.set_async("m", i);
        REQUIRE(lc.get<int>("m") == i);
    }
    lc.set_async("new", "v");
    CHECK(lc.contains("new"));
    CHECK(lc.flush() <= 501u);
    CHECK(lc.get<int>("m") == 499);
    CHECK(other.get<int>("m") == 499);
    lc.sync();
    CHECK(lc.get<int>("m") == 499);

    // A handle destroyed with sets unconfirmed stores them first.
    {
        remote::Store own = remote::connect(server.urls());  // and its connection closed after
        auto h = remote::Dict::open(own, name);
        for (int i = 0; i < 200; ++i) h.set_async("z" + std::to_string(i % 3), i);
    }
    CHECK(other.get<int>("z0") == 198);
    CHECK(other.get<int>("z1") == 199);
    CHECK(other.get<int>("z2") == 197);

    // Threads sharing a handle: one sets, one reads (each read stores what
    // was set before it); the values read never go back.
    {
        std::atomic<bool> setting{true};
        std::vector<int> seen;
        std::thread reader([&] {
            while (setting) seen.push_back(static_cast<int>(d.get("t", shm::Value(-1)).as_int()));
        });
        for (int i = 0; i < 600; ++i) d.set_async("t", i);
        d.flush();
        setting = false;
        reader.join();
        CHECK(std::is_sorted(seen.begin(), seen.end()));
        CHECK(other.get<int>("t") == 599);
    }

    // Too large to pipeline: as set(), refused whole, nothing sent.
    const std::string big(8 << 20, 'x');
    CHECK_THROWS_AS(d.set_async("big", big), shm::error);
    CHECK(d.unflushed() == 0u);
    CHECK(!other.contains("big"));
}

TEST_CASE("remote: a process SIGKILLed in the middle of pipelined sets: what it flushed is there", "[remote][crash]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("d");
    auto d = remote::Dict::open_or_create(store, name);
    TempDir tmp;
    // Killed at varied points: after its first flush, and further in.
    for (int round = 0; round < 3; ++round) {
        d.clear();
        const std::string progress = tmp.path + "/progress" + std::to_string(round);
        const int kill_after = 97 * (1 + round * 3);
        pid_t writer = spawn_child({"set-async", server.urls(), name, "97", progress}, tmp.path + "/writer.log");
        REQUIRE(test::eventually(
            [&] { return ::access(progress.c_str(), F_OK) == 0 && std::stoi(read_text(progress)) >= kill_after; },
            120s));
        test::kill_and_reap(writer);
        const int flushed = std::stoi(read_text(progress));
        INFO("round " << round << ": flushed " << flushed << " sets");
        // Each key holds one of its own values, no older than the last
        // one flushed.
        for (int k = 0; k < 7; ++k) {
            const int last_flushed = (flushed - 1) - ((flushed - 1 - k) % 7 + 7) % 7;
            const int v = d.get<int>("k" + std::to_string(k));
            CHECK(v % 7 == k);
            CHECK(v >= last_flushed);
        }
    }
}

TEST_CASE("remote: nowait forms, sizes, task_done, names of another kind", "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    CHECK(store.replicas() == 1);
    remote::QueueOptions o;
    o.max_items = 2;
    o.max_item_size = 16;
    const std::string name = unique("q");
    auto q = remote::Queue::create(store, name, o);
    CHECK_THROWS_AS(remote::Queue::create(store, name, o), shm::already_exists);
    CHECK_THROWS_AS(q.get_nowait(), shm::empty);
    CHECK_THROWS_WITH(q.put(std::string(17, 'x')), Catch::Contains("max_item_size"));
    q.put_nowait("a");
    q.put_nowait("b");
    CHECK_THROWS_AS(q.put_nowait("c"), shm::full);
    CHECK(q.full());
    CHECK(q.unfinished() == 2);
    auto l = q.get_nowait();
    CHECK(l.item() == "a");
    // A get fetches what there is, up to a batch: "b" waits in this
    // handle, leased to it, for its next get.
    CHECK(q.leased() == 2);
    // task_done() acknowledges the oldest item this handle got.
    CHECK(q.task_done());
    CHECK(!l.ack());
    CHECK_THROWS_AS(q.task_done(), shm::error);
    CHECK(q.unfinished() == 1);
    auto b = q.get_nowait();
    CHECK(b.item() == "b");
    b.nak();
    // Given back: delivered again at once (here: to this handle).
    auto b2 = q.get_for(30s);
    REQUIRE(b2);
    CHECK(b2->item() == "b");
    CHECK(b2->deliveries() == 2);
    // ack_nowait(): sent, not waited for; the item is gone all the same.
    b2->ack_nowait();
    CHECK(b2->acked());
    CHECK(!b2->ack());  // once
    CHECK(test::eventually([&] { return q.unfinished() == 0; }, 60s));
    CHECK(!q.get_for(500ms));
    q.put("c");
    q.purge();
    CHECK(q.unfinished() == 0);

    // One name, one kind.
    CHECK(store.kind(name) == std::optional<std::string>("queue"));
    CHECK_THROWS_AS(remote::Dict::open_or_create(store, name), remote::layout_mismatch);
    CHECK_THROWS_AS(remote::Lock::open_or_create(store, name), shm::type_mismatch);
    CHECK_THROWS_AS(remote::Queue::open(store, unique("absent")), shm::not_found);
    CHECK_THROWS_AS(remote::Dict::open(store, unique("absent")), shm::not_found);
    CHECK_THROWS_AS(remote::Dict::open_or_create(store, "bad name"), shm::name_error);
    CHECK(store.remove(name));
    CHECK(!store.kind(name));
    CHECK(!store.remove(name));
    auto d = remote::Dict::open_or_create(store, name);  // free for another kind now
    d.set("k", 1);
    CHECK(remote::Dict::open(store, name).get("k").as_int() == 1);
}

TEST_CASE("remote: an item not acknowledged is delivered again after its lease", "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    remote::QueueOptions o;
    o.lease = 1s;
    auto q = remote::Queue::open_or_create(store, unique("q"), o);
    CHECK(q.lease() == 1s);
    q.put("once");
    {
        auto l = q.get_for(10s);
        REQUIRE(l);
        CHECK(l->deliveries() == 1);
        // Dropped without ack.
    }
    auto again = q.get_for(60s);
    REQUIRE(again);
    CHECK(again->item() == "once");
    CHECK(again->deliveries() == 2);
    CHECK(again->ack());
    CHECK(!q.get_for(1500ms));  // acknowledged: never again
}

TEST_CASE("remote: a lock whose holder is SIGKILLed is free again after the lease, with a larger token",
          "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("lock");
    remote::LockOptions lo;
    lo.lease = 2s;
    remote::Lock mine = remote::Lock::open_or_create(store, name, lo);
    CHECK(mine.lease() == 2s);
    CHECK(mine.token() == 0);
    CHECK_THROWS_AS(mine.unlock(), shm::lock_error);
    // Held past several leases: the renewals keep it.
    REQUIRE(mine.try_lock());
    const std::uint64_t first = mine.token();
    CHECK(first > 0);
    CHECK_THROWS_AS(mine.lock(), shm::lock_error);
    {
        remote::Lock other = remote::Lock::open(store, name);
        CHECK(other.lease() == 2s);
        for (int i = 0; i < 3; ++i) {
            std::this_thread::sleep_for(2s);
            CHECK(!other.try_lock());
            CHECK(mine.held());
        }
    }
    mine.unlock();
    CHECK(!mine.held());

    TempDir tmp;
    const std::string ready = tmp.path + "/ready";
    pid_t holder = spawn_child({"lock-hold", server.urls(), name, ready});
    REQUIRE(test::eventually([&] { return ::access(ready.c_str(), F_OK) == 0; }, 60s));
    const std::uint64_t held_token = std::stoull(read_text(ready));
    CHECK(held_token > first);
    CHECK(!mine.try_lock());
    test::kill_and_reap(holder);
    // Free again once its lease has run out: no sooner than a renewal
    // could have kept it, and with a larger token.
    CHECK(mine.try_lock_for(60s));
    CHECK(mine.token() > held_token);
    mine.unlock();
}

TEST_CASE("remote: the items of a SIGKILLed consumer are delivered again after the lease", "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("q");
    remote::QueueOptions o;
    o.lease = 2s;
    auto q = remote::Queue::open_or_create(store, name, o);
    std::vector<std::string> items;
    for (int i = 0; i < 10; ++i) items.push_back("job " + std::to_string(i));
    CHECK(q.put_many(items) == items.size());
    TempDir tmp;
    const std::string ready = tmp.path + "/ready";
    pid_t consumer = spawn_child({"hold", server.urls(), name, "3", ready});
    REQUIRE(test::eventually([&] { return ::access(ready.c_str(), F_OK) == 0; }, 60s));
    std::string held = read_text(ready);
    CHECK(held == "job 0\njob 1\njob 2\n");
    test::kill_and_reap(consumer);
    // Everything comes, once each: the killed consumer's three items
    // again, and those it had fetched with them (a get fetches up to a
    // batch of what there is) again too, or for the first time if it had
    // not.
    std::map<std::string, std::uint32_t> got;
    while (got.size() < items.size()) {
        auto l = q.get_for(60s);
        REQUIRE(l);
        CHECK(got.count(l->item()) == 0);
        got[l->item()] = l->deliveries();
        CHECK(l->ack());
    }
    for (int i = 0; i < 10; ++i) {
        const std::uint32_t n = got["job " + std::to_string(i)];
        if (i < 3)
            CHECK(n == 2u);
        else
            CHECK((n == 1u || n == 2u));
    }
    CHECK(q.unfinished() == 0);
}

TEST_CASE("remote: a local copy reads its own writes at once, another's after sync(), and never goes back",
          "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("d");
    remote::ObjectOptions copy;
    copy.local_copy = true;
    auto other = remote::Dict::open_or_create(store, name);  // reads and writes on the servers
    other.set("before", 1);
    other.set("gone", 2);
    CHECK(other.erase("gone"));
    auto d = remote::Dict::open(store, name, copy);
    REQUIRE(d.has_local_copy());
    CHECK(!other.has_local_copy());
    // What was there when the copy started is in it, deletes too.
    CHECK(d.get("before").as_int() == 1);
    CHECK(!d.contains("gone"));
    CHECK(d.size() == 1);

    // Read your writes, with no sync, and never an older value: the watch
    // brings each of these writes again, later, and must not undo a newer one.
    for (int i = 0; i < 200; ++i) {
        d.set("mine", i);
        REQUIRE(d.get("mine").as_int() == i);
    }
    CHECK(other.get("mine").as_int() == 199);

    // Another handle's writes and deletes, after sync().
    other.set("theirs", "x");
    other.set("before", 10);
    CHECK(other.erase("mine"));
    d.sync();
    CHECK(d.get("theirs").as_string() == "x");
    CHECK(d.get("before").as_int() == 10);
    CHECK(!d.contains("mine"));

    // A compare-and-set on a stale copy still starts from the servers' value.
    other.set("n", 100);
    CHECK(d.increment("n") == 101);  // whether or not the copy has seen 100
    CHECK(d.get("n").as_int() == 101);
    other.set("p", 7);
    CHECK(d.pop("p").as_int() == 7);  // absent from a stale copy: asked of the servers
    CHECK(!d.contains("p"));
    other.set("sd", "theirs");
    CHECK(d.setdefault("sd", "mine").as_string() == "theirs");
    CHECK(other.get("n").as_int() == 101);

    // clear() by another handle empties the copy; a key set after it stays.
    other.clear();
    other.set("after", true);
    d.sync();
    CHECK(d.size() == 1);
    CHECK(d.keys() == std::vector<std::string>{"after"});
    CHECK(other.keys() == std::vector<std::string>{"after"});  // the clear marker is not a key
    // And clear() through the copy's own handle.
    d.set("a", 1);
    d.clear();
    CHECK(d.size() == 0);
    CHECK(!d.contains("after"));
    CHECK(other.size() == 0);
    other.set("z", 26);
    d.sync();
    CHECK(d.items().size() == 1);

    // A List's copy: the whole list is one value.
    auto l_other = remote::List::open_or_create(store, unique("l"));
    auto l = remote::List::open(store, l_other.name(), copy);
    l_other.extend({1, 2, 3});
    l.sync();
    CHECK(l.size() == 3);
    l.append(4);
    CHECK(l.get(-1).as_int() == 4);  // its own write, at once
    CHECK(l_other.size() == 4);
}

TEST_CASE("remote: a local copy follows its bucket across a server restart", "[remote]") {
    test::NatsCluster server(1);
    remote::StoreOptions so;
    so.request_timeout = 30s;  // a restart and the client's reconnect take seconds on a loaded host
    remote::Store store = remote::connect(server.urls(), so);
    remote::ObjectOptions copy;
    copy.local_copy = true;
    const std::string name = unique("d");
    auto d = remote::Dict::open_or_create(store, name, copy);
    d.set("k", 1);
    server.restart(0);
    remote::Store other_store = remote::connect(server.urls(), so);
    auto other = remote::Dict::open(other_store, name);
    other.set("k", 2);
    other.set("new", "yes");
    d.sync();
    CHECK(d.get("k").as_int() == 2);
    CHECK(d.get("new").as_string() == "yes");
    d.set("k", 3);
    CHECK(d.get("k").as_int() == 3);
    CHECK(other.get("k").as_int() == 3);
}

TEST_CASE("remote: a server restarted on its file store brings the queue and the dict back", "[remote]") {
    test::NatsCluster server(1);
    const std::string qn = unique("q"), dn = unique("d");
    {
        remote::Store store = remote::connect(server.urls());
        auto q = remote::Queue::open_or_create(store, qn);
        q.put_many({"a", "b", "c"});
        auto d = remote::Dict::open_or_create(store, dn);
        d.set("key", "value");
        d.set("n", 42);
    }
    server.restart(0);
    remote::Store store = remote::connect(server.urls());
    auto q = remote::Queue::open(store, qn);
    for (const char* want : {"a", "b", "c"}) {
        auto l = q.get_for(30s);
        REQUIRE(l);
        CHECK(l->item() == want);
        l->ack();
    }
    auto d = remote::Dict::open(store, dn);
    CHECK(d.get("key").as_string() == "value");
    CHECK(d.get("n").as_int() == 42);
    CHECK(d.size() == 2);
}

TEST_CASE("remote: a server that does not answer fails the call within its bound, clearly", "[remote]") {
    test::NatsCluster server(1);
    remote::StoreOptions so;
    so.request_timeout = 1s;
    remote::Store store = remote::connect(server.urls(), so);
    auto d = remote::Dict::open_or_create(store, unique("d"));
    auto q = remote::Queue::open_or_create(store, unique("q"));
    d.set("k", 1);
    server.freeze(0);
    auto start = std::chrono::steady_clock::now();
    try {
        d.get("k");
        FAIL("a frozen server answered");
    } catch (const remote::unavailable& e) {
        CHECK(e.code().value() == ETIMEDOUT);
        CHECK_THAT(e.what(), Catch::Contains(server.urls()));
        CHECK_THAT(e.what(), Catch::Contains("dict"));
    }
    CHECK_THROWS_AS(q.put("x"), remote::unavailable);
    // A generous cap, only against a true hang.
    CHECK(std::chrono::steady_clock::now() - start < 120s);
    server.thaw(0);

    // Pipelined puts the frozen server never answered: flush() fails
    // within its bound, keeps them, and stores each once when it answers
    // again.
    auto p = remote::Queue::open_or_create(store, unique("q"));
    REQUIRE(p.unfinished() == 0u);  // the room is learned before the freeze
    p.put_async("p0");
    REQUIRE(p.flush() == 1u);
    server.freeze(0);
    for (int i = 1; i <= 20; ++i) p.put_async("p" + std::to_string(i));
    CHECK_THROWS_AS(p.flush(), remote::unavailable);
    CHECK(p.unflushed() > 0u);
    server.thaw(0);
    // The store's request time-out is 1 s: a loaded machine may need a
    // few flushes before one is answered in time.
    CHECK(test::eventually(
        [&] {
            try {
                p.flush();
                return true;
            } catch (const remote::unavailable&) {
                return false;
            }
        },
        120s));
    CHECK(p.unflushed() == 0u);
    std::vector<std::string> got;
    while (got.size() < 21 && p.unfinished() > 0) {
        auto l = p.get_for(60s);
        REQUIRE(l);
        got.push_back(l->item());
        REQUIRE(l->ack());
    }
    CHECK(p.unfinished() == 0u);
    std::vector<std::string> want;
    for (int i = 0; i <= 20; ++i) want.push_back("p" + std::to_string(i));
    CHECK(got == want);

    // Pipelined sets the frozen server never answered: the same, and of
    // several sets of a key, the last one is what is stored.
    auto pd = remote::Dict::open_or_create(store, unique("d"));
    pd.set_async("a", 0);
    REQUIRE(pd.flush() == 1u);
    server.freeze(0);
    for (int i = 1; i <= 20; ++i) pd.set_async(i % 2 ? "a" : "b", i);
    CHECK_THROWS_AS(pd.flush(), remote::unavailable);
    CHECK(pd.unflushed() > 0u);
    server.thaw(0);
    CHECK(test::eventually(
        [&] {
            try {
                pd.flush();
                return true;
            } catch (const remote::unavailable&) {
                return false;
            }
        },
        120s));
    CHECK(pd.unflushed() == 0u);
    auto fresh = remote::Dict::open(store, pd.name());
    CHECK(fresh.get<int>("a") == 19);
    CHECK(fresh.get<int>("b") == 20);
}

TEST_CASE("remote: connecting to nothing fails clearly, naming the server", "[remote]") {
    const std::string url = "nats://127.0.0.1:" + std::to_string(test::free_port());
    remote::StoreOptions so;
    so.request_timeout = 1s;
    try {
        remote::connect(url, so);
        FAIL("connected to a port nobody listens on");
    } catch (const remote::unavailable& e) {
        CHECK_THAT(e.what(), Catch::Contains(url));
    }
    CHECK_THROWS_AS(remote::connect("", so), shm::error);
    CHECK_THROWS_AS(remote::connect(url, [] {
        remote::StoreOptions o;
        o.replicas = 9;
        return o;
    }()), shm::error);
}

TEST_CASE("remote: three replicas asked of one server are refused, clearly, and change nothing", "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("q");
    remote::QueueOptions o;
    o.replicas = 3;
    CHECK_THROWS_AS(remote::Queue::open_or_create(store, name, o), remote::not_enough_replicas);
    remote::ObjectOptions r3;
    r3.replicas = 3;
    CHECK_THROWS_AS(remote::Dict::open_or_create(store, unique("d"), r3), remote::not_enough_replicas);
    // The refused name is free: one replica works.
    CHECK(!store.kind(name));
    auto q = remote::Queue::open_or_create(store, name);
    CHECK(q.replicas() == 1);
}

namespace {
// The name of the server that leads stream `stream` ("" if unknown), asked
// of the servers with the C client itself.
std::string stream_leader(const std::string& urls, const std::string& stream) {
    natsConnection* nc = nullptr;
    std::string leader;
    if (natsConnection_ConnectTo(&nc, urls.c_str()) != NATS_OK) return leader;
    jsCtx* js = nullptr;
    if (natsConnection_JetStream(&js, nc, nullptr) == NATS_OK) {
        jsStreamInfo* si = nullptr;
        if (js_GetStreamInfo(&si, js, stream.c_str(), nullptr, nullptr) == NATS_OK) {
            if (si->Cluster && si->Cluster->Leader) leader = si->Cluster->Leader;
            jsStreamInfo_Destroy(si);
        }
        jsCtx_Destroy(js);
    }
    natsConnection_Destroy(nc);
    return leader;
}
}  // namespace

namespace {
// A producer (put_many() in chunks, or put_async() with a flush() every
// chunk) and three consumers move n items through a 3-replica queue; a
// third of the way in, the server leading the queue's stream is SIGKILLed.
void transfer_with_a_leader_killed(bool pipelined, int default_items) {
    test::NatsCluster cluster(3);
    remote::Store store = remote::connect(cluster.urls(), fault_options());
    CHECK(store.replicas() == 3);
    const std::string name = unique("transfer");
    const int n =
        std::getenv("SHM_TEST_TRANSFER_ITEMS") ? std::atoi(std::getenv("SHM_TEST_TRANSFER_ITEMS")) : default_items;
    const int consumers = 3;
    remote::QueueOptions o;
    o.max_items = n;
    o.max_item_size = 64;
    o.lease = 10s;
    auto q = remote::Queue::open_or_create(store, name, o);
    REQUIRE(q.replicas() == 3);

    TempDir tmp;
    const std::string progress = tmp.path + "/progress", done = tmp.path + "/done";
    pid_t producer =
        pipelined ? spawn_child({"produce-async", cluster.urls(), name, "0", std::to_string(n), "1000", progress},
                                tmp.path + "/producer.log")
                  : spawn_child({"produce", cluster.urls(), name, "0", std::to_string(n), progress},
                                tmp.path + "/producer.log");
    std::vector<pid_t> cpids;
    for (int c = 0; c < consumers; ++c)
        cpids.push_back(spawn_child({"consume", cluster.urls(), name, done, tmp.path + "/out" + std::to_string(c)},
                                    tmp.path + "/consumer" + std::to_string(c) + ".log"));
    // A third of the way in, kill the server that leads the queue's stream.
    REQUIRE(test::eventually(
        [&] { return ::access(progress.c_str(), F_OK) == 0 && std::stoi(read_text(progress)) >= n / 3; }, 300s));
    const std::string leader = stream_leader(cluster.urls(), "SHMQ_" + [&] {
        std::string s;
        for (char ch : name) s += (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-') ? std::string(1, ch) : "_2D";
        return s;
    }());
    int victim = 0;
    for (int i = 0; i < cluster.size(); ++i)
        if (leader == "n" + std::to_string(i)) victim = i;
    INFO("stream leader '" << leader << "', killing n" << victim);
    cluster.kill(victim);

    const int producer_exit = test::wait_exit(producer, std::chrono::seconds(500));
    INFO("producer log: " << read_text(tmp.path + "/producer.log"));
    CHECK(producer_exit == 0);
    const int acknowledged = ::access(progress.c_str(), F_OK) == 0 ? std::stoi(read_text(progress)) : 0;
    CHECK(acknowledged == n);
    // Everything acknowledged by the consumers (redeliveries included):
    // nothing waiting, nothing leased. Then stop them.
    // (The consumer's servers may not answer while they elect its new
    // leader: a time-out is "not yet".)
    auto settled = [&] {
        try {
            return q.qsize() == 0 && q.leased() == 0;
        } catch (const shm::error&) {
            return false;
        }
    };
    CHECK(test::eventually(settled, 300s));
    // And nothing left in the stream. A replicated work-queue stream of
    // nats-server before 2.11 may keep a few items whose acknowledgement
    // it took when its leader changed (acknowledged, never delivered
    // again, but not removed: upstream issue 5148, fixed by pull request
    // 6140); unfinished() counts them. Checked on a fixed server only.
    const int version = test::nats_server_version();
    std::size_t left = 0;
    CHECK(test::eventually(
        [&] {
            try {
                left = q.unfinished();
                return true;
            } catch (const shm::error&) {
                return false;
            }
        },
        300s));
    INFO("items left in the stream: " << left << " (nats-server version " << version << ")");
    if (version == 0 || version >= 21100) CHECK(left == 0);
    else if (left != 0) WARN("nats-server kept " << left << " acknowledged items in the stream");
    write_file(done, "");
    for (int c = 0; c < consumers; ++c) {
        INFO("consumer " << c << " log: " << read_text(tmp.path + "/consumer" + std::to_string(c) + ".log"));
        CHECK(test::wait_exit(cpids[c], std::chrono::seconds(600)) == 0);
    }

    std::vector<int> delivered(n, 0);
    std::set<int> unconfirmed;
    long stray = 0;
    for (int c = 0; c < consumers; ++c) {
        std::istringstream in(read_text(tmp.path + "/out" + std::to_string(c)));
        std::string kind;
        long item;
        while (in >> kind >> item) {
            if (item < 0 || item >= n) {
                ++stray;
                continue;
            }
            if (kind == "d") ++delivered[item];
            if (kind == "u") unconfirmed.insert(static_cast<int>(item));
        }
    }
    CHECK(stray == 0);
    int missing = 0, duplicated_confirmed = 0, duplicated = 0;
    for (int i = 0; i < acknowledged; ++i) {
        if (delivered[i] == 0) ++missing;
        if (delivered[i] > 1) {
            ++duplicated;
            if (!unconfirmed.count(i)) ++duplicated_confirmed;
        }
    }
    INFO("delivered twice or more: " << duplicated << ", acks not confirmed (or late): " << unconfirmed.size());
    // At least once: nothing acknowledged to the producer is lost.
    CHECK(missing == 0);
    // Exactly once where the consumer's acknowledgement was confirmed in
    // time. nats-server before 2.10.17 may deliver again an item whose
    // acknowledgement it had confirmed when the consumer's leader changes
    // (fixed upstream by nats-server pull requests 5419 and 5482): on such
    // a server a few in a thousand are allowed, none on a fixed one.
    const int allowed = version != 0 && version < 21017 ? n / 1000 : 0;
    INFO("nats-server version " << version << ": " << allowed << " allowed");
    CHECK(duplicated_confirmed <= allowed);
}
}  // namespace

TEST_CASE("remote: SIGKILL of the stream's leader in the middle of a 100,000-item transfer loses nothing",
          "[remote][cluster]") {
    transfer_with_a_leader_killed(false, 100000);
}

TEST_CASE("remote: SIGKILL of the stream's leader in the middle of pipelined puts loses nothing flushed",
          "[remote][cluster]") {
    transfer_with_a_leader_killed(true, 30000);
}

TEST_CASE("remote: a get that timed out leaves no request behind: an item put after it goes to another consumer",
          "[remote]") {
    test::NatsCluster server(1);
    remote::Store store = remote::connect(server.urls());
    const std::string name = unique("q");
    auto idle = remote::Queue::open_or_create(store, name);  // the lease: 30 s
    REQUIRE(idle.lease() == 30s);
    remote::Store other_store = remote::connect(server.urls());
    auto producer = remote::Queue::open(other_store, name);
    auto other = remote::Queue::open(other_store, name);
    for (int round = 0; round < 30; ++round) {
        // A get that times out on the empty queue, its handle kept (and
        // not used again this round): no request of its may be left on the
        // server for the next item to be sent to.
        CHECK(!idle.get_for(std::chrono::milliseconds(5 + 7 * (round % 10))));
        const std::string item = "item " + std::to_string(round);
        producer.put(item);
        // Delivered to the other consumer, for the first time: not sent to
        // the idle handle (where it would wait out the 30 s lease, far past
        // this 5 s get, before being delivered again).
        auto l = other.get_for(5s);
        REQUIRE(l);
        CHECK(l->item() == item);
        CHECK(l->deliveries() == 1);
        CHECK(l->ack());
    }
    CHECK(idle.unfinished() == 0);
}

namespace {
// The name of the server that leads the queue's consumer ("" if unknown).
std::string consumer_leader(const std::string& urls, const std::string& stream) {
    natsConnection* nc = nullptr;
    std::string leader;
    if (natsConnection_ConnectTo(&nc, urls.c_str()) != NATS_OK) return leader;
    jsCtx* js = nullptr;
    if (natsConnection_JetStream(&js, nc, nullptr) == NATS_OK) {
        jsConsumerInfo* ci = nullptr;
        if (js_GetConsumerInfo(&ci, js, stream.c_str(), "shm", nullptr, nullptr) == NATS_OK) {
            if (ci->Cluster && ci->Cluster->Leader) leader = ci->Cluster->Leader;
            jsConsumerInfo_Destroy(ci);
        }
        jsCtx_Destroy(js);
    }
    natsConnection_Destroy(nc);
    return leader;
}
}  // namespace

TEST_CASE("remote: SIGKILL of the server leading the queue's consumer: the consumer's gets carry on, nothing lost",
          "[remote][cluster]") {
    test::NatsCluster cluster(3);
    remote::Store store = remote::connect(cluster.urls(), fault_options());
    const std::string name = unique("leader");  // of [a-z0-9-]: its stream is SHMQ_ and the name
    remote::QueueOptions o;
    o.max_items = 1000;
    o.lease = 10s;
    auto q = remote::Queue::open_or_create(store, name, o);
    REQUIRE(q.replicas() == 3);
    const int n = 400;
    std::atomic<int> put{0}, acked{0};
    std::mutex mu;
    std::string errors;
    std::set<std::string> got;
    std::thread producer([&] {
        try {
            remote::Store ps = remote::connect(cluster.urls(), fault_options());
            auto pq = remote::Queue::open(ps, name);
            for (int i = 0; i < n; ++i) {
                pq.put(std::to_string(i));
                ++put;
                if (i % 4 == 0) std::this_thread::sleep_for(2ms);  // the consumer waits in get() now and then
            }
        } catch (const std::exception& e) {
            std::lock_guard<std::mutex> g(mu);
            errors += std::string("producer: ") + e.what() + "\n";
        }
    });
    std::thread consumer([&] {
        try {
            remote::Store cs = remote::connect(cluster.urls(), fault_options());
            auto cq = remote::Queue::open(cs, name);
            for (;;) {
                {
                    std::lock_guard<std::mutex> g(mu);
                    if (static_cast<int>(got.size()) == n) break;
                }
                // A generous cap against a true hang (an item lost).
                auto l = cq.get_for(300s);
                if (!l) throw std::runtime_error("no item for 300 s");
                {
                    std::lock_guard<std::mutex> g(mu);
                    got.insert(l->item());
                }
                l->ack();  // an ack lost with the server: the item comes again, counted once
                ++acked;
            }
        } catch (const std::exception& e) {
            std::lock_guard<std::mutex> g(mu);
            errors += std::string("consumer: ") + e.what() + "\n";
        }
    });
    // A third of the way in, kill the server that leads the consumer.
    REQUIRE(test::eventually([&] { return acked.load() >= n / 3; }, 300s));
    const std::string leader = consumer_leader(cluster.urls(), "SHMQ_" + name);
    int victim = -1;
    for (int i = 0; i < cluster.size(); ++i)
        if (leader == "n" + std::to_string(i)) victim = i;
    INFO("consumer leader '" << leader << "'");
    REQUIRE(victim >= 0);
    cluster.kill(victim);
    producer.join();
    consumer.join();
    INFO("errors: " << errors);
    CHECK(errors.empty());
    CHECK(put.load() == n);
    CHECK(static_cast<int>(got.size()) == n);
    CHECK(test::eventually([&] { return q.unfinished() == 0; }, 300s));
}

TEST_CASE("remote: a get waiting while its server shuts down and comes back carries on", "[remote]") {
    test::NatsCluster server(1);
    remote::StoreOptions so = fault_options();
    so.replicas = 1;
    const std::string name = unique("q");
    remote::Store store = remote::connect(server.urls(), so);
    auto q = remote::Queue::open_or_create(store, name);
    for (int round = 0; round < 3; ++round) {
        std::atomic<bool> waiting{false};
        std::string error, item;
        std::thread consumer([&] {
            try {
                waiting = true;
                // The server tells the gets waiting on it that it shuts
                // down ("Server Shutdown"): retried, not thrown.
                auto l = q.get_for(300s);
                if (l) {
                    item = l->item();
                    if (!l->ack()) error = "ack not confirmed";
                } else {
                    error = "no item for 300 s";
                }
            } catch (const std::exception& e) {
                error = e.what();
            }
        });
        REQUIRE(test::eventually([&] { return waiting.load(); }, 60s));
        std::this_thread::sleep_for(300ms);  // most likely in its request by now
        server.restart(0);
        remote::Store ps = remote::connect(server.urls(), so);
        remote::Queue::open(ps, name).put("after " + std::to_string(round));
        consumer.join();
        INFO("round " << round << ": " << error);
        CHECK(error.empty());
        CHECK(item == "after " + std::to_string(round));
    }
}
