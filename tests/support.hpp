// Helpers for multi-process tests: a private shm directory per test, forked
// children that die with the test, bounded waits that fail instead of hang.
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

namespace test {

// A fresh directory under /dev/shm used as SHM_DIR for one test; removed
// with everything in it at scope exit.
class ShmDir {
public:
    ShmDir() {
        char tmpl[] = "/dev/shm/libshm-test.XXXXXX";
        if (!::mkdtemp(tmpl)) std::abort();
        path_ = tmpl;
        const char* old = std::getenv("SHM_DIR");
        had_old_ = old != nullptr;
        if (old) old_ = old;
        ::setenv("SHM_DIR", path_.c_str(), 1);
    }
    ~ShmDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
        if (had_old_)
            ::setenv("SHM_DIR", old_.c_str(), 1);
        else
            ::unsetenv("SHM_DIR");
    }
    const std::string& path() const { return path_; }
    std::vector<std::string> files() const {
        std::vector<std::string> out;
        for (auto& e : std::filesystem::directory_iterator(path_)) out.push_back(e.path().filename().string());
        return out;
    }
    bool has(const std::string& segment) const {
        return std::filesystem::exists(path_ + "/libshm." + segment);
    }

private:
    std::string path_;
    std::string old_;
    bool had_old_ = false;
};

// Run fn in a child process. The child exits with fn's return value (or 99
// on an exception, printing it) and dies if the test process dies.
inline pid_t spawn(const std::function<int()>& fn) {
    std::fflush(nullptr);
    pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) std::abort();
    if (pid == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(98);
        int rc = 99;
        try {
            rc = fn();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "child %d: exception: %s\n", ::getpid(), e.what());
        }
        ::_exit(rc);
    }
    return pid;
}

struct Exit {
    bool exited = false;
    int code = -1;
    bool signaled = false;
    int signal = 0;
    bool timed_out = false;
};

// Wait for pid at most `limit`; on time-out kill it and report timed_out.
inline Exit wait_for(pid_t pid, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
    Exit e;
    auto deadline = std::chrono::steady_clock::now() + limit;
    int st = 0;
    for (;;) {
        pid_t r = ::waitpid(pid, &st, WNOHANG);
        if (r == pid) break;
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
            e.timed_out = true;
            return e;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (WIFEXITED(st)) {
        e.exited = true;
        e.code = WEXITSTATUS(st);
    } else if (WIFSIGNALED(st)) {
        e.signaled = true;
        e.signal = WTERMSIG(st);
    }
    return e;
}

inline void require_exit_ok(pid_t pid, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
    Exit e = wait_for(pid, limit);
    INFO("child " << pid << " exited=" << e.exited << " code=" << e.code << " signaled=" << e.signaled
                  << " signal=" << e.signal << " timed_out=" << e.timed_out);
    REQUIRE(e.exited);
    REQUIRE(e.code == 0);
}

inline void kill_and_reap(pid_t pid) {
    ::kill(pid, SIGKILL);
    int st;
    ::waitpid(pid, &st, 0);
}

inline std::mt19937_64& rng() {
    static std::mt19937_64 r(std::random_device{}());
    return r;
}

// Spin until pred() or the limit; returns pred().
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(30)) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return pred();
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return true;
}

}  // namespace test
