// Helpers for tests that run programs: run a command with its output
// captured, set an environment variable for a scope, signal readiness
// through a pipe, read a child's output line by line.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

extern char** environ;

namespace test {

struct Run {
    int code = -1;  // exit status; 128 + signal if killed
    std::string out, err;
    bool timed_out = false;
};

// Everything of a Run, for INFO().
inline std::string describe(const Run& r) {
    return "exit " + std::to_string(r.code) + (r.timed_out ? " (timed out)" : "") + "\n--- stdout\n" + r.out +
           "--- stderr\n" + r.err;
}

// Run argv (argv[0] looked up in PATH) with stdout and stderr captured, at
// most `limit` (a bound against a hang; it is killed then). posix_spawn, not
// fork: a forked child of a process attached to a segment would take an
// attach slot of its own first (and leave it dead at exec). Safe to call
// from a forked child (no Catch2 inside).
inline Run run(const std::vector<std::string>& argv, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
    Run r;
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return r;
    if (::pipe2(err, O_CLOEXEC) != 0) {
        ::close(out[0]);
        ::close(out[1]);
        return r;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    std::vector<char*> a;
    for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    pid_t pid = -1;
    int rc = ::posix_spawnp(&pid, a[0], &fa, nullptr, a.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        r.code = 127;
        r.err = std::string("cannot run ") + a[0] + ": " + std::strerror(rc);
        for (int f : {out[0], out[1], err[0], err[1]}) ::close(f);
        return r;
    }
    ::close(out[1]);
    ::close(err[1]);
    auto deadline = std::chrono::steady_clock::now() + limit;
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            ::kill(pid, SIGKILL);
            r.timed_out = true;
            break;
        }
        if (::poll(fds, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char buf[65536];
            ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n > 0) {
                (i == 0 ? r.out : r.err).append(buf, static_cast<std::size_t>(n));
            } else {
                ::close(fds[i].fd);
                fds[i].fd = -1;
                --open_fds;
            }
        }
    }
    for (auto& f : fds)
        if (f.fd >= 0) ::close(f.fd);
    int st = 0;
    ::waitpid(pid, &st, 0);
    r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r;
}

// One line (without its newline) from fd, with what was read past it kept
// in `buffered`; "" when the writer closed or nothing came within `limit`.
inline std::string read_line(int fd, std::string& buffered, std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        std::size_t nl = buffered.find('\n');
        if (nl != std::string::npos) {
            std::string l = buffered.substr(0, nl);
            buffered.erase(0, nl + 1);
            return l;
        }
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return "";
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
        char buf[512];
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n <= 0) return "";
        buffered.append(buf, static_cast<std::size_t>(n));
    }
}

// An environment variable set for a scope, restored after.
class EnvVar {
public:
    EnvVar(const char* name, const std::string& value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        ::setenv(name, value.c_str(), 1);
    }
    ~EnvVar() {
        if (old_)
            ::setenv(name_, old_->c_str(), 1);
        else
            ::unsetenv(name_);
    }
    EnvVar(const EnvVar&) = delete;
    EnvVar& operator=(const EnvVar&) = delete;

private:
    const char* name_;
    std::optional<std::string> old_;
};

// A pipe a child writes one byte to when it is ready.
struct Ready {
    int fd[2];
    Ready() { REQUIRE(::pipe2(fd, O_CLOEXEC) == 0); }
    ~Ready() {
        ::close(fd[0]);
        ::close(fd[1]);
    }
    Ready(const Ready&) = delete;
    Ready& operator=(const Ready&) = delete;
    void signal() { (void)!::write(fd[1], "x", 1); }
    // A bound against a hang only.
    bool wait(std::chrono::milliseconds limit = std::chrono::seconds(20)) {
        pollfd p{fd[0], POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return false;
        char c;
        return ::read(fd[0], &c, 1) == 1;
    }
};

}  // namespace test
