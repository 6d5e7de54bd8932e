// Real nats-server processes for the remote tests: one alone, or a cluster
// of three, on free loopback ports with a temporary file store each,
// started and stopped by their pids. Nothing here is a stand-in: the
// servers are Debian's nats-server, with JetStream.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <nats/nats.h>

#include "shm/remote.hpp"

namespace test {

// The nats-server program, or "" when it is not installed.
inline std::string nats_server_path() {
    if (const char* p = std::getenv("NATS_SERVER"); p && *p) return p;
    for (const char* p : {"/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"})
        if (::access(p, X_OK) == 0) return p;
    return "";
}

// The nats-server program's version as major * 10000 + minor * 100 +
// patch (20910 for 2.9.10); 0 if it cannot be read.
inline int nats_server_version() {
    const std::string path = nats_server_path();
    if (path.empty()) return 0;
    FILE* f = ::popen(("'" + path + "' --version 2>/dev/null").c_str(), "r");
    if (!f) return 0;
    char line[256] = {};
    const bool got = std::fgets(line, sizeof line, f) != nullptr;
    ::pclose(f);
    int major = 0, minor = 0, patch = 0;
    const char* v = got ? line : nullptr;  // "nats-server: v2.9.10": the v before a digit
    while (v && *v && !(v[0] == 'v' && v[1] >= '0' && v[1] <= '9')) ++v;
    if (!v || std::sscanf(v, "v%d.%d.%d", &major, &minor, &patch) != 3) return 0;
    return major * 10000 + minor * 100 + patch;
}

// The exit code ctest reads as "skipped" (SKIP_RETURN_CODE).
constexpr int kSkipCode = 77;

// Ends the test program as skipped, visibly, when nats-server is missing.
inline void require_nats_server() {
    if (nats_server_path().empty()) {
        std::fprintf(stderr, "SKIPPED: nats-server is not installed (./dev deps installs it)\n");
        std::fflush(stderr);
        std::_Exit(kSkipCode);
    }
}

// A free TCP port on 127.0.0.1 (bound, read, released: the server binds it
// right after; a clash shows as a server that does not start).
inline int free_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    int port = ntohs(a.sin_port);
    ::close(fd);
    return port;
}

// Run argv with stdout and stderr to `log` (or /dev/null); returns its pid.
// The child dies with this process (PR_SET_PDEATHSIG), so a test killed
// midway leaves no server behind. Between fork and exec only
// async-signal-safe calls: this process has the NATS client's threads.
inline pid_t spawn(const std::vector<std::string>& argv, const std::string& log = "") {
    const std::string out = log.empty() ? "/dev/null" : log;
    std::vector<char*> a;
    for (const std::string& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    const pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid != 0) return pid;
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    int in = ::open("/dev/null", O_RDONLY);
    int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (in < 0 || fd < 0) ::_exit(127);
    ::dup2(in, 0);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execv(a[0], a.data());
    ::_exit(127);
}

