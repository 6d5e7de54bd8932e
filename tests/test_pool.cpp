// shm::Pool: results in order, errors per task, workers SIGKILLed at random
// and at every task, a task that kills its worker every time, and the
// pool's process killed.
#include <filesystem>
#include <future>
#include <set>

#include <fcntl.h>
#include <thread>

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <shm/shm.hpp>

#include "daemon.hpp"
#include "platform/testing.hpp"
#include "support.hpp"

using namespace std::chrono_literals;

namespace {
std::string echo(std::string_view t) { return "r:" + std::string(t); }

bool running(pid_t pid) {
    // Alive and not a zombie. (read(2): the process may go between open and
    // read, which fails with ESRCH.)
    std::string s(4096, '\0');
    int fd = ::open(("/proc/" + std::to_string(pid) + "/stat").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t n = ::read(fd, s.data(), s.size());
    ::close(fd);
    if (n <= 0) return false;
    s.resize(static_cast<std::size_t>(n));
    auto p = s.rfind(')');
    return p != std::string::npos && p + 2 < s.size() && s[p + 2] != 'Z';
}

shm::PoolOptions workers(unsigned n) {
    shm::PoolOptions o;
    o.processes = n;
    return o;
}

bool shm_dir_empty(const std::string& dir) {
    for (auto& e : std::filesystem::directory_iterator(dir)) {
        (void)e;
        return false;
    }
    return true;
}

std::string initialized = "no";
}  // namespace

TEST_CASE("Pool: map in order, submit, errors for their task alone, imap_unordered", "[pool]") {
    test::ShmDir dir;
    shm::Pool pool(
        [](std::string_view t) -> std::string {
            if (t == "bad") throw std::runtime_error("bad task");
            return echo(t) + ":" + initialized;
        },
        [] {
            shm::PoolOptions o = workers(2);
            o.initializer = [] { initialized = "yes"; };
            return o;
        }());
    CHECK(pool.processes() == 2);
    std::vector<std::string> tasks;
    for (int i = 0; i < 500; ++i) tasks.push_back(std::to_string(i));
    auto out = pool.map(tasks);
    REQUIRE(out.size() == 500);
    for (int i = 0; i < 500; ++i) CHECK(out[std::size_t(i)] == "r:" + std::to_string(i) + ":yes");
    auto f = pool.submit("one");
    CHECK(f.get() == "r:one:yes");
    auto bad = pool.submit("bad");
    auto good = pool.submit("good");
    try {
        bad.get();
        FAIL("no error");
    } catch (const shm::task_error& e) {
        CHECK(std::string(e.what()).find("bad task") != std::string::npos);
    }
    CHECK(good.get() == "r:good:yes");
    REQUIRE_THROWS_AS(pool.map({"a", "bad", "c"}), shm::task_error);
    std::vector<int> seen(100, 0);
    std::vector<std::string> many;
    for (int i = 0; i < 100; ++i) many.push_back(std::to_string(i));
    pool.imap_unordered(many, [&](std::size_t i, std::future<std::string>& r) {
        CHECK(r.get() == "r:" + std::to_string(i) + ":yes");
        ++seen[i];
    });
    for (int n : seen) CHECK(n == 1);
    REQUIRE_THROWS_AS(pool.join(), shm::error);  // not closed
    pool.close();
    REQUIRE_THROWS_AS(pool.submit("late"), shm::closed);
    pool.join();
    CHECK(pool.worker_pids().empty());
}

namespace {
struct Point {
    double x, y;
};
struct Label {  // not trivially copyable: its codec is below
    std::string text;
};
}  // namespace

template <>
struct shm::queue_codec<Label> {
    static std::string encode(const Label& l) { return "label:" + l.text; }
    static Label decode(std::string_view b) {
        if (b.substr(0, 6) != "label:") throw shm::error(EINVAL, "not a label");
        return Label{std::string(b.substr(6))};
    }
};

TEST_CASE("TypedPool: tasks and results through their codecs", "[pool]") {
    test::ShmDir dir;
    shm::TypedPool<Point, double> norms([](const Point& p) {
        if (p.x < 0) throw std::runtime_error("negative x");
        return p.x * p.x + p.y * p.y;
    }, workers(2));
    std::vector<Point> pts;
    for (int i = 0; i < 300; ++i) pts.push_back({double(i), 0.5});
    std::vector<double> out = norms.map(pts);
    REQUIRE(out.size() == 300);
    for (int i = 0; i < 300; ++i) CHECK(out[std::size_t(i)] == double(i) * i + 0.25);
    CHECK(norms.submit({3, 4}).get() == 25.0);
    auto bad = norms.submit({-1, 0});
    CHECK_THROWS_WITH(bad.get(), Catch::Contains("negative x"));
    std::vector<int> seen(50, 0);
    norms.imap_unordered(std::vector<Point>(pts.begin(), pts.begin() + 50), [&](std::size_t i, std::future<double>& r) {
        CHECK(r.get() == double(i) * i + 0.25);
        ++seen[i];
    });
    for (int n : seen) CHECK(n == 1);
    norms.close();
    norms.join();

    // A type with a codec of its own; a task that does not decode fails alone.
    shm::TypedPool<Label, std::string> upper([](const Label& l) {
        std::string s = l.text;
        for (char& c : s) c = char(std::toupper(static_cast<unsigned char>(c)));
        return s;
    }, workers(1));
    CHECK(upper.map({Label{"a"}, Label{"bc"}}) == std::vector<std::string>{"A", "BC"});
    auto raw = upper.raw().submit("no prefix");
    CHECK_THROWS_AS(raw.get(), shm::task_error);
    CHECK(upper.submit(Label{"after"}).get() == "AFTER");
}

TEST_CASE("Pool: threads of the pool's process submit at once", "[pool]") {
    test::ShmDir dir;
    shm::Pool pool(echo, workers(3));
    std::vector<std::thread> ts;
    std::atomic<int> wrong{0};
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&, t] {
            for (int i = 0; i < 200; ++i) {
                const std::string task = std::to_string(t) + "." + std::to_string(i);
                if (pool.submit(task).get() != "r:" + task) ++wrong;
            }
        });
    for (auto& t : ts) t.join();
    CHECK(wrong == 0);
}

