// The real shmd as a child process, on a private socket in a temporary
// directory, serving one shm directory; SHM_DAEMON_SOCKET points at it while
// it lives. Its log is kept for INFO().
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <shm/error.hpp>

#include "client/daemon_client.hpp"
#include "support.hpp"

#ifndef SHMD_PATH
#error "tests/daemon.hpp needs SHMD_PATH (the shmd binary)"
#endif

namespace test {

class Daemon {
public:
    // extra: more shmd options; notify: a NOTIFY_SOCKET for it (none: --no-notify).
    explicit Daemon(std::string dir, std::vector<std::string> extra = {}, std::string notify = {})
        : dir_(std::move(dir)), extra_(std::move(extra)), notify_(std::move(notify)) {
        char tmpl[] = "/tmp/shmd-test.XXXXXX";
        REQUIRE(::mkdtemp(tmpl));
        run_dir_ = tmpl;
        ::chmod(run_dir_.c_str(), 0755);  // other users may reach the socket
        socket_ = run_dir_ + "/shmd.sock";
        if (const char* old = std::getenv("SHM_DAEMON_SOCKET")) old_socket_ = old;
        ::setenv("SHM_DAEMON_SOCKET", socket_.c_str(), 1);
        start();
    }
    ~Daemon() {
        stop();
        if (old_socket_)
            ::setenv("SHM_DAEMON_SOCKET", old_socket_->c_str(), 1);
        else
            ::unsetenv("SHM_DAEMON_SOCKET");
        std::error_code ec;
        std::filesystem::remove_all(run_dir_, ec);
    }
    Daemon(const Daemon&) = delete;
    Daemon& operator=(const Daemon&) = delete;

    // Start it (again) and wait until it answers.
    void start() {
        std::vector<std::string> args = {SHMD_PATH, "--socket", socket_, "--shm-dir", dir_, "--log-level", "debug"};
        if (std::find(extra_.begin(), extra_.end(), "--config") == extra_.end()) {
            args.push_back("--config");
            args.push_back("/dev/null");
        }
        if (notify_.empty()) args.push_back("--no-notify");
        for (auto& e : extra_) args.push_back(e);
        std::string log = socket_ + ".log";
        std::fflush(nullptr);
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            if (fd >= 0) ::dup2(fd, 2);
            if (!notify_.empty()) ::setenv("NOTIFY_SOCKET", notify_.c_str(), 1);
            std::vector<char*> argv;
            for (auto& a : args) argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(argv[0], argv.data());
            ::_exit(127);
        }
        bool up = eventually([&] {
            try {
                status();
                return true;
            } catch (const shm::error&) {
                return false;
            }
        }, std::chrono::seconds(20));
        INFO(log_text());
        REQUIRE(up);
    }
    // SIGTERM (or another signal) and wait for it; its exit code, or 128 + signal.
    int stop(int sig = SIGTERM) {
        if (pid_ <= 0) return 0;
        ::kill(pid_, sig);
        Exit e = wait_for(pid_, std::chrono::seconds(20));
        pid_ = -1;
        return e.exited ? e.code : 128 + e.signal;
    }
    nlohmann::json request(const std::string& req) const {
        // A bound against a hang only: a loaded machine may delay an answer by seconds.
        return nlohmann::json::parse(shm::daemon_client::call(socket_, req, std::chrono::seconds(60)));
    }
    nlohmann::json status() const { return request(R"({"v":1,"op":"status"})"); }
    // The segments it tracks.
    std::set<std::string> tracked() const {
        std::set<std::string> out;
        nlohmann::json r = request(R"({"v":1,"op":"list"})");
        for (auto& s : r["segments"]) out.insert(s["name"].get<std::string>());
        return out;
    }
    std::string log_text() const {
        std::ifstream f(socket_ + ".log");
        return std::string(std::istreambuf_iterator<char>(f), {});
    }
    const std::string& socket() const { return socket_; }
    pid_t pid() const { return pid_; }

private:
    std::string dir_, run_dir_, socket_;
    std::vector<std::string> extra_;
    std::string notify_;
    std::optional<std::string> old_socket_;
    pid_t pid_ = -1;
};

}  // namespace test
