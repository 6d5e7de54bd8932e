// shm::admin: inspecting and reclaiming the shm directory (see admin.hpp).
//
// Reading a segment that other processes are changing
// ----------------------------------------------------
// We never attach and never take the heap lock, so the header and the object
// directory are read with pread() while writers may be at work:
//   * identity fields (magic, version, sizes, creator) are written once,
//     before the segment is published with state = ready, and never again;
//   * an attach slot's liveness is the kernel's answer to F_OFD_GETLK, not
//     anything in the file;
//   * the object directory is a list that heap transactions relink. We read
//     the header, walk the list (each entry's offset checked against the
//     heap's bounds, the walk bounded by the entry count), and read the
//     header again: if an update was in progress (journal not empty) or the
//     list head or count changed, the walk is retried, and after a few tries
//     the directory is reported busy instead of being misread.
//   * objects are copied out of the file and read through their own const
//     accessors; each field is one aligned word, so a value may be a moment
//     old, never torn across fields that matter for display.
// pread() also means a file truncated under us gives short reads, not
// SIGBUS.
#include "shm/admin.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "objects/container_layout.hpp"
#include "client/daemon_client.hpp"
#include "core/liveness.hpp"
#include "client/daemon_protocol.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"
#include "platform/platform.hpp"
#include "objects/queue_layout.hpp"
#include "shm/names.hpp"
#include "shm/shm.hpp"

namespace shm::admin {

using platform::sys;

namespace {

constexpr std::uint64_t kPfKthread = 0x00200000;  // PF_KTHREAD in /proc/<pid>/stat flags
constexpr unsigned kFutexTidMask = 0x3fffffff;    // FUTEX_TID_MASK
constexpr unsigned kFutexOwnerDied = 0x40000000;  // FUTEX_OWNER_DIED

struct Fd {
    int fd = -1;
    explicit Fd(int f = -1) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
};

struct Dir {
    DIR* d = nullptr;
    explicit Dir(DIR* p = nullptr) : d(p) {}
    Dir(const Dir&) = delete;
    Dir& operator=(const Dir&) = delete;
    ~Dir() {
        if (d) ::closedir(d);
    }
};

// Read a whole (proc) file relative to dirfd. Returns 0 or the errno.
int read_text_at(int dirfd, const char* name, std::string& out, std::size_t limit = 64u << 20) {
    out.clear();
    Fd fd(sys([&] { return ::openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY); }));
    if (fd.fd < 0) return errno;
    char buf[65536];
    for (;;) {
        ssize_t n = sys([&] { return ::read(fd.fd, buf, sizeof buf); });
        if (n < 0) return errno;
        if (n == 0) return 0;
        out.append(buf, static_cast<std::size_t>(n));
        if (out.size() >= limit) return 0;
    }
}

bool vanished(int err) { return err == ENOENT || err == ESRCH; }

std::int64_t now_ns() { return platform::realtime_ns(); }

std::int64_t ns_of(const timespec& ts) { return std::int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec; }

bool is_digits(const char* s) {
    if (!*s) return false;
    for (; *s; ++s)
        if (*s < '0' || *s > '9') return false;
    return true;
}

std::string segment_name_of_file(std::string_view file) {
    if (file.substr(0, kFilePrefix.size()) != kFilePrefix) return {};
    return std::string(file.substr(kFilePrefix.size()));
}

bool valid_segment_name(std::string_view n) {
    try {
        validate_segment_name(n);
        return true;
    } catch (const name_error&) {
        return false;
    }
}

}  // namespace

// ---- names ----------------------------------------------------------------

const char* to_string(FileKind k) noexcept {
    switch (k) {
        case FileKind::libshm: return "libshm";
        case FileKind::python: return "python";
        case FileKind::pytorch: return "pytorch";
        case FileKind::other: return "other";
    }
    return "other";
}

const char* to_string(State s) noexcept {
    switch (s) {
        case State::in_use: return "in_use";
        case State::leaked: return "leaked";
        case State::persistent: return "persistent";
        case State::unknown: return "unknown";
    }
    return "unknown";
}

const char* to_string(SegmentStatus s) noexcept {
    switch (s) {
        case SegmentStatus::ok: return "ok";
        case SegmentStatus::uninitialised: return "uninitialised";
        case SegmentStatus::dead: return "dead";
        case SegmentStatus::version_mismatch: return "version_mismatch";
        case SegmentStatus::not_a_segment: return "not_a_segment";
        case SegmentStatus::corrupt: return "corrupt";
        case SegmentStatus::unreadable: return "unreadable";
    }
    return "unreadable";
}

const char* to_string(GcAction::Outcome o) noexcept {
    switch (o) {
        case GcAction::reclaimed: return "reclaimed";
        case GcAction::cleared: return "cleared";
        case GcAction::kept: return "kept";
        case GcAction::skipped: return "skipped";
        case GcAction::failed: return "failed";
    }
    return "failed";
}

FileKind kind_of_name(std::string_view n) {
    auto starts = [&](std::string_view p) { return n.substr(0, p.size()) == p; };
    if (starts(kFilePrefix) && valid_segment_name(n.substr(kFilePrefix.size()))) return FileKind::libshm;
    if (starts("psm_") || starts("sem.mp-")) return FileKind::python;
    if (starts("torch_")) return FileKind::pytorch;
    return FileKind::other;
}

// ---- /proc parsing ------------------------------------------------------

bool parse_proc_stat(std::string_view t, ProcStat& out) {
    // "pid (comm) state ppid pgrp session tty tpgid flags ... starttime(22) ..."
    std::size_t open = t.find('(');
    std::size_t close = t.rfind(')');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open) return false;
    out = ProcStat{};
    out.pid = static_cast<pid_t>(std::strtol(std::string(t.substr(0, open)).c_str(), nullptr, 10));
    out.comm = std::string(t.substr(open + 1, close - open - 1));
    // Fields after the command name, split on single spaces; field 3 first.
    std::size_t p = close + 1;
    int field = 2;
    while (p < t.size() && field < 22) {
        while (p < t.size() && t[p] == ' ') ++p;
        std::size_t e = p;
        while (e < t.size() && t[e] != ' ' && t[e] != '\n') ++e;
        if (e == p) break;
        ++field;
        std::string_view f = t.substr(p, e - p);
        if (field == 3) out.state = f[0];
        else if (field == 4) out.ppid = static_cast<pid_t>(std::strtol(std::string(f).c_str(), nullptr, 10));
        else if (field == 9) out.flags = std::strtoull(std::string(f).c_str(), nullptr, 10);
        else if (field == 22) out.start_time = std::strtoull(std::string(f).c_str(), nullptr, 10);
        p = e;
    }
    return field == 22 && out.pid > 0;
}

bool parse_maps_line(std::string_view l, MapsLine& out) {
    // "start-end perms offset major:minor inode   path"
    out = MapsLine{};
    std::size_t p = 0;
    auto skip_field = [&] {
        while (p < l.size() && l[p] != ' ') ++p;
        while (p < l.size() && l[p] == ' ') ++p;
    };
    skip_field();  // address range
    skip_field();  // perms
    skip_field();  // offset
    if (p >= l.size()) return false;
    char* end = nullptr;
    std::string rest(l.substr(p, 64));  // dev and inode fit easily
    const char* s = rest.c_str();
    unsigned long maj = std::strtoul(s, &end, 16);
    if (end == s || *end != ':') return false;
    const char* m = end + 1;
    unsigned long min = std::strtoul(m, &end, 16);
    if (end == m || *end != ' ') return false;
    const char* i = end;
    while (*i == ' ') ++i;
    unsigned long long ino = std::strtoull(i, &end, 10);
    if (end == i) return false;
    out.dev_major = static_cast<unsigned>(maj);
    out.dev_minor = static_cast<unsigned>(min);
    out.inode = ino;
    p += static_cast<std::size_t>(end - s);
    while (p < l.size() && l[p] == ' ') ++p;
    std::string_view path = l.substr(p);
    while (!path.empty() && (path.back() == '\n' || path.back() == '\r')) path.remove_suffix(1);
    constexpr std::string_view kDeleted = " (deleted)";
    if (path.size() >= kDeleted.size() && path.substr(path.size() - kDeleted.size()) == kDeleted) {
        out.deleted = true;
        path.remove_suffix(kDeleted.size());
    }
    out.path = std::string(path);
    return true;
}

