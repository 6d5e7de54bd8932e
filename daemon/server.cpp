#include "server.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include <shm/admin.hpp>
#include <shm/error.hpp>
#include <shm/segment.hpp>

#include "client/daemon_protocol.hpp"
#include "platform/platform.hpp"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace shmd {

using nlohmann::json;
namespace proto = shm::proto;

namespace {

constexpr std::uint64_t kListen = 1, kConn = 2, kPidfd = 3, kSignal = 4, kSweep = 5, kWatchdog = 6;
constexpr std::uint64_t tag(std::uint64_t kind, std::uint64_t v) { return kind << 32 | (v & 0xffffffffu); }

constexpr std::size_t kMaxProcs = 65536;
constexpr std::size_t kMaxSegmentsPerConn = 65536;
constexpr auto kLockTimeout = std::chrono::milliseconds(20);
constexpr auto kPendingLife = std::chrono::seconds(10);
constexpr std::size_t kMaxPendingPerUser = 1024;
constexpr int kMessagesPerWakeup = 64;

std::string errtext(int e) { return std::strerror(e); }

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

bool pidfd_exited(int pidfd) {
    pollfd p{pidfd, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

std::string read_comm(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/comm");
    std::string s;
    std::getline(f, s);
    return s;
}

std::string human(std::uint64_t n) { return shm::platform::human_bytes(n); }

void arm_timer(int fd, std::chrono::nanoseconds every) {
    itimerspec it{};
    auto s = std::chrono::duration_cast<std::chrono::seconds>(every);
    it.it_interval.tv_sec = static_cast<time_t>(s.count());
    it.it_interval.tv_nsec = static_cast<long>((every - s).count());
    it.it_value = it.it_interval;
    ::timerfd_settime(fd, 0, &it, nullptr);
}

bool is_libshm_file(const char* n, std::string& name) {
    if (std::strncmp(n, "libshm.", 7) != 0) return false;
    name = n + 7;
    try {
        shm::validate_segment_name(name);
    } catch (const shm::error&) {
        return false;
    }
    return true;
}

}  // namespace

bool parse_size(const std::string& text, std::uint64_t& bytes) {
    std::size_t i = 0;
    while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.')) ++i;
    if (i == 0) return false;
    double v;
    try {
        v = std::stod(text.substr(0, i));
    } catch (...) {
        return false;
    }
    std::string unit = text.substr(i);
    while (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
    double mult = 1;
    std::string u;
    for (char ch : unit) u += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    if (u == "" || u == "B") mult = 1;
    else if (u == "K" || u == "KB" || u == "KIB") mult = 1024.0;
    else if (u == "M" || u == "MB" || u == "MIB") mult = 1024.0 * 1024;
    else if (u == "G" || u == "GB" || u == "GIB") mult = 1024.0 * 1024 * 1024;
    else if (u == "T" || u == "TB" || u == "TIB") mult = 1024.0 * 1024 * 1024 * 1024;
    else return false;
    double b = v * mult;
    if (!(b >= 0) || b > 9.0e18) return false;
    bytes = static_cast<std::uint64_t>(std::llround(b));
    return true;
}

bool parse_reserve(const std::string& text, double& fraction, std::uint64_t& bytes) {
    if (!text.empty() && text.back() == '%') {
        try {
            std::size_t used = 0;
            double p = std::stod(text.substr(0, text.size() - 1), &used);
            if (used != text.size() - 1 || !(p >= 0 && p < 100)) return false;
            fraction = p / 100;
            bytes = 0;
            return true;
        } catch (...) {
            return false;
        }
    }
    fraction = 0;
    return parse_size(text, bytes);
}

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
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof a.sun_path)
        throw shm::error(ENAMETOOLONG, "socket path " + path + " is longer than " +
                                           std::to_string(sizeof a.sun_path - 1) + " bytes");
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
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

int Server::run() {
    started_ = std::chrono::steady_clock::now();
    std::error_code ec;
    shm_dir_real_ = std::filesystem::weakly_canonical(opt_.shm_dir, ec).string();
    if (ec) shm_dir_real_ = opt_.shm_dir;

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

    setup_socket();
    auto add = [&](int fd, std::uint64_t t) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = t;
        if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) throw shm::error(errno, "epoll_ctl: " + errtext(errno));
    };
    add(listen_fd_, tag(kListen, 0));
    add(signal_fd_, tag(kSignal, 0));

