#include "client/daemon_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "client/daemon_protocol.hpp"
#include "platform/platform.hpp"
#include "shm/error.hpp"
#include "shm/names.hpp"

namespace shm::daemon_client {

using nlohmann::json;

namespace {

enum class Mode { off, automatic, required };

constexpr std::chrono::milliseconds kTimeout{2000};

struct State {
    std::mutex m;
    bool mode_read = false;
    Mode mode = Mode::automatic;
    bool tried = false;         // a connect was attempted (auto: at most one that fails)
    bool known_daemon = false;  // we were connected once: reconnect after a restart
    int fd = -1;
    pid_t fd_pid = 0;           // the process that opened fd (a fork child must not use it)
    std::uint64_t generation = 0;
    pid_t watcher_pid = 0;      // the process whose watcher thread runs
    std::map<std::string, int> names;  // segments this process has attached, with handle counts
    std::string last_error;
};

State& state() {
    static State* s = [] {
        auto* p = new State();  // never destroyed: the watcher thread may outlive main()
        ::pthread_atfork([] { state().m.lock(); }, [] { state().m.unlock(); }, [] { state().m.unlock(); });
        return p;
    }();
    return *s;
}

Mode read_mode() {
    const char* v = std::getenv("SHM_DAEMON");
    if (!v || !*v || std::strcmp(v, "auto") == 0) return Mode::automatic;
    if (std::strcmp(v, "off") == 0) return Mode::off;
    if (std::strcmp(v, "required") == 0) return Mode::required;
    throw error(EINVAL, std::string("SHM_DAEMON must be auto, required or off, not '") + v + "'");
}

void set_timeouts(int fd, std::chrono::milliseconds t) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(t.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((t.count() % 1000) * 1000);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

// A connected SOCK_SEQPACKET socket, or -1 with errno set.
int dial(const std::string& path, std::chrono::milliseconds timeout) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof a.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    set_timeouts(fd, timeout);
    if (platform::sys([&] { return ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a); }) != 0) {
        int e = errno;
        ::close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

// Send one message and read one reply. Empty optional (errno set) when the
// connection failed.
std::optional<std::string> round_trip(int fd, const std::string& msg) {
    if (platform::sys([&] { return ::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL); }) < 0) return std::nullopt;
    std::string buf(proto::kMaxReply, '\0');
    ssize_t n = platform::sys([&] { return ::recv(fd, buf.data(), buf.size(), 0); });
    if (n < 0) return std::nullopt;
    if (n == 0) {
        errno = ECONNRESET;
        return std::nullopt;
    }
    buf.resize(static_cast<std::size_t>(n));
    return buf;
}

std::optional<json> request_on(int fd, const proto::Request& r) {
    auto reply = round_trip(fd, proto::encode_request(r));
    if (!reply) return std::nullopt;
    json j = json::parse(*reply, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("ok")) {
        errno = EPROTO;
        return std::nullopt;
    }
    return j;
}

std::string reply_message(const json& j) {
    auto it = j.find("message");
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string("no reason given");
}

void close_conn(State& s) {
    if (s.fd >= 0) ::close(s.fd);
    s.fd = -1;
}

void start_watcher(State& s);

bool try_connect_locked(State& s);

// Connect, say hello and report what this process has attached. Called
// with s.m held. When it fails but a daemon served this process (or the
// parent it was forked from), the watcher thread keeps trying: a process
// that attaches nothing more must still be known once the daemon is back.
bool connect_locked(State& s) {
    if (try_connect_locked(s)) return true;
    if (s.known_daemon && s.watcher_pid != ::getpid()) start_watcher(s);
    return false;
}

bool try_connect_locked(State& s) {
    std::string path = socket_path();
    int fd = dial(path, kTimeout);
    if (fd < 0) {
        s.last_error = "no daemon at " + path + ": " + std::strerror(errno);
        return false;
    }
    proto::Request hello;
    hello.op = proto::Op::hello;
    hello.start_time = platform::self_start_time();
    std::error_code ec;
    auto dir = std::filesystem::weakly_canonical(shm_directory(), ec);
    hello.shm_dir = ec ? shm_directory().string() : dir.string();
    auto reply = request_on(fd, hello);
    if (!reply || !(*reply)["ok"].is_boolean() || !(*reply)["ok"].get<bool>()) {
        s.last_error = "the daemon at " + path + " refused this process: " +
                       (reply ? reply_message(*reply) : std::string(std::strerror(errno)));
        ::close(fd);
        return false;
    }
    for (const auto& [name, count] : s.names) {
        if (count <= 0) continue;
        proto::Request a;
        a.op = proto::Op::attach;
        a.segment = name;
        if (!request_on(fd, a)) {
            s.last_error = "the daemon at " + path + " went away: " + std::strerror(errno);
            ::close(fd);
            return false;
        }
    }
    s.fd = fd;
    s.fd_pid = ::getpid();
    ++s.generation;
    s.known_daemon = true;
    s.last_error.clear();
    if (s.watcher_pid != ::getpid()) start_watcher(s);
    return true;
}

// Make sure this process has a connection, if it should. s.m held.
bool ensure_locked(State& s) {
    if (!s.mode_read) {
        s.mode = read_mode();
        s.mode_read = true;
    }
    if (s.fd >= 0 && s.fd_pid == ::getpid()) return true;
    if (s.fd >= 0) {
        // Inherited from the parent: the daemon knows that socket as the
        // parent's (SO_PEERCRED is fixed at connect). Drop our reference.
        ::close(s.fd);
        s.fd = -1;
    }
    if (s.mode == Mode::off) return false;
    if (s.tried && !s.known_daemon && s.mode == Mode::automatic) return false;
    s.tried = true;
    return connect_locked(s);
}

[[noreturn]] void required_failed(State& s) {
    throw error(ECONNREFUSED, "SHM_DAEMON=required, but " +
                                  (s.last_error.empty() ? std::string("the daemon is unreachable") : s.last_error));
}

// One request; on a broken connection reconnect once (the daemon may have
// restarted) and try again. s.m held.
std::optional<json> request_locked(State& s, const proto::Request& r) {
    for (int attempt = 0; attempt < 2; ++attempt) {
        if (!ensure_locked(s)) return std::nullopt;
        if (auto j = request_on(s.fd, r)) return j;
        s.last_error = std::string("lost the daemon connection: ") + std::strerror(errno);
        close_conn(s);
    }
    return std::nullopt;
}

// The process whose watcher thread has started running watch().
std::atomic<pid_t> g_watcher_running{0};

void watch(pid_t owner) {
    g_watcher_running.store(owner, std::memory_order_release);
    sigset_t all;
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
    State& s = state();
    auto delay = std::chrono::milliseconds(10);
    for (;;) {
        int dupfd = -1;
        std::uint64_t gen = 0;
        {
            std::lock_guard<std::mutex> g(s.m);
            if (::getpid() != owner) return;  // cannot happen (threads do not survive fork); be safe
            if (s.fd < 0 && !connect_locked(s)) {
                // fall through to the back-off below
            } else {
                dupfd = ::fcntl(s.fd, F_DUPFD_CLOEXEC, 0);
                gen = s.generation;
            }
        }
        if (dupfd < 0) {
            std::this_thread::sleep_for(delay);
            delay = std::min(delay * 2, std::chrono::milliseconds(1000));
            continue;
        }
        delay = std::chrono::milliseconds(10);
        // Replies arrive as POLLIN, which we do not ask for: this wakes only
        // when the daemon closes the connection.
        pollfd p{dupfd, POLLRDHUP, 0};
        while (platform::sys([&] { return ::poll(&p, 1, -1); }) < 0) {
        }
        ::close(dupfd);
        std::lock_guard<std::mutex> g(s.m);
        if (s.generation == gen && s.fd >= 0) close_conn(s);
    }
}

// Start the watcher thread and wait until it runs watch(). A thread that
// is still starting may be inside the allocator (glibc's
// pthread_getattr_np() allocates), and a fork() then would copy that state
// into the child: glibc's malloc guards against that, a sanitizer's
// allocator does not, and a child forked right after this process's first
// attach hung there. From watch() on, the thread allocates only under s.m,
// which fork() takes (see state()).
void start_watcher(State& s) {
    pid_t self = ::getpid();
    try {
        std::thread(watch, self).detach();
        s.watcher_pid = self;
    } catch (const std::system_error&) {
        // No thread: the next attach or detach reconnects instead.
        return;
    }
    for (int i = 0; g_watcher_running.load(std::memory_order_acquire) != self; ++i) {
        if (i < 100)
            std::this_thread::yield();
        else
            std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
}

}  // namespace

std::string socket_path() {
    if (const char* v = std::getenv("SHM_DAEMON_SOCKET"); v && *v) return v;
    if (::geteuid() != 0) {
        if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) {
            std::string p = std::string(x) + "/shmd.sock";
            struct stat st;
            if (::stat(p.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) return p;
        }
    }
    return "/run/shmd/shmd.sock";
}

void before_create(const std::string& name, std::uint64_t bytes) {
    State& s = state();
    std::lock_guard<std::mutex> g(s.m);
    proto::Request r;
    r.op = proto::Op::reserve;
    r.segment = name;
    r.bytes = bytes;
    auto j = request_locked(s, r);
    if (!j) {
        if (s.mode == Mode::required) required_failed(s);
        return;
    }
    if ((*j)["ok"] == true) return;
    std::string code = j->value("error", "");
    if (code == proto::code::quota || code == proto::code::reserve)
        throw out_of_space("cannot create segment '" + name + "': " + reply_message(*j));
    if (s.mode == Mode::required)
        throw error(EPERM, "cannot create segment '" + name + "': the daemon refused: " + reply_message(*j));
}

void attached(const std::string& name) {
    State& s = state();
    std::lock_guard<std::mutex> g(s.m);
    bool fresh = s.fd < 0 || s.fd_pid != ::getpid();
    int count = ++s.names[name];
    // A new connection (first use, or the first in a fork child) reports
    // every attached segment, this one included.
    if (fresh && ensure_locked(s)) return;
    if (count > 1 && !fresh) return;
    proto::Request r;
    r.op = proto::Op::attach;
    r.segment = name;
    auto j = request_locked(s, r);
    if (!j && s.mode == Mode::required) {
        if (--s.names[name] == 0) s.names.erase(name);
        required_failed(s);
    }
}

void detached(const std::string& name) noexcept {
    try {
        State& s = state();
        std::lock_guard<std::mutex> g(s.m);
        auto it = s.names.find(name);
        if (it == s.names.end()) return;
        if (--it->second > 0) return;
        s.names.erase(it);
        if (s.fd < 0 || s.fd_pid != ::getpid()) return;  // not connected: nothing to tell
        proto::Request r;
        r.op = proto::Op::detach;
        r.segment = name;
        if (!request_on(s.fd, r)) close_conn(s);
    } catch (...) {
    }
}

bool connected() {
    State& s = state();
    std::lock_guard<std::mutex> g(s.m);
    return s.fd >= 0 && s.fd_pid == ::getpid();
}

std::string call(const std::string& socket, const std::string& request, std::chrono::milliseconds timeout) {
    int fd = dial(socket, timeout);
    if (fd < 0) {
        int e = errno;
        throw error(e, "cannot reach shmd at " + socket + ": " + std::strerror(e));
    }
    auto reply = round_trip(fd, request);
    int e = errno;
    ::close(fd);
    if (!reply)
        throw error(e == EAGAIN ? ETIMEDOUT : e, "no reply from shmd at " + socket + ": " + std::strerror(e));
    return *reply;
}

}  // namespace shm::daemon_client
