// shmd: setup, the event loop and connections (server.hpp).
#include "server.hpp"

#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <shm/error.hpp>

#include "events.hpp"

namespace shmd {

namespace proto = shm::proto;
using shm::admin::human_bytes;

namespace {

constexpr int kMessagesPerWakeup = 64;

std::string errtext(int e) { return std::strerror(e); }

void arm_timer(int fd, std::chrono::nanoseconds every) {
    itimerspec it{};
    auto s = std::chrono::duration_cast<std::chrono::seconds>(every);
    it.it_interval.tv_sec = static_cast<time_t>(s.count());
    it.it_interval.tv_nsec = static_cast<long>((every - s).count());
    it.it_value = it.it_interval;
    ::timerfd_settime(fd, 0, &it, nullptr);
}

sockaddr_un socket_address(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof a.sun_path)
        throw shm::error(ENAMETOOLONG, "socket path " + path + " is longer than " +
                                           std::to_string(sizeof a.sun_path - 1) + " bytes");
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    return a;
}

}  // namespace

Server::Server(Options opt, std::shared_ptr<spdlog::logger> log) : opt_(std::move(opt)), log_(std::move(log)) {}

Server::~Server() {
    for (auto& [fd, c] : conns_) ::close(fd);
    for (auto& [pid, p] : procs_)
        if (p.pidfd >= 0) ::close(p.pidfd);
    for (int fd : {listen_fd_, signal_fd_, sweep_fd_, watchdog_fd_, epfd_})
        if (fd >= 0) ::close(fd);
}

// ---- setup -----------------------------------------------------------------

void Server::setup_socket() {
    namespace fs = std::filesystem;
    const std::string& path = opt_.socket;
    sockaddr_un a = socket_address(path);
    fs::path dir = fs::path(path).parent_path();
    if (!dir.empty()) {
        std::error_code ec;
        fs::create_directories(dir, ec);
        if (ec) throw shm::error(ec.value(), "cannot create the socket directory " + dir.string() + ": " + ec.message());
    }
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            throw shm::error(EEXIST, path + " exists and is not a socket; refusing to replace it");
        int probe = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        int rc = ::connect(probe, reinterpret_cast<sockaddr*>(&a), sizeof a);
        ::close(probe);
        if (rc == 0) throw shm::error(EADDRINUSE, "another shmd is already listening on " + path);
        ::unlink(path.c_str());  // a socket nobody listens on: left by a daemon that died
        log_->info("removed the stale socket {}", path);
    }
    listen_fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listen_fd_ < 0) throw shm::error(errno, "socket: " + errtext(errno));
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
        throw shm::error(errno, "cannot bind " + path + ": " + errtext(errno));
    // Any local user may connect to the system instance; each request is
    // authorised on its own. A per-user instance is for its user only.
    ::chmod(path.c_str(), ::geteuid() == 0 ? 0666 : 0600);
    if (::listen(listen_fd_, 256) != 0) throw shm::error(errno, "listen: " + errtext(errno));
    if (::stat(path.c_str(), &st) == 0) {
        socket_dev_ = st.st_dev;
        socket_ino_ = st.st_ino;
    }
}

void Server::setup_signals() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    ::sigprocmask(SIG_BLOCK, &mask, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
    signal_fd_ = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (signal_fd_ < 0 || epfd_ < 0) throw shm::error(errno, "epoll/signalfd: " + errtext(errno));
}

void Server::watch(int fd, std::uint64_t t) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = t;
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) throw shm::error(errno, "epoll_ctl: " + errtext(errno));
}

void Server::setup_timers() {
    if (opt_.sweep_interval.count() > 0) {
        sweep_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        arm_timer(sweep_fd_, opt_.sweep_interval);
        watch(sweep_fd_, tag(kSweep, 0));
    }
    std::uint64_t wd_usec = 0;
    if (opt_.notify && sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        watchdog_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        arm_timer(watchdog_fd_, std::chrono::microseconds(wd_usec / 2));
        watch(watchdog_fd_, tag(kWatchdog, 0));
        log_->debug("watchdog every {} ms", wd_usec / 2000);
    }
}

// ---- the loop ----------------------------------------------------------------

int Server::run() {
    started_ = std::chrono::steady_clock::now();
    std::error_code ec;
    shm_dir_real_ = std::filesystem::weakly_canonical(opt_.shm_dir, ec).string();
    if (ec) shm_dir_real_ = opt_.shm_dir;

    setup_signals();
    setup_socket();
    watch(listen_fd_, tag(kListen, 0));
    watch(signal_fd_, tag(kSignal, 0));
    // State comes from the segments themselves: reclaim what died while we
    // were away and watch every live process attached to a segment.
    sweep(true);
    setup_timers();

    log_->info("listening on {} for segments in {} ({} segments, {} processes tracked)", opt_.socket,
               shm_dir_real_, segs_.size(), procs_.size());
    if (opt_.notify)
        sd_notifyf(0, "READY=1\nSTATUS=tracking %zu segments of %zu processes\nMAINPID=%d", segs_.size(),
                   procs_.size(), static_cast<int>(::getpid()));

    epoll_event evs[64];
    while (!stopping_) {
        int n = ::epoll_wait(epfd_, evs, 64, recheck_timeout_ms());
        if (n < 0) {
            if (errno == EINTR) continue;
            throw shm::error(errno, "epoll_wait: " + errtext(errno));
        }
        for (int i = 0; i < n && !stopping_; ++i) dispatch(evs[i].data.u64);
        if (!recheck_.empty()) recheck_due();
    }
    if (opt_.notify) sd_notify(0, "STOPPING=1");
    remove_socket();
    log_->info("stopped after {} reclaims ({}), {} requests", reclaims_, human_bytes(reclaimed_bytes_), requests_);
    return 0;
}