    // State comes from the segments themselves: reclaim what died while we
    // were away and watch every live process attached to a segment.
    sweep(true);

    if (opt_.sweep_interval.count() > 0) {
        sweep_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        arm_timer(sweep_fd_, opt_.sweep_interval);
        add(sweep_fd_, tag(kSweep, 0));
    }
    std::uint64_t wd_usec = 0;
    if (opt_.notify && sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        watchdog_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        arm_timer(watchdog_fd_, std::chrono::microseconds(wd_usec / 2));
        add(watchdog_fd_, tag(kWatchdog, 0));
        log_->debug("watchdog every {} ms", wd_usec / 2000);
    }

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
        for (int i = 0; i < n && !stopping_; ++i) {
            std::uint64_t kind = evs[i].data.u64 >> 32;
            std::uint32_t v = static_cast<std::uint32_t>(evs[i].data.u64);
            switch (kind) {
                case kListen: accept_clients(); break;
                case kConn: on_readable(static_cast<int>(v)); break;
                case kPidfd: process_exited(static_cast<pid_t>(v)); break;
                case kSignal: {
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
                    break;
                }
                case kSweep: {
                    std::uint64_t ticks;
                    (void)!::read(sweep_fd_, &ticks, sizeof ticks);
                    sweep(false);
                    break;
                }
                case kWatchdog: {
                    std::uint64_t ticks;
                    (void)!::read(watchdog_fd_, &ticks, sizeof ticks);
                    sd_notify(0, "WATCHDOG=1");
                    break;
                }
            }
        }
        if (!recheck_.empty()) recheck_due();
    }
    if (opt_.notify) sd_notify(0, "STOPPING=1");
    // Remove our socket so clients see the daemon gone (a restarted daemon
    // binds a new one); leave it if another daemon replaced it meanwhile.
    struct stat st;
    if (::stat(opt_.socket.c_str(), &st) == 0 && st.st_dev == socket_dev_ && st.st_ino == socket_ino_)
        ::unlink(opt_.socket.c_str());
    log_->info("stopped after {} reclaims ({}), {} requests", reclaims_, human(reclaimed_bytes_), requests_);
    return 0;
}

// ---- segments and processes -----------------------------------------------

Server::Proc* Server::adopt(pid_t pid, std::uint64_t start_time, int pidfd) {
    auto it = procs_.find(pid);
    if (it != procs_.end()) {
        if (start_time == 0 || it->second.start_time == start_time) {
            if (pidfd >= 0) ::close(pidfd);
            return &it->second;
        }
        // The pid now names another process: the one we watched is gone.
        process_exited(pid);
    }
    if (procs_.size() >= kMaxProcs) {
        if (pidfd >= 0) ::close(pidfd);
        log_->warn("watching {} processes already; not watching pid {}", procs_.size(), pid);
        return nullptr;
    }
    if (pidfd < 0) pidfd = pidfd_open(pid);
    if (pidfd < 0) return nullptr;  // gone
    // The pidfd pins the process it was opened for; while it has not exited
    // the pid is not reused, so the start time read now is that process's.
    std::uint64_t st = shm::platform::process_start_time(pid);
    if (st == 0 || (start_time != 0 && st != start_time) || pidfd_exited(pidfd)) {
        ::close(pidfd);
        return nullptr;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag(kPidfd, static_cast<std::uint64_t>(pid));
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, pidfd, &ev) != 0) {
        ::close(pidfd);
        return nullptr;
    }
    Proc& p = procs_[pid];
    p.pidfd = pidfd;
    p.pid = pid;
    p.start_time = st;
    p.comm = read_comm(pid);
    return &p;
}

void Server::drop_proc(pid_t pid) {
    auto it = procs_.find(pid);
    if (it == procs_.end()) return;
    if (it->second.pidfd >= 0) {
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, it->second.pidfd, nullptr);
        ::close(it->second.pidfd);
    }
    for (const std::string& n : it->second.segments) {
        auto s = segs_.find(n);
        if (s != segs_.end()) s->second.users.erase(pid);
    }
    procs_.erase(it);
}