TEST_CASE("Pool: imap_unordered from two threads at once, each gets its own results", "[pool]") {
    test::ShmDir dir;
    shm::Pool pool(echo, workers(2));
    std::atomic<int> wrong{0};
    auto run = [&](const std::string& tag) {
        std::vector<std::string> tasks;
        for (int i = 0; i < 300; ++i) tasks.push_back(tag + std::to_string(i));
        std::vector<int> seen(tasks.size(), 0);
        pool.imap_unordered(tasks, [&](std::size_t i, std::future<std::string>& r) {
            if (r.get() != "r:" + tasks[i]) ++wrong;
            ++seen[i];
        });
        for (int n : seen)
            if (n != 1) ++wrong;
    };
    std::thread a(run, "a"), b(run, "b");
    a.join();
    b.join();
    CHECK(wrong == 0);
}

TEST_CASE("Pool: max_tasks_per_child replaces workers", "[pool]") {
    test::ShmDir dir;
    shm::PoolOptions o;
    o.processes = 2;
    o.max_tasks_per_child = 5;
    shm::Pool pool([](std::string_view) { return std::to_string(::getpid()); }, o);
    std::vector<std::string> tasks(40, "x");
    auto pids = pool.map(tasks);
    CHECK(std::set<std::string>(pids.begin(), pids.end()).size() >= 8);
}

TEST_CASE("Pool: workers SIGKILLed at random: every result once, in order", "[pool][crash]") {
    test::ShmDir dir;
    shm::Pool pool(
        [](std::string_view t) {
            std::this_thread::sleep_for(200us);  // kills land in the middle of tasks
            return echo(t);
        },
        workers(3));
    std::atomic<bool> done{false};
    std::atomic<int> kills{0};
    std::thread killer([&] {
        while (!done && kills < 40) {
            std::this_thread::sleep_for(std::chrono::microseconds(1000 + test::rng()() % 10000));
            auto pids = pool.worker_pids();
            if (pids.empty()) continue;
            if (::kill(pids[test::rng()() % pids.size()], SIGKILL) == 0) ++kills;
        }
    });
    std::vector<std::string> tasks;
    for (int i = 0; i < 5000; ++i) tasks.push_back(std::to_string(i));
    std::vector<std::string> out;
    try {
        out = pool.map(tasks);
    } catch (...) {
        done = true;
        killer.join();
        throw;
    }
    done = true;
    killer.join();
    REQUIRE(out.size() == tasks.size());
    for (std::size_t i = 0; i < tasks.size(); ++i) CHECK(out[i] == "r:" + tasks[i]);
    WARN(kills << " workers killed; " << pool.redeliveries() << " tasks run again");
    CHECK(kills > 0);
    CHECK(pool.map({"after"}) == std::vector<std::string>{"r:after"});  // the pool goes on
}