void Server::dispatch(std::uint64_t event) {
    const std::uint32_t v = static_cast<std::uint32_t>(event);
    std::uint64_t ticks;
    switch (event >> 32) {
        case kListen: accept_clients(); break;
        case kConn: on_readable(static_cast<int>(v)); break;
        case kPidfd: process_exited(static_cast<pid_t>(v)); break;
        case kSignal: on_signal(); break;
        case kSweep:
            (void)!::read(sweep_fd_, &ticks, sizeof ticks);
            sweep(false);
            break;
        case kWatchdog:
            (void)!::read(watchdog_fd_, &ticks, sizeof ticks);
            sd_notify(0, "WATCHDOG=1");
            break;
    }
}

void Server::on_signal() {
    signalfd_siginfo si;
    while (::read(signal_fd_, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            log_->info("SIGHUP: sweeping now");
            sweep(false);
        } else {
            log_->info("{}: stopping", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
            stopping_ = true;
        }
    }
}

void Server::remove_socket() {
    // Remove our socket so clients see the daemon gone (a restarted daemon
    // binds a new one); leave it if another daemon replaced it meanwhile.
    struct stat st;
    if (::stat(opt_.socket.c_str(), &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_)
        ::unlink(opt_.socket.c_str());
}

// ---- connections --------------------------------------------------------------

void Server::accept_clients() {
    for (;;) {
        int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN) log_->warn("accept: {}", errtext(errno));
            return;
        }
        ucred cr{};
        socklen_t len = sizeof cr;
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || !admit(fd, cr)) ::close(fd);
    }
}

bool Server::admit(int fd, const ucred& cr) {
    ++connections_total_;
    if (conns_.size() >= opt_.max_clients) {
        std::string r = proto::error_reply(
            proto::code::limit,
            "the daemon serves " + std::to_string(conns_.size()) + " connections already (--max-clients)", false, 0);
        (void)::send(fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        log_->warn("refused a connection of pid {} (uid {}): {} connections", cr.pid, cr.uid, conns_.size());
        return false;
    }
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.u64 = tag(kConn, static_cast<std::uint64_t>(fd));
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) return false;
    Conn& c = conns_[fd];
    c.fd = fd;
    c.pid = cr.pid;
    c.uid = cr.uid;
    c.gid = cr.gid;
    log_->debug("connection from pid {} uid {}", cr.pid, cr.uid);
    return true;
}

void Server::close_conn(int fd) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    Conn c = std::move(it->second);
    conns_.erase(it);
    ::epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    if (!c.hello) return;
    auto p = procs_.find(c.pid);
    if (p == procs_.end()) return;
    --p->second.conns;
    if (pidfd_exited(p->second.pidfd)) {
        process_exited(c.pid);
        return;
    }
    // Still alive (it closed the connection, or exec'd, or is still being
    // torn down): look at what it registered; its pidfd tells us the rest.
    std::string why = "pid " + std::to_string(c.pid) + " disconnected";
    for (const std::string& n : c.attached) look_at(n, why.c_str());
    p = procs_.find(c.pid);
    if (p != procs_.end() && p->second.segments.empty() && p->second.conns == 0) drop_proc(c.pid);
}

void Server::on_readable(int fd) {
    std::string buf(proto::kMaxMessage + 1, '\0');
    for (int i = 0; i < kMessagesPerWakeup; ++i) {
        auto it = conns_.find(fd);
        if (it == conns_.end()) return;
        Conn& c = it->second;
        iovec iov{buf.data(), buf.size()};
        msghdr mh{};
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        ssize_t n = ::recvmsg(fd, &mh, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        if (n <= 0) return close_conn(fd);
        ++requests_;
        if ((mh.msg_flags & MSG_TRUNC) || static_cast<std::size_t>(n) > proto::kMaxMessage) {
            ++refused_;
            warn_once(c, "sent a message over " + std::to_string(proto::kMaxMessage) + " bytes");
            send_reply(c, proto::error_reply(proto::code::malformed,
                                             "message over the " + std::to_string(proto::kMaxMessage) +
                                                 "-byte limit",
                                             false, 0));
            return close_conn(fd);
        }
        bool close_after = false;
        handle(c, std::string(buf.data(), static_cast<std::size_t>(n)), close_after);
        if (close_after) return close_conn(fd);
    }
}

void Server::warn_once(Conn& c, const std::string& what) {
    if (c.warned) return;
    c.warned = true;
    log_->warn("pid {} (uid {}) {}; further problems on this connection are not logged", c.pid, c.uid, what);
}

void Server::send_reply(Conn& c, const std::string& reply) {
    // Replies are small and clients wait for each; a client that does not
    // read fills its buffer and is dropped rather than blocking us.
    if (::send(c.fd, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        log_->debug("pid {}: reply not sent: {}", c.pid, errtext(errno));
}

}  // namespace shmd