void Server::process_exited(pid_t pid) {
    auto it = procs_.find(pid);
    if (it == procs_.end() || !pidfd_exited(it->second.pidfd)) return;  // a stale event
    std::vector<std::string> names(it->second.segments.begin(), it->second.segments.end());
    std::string who = "pid " + std::to_string(pid) + (it->second.comm.empty() ? "" : " (" + it->second.comm + ")");
    log_->debug("{} exited; it used {} segments", who, names.size());
    drop_proc(pid);
    std::string why = who + " exited";
    for (const std::string& n : names) look_at(n, why.c_str());
}

void Server::forget(const std::string& name) {
    auto it = segs_.find(name);
    if (it == segs_.end()) return;
    for (pid_t pid : it->second.users) {
        auto p = procs_.find(pid);
        if (p == procs_.end()) continue;
        p->second.segments.erase(name);
        if (p->second.segments.empty() && p->second.conns == 0) drop_proc(pid);
    }
    segs_.erase(it);
}

bool Server::look_at(const std::string& name, const char* why) {
    // A process that is exiting releases its slot locks one by one: one
    // may still be held when we reap and gone when we read the header. A
    // dead slot seen in the header means: reap again (a few times at most;
    // the pidfd of anyone still exiting tells us the rest).
    for (int attempt = 0;; ++attempt) {
        shm::ReapReport r;
        try {
            r = shm::Segment::reap_dead(name, kLockTimeout);
        } catch (const shm::error& e) {
            log_->debug("segment '{}': {}", name, e.what());
            forget(name);
            return false;
        }
        auto now = std::chrono::steady_clock::now();
        if (r.busy) {
            recheck_[name] = now + std::chrono::milliseconds(50);
            return false;
        }
        recheck_.erase(name);
        if (!r.exists) {
            forget(name);
            return false;
        }
        if (r.unlinked) {
            ++reclaims_;
            reclaimed_bytes_ += r.bytes;
            log_->info("reclaimed segment '{}' ({}): {}, no live process was attached", name, human(r.bytes), why);
            forget(name);
            return true;
        }
        if (r.dead_slots_cleared)
            log_->debug("segment '{}': cleared {} dead slots ({})", name, r.dead_slots_cleared, why);
        shm::admin::SegmentInfo info = shm::admin::inspect_segment(shm::segment_path(name).string(), false);
        if (info.status == shm::admin::SegmentStatus::uninitialised) {
            // Being made, or left half-made by a creator that died: reap_dead()
            // reclaims it once it is a second old and nobody is at work on it.
            recheck_[name] = now + std::chrono::milliseconds(1100);
            return false;
        }
        if (info.status != shm::admin::SegmentStatus::ok) {
            forget(name);
            return false;
        }
        bool dead_seen = info.dead > 0 || (info.live == 0 && !info.persistent);
        if (dead_seen && attempt < 3) continue;
        Seg& s = segs_[name];
        s.bytes = info.total_size;
        s.uid = info.creator_uid;
        std::set<pid_t> users;
        for (const shm::AttachInfo& a : info.slots) {
            if (!a.alive) continue;
            if (Proc* p = adopt(a.pid, a.start_time)) {
                p->segments.insert(name);
                users.insert(a.pid);
            }
        }
        for (pid_t old : s.users)
            if (!users.count(old)) {
                auto p = procs_.find(old);
                if (p == procs_.end()) continue;
                p->second.segments.erase(name);
                if (p->second.segments.empty() && p->second.conns == 0) drop_proc(old);
            }
        s.users = std::move(users);
        // Live slots whose processes we could not watch (gone by now, or in
        // another pid namespace): look again soon rather than lose track.
        if ((dead_seen || s.users.size() < info.live) && !recheck_.count(name))
            recheck_[name] = now + std::chrono::milliseconds(dead_seen ? 20 : 1000);
        return false;
    }
}