namespace {

// Uid:/Gid:/Groups:/CapEff: of /proc/<pid>/status.
void parse_status(const std::string& text, HiddenProcess& h) {
    std::size_t p = 0;
    while (p < text.size()) {
        std::size_t e = text.find('\n', p);
        if (e == std::string::npos) e = text.size();
        std::string_view line(text.data() + p, e - p);
        auto numbers = [&](std::string_view rest, std::vector<std::uint32_t>& into) {
            std::string s(rest);
            const char* c = s.c_str();
            for (;;) {
                char* end = nullptr;
                unsigned long v = std::strtoul(c, &end, 10);
                if (end == c) break;
                into.push_back(static_cast<std::uint32_t>(v));
                c = end;
            }
        };
        if (line.substr(0, 4) == "Uid:") numbers(line.substr(4), h.uids);
        else if (line.substr(0, 4) == "Gid:") numbers(line.substr(4), h.gids);
        else if (line.substr(0, 7) == "Groups:") numbers(line.substr(7), h.gids);
        else if (line.substr(0, 7) == "CapEff:") {
            std::uint64_t caps = std::strtoull(std::string(line.substr(7)).c_str(), nullptr, 16);
            // CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2), CAP_FOWNER (3).
            h.privileged = (caps & 0xE) != 0;
        }
        p = e + 1;
    }
}

void add_use(ProcessScan& s, std::uint64_t ino, pid_t pid, bool mapped) {
    auto& v = s.uses[ino];
    if (v.empty() || v.back().pid != pid) v.push_back(FileUse{pid, false, false});
    (mapped ? v.back().mapped : v.back().open) = true;
}

}  // namespace