TEST_CASE("Pool: workers whose fork failed are asked for again: the tasks get done", "[pool][crash]") {
    test::ShmDir dir;
    // The server, a fork of this process, starts with this count: its first
    // six forks fail (EAGAIN), the three workers the pool starts with and
    // the three it asks for again. A server that dropped a failed request
    // would leave the pool with no worker, and the map below waiting for good.
    shm::testing::failing_forks = 6;
    shm::Pool pool(echo, workers(3));
    shm::testing::failing_forks = 0;
    std::vector<std::string> tasks;
    for (int i = 0; i < 200; ++i) tasks.push_back(std::to_string(i));
    auto f = std::async(std::launch::async, [&] { return pool.map(tasks); });
    if (f.wait_for(120s) != std::future_status::ready) {  // a cap for a true hang only
        pool.terminate();  // fails what is pending: the map returns
        f.wait();
        FAIL("the map did not finish: no worker was started after the failed forks");
    }
    const std::vector<std::string> out = f.get();
    REQUIRE(out.size() == tasks.size());
    for (std::size_t i = 0; i < tasks.size(); ++i) CHECK(out[i] == "r:" + tasks[i]);
    // The pool is back to its three workers.
    for (int i = 0; i < 6000 && pool.worker_pids().size() < 3; ++i) std::this_thread::sleep_for(10ms);
    CHECK(pool.worker_pids().size() == 3);
}

TEST_CASE("Pool: a task that kills its worker every time fails alone after max_retries", "[pool][crash]") {
    test::ShmDir dir;
    shm::PoolOptions o;
    o.processes = 2;
    o.max_retries = 2;
    shm::Pool pool(
        [](std::string_view t) {
            if (t == "die") ::raise(SIGKILL);
            return echo(t);
        },
        o);
    std::vector<std::future<std::string>> fs;
    for (int i = 0; i < 20; ++i) fs.push_back(pool.submit(i == 7 ? "die" : std::to_string(i)));
    for (int i = 0; i < 20; ++i) {
        if (i == 7) {
            try {
                fs[std::size_t(i)].get();
                FAIL("no error");
            } catch (const shm::worker_lost& e) {
                const std::string w = e.what();
                INFO(w);
                CHECK(w.find("SIGKILL") != std::string::npos);
                CHECK(w.find("3 tries") != std::string::npos);
            }
        } else {
            CHECK(fs[std::size_t(i)].get() == "r:" + std::to_string(i));
        }
    }
    CHECK(pool.processes() == 2);
    CHECK(pool.map({"x", "y"}) == std::vector<std::string>{"r:x", "r:y"});
}

TEST_CASE("Pool: the pool's process killed: workers and server exit, nothing is left", "[pool][crash]") {
    test::ShmDir dir;
    test::Daemon shmd(dir.path());  // reclaims the pool's segment once its last user is gone
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    pid_t owner = test::spawn([&] {
        ::close(fds[0]);
        shm::Pool pool(echo, workers(3));
        pool.map({"warm", "up", "now"});
        for (int i = 0; i < 60000 && pool.worker_pids().size() < 3; ++i) std::this_thread::sleep_for(1ms);
        std::vector<int> pids = pool.worker_pids();
        if (pids.size() != 3) return 1;
        pids.push_back(::getpid());
        (void)!::write(fds[1], pids.data(), pids.size() * sizeof(int));
        ::close(fds[1]);
        ::pause();
        return 0;
    });
    ::close(fds[1]);
    std::vector<int> pids(4, 0);
    REQUIRE(::read(fds[0], pids.data(), pids.size() * sizeof(int)) == ssize_t(pids.size() * sizeof(int)));
    ::close(fds[0]);
    CHECK_FALSE(shm_dir_empty(dir.path()));
    ::kill(owner, SIGKILL);
    test::wait_for(owner);
    // The cap only stops a true hang.
    for (int i = 0; i < 60000; ++i) {
        bool any = false;
        for (int p : pids) any = any || running(p);
        if (!any && shm_dir_empty(dir.path())) break;
        std::this_thread::sleep_for(1ms);
    }
    for (int p : pids) CHECK_FALSE(running(p));
    CHECK(shm_dir_empty(dir.path()));
}