int Server::recheck_timeout_ms() const {
    if (recheck_.empty()) return -1;
    auto first = std::min_element(recheck_.begin(), recheck_.end(),
                                  [](const auto& a, const auto& b) { return a.second < b.second; })
                     ->second;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(first - std::chrono::steady_clock::now()).count();
    return ms <= 0 ? 0 : static_cast<int>(std::min<long long>(ms + 1, 60000));
}

void Server::recheck_due() {
    auto now = std::chrono::steady_clock::now();
    std::vector<std::string> due;
    for (auto& [n, t] : recheck_)
        if (t <= now) due.push_back(n);
    for (const std::string& n : due) {
        recheck_.erase(n);
        look_at(n, "looked at again");
    }
}

void Server::sweep(bool initial) {
    auto t0 = std::chrono::steady_clock::now();
    last_sweep_ = t0;
    ++sweeps_;
    // The same reclamation shmctl gc does.
    shm::admin::GcOptions go;
    go.foreign = opt_.reclaim_foreign;
    go.min_age = opt_.foreign_min_age;
    shm::admin::GcReport rep;
    try {
        rep = shm::admin::gc(go);
    } catch (const std::exception& e) {
        log_->error("sweep: {}", e.what());
    }
    for (const auto& a : rep.actions) {
        if (a.outcome == shm::admin::GcAction::reclaimed) {
            ++reclaims_;
            reclaimed_bytes_ += a.bytes;
            log_->info("sweep reclaimed {} '{}' ({}): {}", a.kind == shm::admin::FileKind::libshm ? "segment" : "file",
                       a.name, human(a.bytes), a.reason);
            if (a.kind == shm::admin::FileKind::libshm && a.name.rfind("libshm.", 0) == 0) forget(a.name.substr(7));
        } else if (a.outcome == shm::admin::GcAction::failed) {
            log_->warn("sweep could not reclaim '{}': {}", a.name, a.reason);
        }
    }
    // Watch every live process of every segment, including those whose
    // clients never registered (started before us, or forked children).
    DIR* d = ::opendir(opt_.shm_dir.c_str());
    if (!d) {
        log_->error("cannot read {}: {}", opt_.shm_dir, errtext(errno));
        return;
    }
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
        std::string n;
        if (is_libshm_file(e->d_name, n)) names.push_back(n);
    }
    ::closedir(d);
    std::set<std::string> seen(names.begin(), names.end());
    std::vector<std::string> gone;
    for (auto& [n, s] : segs_)
        if (!seen.count(n)) gone.push_back(n);
    for (const std::string& n : gone) forget(n);
    for (const std::string& n : names) look_at(n, initial ? "found at start" : "sweep");
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    log_->log(initial || rep.files_reclaimed ? spdlog::level::info : spdlog::level::debug,
              "{}: {} reclaimed ({}), {} segments and {} processes tracked, {} ms",
              initial ? "state rebuilt" : "sweep", rep.files_reclaimed, human(rep.bytes_freed), segs_.size(),
              procs_.size(), ms);
    // Reservations of creators that never attached expire.
    auto now = std::chrono::steady_clock::now();
    pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [&](const Pending& p) { return p.expires < now; }),
                   pending_.end());
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
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) {
            ::close(fd);
            continue;
        }
        ++connections_total_;
        if (conns_.size() >= opt_.max_clients) {
            std::string r = proto::error_reply(proto::code::limit,
                                               "the daemon serves " + std::to_string(conns_.size()) +
                                                   " connections already (--max-clients)",
                                               false, 0);
            (void)::send(fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            ::close(fd);
            log_->warn("refused a connection of pid {} (uid {}): {} connections", cr.pid, cr.uid, conns_.size());
            continue;
        }
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.u64 = tag(kConn, static_cast<std::uint64_t>(fd));
        if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
            ::close(fd);
            continue;
        }
        Conn& c = conns_[fd];
        c.fd = fd;
        c.pid = cr.pid;
        c.uid = cr.uid;
        c.gid = cr.gid;
        log_->debug("connection from pid {} uid {}", cr.pid, cr.uid);
    }
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
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            close_conn(fd);
            return;
        }
        if (n == 0) {
            close_conn(fd);
            return;
        }
        ++requests_;
        if ((mh.msg_flags & MSG_TRUNC) || static_cast<std::size_t>(n) > proto::kMaxMessage) {
            ++refused_;
            warn_once(c, "sent a message over " + std::to_string(proto::kMaxMessage) + " bytes");
            send_reply(c, proto::error_reply(proto::code::malformed,
                                             "message over the " + std::to_string(proto::kMaxMessage) +
                                                 "-byte limit",
                                             false, 0));
            close_conn(fd);
            return;
        }
        bool close_after = false;
        handle(c, std::string(buf.data(), static_cast<std::size_t>(n)), close_after);
        if (close_after) {
            close_conn(fd);
            return;
        }
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