ProcessScan ProcessScan::run(dev_t dev, const std::vector<std::uint64_t>* only, const Progress& progress,
                             const std::string& proc) {
    ProcessScan s;
    s.dev = dev;
    std::set<std::uint64_t> wanted;
    if (only) wanted.insert(only->begin(), only->end());
    auto want = [&](std::uint64_t ino) { return !only || wanted.count(ino) != 0; };
    const unsigned want_major = major(dev), want_minor = minor(dev);

    Fd procfd(sys([&] { return ::open(proc.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); }));
    if (procfd.fd < 0) platform::fail(errno, "cannot read " + proc);
    std::vector<std::string> pids;
    {
        Dir d(::fdopendir(::dup(procfd.fd)));
        if (!d.d) platform::fail(errno, "cannot list " + proc);
        while (dirent* de = ::readdir(d.d))
            if (is_digits(de->d_name)) pids.emplace_back(de->d_name);
    }
    const pid_t self = ::getpid();
    std::string text;
    std::size_t done = 0;
    for (const std::string& name : pids) {
        if (progress) progress("reading /proc", done, pids.size());
        ++done;
        pid_t pid = static_cast<pid_t>(std::strtol(name.c_str(), nullptr, 10));
        // The directory fd pins this process: if it exits (and its pid is
        // reused) reads through it fail with ESRCH instead of reading another.
        Fd pfd(sys([&] { return ::openat(procfd.fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); }));
        if (pfd.fd < 0) continue;  // gone
        ProcStat st;
        if (read_text_at(pfd.fd, "stat", text) != 0 || !parse_proc_stat(text, st)) continue;
        if (st.state == 'Z' || st.state == 'X' || (st.flags & kPfKthread)) continue;
        s.processes[pid] = Process{st.comm, st.start_time};
        if (pid == self) continue;

        bool hidden = false;
        int hidden_err = 0;
        // Mapped files.
        int err = read_text_at(pfd.fd, "maps", text);
        if (vanished(err)) {
            s.processes.erase(pid);
            continue;
        }
        if (err != 0) {
            hidden = true;
            hidden_err = err;
        } else {
            std::size_t p = 0;
            MapsLine ml;
            while (p < text.size()) {
                std::size_t e = text.find('\n', p);
                if (e == std::string::npos) e = text.size();
                std::string_view line(text.data() + p, e - p);
                p = e + 1;
                if (parse_maps_line(line, ml) && ml.inode != 0 && ml.dev_major == want_major &&
                    ml.dev_minor == want_minor && want(ml.inode))
                    add_use(s, ml.inode, pid, true);
            }
        }
        // Open descriptors.
        if (!hidden) {
            int fdd = sys([&] { return ::openat(pfd.fd, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
            if (fdd < 0) {
                if (vanished(errno)) {
                    s.processes.erase(pid);
                    continue;
                }
                hidden = true;
                hidden_err = errno;
            } else {
                Dir d(::fdopendir(fdd));
                if (!d.d) {
                    ::close(fdd);
                    hidden = true;
                    hidden_err = errno;
                } else {
                    while (dirent* de = ::readdir(d.d)) {
                        if (de->d_name[0] == '.') continue;
                        struct stat fst;
                        // Follows the magic link to the open file itself (no
                        // open, no path lookup): works for deleted files too.
                        if (::fstatat(::dirfd(d.d), de->d_name, &fst, 0) != 0) continue;  // closed meanwhile
                        if (S_ISREG(fst.st_mode) && fst.st_dev == dev && want(fst.st_ino))
                            add_use(s, fst.st_ino, pid, false);
                    }
                }
            }
        }
        if (hidden) {
            HiddenProcess h;
            h.pid = pid;
            h.comm = st.comm;
            h.error = hidden_err;
            int e2 = read_text_at(pfd.fd, "status", text);
            if (vanished(e2)) {
                s.processes.erase(pid);
                continue;
            }
            if (e2 == 0)
                parse_status(text, h);
            else
                h.privileged = true;  // cannot tell what it may open: assume anything
            s.hidden.push_back(std::move(h));
        } else {
            ++s.inspected;
        }
    }
    if (progress) progress("reading /proc", pids.size(), pids.size());
    return s;
}

const std::vector<FileUse>* ProcessScan::users(std::uint64_t inode) const {
    auto it = uses.find(inode);
    return it == uses.end() ? nullptr : &it->second;
}

std::vector<const HiddenProcess*> ProcessScan::could_use(std::uint32_t uid, std::uint32_t gid,
                                                         std::uint32_t mode) const {
    // A process could have the file open or mapped if it could open it: with
    // a capability that bypasses permissions, as its owner (who may also
    // chmod it), or through the group or other permission bits. (A
    // descriptor passed over a Unix socket escapes this; such a file is
    // still held by its sender or seen in the receiver when we may look.)
    std::vector<const HiddenProcess*> out;
    for (const HiddenProcess& h : hidden) {
        bool can = h.privileged || (mode & 0006) != 0;
        if (!can) can = std::find(h.uids.begin(), h.uids.end(), uid) != h.uids.end();
        if (!can && (mode & 0060)) can = std::find(h.gids.begin(), h.gids.end(), gid) != h.gids.end();
        if (can) out.push_back(&h);
    }
    return out;
}

std::string ProcessScan::comm_of(pid_t pid, std::uint64_t start_time) const {
    auto it = processes.find(pid);
    if (it == processes.end()) return {};
    if (start_time != 0 && it->second.start_time != start_time) return {};
    return it->second.comm;
}

// ---- segments ---------------------------------------------------------------

namespace {

// A copy of part of the file, aligned for the structs we read from it.
struct Buf {
    std::vector<std::uint64_t> words;
    std::size_t n = 0;
    void* data() { return words.data(); }
    const void* data() const { return words.data(); }
};

// pread exactly `n` bytes at `off`; false on a short read or an error.
bool read_at(int fd, std::uint64_t off, std::size_t n, Buf& b) {
    b.words.assign((n + 7) / 8, 0);
    b.n = n;
    std::size_t got = 0;
    char* p = static_cast<char*>(b.data());
    while (got < n) {
        ssize_t r = sys([&] { return ::pread(fd, p + got, n - got, static_cast<off_t>(off + got)); });
        if (r <= 0) return false;
        got += static_cast<std::size_t>(r);
    }
    return true;
}

LockState lock_state(const void* storage, std::int32_t owner_pid, std::uint64_t recoveries, bool recursive) {
    // The pthread mutex is the first member of shm::Mutex and
    // shm::RecursiveMutex (both standard-layout). glibc keeps the owner's tid
    // in the futex word; the kernel sets FUTEX_OWNER_DIED there (and clears
    // the tid) when the owner dies holding it: proof of death, no pid guess.
    const auto* m = static_cast<const pthread_mutex_t*>(storage);
    unsigned word = static_cast<unsigned>(m->__data.__lock);
    unsigned tid = word & kFutexTidMask;
    LockState l;
    l.recoveries = recoveries;
    if (tid != 0) {
        l.held = true;
        l.owner_pid = owner_pid != 0 ? owner_pid : static_cast<std::int32_t>(tid);
        l.owner_alive = pid_exists(static_cast<pid_t>(tid));
        l.owner_died = !l.owner_alive;
        if (recursive) l.depth = m->__data.__count;
    } else if (word & kFutexOwnerDied) {
        l.owner_pid = owner_pid;
        l.owner_died = true;
    }
    return l;
}
static_assert(std::is_standard_layout_v<Mutex>);
static_assert(std::is_standard_layout_v<RecursiveMutex>);

template <class T>
const T* object_copy(int fd, const ObjectInfo& o, Buf& b, std::string& problem) {
    if (o.size != sizeof(T)) {
        problem = "size " + std::to_string(o.size) + " bytes, this libshm's " + to_string(o.kind) + " is " +
                  std::to_string(sizeof(T)) + ": not interpreted";
        return nullptr;
    }
    if (!read_at(fd, o.offset, sizeof(T), b)) {
        problem = "could not be read";
        return nullptr;
    }
    return static_cast<const T*>(b.data());
}

// The length of a Dict or List. Its named object is a root holding the
// offset of the container's header (0 until first opened); the header starts
// with a magic word and the element count (container_layout.hpp).
void read_container_length(int fd, ObjectState& s) {
    using namespace container_layout;
    const std::uint64_t magic = s.info.kind == ObjectKind::dict ? kDictMagic : kListMagic;
    Buf b;
    if (s.info.size != sizeof(std::uint64_t) || !read_at(fd, s.info.offset, sizeof(std::uint64_t), b)) {
        s.problem = "its root could not be read";
        return;
    }
    std::uint64_t hdr = static_cast<const std::uint64_t*>(b.data())[0];
    if (hdr == 0) {
        s.length = 0;
        return;
    }
    if (hdr % 8 != 0 || !read_at(fd, hdr, sizeof(CHdr), b) ||
        static_cast<const std::uint64_t*>(b.data())[offsetof(CHdr, magic) / 8] != magic) {
        s.problem = "its header could not be read (changing, or another layout)";
        return;
    }
    s.length = static_cast<const std::uint64_t*>(b.data())[offsetof(CHdr, count) / 8];
}

// A Queue's depth, capacity and state, read from its control block
// (queue_layout.hpp).
void read_queue_state(int fd, ObjectState& s) {
    using detail::QueueControl;
    constexpr std::size_t kControl =
        std::max(offsetof(QueueControl, repairs), offsetof(QueueControl, free)) + sizeof(std::uint64_t);
    Buf b;
    if (s.info.size < kControl || !read_at(fd, s.info.offset, kControl, b)) {
        s.problem = "its control block could not be read";
        return;
    }
    const char* c = static_cast<const char*>(b.data());
    auto u64 = [c](std::size_t off) {
        std::uint64_t v;
        std::memcpy(&v, c + off, sizeof v);
        return v;
    };
    auto u32 = [c](std::size_t off) {
        std::uint32_t v;
        std::memcpy(&v, c + off, sizeof v);
        return v;
    };
    if (u64(offsetof(QueueControl, magic)) != kQueueMagic) {
        s.problem = "not initialised, or another layout";
        return;
    }
    std::uint32_t cap = u32(offsetof(QueueControl, capacity));
    // tail, head and free pack a ticket with a byte position and an owner.
    const std::int64_t depth = detail::ticket_diff(detail::cursor_ticket(u64(offsetof(QueueControl, tail))),
                                                   detail::cursor_ticket(u64(offsetof(QueueControl, head))));
    s.capacity = cap;
    s.max_item_size = u32(offsetof(QueueControl, max_item));
    s.value = static_cast<std::uint32_t>(depth > 0 ? std::min<std::int64_t>(depth, cap) : 0);
    s.closed = u32(offsetof(QueueControl, closed)) != 0;
    s.repairs = u64(offsetof(QueueControl, repairs));
    s.max_bytes = u64(offsetof(QueueControl, max_bytes));
    // Units between the free cursor and the tail (positions count modulo
    // twice the ring), as Queue::bytes_used() computes them.
    const std::uint64_t tail = u64(offsetof(QueueControl, tail)), freed = u64(offsetof(QueueControl, free));
    const std::uint32_t units = u32(offsetof(QueueControl, ring_units)), shift = u32(offsetof(QueueControl, unit_shift));
    std::uint64_t used = 0;
    if (detail::ticket_diff(detail::cursor_ticket(tail), detail::cursor_ticket(freed)) > 0 && shift < 40) {
        std::uint32_t t = detail::cursor_pos(tail), f = detail::cursor_pos(freed);
        used = std::uint64_t(t >= f ? t - f : t + 2ull * units - f) << shift;
    }
    s.bytes_used = used;
}

void read_object_state(int fd, ObjectState& s) {
    Buf b;
    switch (s.info.kind) {
        case ObjectKind::mutex:
            if (auto* m = object_copy<Mutex>(fd, s.info, b, s.problem))
                s.lock = lock_state(m, m->owner_pid(), m->recoveries(), false);
            break;
        case ObjectKind::recursive_mutex:
            if (auto* m = object_copy<RecursiveMutex>(fd, s.info, b, s.problem))
                s.lock = lock_state(m, m->owner_pid(), m->recoveries(), true);
            break;
        case ObjectKind::semaphore:
            if (auto* m = object_copy<Semaphore>(fd, s.info, b, s.problem)) {
                s.value = m->value();
                s.waiters = m->waiters();
            }
            break;
        case ObjectKind::bounded_semaphore:
            if (auto* m = object_copy<BoundedSemaphore>(fd, s.info, b, s.problem)) {
                s.value = m->value();
                s.waiters = m->waiters();
                s.bound = m->bound();
            }
            break;
        case ObjectKind::condition:
            if (auto* m = object_copy<Condition>(fd, s.info, b, s.problem)) s.waiters = m->waiters();
            break;
        case ObjectKind::event:
            if (auto* m = object_copy<Event>(fd, s.info, b, s.problem)) {
                s.is_set = m->is_set();
                s.waiters = m->waiters();
            }
            break;
        case ObjectKind::barrier:
            if (auto* m = object_copy<Barrier>(fd, s.info, b, s.problem)) {
                s.parties = m->parties();
                s.n_waiting = m->n_waiting();
                s.generation = m->generation();
                s.broken = m->broken();
            }
            break;
        case ObjectKind::dict:
        case ObjectKind::list: read_container_length(fd, s); break;
        case ObjectKind::queue: read_queue_state(fd, s); break;
        case ObjectKind::raw: break;
        default:
            // A kind without a reader here yet shows no state; a kind this
            // libshm does not know at all is said to be so.
            if (std::strcmp(to_string(s.info.kind), "unknown") == 0)
                s.problem = "an object kind this libshm does not know";
            break;
    }
}

bool read_header(int fd, Buf& b, std::size_t fsize) {
    std::size_t n = std::min<std::size_t>(fsize, layout::kHeaderSize);
    if (!read_at(fd, 0, n, b)) return false;
    b.words.resize(layout::kHeaderSize / 8, 0);  // zero the rest of a short file
    return true;
}
const layout::Header* hdr(const Buf& b) { return static_cast<const layout::Header*>(b.data()); }

// Walk the object directory once. Returns "" on success, else what broke.
std::string walk_directory(int fd, const layout::Header* h, std::vector<ObjectState>& out) {
    out.clear();
    const std::uint64_t begin = h->heap_offset, end = h->heap_offset + h->heap_size;
    const std::uint64_t count = h->dir_count.load(std::memory_order_relaxed);
    if (count > h->heap_size / sizeof(heap::DirEntry)) return "entry count out of range";
    std::set<std::uint64_t> seen;
    Buf b;
    for (std::uint64_t e = h->dir_head.load(std::memory_order_relaxed); e;) {
        if (e % 16 != 0 || e < begin + 16 || e + sizeof(heap::DirEntry) > end) return "entry outside the heap";
        if (!seen.insert(e).second || seen.size() > count) return "list longer than its count";
        if (!read_at(fd, e, sizeof(heap::DirEntry), b)) return "entry could not be read";
        const auto* d = static_cast<const heap::DirEntry*>(b.data());
        if (d->name_len == 0 || d->name_len > kMaxObjectName) return "entry with a bad name length";
        std::string name(d->name, d->name_len);
        try {
            validate_object_name(name);
        } catch (const name_error&) {
            return "entry with an invalid name";
        }
        std::uint64_t o = d->object_offset;
        if (o < begin + 16 || o > end || d->object_size > end - o) return "object outside the heap";
        ObjectState s;
        s.info = ObjectInfo{std::move(name), static_cast<ObjectKind>(d->kind), o, d->object_size};
        out.push_back(std::move(s));
        e = d->next.load(std::memory_order_relaxed);
    }
    if (seen.size() != count) return "list shorter than its count";
    return {};
}

void read_objects(int fd, std::size_t fsize, SegmentInfo& si) {
    Buf before, after;
    std::string why, broke_before;
    for (int attempt = 0; attempt < 5; ++attempt) {
        // Read again at once, then with growing pauses.
        if (attempt > 1) std::this_thread::sleep_for(std::chrono::milliseconds(2 << attempt));
        if (!read_header(fd, before, fsize)) {
            why = "header could not be read";
            continue;
        }
        const layout::Header* h = hdr(before);
        if (h->journal_count.load(std::memory_order_relaxed) != 0) {
            // An update is in progress, or was cut short by its process's
            // death (then the next user of the heap rolls it back).
            const auto* m = reinterpret_cast<const Mutex*>(h->heap_lock_storage);
            LockState l = lock_state(m, m->owner_pid(), m->recoveries(), false);
            if (l.held && l.owner_alive)
                why = "pid " + std::to_string(l.owner_pid) + " is updating it";
            else {
                why = "an update was cut short when pid " + std::to_string(l.owner_pid) +
                      " died; the segment's next user rolls it back";
                break;  // nobody is finishing it: reading again shows the same
            }
            continue;
        }
        std::string broke = walk_directory(fd, h, si.objects);
        if (!read_header(fd, after, fsize)) {
            why = "header could not be read";
            continue;
        }
        const layout::Header* h2 = hdr(after);
        bool same = h2->journal_count.load(std::memory_order_relaxed) == 0 &&
                    h2->dir_head.load(std::memory_order_relaxed) == h->dir_head.load(std::memory_order_relaxed) &&
                    h2->dir_count.load(std::memory_order_relaxed) == h->dir_count.load(std::memory_order_relaxed);
        if (!same) {
            why = "it changed while it was read";
            continue;
        }
        if (!broke.empty()) {
            // Broken the same way twice under an unchanged, committed
            // header: nobody is changing it, the file is damaged.
            if (broke == broke_before) {
                why = "object directory is corrupt: " + broke;
                break;
            }
            broke_before = broke;
            why = broke;
            continue;
        }
        broke_before.clear();
        for (ObjectState& o : si.objects) read_object_state(fd, o);
        std::reverse(si.objects.begin(), si.objects.end());  // oldest first
        si.objects_read = true;
        si.directory_busy = false;
        si.directory_note.clear();
        return;
    }
    si.objects.clear();
    si.directory_busy = true;
    si.directory_note = why.rfind("object directory is corrupt", 0) == 0 ? why : "object directory busy: " + why;
}

std::string errno_text(int err) { return std::strerror(err); }

}  // namespace

SegmentInfo inspect_segment(const std::string& path, bool with_objects) {
    SegmentInfo si;
    si.path = path;
    std::string file = std::filesystem::path(path).filename().string();
    si.name = segment_name_of_file(file);
    if (si.name.empty()) si.name = file;

    // O_NONBLOCK: a FIFO planted under a segment's name must not block us.
    Fd fd(sys([&] { return ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY); }));
    if (fd.fd < 0) {
        si.err = errno;
        if (errno == ELOOP) {
            si.status = SegmentStatus::not_a_segment;
            si.error = "it is a symbolic link";
        } else {
            si.status = SegmentStatus::unreadable;
            si.error = "cannot open it: " + errno_text(si.err);
        }
        return si;
    }
    struct stat st;
    if (::fstat(fd.fd, &st) != 0) {
        si.err = errno;
        si.status = SegmentStatus::unreadable;
        si.error = "cannot stat it: " + errno_text(si.err);
        return si;
    }
    if (!S_ISREG(st.st_mode)) {
        si.status = SegmentStatus::not_a_segment;
        si.error = "it is not a regular file";
        return si;
    }
    const std::size_t fsize = static_cast<std::size_t>(st.st_size);
    si.total_size = fsize;
    Buf hb;
    if (!read_header(fd.fd, hb, fsize)) {
        si.err = errno;
        si.status = SegmentStatus::unreadable;
        si.error = "cannot read its header";
        return si;
    }
    const layout::Header* h = hdr(hb);
    auto meta_locked = [&] {
        try {
            return platform::ofd_is_locked(fd.fd, layout::kMetaLockByte);
        } catch (const std::system_error&) {
            return false;
        }
    };
    auto uninitialised = [&] {
        si.status = SegmentStatus::uninitialised;
        // The same rule as Segment::reap_dead(): a file nobody is
        // initialising (meta lock free) for over a second was left by a
        // creator that died.
        timespec now;
        ::clock_gettime(CLOCK_REALTIME, &now);
        si.being_created = meta_locked() || now.tv_sec - st.st_ctim.tv_sec <= 1;
        si.error = si.being_created ? "being created" : "left half-initialised by a creator that died";
        return si;
    };
    if (h->magic == 0) return uninitialised();
    if (h->magic != layout::kMagic) {
        si.status = SegmentStatus::not_a_segment;
        si.error = "not a libshm segment (bad magic)";
        return si;
    }
    if (fsize < layout::kHeaderSize) return uninitialised();
    // Magic is written before version; version 0 is none: half-initialised.
    if (h->version == 0) return uninitialised();
    si.layout_version = h->version;
    if (h->version != layout::kVersion) {
        si.status = SegmentStatus::version_mismatch;
        si.error = "layout version " + std::to_string(h->version) + "; this libshm " + version() +
                   " reads only version " + std::to_string(layout::kVersion);
        return si;
    }
    std::uint32_t state = h->state.load(std::memory_order_relaxed);
    if (state == layout::kDead) {
        si.status = SegmentStatus::dead;
        si.error = "marked removed by a process that died before unlinking it";
        return si;
    }
    if (state != layout::kReady) return uninitialised();
    if (const char* why = layout::header_problem(h, fsize)) {
        si.status = SegmentStatus::corrupt;
        si.error = std::string("the header is inconsistent: ") + why;
        return si;
    }
    si.status = SegmentStatus::ok;
    si.heap_size = h->heap_size;
    si.heap_used = std::min<std::uint64_t>(h->used_bytes.load(std::memory_order_relaxed), h->heap_size);
    si.max_attach = h->max_attach;
    si.persistent = (h->flags.load(std::memory_order_relaxed) & layout::kPersistent) != 0;
    si.creator_pid = h->creator_pid;
    si.creator_uid = h->creator_uid;
    si.creator_start_time = h->creator_start_time;
    si.creator_alive = core::liveness::alive({h->creator_pid, h->creator_start_time});
    si.created_at_ns = h->created_at_ns;
    char name[sizeof h->name + 1] = {};
    std::memcpy(name, h->name, sizeof h->name);
    // gc and rm act on si.name: it is the file's, not the header's copy,
    // which anyone who can write the file can make name another segment.
    // The copy is shown only for a file whose name no segment can have.
    if (name[0] && segment_name_of_file(file).empty()) si.name = name;

    Buf sb;
    if (!read_at(fd.fd, h->attach_offset, std::size_t(h->max_attach) * layout::kSlotSize, sb)) {
        si.status = SegmentStatus::unreadable;
        si.error = "cannot read its attach table";
        return si;
    }
    const auto* slots = static_cast<const layout::AttachSlot*>(sb.data());
    try {
        for (std::uint32_t i = 0; i < h->max_attach; ++i) {
            std::int32_t pid = slots[i].pid.load(std::memory_order_relaxed);
            if (pid == 0) continue;
            AttachInfo a;
            a.slot = i;
            a.pid = pid;
            a.uid = slots[i].uid;
            a.start_time = slots[i].start_time.load(std::memory_order_relaxed);
            a.attached_at_ns = slots[i].attached_at_ns.load(std::memory_order_relaxed);
            // The kernel's word, not the pid's: immune to pid reuse.
            a.alive = platform::ofd_is_locked(fd.fd, layout::slot_lock_byte(h, i));
            (a.alive ? si.live : si.dead)++;
            si.slots.push_back(a);
        }
    } catch (const std::system_error& e) {
        si.status = SegmentStatus::unreadable;
        si.err = e.code().value();
        si.error = std::string("cannot test its attach slots: ") + e.what();
        return si;
    }
    if (with_objects) read_objects(fd.fd, fsize, si);
    return si;
}

// ---- the directory ----------------------------------------------------------

FsUsage fs_usage(const std::string& dir) {
    FsUsage u;
    struct statvfs sv;
    if (sys([&] { return ::statvfs(dir.c_str(), &sv); }) == 0) {
        u.size = std::uint64_t(sv.f_blocks) * sv.f_frsize;
        u.used = std::uint64_t(sv.f_blocks - sv.f_bfree) * sv.f_frsize;
        u.free = std::uint64_t(sv.f_bavail) * sv.f_frsize;
    }
    return u;
}

bool pid_exists(pid_t pid) {
    if (pid <= 0) return false;
    return ::kill(pid, 0) == 0 || errno == EPERM;
}

namespace {

Entry make_entry(const std::string& dir, const std::string& name, const struct stat& st) {
    Entry e;
    e.name = name;
    e.path = dir + "/" + name;
    e.kind = kind_of_name(name);
    e.dev = st.st_dev;
    e.ino = st.st_ino;
    e.uid = st.st_uid;
    e.gid = st.st_gid;
    e.mode = st.st_mode & 07777;
    e.size = static_cast<std::uint64_t>(st.st_size);
    e.allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
    e.mtime_ns = ns_of(st.st_mtim);
    e.age_ns = std::max<std::int64_t>(0, now_ns() - e.mtime_ns);
    return e;
}

// Classify a libshm file from its header. Returns false if it turned out not
// to be a segment (then it is treated as a foreign file).
bool classify_libshm(Entry& e) {
    SegmentInfo si = inspect_segment(e.path, false);
    switch (si.status) {
        case SegmentStatus::ok:
            if (si.created_at_ns > 0) e.age_ns = std::max<std::int64_t>(0, now_ns() - si.created_at_ns);
            for (const AttachInfo& a : si.slots)
                if (a.alive) {
                    User u;
                    u.pid = a.pid;
                    u.attached = true;
                    e.users.push_back(u);
                }
            if (si.live > 0)
                e.state = State::in_use;
            else if (si.persistent)
                e.state = State::persistent;
            else {
                e.state = State::leaked;
                e.note = si.dead ? "every attached process died" : "nobody attached";
            }
            break;
        case SegmentStatus::uninitialised:
            e.state = si.being_created ? State::in_use : State::leaked;
            e.note = si.error;
            break;
        case SegmentStatus::dead:
            e.state = State::leaked;
            e.note = si.error;
            break;
        case SegmentStatus::not_a_segment:
            e.kind = FileKind::other;
            e.note = "named like a libshm segment, but " + si.error;
            return false;
        case SegmentStatus::unreadable: {
            char m[8];
            std::snprintf(m, sizeof m, "%04o", static_cast<unsigned>(e.mode));
            si.error += " (the file belongs to uid " + std::to_string(e.uid) + ", mode " + m + ")";
            e.state = State::unknown;
            e.note = si.error;
            break;
        }
        case SegmentStatus::version_mismatch:
        case SegmentStatus::corrupt:
            e.state = State::unknown;
            e.note = si.error;
            break;
    }
    e.segment = std::move(si);
    return true;
}

// Whether anybody at all has a file open or mapped, asked of the kernel: a
// write lease (F_SETLEASE) is granted only when no other open file
// description of the file exists, and a mapping keeps its file description
// alive after the descriptor is closed. So a granted lease proves that no
// process, in any pid namespace and of any user, uses the file, and while we
// hold it, anyone who opens the file makes the kernel mark our lease as
// breaking (and waits for us), which F_GETLEASE shows. Taking the lease needs
// the file's owner or CAP_LEASE; without it the answer comes from /proc.
struct Lease {
    enum Result { unused, in_use, unavailable };
    Result result = unavailable;
    int err = 0;
    Fd fd;

    // Still ours alone: nobody has started opening the file since.
    bool intact() const {
        return result == unused && ::fcntl(fd.fd, F_GETLEASE) == F_WRLCK;
    }
};

void ignore_default_sigio() {
    // The kernel signals a lease holder with SIGIO when someone opens the
    // file. We drop the signal's target at once (F_SETOWN 0), but a process
    // whose SIGIO still has the default action (terminate) would die if an
    // open landed in between; ignore it in that case only.
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction old;
        if (::sigaction(SIGIO, nullptr, &old) == 0 && !(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_DFL) {
            struct sigaction ign;
            std::memset(&ign, 0, sizeof ign);
            ign.sa_handler = SIG_IGN;
            ::sigaction(SIGIO, &ign, nullptr);
        }
    });
}

// Open `name` in dirfd and try for a write lease; the file must still be the
// inode (dev, ino) we listed. The lease is held as long as the result lives.
void take_lease(Lease& l, int dirfd, const std::string& name, std::uint64_t dev, std::uint64_t ino) {
    ignore_default_sigio();
    // O_NONBLOCK: if another process holds a lease on it (e.g. another
    // shmctl probing it right now), fail with EWOULDBLOCK instead of waiting.
    l.fd.fd = sys([&] { return ::openat(dirfd, name.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY); });
    if (l.fd.fd < 0) {
        l.err = errno;
        l.result = l.err == EWOULDBLOCK ? Lease::in_use : Lease::unavailable;
        return;
    }
    struct stat st;
    if (::fstat(l.fd.fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_dev != dev || st.st_ino != ino) {
        l.err = ESTALE;
        l.result = Lease::unavailable;
        return;
    }
    if (sys([&] { return ::fcntl(l.fd.fd, F_SETLEASE, F_WRLCK); }) != 0) {
        l.err = errno;
        l.result = l.err == EAGAIN || l.err == EBUSY ? Lease::in_use : Lease::unavailable;
        return;
    }
    ::fcntl(l.fd.fd, F_SETOWN, 0);  // no SIGIO for us when someone opens it
    l.result = Lease::unused;
}

void classify_foreign(Entry& e, const ProcessScan& ps, int dirfd) {
    if (e.dev != ps.dev) {
        e.state = State::unknown;
        e.note = "on another filesystem than the shm directory";
        return;
    }
    if (const auto* v = ps.users(e.ino)) {
        for (const FileUse& f : *v) {
            User u;
            u.pid = f.pid;
            u.mapped = f.mapped;
            u.open = f.open;
            e.users.push_back(u);
        }
    }
    if (!e.users.empty()) {
        e.state = State::in_use;
        return;
    }
    Lease l;
    take_lease(l, dirfd, e.name, e.dev, e.ino);
    if (l.result == Lease::in_use) {
        e.state = State::in_use;
        e.note = "open or mapped by a process we may not inspect";
        return;
    }
    if (l.result == Lease::unused) {
        e.state = State::leaked;
        if (e.note.empty()) e.note = "no process maps it or holds it open";
        return;
    }
    // No lease (not our file): judge from /proc alone.
    auto hidden = ps.could_use(e.uid, e.gid, e.mode);
    if (!hidden.empty()) {
        e.state = State::unknown;
        e.note = std::to_string(hidden.size()) + (hidden.size() == 1 ? " process" : " processes") +
                 " we may not inspect could use it (e.g. pid " + std::to_string(hidden[0]->pid) + " " +
                 hidden[0]->comm + ")";
        return;
    }
    e.state = State::leaked;
    if (e.note.empty()) e.note = "no process maps it or holds it open";
}

void fill_comms(Entry& e, const ProcessScan* ps) {
    for (User& u : e.users) {
        if (ps) u.comm = ps->comm_of(u.pid);
        if (u.comm.empty()) {
            ProcStat st;
            std::string text;
            char p[32];
            std::snprintf(p, sizeof p, "/proc/%d/stat", static_cast<int>(u.pid));
            if (read_text_at(AT_FDCWD, p, text) == 0 && parse_proc_stat(text, st)) u.comm = st.comm;
        }
    }
}

// Classify entries; scans /proc once if any foreign file needs it.
void classify_all(std::vector<Entry>& entries, int dirfd, dev_t dev, ProcessScan& ps, bool& scanned,
                  const Progress& progress) {
    std::vector<Entry*> foreign;
    std::size_t done = 0;
    for (Entry& e : entries) {
        if (progress && e.kind == FileKind::libshm) progress("reading segments", done, entries.size());
        ++done;
        if (e.kind != FileKind::libshm || !classify_libshm(e)) foreign.push_back(&e);
    }
    if (!foreign.empty()) {
        ps = ProcessScan::run(dev, nullptr, progress);
        scanned = true;
        std::size_t n = 0;
        for (Entry* e : foreign) {
            if (progress && (n % 64) == 0) progress("checking files", n, foreign.size());
            ++n;
            classify_foreign(*e, ps, dirfd);
        }
    }
    for (Entry& e : entries) fill_comms(e, scanned ? &ps : nullptr);
}

}  // namespace

Scan scan(const Progress& progress) {
    Scan s;
    s.dir = shm_directory().string();
    Fd dfd(sys([&] { return ::open(s.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); }));
    if (dfd.fd < 0) platform::fail(errno, "cannot open the shm directory " + s.dir);
    struct stat dst;
    if (::fstat(dfd.fd, &dst) != 0) platform::fail(errno, "cannot stat " + s.dir);
    s.fs = fs_usage(s.dir);
    std::vector<std::string> names;
    {
        Dir d(::fdopendir(::dup(dfd.fd)));
        if (!d.d) platform::fail(errno, "cannot list " + s.dir);
        while (dirent* de = ::readdir(d.d)) {
            if (std::strcmp(de->d_name, ".") == 0 || std::strcmp(de->d_name, "..") == 0) continue;
            names.emplace_back(de->d_name);
        }
    }
    std::sort(names.begin(), names.end());
    std::size_t done = 0;
    for (const std::string& n : names) {
        if (progress && (++done % 256) == 0) progress("listing the directory", done, names.size());
        struct stat st;
        if (::fstatat(dfd.fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // removed meanwhile
        if (!S_ISREG(st.st_mode)) {
            s.skipped.push_back(n);
            continue;
        }
        s.entries.push_back(make_entry(s.dir, n, st));
    }
    classify_all(s.entries, dfd.fd, dst.st_dev, s.processes, s.processes_scanned, progress);
    return s;
}

std::optional<Entry> lookup(std::string_view name) {
    std::string dir = shm_directory().string();
    if (name.empty() || name.find('/') != std::string_view::npos || name == "." || name == "..") return std::nullopt;
    Fd dfd(sys([&] { return ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); }));
    if (dfd.fd < 0) platform::fail(errno, "cannot open the shm directory " + dir);
    struct stat dst;
    if (::fstat(dfd.fd, &dst) != 0) platform::fail(errno, "cannot stat " + dir);
    std::vector<std::string> tries;
    if (valid_segment_name(name)) tries.push_back(std::string(kFilePrefix) + std::string(name));
    tries.emplace_back(name);
    for (const std::string& n : tries) {
        struct stat st;
        if (::fstatat(dfd.fd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) continue;
        std::vector<Entry> v{make_entry(dir, n, st)};
        ProcessScan ps;
        bool scanned = false;
        classify_all(v, dfd.fd, dst.st_dev, ps, scanned, {});
        return std::move(v[0]);
    }
    return std::nullopt;
}

// ---- reclaiming -------------------------------------------------------------

namespace {

std::string permission_hint(const Entry& e, int err) {
    if (err != EACCES && err != EPERM) return {};
    return " (the file belongs to uid " + std::to_string(e.uid) + "; only its owner or root may do that)";
}

}  // namespace

GcReport gc(const GcOptions& opt) {
    GcReport r;
    r.dry_run = opt.dry_run;
    Scan s = scan(opt.progress);
    const std::int64_t min_age = opt.min_age.count();
    std::vector<Entry*> candidates;

    auto add = [&](GcAction a) {
        if (a.outcome == GcAction::reclaimed) {
            r.bytes_freed += a.bytes;
            ++r.files_reclaimed;
        }
        if (a.outcome == GcAction::failed) ++r.failures;
        r.dead_slots_cleared += a.dead_slots;
        r.actions.push_back(std::move(a));
    };

    for (Entry& e : s.entries) {
        GcAction a;
        a.name = e.name;
        a.kind = e.kind;
        a.uid = e.uid;
        if (e.kind == FileKind::libshm) {
            const SegmentInfo& si = *e.segment;
            if (e.state == State::unknown) {
                a.outcome = GcAction::skipped;
                a.reason = si.error;
                a.err = si.err;
                add(std::move(a));
                continue;
            }
            if (opt.dry_run) {
                if (e.state == State::leaked) {
                    a.outcome = GcAction::reclaimed;
                    a.bytes = e.allocated;
                    a.dead_slots = si.dead;
                    a.reason = e.note;
                    add(std::move(a));
                } else if (si.dead > 0) {
                    a.outcome = GcAction::cleared;
                    a.dead_slots = si.dead;
                    a.reason = si.persistent && si.live == 0 ? "persistent" : "in use";
                    add(std::move(a));
                }
                continue;
            }
            if (e.state != State::leaked && si.dead == 0) continue;  // nothing to do
            try {
                ReapReport rr = Segment::reap_dead(si.name);
                a.dead_slots = rr.dead_slots_cleared;
                if (rr.unlinked) {
                    a.outcome = GcAction::reclaimed;
                    a.bytes = rr.bytes ? rr.bytes : e.allocated;
                    a.reason = e.note;
                } else if (rr.dead_slots_cleared > 0) {
                    a.outcome = GcAction::cleared;
                    a.reason = rr.live_slots ? "in use" : "persistent";
                } else if (e.state == State::leaked) {
                    a.outcome = GcAction::kept;
                    a.reason = rr.live_slots ? "a process attached meanwhile" : "being created";
                } else {
                    continue;
                }
            } catch (const std::system_error& ex) {
                a.outcome = GcAction::failed;
                a.err = ex.code().value();
                a.reason = std::string(ex.what()) + permission_hint(e, a.err);
            }
            add(std::move(a));
            continue;
        }
        // Foreign files.
        if (e.state == State::leaked) {
            if (!opt.foreign || e.age_ns < min_age) {
                ++r.foreign_left;
                r.foreign_left_bytes += e.allocated;
                continue;
            }
            candidates.push_back(&e);
        } else if (e.state == State::unknown && opt.foreign && e.age_ns >= min_age) {
            a.outcome = GcAction::skipped;
            a.reason = e.note;
            add(std::move(a));
        }
    }

    if (candidates.empty()) return r;
    if (opt.dry_run) {
        for (Entry* e : candidates) {
            GcAction a;
            a.outcome = GcAction::reclaimed;
            a.name = e->name;
            a.kind = e->kind;
            a.uid = e->uid;
            a.bytes = e->allocated;
            a.reason = e->note;
            add(std::move(a));
        }
        return r;
    }

    // Look again, just before unlinking: a process may have opened or mapped
    // a candidate since the first pass. Where we may take the file's lease,
    // the check is exact: holding the lease, no process can start using the
    // file unseen, and we unlink only if nobody has started opening it. Where
    // we may not, /proc is read once more for all such candidates; a process
    // that opens the file after that pass keeps its descriptor and mapping
    // (only the name goes).
    Fd dfd(sys([&] { return ::open(s.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); }));
    if (dfd.fd < 0) platform::fail(errno, "cannot open the shm directory " + s.dir);
    std::optional<ProcessScan> again;
    std::size_t done = 0;
    for (Entry* e : candidates) {
        if (opt.progress && (done % 64) == 0) opt.progress("removing files", done, candidates.size());
        ++done;
        GcAction a;
        a.name = e->name;
        a.kind = e->kind;
        a.uid = e->uid;
        Lease l;
        take_lease(l, dfd.fd, e->name, e->dev, e->ino);
        struct stat st;
        if (::fstatat(dfd.fd, e->name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
            a.outcome = GcAction::kept;
            a.reason = "gone before the re-check";
        } else if (!S_ISREG(st.st_mode) || st.st_dev != e->dev || st.st_ino != e->ino) {
            a.outcome = GcAction::kept;
            a.reason = "replaced by another file meanwhile";
        } else if (ns_of(st.st_mtim) != e->mtime_ns) {
            a.outcome = GcAction::kept;
            a.reason = "modified meanwhile";
        } else if (l.result == Lease::in_use) {
            a.outcome = GcAction::kept;
            a.reason = "in use again at the re-check";
        } else if (l.result == Lease::unused && !l.intact()) {
            a.outcome = GcAction::kept;
            a.reason = "a process opened it during the re-check";
        } else {
            if (l.result == Lease::unavailable) {
                if (!again) {
                    std::vector<std::uint64_t> inodes;
                    for (Entry* c : candidates) inodes.push_back(c->ino);
                    again = ProcessScan::run(static_cast<dev_t>(e->dev), &inodes, opt.progress);
                }
                if (const auto* v = again->users(e->ino); v && !v->empty()) {
                    a.outcome = GcAction::kept;
                    a.reason = "in use again by pid " + std::to_string(v->front().pid);
                } else if (!again->could_use(st.st_uid, st.st_gid, st.st_mode & 07777).empty()) {
                    a.outcome = GcAction::kept;
                    a.reason = "a process we may not inspect could now use it";
                }
            }
            if (a.reason.empty()) {
                if (::unlinkat(dfd.fd, e->name.c_str(), 0) != 0) {
                    a.outcome = GcAction::failed;
                    a.err = errno;
                    a.reason = "cannot remove " + e->path + ": " + errno_text(a.err) + permission_hint(*e, a.err);
                } else {
                    a.outcome = GcAction::reclaimed;
                    a.bytes = static_cast<std::uint64_t>(st.st_blocks) * 512;
                    a.reason = e->note;
                }
            }
        }
        add(std::move(a));
    }
    return r;
}

RemoveResult remove_segment(std::string_view given, bool force) {
    RemoveResult r;
    r.name = std::string(given);
    // A segment name, or the file name "libshm.<name>" (a segment named
    // exactly as given wins).
    std::string seg(given);
    if (seg.substr(0, kFilePrefix.size()) == kFilePrefix) {
        struct stat st;
        bool exact = valid_segment_name(seg) && ::lstat(segment_path(seg).c_str(), &st) == 0;
        if (!exact) seg = segment_name_of_file(seg);
    }
    if (!valid_segment_name(seg)) {
        r.outcome = RemoveResult::not_libshm;
        r.message = "'" + r.name + "' is not a libshm segment name";
        return r;
    }
    std::string path = segment_path(seg).string();
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) {
        r.err = errno;
        r.outcome = errno == ENOENT ? RemoveResult::not_found : RemoveResult::failed;
        r.message = errno == ENOENT ? "no segment '" + seg + "' (no " + path + ")"
                                    : "cannot stat " + path + ": " + errno_text(r.err);
        return r;
    }
    if (!S_ISREG(st.st_mode)) {
        r.outcome = RemoveResult::not_libshm;
        r.message = path + " is not a regular file, not a libshm segment; left alone";
        return r;
    }
    r.bytes = static_cast<std::uint64_t>(st.st_blocks) * 512;
    std::string owner = " (the file belongs to uid " + std::to_string(st.st_uid) + ", mode " +
                        [&] {
                            char m[8];
                            std::snprintf(m, sizeof m, "%04o", static_cast<unsigned>(st.st_mode & 07777));
                            return std::string(m);
                        }() +
                        ")";
    SegmentInfo si = inspect_segment(path, false);
    switch (si.status) {
        case SegmentStatus::unreadable:
            r.outcome = RemoveResult::failed;
            r.err = si.err;
            r.message = "cannot remove segment '" + seg + "': the OS refuses to let us open it: " +
                        (si.err ? errno_text(si.err) : si.error) + owner;
            return r;
        case SegmentStatus::not_a_segment:
            r.outcome = RemoveResult::not_libshm;
            r.message = path + " is " + si.error + "; left alone";
            return r;
        case SegmentStatus::version_mismatch:
        case SegmentStatus::corrupt:
            r.outcome = RemoveResult::failed;
            r.err = EPROTO;
            r.message = "segment '" + seg + "': " + si.error + "; left alone";
            return r;
        default: break;
    }
    for (const AttachInfo& a : si.slots)
        if (a.alive) r.live_pids.push_back(a.pid);
    if (!r.live_pids.empty() && !force) {
        r.outcome = RemoveResult::in_use;
        std::string pids;
        for (pid_t p : r.live_pids) pids += (pids.empty() ? "" : ", ") + std::to_string(p);
        r.message = "segment '" + seg + "' is in use by " + std::to_string(r.live_pids.size()) +
                    (r.live_pids.size() == 1 ? " process" : " processes") + " (pid " + pids +
                    "); not removed (--force removes it anyway; they keep their mapping)";
        return r;
    }
    try {
        std::vector<std::int32_t> live;
        if (Segment::unlink_if_unused(seg, force ? nullptr : &live)) {
            if (!live.empty()) {
                // Someone attached after the first look: refuse, as above.
                r.live_pids.assign(live.begin(), live.end());
                r.outcome = RemoveResult::in_use;
                std::string pids;
                for (pid_t p : r.live_pids) pids += (pids.empty() ? "" : ", ") + std::to_string(p);
                r.message = "segment '" + seg + "' is in use (pid " + pids +
                            "); not removed (--force removes it anyway; they keep their mapping)";
                return r;
            }
            r.outcome = RemoveResult::removed;
            r.message = "removed segment '" + seg + "'";
        } else {
            r.outcome = RemoveResult::not_found;
            r.message = "no segment '" + seg + "' (removed meanwhile)";
        }
    } catch (const std::system_error& e) {
        r.outcome = RemoveResult::failed;
        r.err = e.code().value();
        r.message = std::string("cannot remove segment '") + seg + "': " + e.what() +
                    (r.err == EACCES || r.err == EPERM ? owner : "");
    }
    return r;
}

// ---- the daemon ---------------------------------------------------------------

std::string daemon_socket() { return daemon_client::socket_path(); }

bool daemon_absent(int err) noexcept {
    return err == ENOENT || err == ECONNREFUSED || err == ENOTDIR || err == ENOTSOCK || err == EPROTOTYPE;
}

namespace {

// One request; the reply as a JSON object with "ok": true, or nullopt with
// st.error and st.err set.
std::optional<nlohmann::json> daemon_request(DaemonStatus& st, const std::string& request,
                                             std::chrono::milliseconds timeout) {
    using nlohmann::json;
    std::string text;
    try {
        text = daemon_client::call(st.socket, request, timeout);
    } catch (const shm::error& e) {
        st.err = e.code().value();
        st.error = daemon_absent(st.err) ? "no daemon listens at " + st.socket + " (" + std::strerror(st.err) + ")"
                                         : e.what();
        return std::nullopt;
    }
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("ok") || !j["ok"].is_boolean()) {
        st.err = EPROTO;
        st.error = "the daemon at " + st.socket + " sent a reply that is not the shmd protocol";
        return std::nullopt;
    }
    if (!j["ok"].get<bool>()) {
        st.err = EPROTO;
        auto m = j.find("message");
        st.error = "the daemon at " + st.socket + " refused the request: " +
                   (m != j.end() && m->is_string() ? m->get<std::string>() : std::string("no reason given"));
        return std::nullopt;
    }
    return j;
}

template <class T>
T field(const nlohmann::json& j, const char* key, T fallback = T()) {
    auto it = j.find(key);
    if (it == j.end()) return fallback;
    if constexpr (std::is_same_v<T, std::string>) {
        if (it->is_string()) return it->get<std::string>();
        if (it->is_number()) return it->dump();
        return fallback;
    } else if constexpr (std::is_same_v<T, bool>) {
        return it->is_boolean() ? it->get<bool>() : fallback;
    } else {
        return it->is_number() ? it->get<T>() : fallback;
    }
}

}  // namespace

DaemonStatus daemon_status(const std::string& socket, std::chrono::milliseconds timeout) {
    DaemonStatus st;
    st.socket = socket.empty() ? daemon_socket() : socket;
    auto j = daemon_request(st, R"({"v":1,"op":"status"})", timeout);
    if (!j) return st;
    st.running = true;
    st.version = field<std::string>(*j, "version");
    st.pid = field<pid_t>(*j, "pid");
    st.shm_dir = field<std::string>(*j, "shm_dir");
    st.uptime_s = field<double>(*j, "uptime_s");
    st.connections = field<std::uint64_t>(*j, "connections");
    st.clients = field<std::uint64_t>(*j, "clients");
    st.processes = field<std::uint64_t>(*j, "processes");
    st.segments = field<std::uint64_t>(*j, "segments");
    st.bytes = field<std::uint64_t>(*j, "bytes");
    st.reclaims = field<std::uint64_t>(*j, "reclaims");
    st.reclaimed_bytes = field<std::uint64_t>(*j, "reclaimed_bytes");
    st.sweeps = field<std::uint64_t>(*j, "sweeps");
    st.last_sweep_s_ago = field<double>(*j, "last_sweep_s_ago");
    st.sweep_interval_s = field<double>(*j, "sweep_interval_s");
    st.requests = field<std::uint64_t>(*j, "requests");
    st.refused = field<std::uint64_t>(*j, "refused");
    st.user_quota = field<std::uint64_t>(*j, "user_quota");
    st.reserve = field<std::string>(*j, "reserve", "0");
    st.reclaim_foreign = field<bool>(*j, "reclaim_foreign");
    for (const char* k : {"v", "ok", "id"}) j->erase(k);
    st.reply_json = j->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return st;
}

DaemonTracked daemon_tracked(const std::string& socket, std::chrono::milliseconds timeout) {
    DaemonTracked t;
    t.status = daemon_status(socket, timeout);
    if (!t.status.running) return t;
    std::string after;
    // Bounded: a daemon that kept saying "more" without moving on would
    // otherwise keep us here.
    for (int page = 0; page < 1 << 16; ++page) {
        nlohmann::json req = {{"v", proto::kVersion}, {"op", "list"}};
        if (!after.empty()) req["after"] = after;
        auto j = daemon_request(t.status, req.dump(), timeout);
        if (!j) {
            t.status.running = false;
            t.segments.clear();
            return t;
        }
        auto segs = j->find("segments");
        if (segs == j->end() || !segs->is_array()) break;
        std::string last;
        for (const nlohmann::json& s : *segs) {
            if (!s.is_object()) continue;
            TrackedSegment ts;
            ts.name = field<std::string>(s, "name");
            if (ts.name.empty()) continue;
            ts.bytes = field<std::uint64_t>(s, "bytes");
            ts.registered = field<bool>(s, "registered");
            auto p = s.find("pids");
            if (p != s.end() && p->is_array())
                for (const nlohmann::json& pid : *p)
                    if (pid.is_number_integer()) ts.pids.push_back(pid.get<pid_t>());
            last = ts.name;
            t.segments.push_back(std::move(ts));
        }
        if (!field<bool>(*j, "more") || last.empty() || last <= after) break;
        after = last;
    }
    std::sort(t.segments.begin(), t.segments.end(),
              [](const TrackedSegment& a, const TrackedSegment& b) { return a.name < b.name; });
    return t;
}

// ---- helpers ----------------------------------------------------------------

bool parse_duration(std::string_view t, std::chrono::nanoseconds& out) {
    using namespace std::chrono;
    if (t.empty()) return false;
    nanoseconds total{0};
    std::size_t p = 0;
    while (p < t.size()) {
        std::size_t q = p;
        while (q < t.size() && t[q] >= '0' && t[q] <= '9') ++q;
        if (q == p || q - p > 12) return false;
        long long n = std::stoll(std::string(t.substr(p, q - p)));
        std::size_t u = q;
        while (u < t.size() && t[u] >= 'a' && t[u] <= 'z') ++u;
        std::string_view unit = t.substr(q, u - q);
        if (unit.empty()) {
            if (p != 0 || u != t.size()) return false;  // a bare number only on its own: seconds
            unit = "s";
        }
        if (unit == "ms") total += milliseconds(n);
        else if (unit == "s") total += seconds(n);
        else if (unit == "m") total += minutes(n);
        else if (unit == "h") total += hours(n);
        else if (unit == "d") total += hours(24 * n);
        else return false;
        p = u;
    }
    out = total;
    return true;
}

}  // namespace shm::admin
