// shmd's core: one thread, one epoll loop over the listening socket, the
// clients' connections, a pidfd per process using a tracked segment, a
// signalfd and two timers (sweep, watchdog).
//
//   server.cpp    setup, the event loop, connections
//   tracking.cpp  which live process uses which segment; reclaiming; sweeps
//   requests.cpp  the protocol's operations, quotas, replies
//
// shmd sees segments and the shm directory only through libshm's public
// API (shm/*.hpp, the administration API shm/admin.hpp above all), and
// speaks the wire protocol of daemon_protocol.hpp, which it shares with the
// library's client.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/logger.h>

#include <shm/admin.hpp>

#include "daemon_protocol.hpp"

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
    // How long a reservation (room asked for before a create) lasts if the
    // create never comes.
    std::chrono::nanoseconds reservation_life = std::chrono::seconds(10);
    std::size_t max_clients = 4096;
    bool notify = true;                  // talk to systemd when NOTIFY_SOCKET is set
};

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

    // server.cpp
    void setup_signals();
    void setup_socket();
    void setup_timers();
    void watch(int fd, std::uint64_t tag);
    void dispatch(std::uint64_t event);
    void on_signal();
    void remove_socket();
    void accept_clients();
    bool admit(int fd, const ucred& cr);
    void on_readable(int fd);
    void close_conn(int fd);
    void warn_once(Conn& c, const std::string& what);
    void send_reply(Conn& c, const std::string& reply);

    // requests.cpp
    void handle(Conn& c, const std::string& msg, bool& close_after);
    void on_hello(Conn& c, const shm::proto::Request& r);
    void on_reserve(Conn& c, const shm::proto::Request& r);
    void on_attach_or_detach(Conn& c, const shm::proto::Request& r);
    void on_remove(Conn& c, const shm::proto::Request& r);
    void refuse(Conn& c, const shm::proto::Request& r, const char* code, const std::string& message);
    void reply_ok(Conn& c, const shm::proto::Request& r, nlohmann::json extra = nlohmann::json::object());
    std::string reply_status(bool has_id, std::uint64_t id);
    std::string reply_list(const std::string& after, bool has_id, std::uint64_t id);
    std::string check_quota(uid_t uid, std::uint64_t bytes, const char*& code);
    std::string check_user_quota(uid_t uid, std::uint64_t bytes);
    std::string check_reserve(std::uint64_t bytes);
    std::string reserve_text() const;

    // tracking.cpp
    Proc* adopt(pid_t pid, std::uint64_t start_time, int pidfd = -1);
    void process_exited(pid_t pid);
    void drop_proc(pid_t pid);
    void release_user(pid_t pid, const std::string& name);
    // Reap the segment's dead slots, unlink it if nobody live is left, and
    // watch every live process attached to it. Returns true if it was reclaimed.
    bool look_at(const std::string& name, const char* why);
    // Watch the live processes that `info`, a reading of the segment just
    // made, shows attached (dead_seen: it showed dead slots after a reap).
    void track(const std::string& name, const shm::admin::SegmentInfo& info, bool dead_seen);
    void track_all(const shm::admin::Scan& scan, const shm::admin::GcReport& rep, bool initial);
    void log_sweep(const shm::admin::GcReport& rep, bool initial, std::chrono::steady_clock::time_point t0);
    void sweep(bool initial);
    void forget(const std::string& name);
    void recheck_due();
    int recheck_timeout_ms() const;

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
    // half-made (a creator that died leaves one; it is reclaimable once
    // shm::admin::abandoned_after() has passed).
    std::map<std::string, std::chrono::steady_clock::time_point> recheck_;
    std::string shm_dir_real_;
    std::chrono::steady_clock::time_point started_;
    std::chrono::steady_clock::time_point last_sweep_;
    std::uint64_t reclaims_ = 0, reclaimed_bytes_ = 0, sweeps_ = 0, requests_ = 0, refused_ = 0,
                  connections_total_ = 0;
    bool stopping_ = false;
};

}  // namespace shmd