// waitpid with a cap against a hang: the exit status, or -1 (then killed).
inline int wait_exit(pid_t pid, std::chrono::seconds cap) {
    auto end = std::chrono::steady_clock::now() + cap;
    for (;;) {
        int st = 0;
        pid_t r = ::waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0) return -1;
        if (std::chrono::steady_clock::now() > end) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
            return -1;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

class NatsCluster {
public:
    // n = 1: one server alone; n = 3: a cluster of three.
    explicit NatsCluster(int n) {
        require_nats_server();
        char tmpl[] = "/tmp/libshm-nats.XXXXXX";
        if (!::mkdtemp(tmpl)) std::abort();
        dir_ = tmpl;
        for (int i = 0; i < n; ++i) {
            Server s;
            s.name = "n" + std::to_string(i);
            s.port = free_port();
            s.cluster_port = n > 1 ? free_port() : 0;
            servers_.push_back(s);
        }
        for (int i = 0; i < n; ++i) start(i);
        wait_ready();
    }
    NatsCluster(const NatsCluster&) = delete;
    NatsCluster& operator=(const NatsCluster&) = delete;
    ~NatsCluster() {
        for (std::size_t i = 0; i < servers_.size(); ++i) stop(static_cast<int>(i));
        std::error_code ec;
        if (!std::getenv("SHM_KEEP_NATS_DIR")) std::filesystem::remove_all(dir_, ec);
    }

    int size() const { return static_cast<int>(servers_.size()); }
    std::string url(int i) const { return "nats://127.0.0.1:" + std::to_string(servers_[i].port); }
    // Every server, comma-separated (what connect() takes).
    std::string urls() const {
        std::string out;
        for (int i = 0; i < size(); ++i) out += (i ? "," : "") + url(i);
        return out;
    }
    pid_t pid(int i) const { return servers_[i].pid; }
    const std::string& dir() const { return dir_; }

    // SIGKILL server i and reap it.
    void kill(int i) {
        Server& s = servers_[i];
        if (s.pid <= 0) return;
        ::kill(s.pid, SIGCONT);
        ::kill(s.pid, SIGKILL);
        int st;
        ::waitpid(s.pid, &st, 0);
        s.pid = -1;
    }
    // Stop it gracefully (SIGTERM; SIGKILL after a cap).
    void stop(int i) {
        Server& s = servers_[i];
        if (s.pid <= 0) return;
        ::kill(s.pid, SIGCONT);
        ::kill(s.pid, SIGTERM);
        if (wait_exit(s.pid, std::chrono::seconds(15)) == -1) ::kill(s.pid, SIGKILL);
        s.pid = -1;
    }
    // Freeze it: it keeps its sockets open and answers nothing. Returns
    // once every thread of it has stopped (SIGSTOP reaches the threads
    // asynchronously: one busy on another CPU could still answer a request
    // sent right after the kill()).
    void freeze(int i) {
        const pid_t pid = servers_[i].pid;
        ::kill(pid, SIGSTOP);
        auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        while (std::chrono::steady_clock::now() < end && !all_stopped(pid))
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    void thaw(int i) { ::kill(servers_[i].pid, SIGCONT); }
    // Start server i again on its ports and its store.
    void restart(int i) {
        stop(i);
        start(i);
        wait_ready();
    }

    // Wait (bounded) until JetStream answers on every running server (in a
    // cluster: until the cluster has a meta leader and can place 3
    // replicas).
    void wait_ready() {
        auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        std::string last;
        for (int i = 0; i < size(); ++i) {
            if (servers_[i].pid <= 0) continue;
            for (;;) {
                try {
                    shm::remote::StoreOptions o;
                    o.request_timeout = std::chrono::milliseconds(2000);
                    o.replicas = 1;
                    shm::remote::connect(url(i), o);
                    break;
                } catch (const shm::error& e) {
                    last = e.what();
                }
                if (std::chrono::steady_clock::now() > end) {
                    std::fprintf(stderr, "nats-server %d did not get ready: %s\n", i, last.c_str());
                    std::abort();
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
            }
        }
        // Each server answering is not enough: the meta leader places a
        // stream of 3 replicas only once it has heard from every peer, and
        // until then refuses with "no suitable peers for placement". With
        // every server running, wait until a stream of size() replicas is
        // placed (then delete it).
        if (size() < 2) return;
        for (const Server& s : servers_)
            if (s.pid <= 0) return;
        for (;;) {
            if (can_place(last)) return;
            if (std::chrono::steady_clock::now() > end) {
                std::fprintf(stderr, "the cluster cannot place %d replicas: %s\n", size(), last.c_str());
                std::abort();
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
    }

private:
    // Add (and delete) a memory stream of size() replicas; false, with the
    // reason in `why`, if the cluster cannot place it yet.
    bool can_place(std::string& why) const {
        natsConnection* nc = nullptr;
        jsCtx* js = nullptr;
        bool placed = false;
        natsStatus s = natsConnection_ConnectTo(&nc, urls().c_str());
        jsOptions jo;
        jsOptions_Init(&jo);
        jo.Wait = 2000;
        if (s == NATS_OK) s = natsConnection_JetStream(&js, nc, &jo);
        if (s == NATS_OK) {
            jsStreamConfig cfg;
            jsStreamConfig_Init(&cfg);
            cfg.Name = "SHMTEST_READY";
            cfg.Storage = js_MemoryStorage;
            cfg.Replicas = size();
            const char* subjects[] = {"shmtest.ready"};
            cfg.Subjects = subjects;
            cfg.SubjectsLen = 1;
            jsErrCode jerr = static_cast<jsErrCode>(0);
            s = js_AddStream(nullptr, js, &cfg, &jo, &jerr);
            if (s == NATS_OK) {
                placed = true;
                js_DeleteStream(js, cfg.Name, &jo, nullptr);
            }
        }
        if (!placed) {
            const char* text = nats_GetLastError(nullptr);
            why = std::string(natsStatus_GetText(s)) + (text && *text ? std::string(": ") + text : "");
        }
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
        return placed;
    }

    // Every thread of pid in state T (stopped), as /proc tells.
    static bool all_stopped(pid_t pid) {
        std::error_code ec;
        const std::string dir = "/proc/" + std::to_string(pid) + "/task";
        for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
            std::FILE* f = std::fopen((e.path().string() + "/stat").c_str(), "r");
            if (!f) continue;  // a thread gone meanwhile
            char buf[512];
            std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
            std::fclose(f);
            buf[n] = 0;
            const char* close = std::strrchr(buf, ')');  // the state follows the name in parentheses
            if (!close || close[1] != ' ' || (close[2] != 'T' && close[2] != 't')) return false;
        }
        return !ec;
    }

    struct Server {
        std::string name;
        int port = 0;
        int cluster_port = 0;
        pid_t pid = -1;
    };

    void start(int i) {
        Server& s = servers_[i];
        std::string sd = dir_ + "/" + s.name;
        std::filesystem::create_directories(sd);
        std::vector<std::string> argv = {nats_server_path(), "-a", "127.0.0.1", "-p", std::to_string(s.port),
                                         "-js", "-sd", sd, "--server_name", s.name};
        if (size() > 1) {
            std::string routes;
            for (int j = 0; j < size(); ++j) {
                if (j == i) continue;
                routes += (routes.empty() ? "" : ",") + std::string("nats://127.0.0.1:") +
                          std::to_string(servers_[j].cluster_port);
            }
            argv.insert(argv.end(), {"--cluster_name", "shmtest", "--cluster",
                                     "nats://127.0.0.1:" + std::to_string(s.cluster_port), "--routes", routes});
        }
        s.pid = spawn(argv, dir_ + "/" + s.name + ".log");
        if (s.pid <= 0) {
            std::fprintf(stderr, "cannot start %s\n", argv[0].c_str());
            std::abort();
        }
    }

    std::string dir_;
    std::vector<Server> servers_;
};

}  // namespace test
