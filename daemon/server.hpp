// shmd's core: one thread, one epoll loop over the listening socket, the
// clients' connections, a pidfd per process using a tracked segment, a
// signalfd and two timers (sweep, watchdog).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <spdlog/logger.h>

namespace shmd {

struct Options {
    std::string socket;                  // where to listen
    std::string shm_dir;                 // the directory segments live in
    std::chrono::nanoseconds sweep_interval = std::chrono::seconds(30);
    // Keep this much of the shm filesystem free: a fraction (reserve_fraction
    // > 0) or a byte count. 0 and 0: no reserve.
    double reserve_fraction = 0;
    std::uint64_t reserve_bytes = 0;
    std::uint64_t user_quota = 0;        // bytes per user (root exempt); 0 = none
    bool reclaim_foreign = false;
    std::chrono::nanoseconds foreign_min_age = std::chrono::minutes(5);
    std::size_t max_clients = 4096;
    bool notify = true;                  // talk to systemd when NOTIFY_SOCKET is set
};

// "10%" or "0.5%" → fraction; "512M", "2G", "1048576", "64MiB" → bytes.
// false if malformed.
bool parse_size(const std::string& text, std::uint64_t& bytes);
bool parse_reserve(const std::string& text, double& fraction, std::uint64_t& bytes);

class Server {
public:
    Server(Options opt, std::shared_ptr<spdlog::logger> log);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Bind the socket, rebuild state from the segments, tell systemd READY=1,
    // serve until SIGTERM or SIGINT. Returns the exit status.
    int run();

private:
    struct Conn {
        int fd = -1;
        pid_t pid = 0;
        uid_t uid = 0;
        gid_t gid = 0;
        bool hello = false;
        bool warned = false;            // a bad request was logged already
        std::set<std::string> attached;  // what this connection registered
    };
    struct Proc {
        int pidfd = -1;
        pid_t pid = 0;
        std::uint64_t start_time = 0;
        std::string comm;
        std::set<std::string> segments;
        int conns = 0;
    };
    struct Seg {
        std::set<pid_t> users;
        std::uint64_t bytes = 0;
        std::uint32_t uid = 0;
        bool registered = false;  // a client told us about it (else adopted from its header)
    };
    struct Pending {
        uid_t uid = 0;
        std::string name;
        std::uint64_t bytes = 0;
        std::chrono::steady_clock::time_point expires;
    };

    void setup_socket();
    void sweep(bool initial);
    void accept_clients();
    void on_readable(int fd);
    void close_conn(int fd);
    void handle(Conn& c, const std::string& msg, bool& close_after);
    std::string reply_status(bool has_id, std::uint64_t id);
    std::string reply_list(const std::string& after, bool has_id, std::uint64_t id);
    std::string check_quota(uid_t uid, const std::string& name, std::uint64_t bytes, const char*& code);
    void send_reply(Conn& c, const std::string& reply);

    Proc* adopt(pid_t pid, std::uint64_t start_time, int pidfd = -1);
    void process_exited(pid_t pid);
    void drop_proc(pid_t pid);
    // Reap the segment's dead slots, unlink it if nobody live is left, and
    // watch every live process attached to it. Returns true if it was reclaimed.
    bool look_at(const std::string& name, const char* why);
    void forget(const std::string& name);
    void recheck_due();
    int recheck_timeout_ms() const;
    void warn_once(Conn& c, const std::string& what);

    Options opt_;
    std::shared_ptr<spdlog::logger> log_;
    int epfd_ = -1, listen_fd_ = -1, signal_fd_ = -1, sweep_fd_ = -1, watchdog_fd_ = -1;
    dev_t socket_dev_ = 0;
    ino_t socket_ino_ = 0;
    std::unordered_map<int, Conn> conns_;
    std::unordered_map<pid_t, Proc> procs_;
    std::map<std::string, Seg> segs_;
    std::vector<Pending> pending_;
    // Segments to look at again: their lock was held too long, or they are
    // half-made (a creator that died leaves one; it is reclaimable after 1 s).
    std::map<std::string, std::chrono::steady_clock::time_point> recheck_;
    std::string shm_dir_real_;
    std::chrono::steady_clock::time_point started_;
    std::chrono::steady_clock::time_point last_sweep_;
    std::uint64_t reclaims_ = 0, reclaimed_bytes_ = 0, sweeps_ = 0, requests_ = 0, refused_ = 0,
                  connections_total_ = 0;
    bool stopping_ = false;
};

}  // namespace shmd