std::string Server::check_quota(uid_t uid, const std::string& name, std::uint64_t bytes, const char*& code) {
    if (opt_.user_quota && uid != 0) {
        std::uint64_t used = 0;
        if (DIR* d = ::opendir(opt_.shm_dir.c_str())) {
            while (dirent* e = ::readdir(d)) {
                struct stat st;
                if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
                    st.st_uid == uid)
                    used += static_cast<std::uint64_t>(st.st_blocks) * 512;
            }
            ::closedir(d);
        }
        for (const Pending& p : pending_)
            if (p.uid == uid) used += p.bytes;
        if (used + bytes > opt_.user_quota) {
            code = proto::code::quota;
            return "it needs " + human(bytes) + ", and user " + std::to_string(uid) + " already uses " + human(used) +
                   " of the per-user limit of " + human(opt_.user_quota) + " (shmd --user-quota)";
        }
    }
    if (opt_.reserve_fraction > 0 || opt_.reserve_bytes > 0) {
        struct statvfs vs;
        if (::statvfs(opt_.shm_dir.c_str(), &vs) == 0) {
            std::uint64_t total = static_cast<std::uint64_t>(vs.f_blocks) * vs.f_frsize;
            std::uint64_t avail = static_cast<std::uint64_t>(vs.f_bavail) * vs.f_frsize;
            std::uint64_t keep = opt_.reserve_fraction > 0
                                     ? static_cast<std::uint64_t>(static_cast<double>(total) * opt_.reserve_fraction)
                                     : opt_.reserve_bytes;
            std::uint64_t pending = 0;
            for (const Pending& p : pending_) pending += p.bytes;
            avail = avail > pending ? avail - pending : 0;
            if (bytes + keep > avail) {
                code = proto::code::reserve;
                std::string kept = opt_.reserve_fraction > 0
                                       ? fmt::format("{:g}% ({})", opt_.reserve_fraction * 100, human(keep))
                                       : human(keep);
                return "it needs " + human(bytes) + ", " + human(avail) + " of " + human(total) + " are free in " +
                       shm_dir_real_ + ", and " + kept + " is kept free (shmd --reserve)";
            }
        }
    }
    (void)name;
    return {};
}

std::string Server::reply_status(bool has_id, std::uint64_t id) {
    json j;
    j["v"] = proto::kVersion;
    j["ok"] = true;
    if (has_id) j["id"] = id;
    j["version"] = SHM_VERSION_STRING;
    j["pid"] = ::getpid();
    j["socket"] = opt_.socket;
    j["shm_dir"] = shm_dir_real_;
    auto now = std::chrono::steady_clock::now();
    j["uptime_s"] = std::chrono::duration<double>(now - started_).count();
    std::size_t clients = 0;
    std::set<pid_t> client_pids;
    for (auto& [fd, c] : conns_)
        if (c.hello) {
            ++clients;
            client_pids.insert(c.pid);
        }
    j["connections"] = conns_.size();
    j["clients"] = client_pids.size();
    j["processes"] = procs_.size();
    j["segments"] = segs_.size();
    std::uint64_t bytes = 0;
    for (auto& [n, s] : segs_) bytes += s.bytes;
    j["bytes"] = bytes;
    j["reclaims"] = reclaims_;
    j["reclaimed_bytes"] = reclaimed_bytes_;
    j["sweeps"] = sweeps_;
    j["last_sweep_s_ago"] = std::chrono::duration<double>(now - last_sweep_).count();
    j["sweep_interval_s"] = std::chrono::duration<double>(opt_.sweep_interval).count();
    j["requests"] = requests_;
    j["refused"] = refused_;
    j["user_quota"] = opt_.user_quota;
    if (opt_.reserve_fraction > 0) j["reserve"] = fmt::format("{:g}%", opt_.reserve_fraction * 100);
    else j["reserve"] = opt_.reserve_bytes;
    j["reclaim_foreign"] = opt_.reclaim_foreign;
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string Server::reply_list(const std::string& after, bool has_id, std::uint64_t id) {
    json j;
    j["v"] = proto::kVersion;
    j["ok"] = true;
    if (has_id) j["id"] = id;
    json arr = json::array();
    auto it = after.empty() ? segs_.begin() : segs_.upper_bound(after);
    std::size_t n = 0;
    for (; it != segs_.end() && n < proto::kListPage; ++it, ++n) {
        json s;
        s["name"] = it->first;
        s["bytes"] = it->second.bytes;
        s["registered"] = it->second.registered;
        s["pids"] = json(std::vector<pid_t>(it->second.users.begin(), it->second.users.end()));
        arr.push_back(std::move(s));
    }
    j["segments"] = std::move(arr);
    j["more"] = it != segs_.end();
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void Server::handle(Conn& c, const std::string& msg, bool& close_after) {
    auto decoded = proto::decode_request(msg);
    if (auto* e = std::get_if<proto::DecodeError>(&decoded)) {
        ++refused_;
        warn_once(c, std::string("sent a bad request (") + e->code + "): " + e->message);
        send_reply(c, proto::error_reply(e->code, e->message, e->has_id, e->id));
        close_after = e->fatal;
        return;
    }
    const proto::Request& r = std::get<proto::Request>(decoded);
    auto fail = [&](const char* code, const std::string& m) {
        ++refused_;
        send_reply(c, proto::error_reply(code, m, r.has_id, r.id));
    };
    auto ok = [&](json extra = json::object()) {
        extra["v"] = proto::kVersion;
        extra["ok"] = true;
        if (r.has_id) extra["id"] = r.id;
        send_reply(c, extra.dump(-1, ' ', false, json::error_handler_t::replace));
    };
    std::string path = r.segment.empty() ? std::string() : shm::segment_path(r.segment).string();

    switch (r.op) {
        case proto::Op::hello: {
            if (c.hello) return fail(proto::code::malformed, "hello was already said on this connection");
            std::error_code ec;
            std::string dir = std::filesystem::weakly_canonical(r.shm_dir, ec).string();
            if (ec) dir = r.shm_dir;
            if (dir != shm_dir_real_)
                return fail(proto::code::wrong_dir, "this daemon serves " + shm_dir_real_ + ", not " + dir);
            // The kernel's pidfd for the peer (Linux 6.5+) names exactly the
            // process that connected; else open one by pid, which adopt()
            // checks against the start time the client claims.
            int pidfd = -1;
            socklen_t len = sizeof pidfd;
            if (::getsockopt(c.fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) pidfd = -1;
            Proc* p = adopt(c.pid, r.start_time, pidfd);
            if (!p) {
                warn_once(c, "said hello with a start time that is not its own");
                return fail(proto::code::unauthorised,
                            "start time " + std::to_string(r.start_time) + " is not that of pid " +
                                std::to_string(c.pid) + " (the peer of this socket)");
            }
            ++p->conns;
            c.hello = true;
            return ok({{"pid", c.pid}, {"uid", c.uid}, {"daemon_pid", ::getpid()}, {"version", SHM_VERSION_STRING}});
        }
        case proto::Op::attach:
        case proto::Op::detach:
        case proto::Op::reserve: {
            if (!c.hello) return fail(proto::code::malformed, std::string(proto::to_string(r.op)) + " before hello");
            if (r.op == proto::Op::reserve) {
                const char* code = nullptr;
                std::string why = check_quota(c.uid, r.segment, r.bytes, code);
                if (!why.empty()) {
                    log_->info("refused to let pid {} (uid {}) create segment '{}' ({}): {}", c.pid, c.uid, r.segment,
                               human(r.bytes), why);
                    return fail(code, why);
                }
                auto now = std::chrono::steady_clock::now();
                pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                              [&](const Pending& p) { return p.expires < now || p.name == r.segment; }),
                               pending_.end());
                // Creates not yet seen are bounded per user, so that nobody can
                // grow the daemon's memory by asking and never creating.
                std::size_t mine = 0;
                for (const Pending& p : pending_) mine += p.uid == c.uid;
                if (mine >= kMaxPendingPerUser)
                    return fail(proto::code::limit, "uid " + std::to_string(c.uid) + " has " + std::to_string(mine) +
                                                        " creates asked for and not yet made; try again in a few seconds");
                pending_.push_back({c.uid, r.segment, r.bytes, now + kPendingLife});
                // If the creator dies before it registers the segment, its
                // exit makes us look at the name.
                if (Proc* p = adopt(c.pid, 0)) p->segments.insert(r.segment);
                return ok();
            }
            struct stat st;
            if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
                if (r.op == proto::Op::detach) {
                    c.attached.erase(r.segment);
                    forget(r.segment);
                    return ok();
                }
                return fail(proto::code::not_found, "no segment '" + r.segment + "' in " + shm_dir_real_);
            }
            // Registering tells the daemon to look at a segment: only for
            // segments the caller could open itself.
            bool may = c.uid == 0 || st.st_uid == c.uid || (st.st_mode & 0006) == 0006 ||
                       (st.st_gid == c.gid && (st.st_mode & 0060) == 0060);
            if (!may) {
                warn_once(c, "named segment '" + r.segment + "' of another user");
                return fail(proto::code::unauthorised, "segment '" + r.segment + "' belongs to uid " +
                                                           std::to_string(st.st_uid) + " and is not open to uid " +
                                                           std::to_string(c.uid));
            }
            if (r.op == proto::Op::attach) {
                if (c.attached.size() >= kMaxSegmentsPerConn)
                    return fail(proto::code::limit, "too many segments registered on one connection");
                c.attached.insert(r.segment);
                pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                              [&](const Pending& p) { return p.name == r.segment; }),
                               pending_.end());
                look_at(r.segment, "attach");
                auto s = segs_.find(r.segment);
                if (s != segs_.end()) s->second.registered = true;
            } else {
                c.attached.erase(r.segment);
                std::string why = "pid " + std::to_string(c.pid) + " detached";
                look_at(r.segment, why.c_str());
            }
            return ok();
        }
        case proto::Op::remove: {
            struct stat st;
            if (::lstat(path.c_str(), &st) != 0)
                return fail(proto::code::not_found, "no segment '" + r.segment + "' in " + shm_dir_real_);
            if (c.uid != 0 && st.st_uid != c.uid) {
                warn_once(c, "tried to remove segment '" + r.segment + "' of uid " + std::to_string(st.st_uid));
                return fail(proto::code::unauthorised, "segment '" + r.segment + "' belongs to uid " +
                                                           std::to_string(st.st_uid) + "; only its owner or root may "
                                                                                       "remove it");
            }
            std::uint64_t bytes = static_cast<std::uint64_t>(st.st_blocks) * 512;
            try {
                std::vector<std::int32_t> live;
                bool removed = r.force ? shm::Segment::unlink(r.segment)
                                       : shm::Segment::unlink_if_unused(r.segment, &live);
                if (!r.force && !live.empty()) {
                    std::string pids;
                    for (auto p : live) pids += (pids.empty() ? "" : ", ") + std::to_string(p);
                    return fail(proto::code::in_use,
                                "segment '" + r.segment + "' is in use by pid " + pids + " (force removes it anyway)");
                }
                if (!removed) return fail(proto::code::not_found, "no segment '" + r.segment + "'");
            } catch (const shm::error& e) {
                return fail(proto::code::failed, e.what());
            }
            log_->info("removed segment '{}' ({}) at the request of pid {} (uid {})", r.segment, human(bytes), c.pid,
                       c.uid);
            forget(r.segment);
            return ok({{"bytes", bytes}});
        }
        case proto::Op::status: send_reply(c, reply_status(r.has_id, r.id)); return;
        case proto::Op::list: send_reply(c, reply_list(r.segment, r.has_id, r.id)); return;
    }
}

}  // namespace shmd
