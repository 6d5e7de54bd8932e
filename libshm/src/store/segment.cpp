// Segment creation, attach/detach, reclamation and named objects.
//
// Creation protocol
// -----------------
// Everything that changes a segment's identity or its attach table happens
// under the meta lock: the OFD lock on byte kMetaLockByte of the file.
//   * Whoever holds the meta lock and finds the file not ready (size 0, or
//     state != ready) initialises it in place: ftruncate, posix_fallocate,
//     header, heap, its own attach slot, then state = ready (one release
//     store). A creator killed half-way drops the meta lock with its life,
//     so the next create/open_or_create finds the file not ready, takes the
//     lock and initialises it: no waiting on the dead, no manual cleanup.
//   * Exactly one process initialises, whoever wins the lock; the process
//     whose O_EXCL open made the file may lose that race and then simply
//     attaches (or, for create(), reports the name taken).
//   * Unlinking is done only by the holder that moves state from ready (or
//     uninitialised) to dead, so a stale handle never unlinks a newer segment
//     of the same name; and the path is re-checked to be the same inode.
// Attach slots: a slot is in use while its one-byte OFD lock is held; the
// kernel drops the lock when the holder dies (open file descriptions die with
// the last descriptor), so liveness needs no heartbeat and is immune to pid
// reuse. The pid and start time in the slot are for display.
#include "shm/segment.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include "client/daemon_client.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"
#include "shm/shm.hpp"
#include "platform/platform.hpp"
#include "platform/testing.hpp"

namespace shm {

using layout::Header;
using platform::sys;
using testing::crash_point;

namespace {

constexpr std::uint32_t kNoSlot = ~0u;

std::string q(std::string_view s) { return "'" + std::string(s) + "'"; }

struct Fd {
    int fd = -1;
    Fd() = default;
    explicit Fd(int f) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
    int release() {
        int f = fd;
        fd = -1;
        return f;
    }
};

struct Map {
    void* p = nullptr;
    std::size_t n = 0;
    Map() = default;
    Map(const Map&) = delete;
    Map& operator=(const Map&) = delete;
    ~Map() { reset(); }
    void reset() {
        if (p) ::munmap(p, n);
        p = nullptr;
        n = 0;
    }
    Header* hdr() const { return static_cast<Header*>(p); }
};

void map_file(Map& m, int fd, std::size_t size, const std::string& what) {
    m.reset();
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) platform::fail(errno, "cannot map " + what);
    m.p = p;
    m.n = size;
}

// Meta lock with a deadline (a racing creator may hold it while it
// initialises a large segment).
bool meta_lock_until(int fd, std::chrono::steady_clock::time_point deadline) {
    auto pause = std::chrono::microseconds(20);
    for (;;) {
        if (platform::ofd_try_lock(fd, layout::kMetaLockByte)) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::microseconds(5000));
    }
}

// A hint read without the meta lock: the file says it is a ready segment of
// this layout. classify() decides, under the lock.
bool says_ready(int fd) {
    unsigned char b[16];
    if (sys([&] { return ::pread(fd, b, sizeof b, 0); }) != static_cast<ssize_t>(sizeof b)) return false;
    std::uint64_t magic;
    std::uint32_t version, state;
    std::memcpy(&magic, b, 8);
    std::memcpy(&version, b + 8, 4);
    std::memcpy(&state, b + layout::kMetaLockByte, 4);
    return magic == layout::kMagic && version == layout::kVersion && state == layout::kReady;
}

// The meta lock, for attach(). `deadline` bounds only the wait for a creator
// to finish (SegmentOptions::timeout); returns false once it has passed.
//
// What the file says tells how to wait. The holder of a ready segment's lock
// is another attacher, a detacher or a reaper, each doing bounded work, and a
// dead holder's lock goes with it: queue in the kernel (F_OFD_SETLKW, woken
// at the release), and push the deadline back by the time spent queueing.
// Polling there fails under a storm: with hundreds of pollers waking every
// few milliseconds on two CPUs, the holder is preempted inside its few
// hundred microseconds of work and waits a whole round of the run queue
// while every poller finds the lock taken; 400 attachers of a ready segment
// managed about 6 attaches a second, and most of them reported a time-out
// "waiting for another process to finish creating it". A ready segment
// never becomes unready again (only dead, and whoever marks it dead unlinks
// it before releasing the lock), so only while the file is not ready may the
// holder be a creator, perhaps writing a large segment or stopped: poll
// then, bounded by the deadline.
bool lock_meta_for_attach(int fd, std::chrono::steady_clock::time_point& deadline) {
    auto pause = std::chrono::microseconds(20);
    for (;;) {
        if (platform::ofd_try_lock(fd, layout::kMetaLockByte)) return true;
        if (says_ready(fd)) {
            auto queued = std::chrono::steady_clock::now();
            platform::ofd_lock_wait(fd, layout::kMetaLockByte);
            deadline += std::chrono::steady_clock::now() - queued;
            return true;
        }
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(pause);
        pause = std::min(pause * 2, std::chrono::microseconds(5000));
    }
}

struct MetaLock {
    int fd;
    explicit MetaLock(int f) : fd(f) {}
    ~MetaLock() { platform::ofd_unlock(fd, layout::kMetaLockByte); }
};

// Unlink `path` only if it still names the file open as `fd`.
void unlink_if_same(const std::string& path, int fd) {
    struct stat a, b;
    if (::fstat(fd, &a) != 0 || ::lstat(path.c_str(), &b) != 0) return;
    if (a.st_dev == b.st_dev && a.st_ino == b.st_ino) ::unlink(path.c_str());
}

bool slot_alive(int fd, Header* h, std::uint32_t i) {
    return platform::ofd_is_locked(fd, layout::slot_lock_byte(h, i));
}

void clear_slot(layout::AttachSlot& s) {
    s.start_time.store(0, std::memory_order_relaxed);
    s.attached_at_ns.store(0, std::memory_order_relaxed);
    s.uid = 0;
    s.pid.store(0, std::memory_order_release);
}

// Under the meta lock: clear slots of dead processes, count live ones (not
// counting `own`).
std::uint32_t sweep_slots(int fd, Header* h, std::uint32_t own, std::uint32_t* cleared) {
    std::uint32_t live = 0;
    layout::AttachSlot* s = layout::slots(h);
    for (std::uint32_t i = 0; i < h->max_attach; ++i) {
        if (i == own) continue;
        if (s[i].pid.load(std::memory_order_acquire) == 0) continue;
        if (slot_alive(fd, h, i)) {
            ++live;
        } else {
            clear_slot(s[i]);
            if (cleared) ++*cleared;
        }
    }
    return live;
}

// Under the meta lock: take a free slot for the calling process.
std::uint32_t take_slot(int fd, Header* h) {
    layout::AttachSlot* s = layout::slots(h);
    for (std::uint32_t i = 0; i < h->max_attach; ++i) {
        std::int32_t pid = s[i].pid.load(std::memory_order_acquire);
        if (pid != 0 && slot_alive(fd, h, i)) continue;
        if (!platform::ofd_try_lock(fd, layout::slot_lock_byte(h, i))) continue;
        s[i].uid = ::getuid();
        s[i].start_time.store(platform::self_start_time(), std::memory_order_relaxed);
        s[i].attached_at_ns.store(platform::realtime_ns(), std::memory_order_relaxed);
        s[i].pid.store(::getpid(), std::memory_order_release);
        return i;
    }
    return kNoSlot;
}

enum class Mode { create, open, open_or_create };

// What the first bytes of a file say it is.
enum class Kind { uninitialised, ready, dead, foreign };

Kind classify(const Map& m, std::size_t fsize, int fd, const std::string& name, const std::string& path) {
    if (fsize < layout::kHeaderSize) {
        std::uint64_t magic = 0;
        ssize_t n = sys([&] { return ::pread(fd, &magic, sizeof magic, 0); });
        if (n < 0) platform::fail(errno, "cannot read " + path);
        return magic == 0 || magic == layout::kMagic ? Kind::uninitialised : Kind::foreign;
    }
    Header* h = m.hdr();
    if (h->magic == 0) return Kind::uninitialised;
    if (h->magic != layout::kMagic) return Kind::foreign;
    // The creator writes magic, then version: no layout has version 0, so
    // a file that says so was caught (or its creator killed) in between.
    if (h->version == 0) return Kind::uninitialised;
    if (h->version != layout::kVersion)
        throw version_mismatch("segment " + q(name) + " (" + path + ") has layout version " +
                                   std::to_string(h->version) + "; this libshm " + version() +
                                   " reads only version " + std::to_string(layout::kVersion),
                               h->version, layout::kVersion);
    switch (h->state.load(std::memory_order_acquire)) {
        case layout::kReady:
            // Checked once here, before anything follows an offset of it.
            if (const char* why = layout::header_problem(h, fsize))
                throw corrupted("segment " + q(name) + " (" + path + ") has an inconsistent header: " + why);
            return Kind::ready;
        case layout::kDead: return Kind::dead;
        default: return Kind::uninitialised;
    }
}

// Under the meta lock, on a segment being attached: is its heap lock's
// owner believable? A holder dying is recorded by the kernel in the lock
// word (FUTEX_OWNER_DIED), but a word that names a thread which is not
// holding it (the file was written by someone else) would make the first
// heap operation wait forever. So a word that names a thread is trusted if
// that thread belongs to a process attached to the segment, or if the lock
// is released within a moment (transactions last microseconds); else the
// segment is refused as corrupt.
void check_heap_lock(int fd, Header* h, const std::string& what) {
    constexpr unsigned kTidMask = 0x3fffffff, kOwnerDied = 0x40000000;  // FUTEX_TID_MASK, FUTEX_OWNER_DIED
    const auto* pm = reinterpret_cast<const pthread_mutex_t*>(h->heap_lock_storage);
    const unsigned word = __atomic_load_n(reinterpret_cast<const unsigned*>(&pm->__data.__lock), __ATOMIC_ACQUIRE);
    const unsigned tid = word & kTidMask;
    // Free, or its holder died: the next locker recovers it. Any other word
    // (also one with only the waiters bit) makes a locker wait.
    if (word == 0 || (word & kOwnerDied)) return;
    if (tid == static_cast<unsigned>(platform::current_tid()))
        throw corrupted(what + " has an inconsistent header: its heap lock names this thread, which does not hold it");
    auto thread_of = [tid](long pid) {
        char p[64];
        std::snprintf(p, sizeof p, "/proc/%ld/task/%u", pid, tid);
        return ::access(p, F_OK) == 0;
    };
    if (thread_of(::getpid())) return;  // another handle of ours, in a transaction
    layout::AttachSlot* s = layout::slots(h);
    for (std::uint32_t i = 0; i < h->max_attach; ++i) {
        const std::int32_t pid = s[i].pid.load(std::memory_order_acquire);
        if (pid > 0 && slot_alive(fd, h, i) && thread_of(pid)) return;
    }
    Mutex& m = layout::heap_lock(h);
    if (m.try_lock_for(std::chrono::milliseconds(100))) {
        m.unlock();  // a dead holder's journal is rolled back by the next transaction
        return;
    }
    throw corrupted(what + " has an inconsistent header: its heap lock names thread " + std::to_string(tid) +
                    ", of no process attached to it, and stays held");
}

// Registry of attached handles, so that a forked child takes its own slots.
std::mutex g_registry_mutex;
std::vector<Segment::Impl*>* g_registry = nullptr;
std::once_flag g_atfork_once;
void atfork_prepare();
void atfork_parent();
void atfork_child();

}  // namespace

struct Segment::Impl {
    std::string name;
    std::string path;
    int fd = -1;
    Map map;
    std::uint32_t slot = kNoSlot;
    bool created = false;
    bool attached = false;
    int fork_error = 0;

    Header* hdr() const { return map.hdr(); }
    char* base() const { return static_cast<char*>(map.p); }
    std::string what() const { return "segment " + q(name); }

    void require_attached() const {
        if (attached) return;
        if (fork_error)
            throw error(fork_error, what() + ": this process (a fork child) could not take its own attach slot: " +
                                        std::strerror(fork_error));
        throw error(EBADF, what() + ": handle is detached");
    }

    void register_handle() {
        std::call_once(g_atfork_once, [] { ::pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
        std::lock_guard<std::mutex> g(g_registry_mutex);
        if (!g_registry) g_registry = new std::vector<Segment::Impl*>();
        g_registry->push_back(this);
    }
    void unregister_handle() {
        std::lock_guard<std::mutex> g(g_registry_mutex);
        if (g_registry) g_registry->erase(std::remove(g_registry->begin(), g_registry->end(), this), g_registry->end());
    }

    // In a fork child: open a new file description and take a slot of our
    // own; the inherited descriptor (shared with the parent, and so holding
    // the parent's lock) is closed, which leaves the parent's lock alone.
    void reattach_in_child() noexcept {
        char p[64];
        std::snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        int nfd = sys([&] { return ::open(p, O_RDWR | O_CLOEXEC); });
        if (nfd < 0) {
            fork_error = errno;
            attached = false;
            return;
        }
        try {
            platform::ofd_lock_wait(nfd, layout::kMetaLockByte);
            std::uint32_t s = take_slot(nfd, hdr());
            platform::ofd_unlock(nfd, layout::kMetaLockByte);
            ::close(fd);
            fd = nfd;
            if (s == kNoSlot) {
                fork_error = EMFILE;
                attached = false;
            } else {
                slot = s;
            }
        } catch (const std::system_error& e) {
            ::close(nfd);
            fork_error = e.code().value();
            attached = false;
        }
    }

    void detach() noexcept {
        if (!attached) {
            map.reset();
            if (fd >= 0) ::close(fd);
            fd = -1;
            return;
        }
        attached = false;
        unregister_handle();
        try {
            Header* h = hdr();
            platform::ofd_lock_wait(fd, layout::kMetaLockByte);
            {
                MetaLock ml(fd);
                clear_slot(layout::slots(h)[slot]);
                platform::ofd_unlock(fd, layout::slot_lock_byte(h, slot));
                slot = kNoSlot;
                if (h->state.load(std::memory_order_acquire) == layout::kReady &&
                    !(h->flags.load(std::memory_order_relaxed) & layout::kPersistent)) {
                    std::uint32_t live = sweep_slots(fd, h, kNoSlot, nullptr);
                    if (live == 0) {
                        h->state.store(layout::kDead, std::memory_order_release);
                        unlink_if_same(path, fd);
                    }
                }
            }
        } catch (...) {
            // Detach must not throw; closing the descriptor below still
            // releases the slot lock, and reap_dead() finishes the job.
        }
        map.reset();
        ::close(fd);
        fd = -1;
        daemon_client::detached(name);
    }
};

namespace {
void atfork_prepare() { g_registry_mutex.lock(); }
void atfork_parent() { g_registry_mutex.unlock(); }
void atfork_child() {
    if (g_registry)
        for (Segment::Impl* i : *g_registry)
            if (i->attached) i->reattach_in_child();
    g_registry_mutex.unlock();
}

std::unique_ptr<Segment::Impl> attach(std::string_view name_in, Mode mode, std::size_t size,
                                      const SegmentOptions& opt) {
    std::string name(name_in);
    std::string path = segment_path(name).string();
    std::string what = "segment " + q(name);
    if (mode != Mode::open) {
        if (opt.max_attach == 0 || opt.max_attach > layout::kMaxAttachLimit)
            throw error(EINVAL, what + ": max_attach must be 1.." + std::to_string(layout::kMaxAttachLimit) +
                                    ", not " + std::to_string(opt.max_attach));
        std::uint64_t min = layout::heap_offset_for(opt.max_attach) + 4096;
        if (size < min)
            throw error(EINVAL, what + ": size " + std::to_string(size) + " is too small; with " +
                                    std::to_string(opt.max_attach) + " attach slots the minimum is " +
                                    std::to_string(min) + " bytes");
    }
    // Quotas are the daemon's (when there is one), asked before any file is made.
    if (mode == Mode::create || (mode == Mode::open_or_create && ::access(path.c_str(), F_OK) != 0))
        daemon_client::before_create(name, size);
    auto deadline = std::chrono::steady_clock::now() + opt.timeout;
    bool waited_uninit = false;
    for (;;) {
        if (std::chrono::steady_clock::now() > deadline) {
            if (waited_uninit)
                throw not_a_segment(what + " (" + path + ") was left half-initialised by a creator that died; "
                                           "create() or open_or_create() replaces it, shmctl gc removes it");
            throw timeout(what + ": timed out after " + std::to_string(opt.timeout.count()) +
                          " ms waiting for another process to finish creating it");
        }
        Fd fd;
        bool made_file = false;
        if (mode != Mode::open) {
            fd.fd = sys([&] { return ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, opt.mode); });
            if (fd.fd < 0 && errno != EEXIST) platform::fail(errno, "cannot create " + what + " at " + path);
            made_file = fd.fd >= 0;
            crash_point();
        }
        if (fd.fd < 0) {
            fd.fd = sys([&] { return ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW); });
            if (fd.fd < 0) {
                if (errno == ENOENT) {
                    if (mode == Mode::open) throw not_found(what + " does not exist (no " + path + ")");
                    continue;  // removed meanwhile: create it
                }
                if (errno == ELOOP) throw not_a_segment(path + " is a symbolic link, not a libshm segment");
                platform::fail(errno, "cannot open " + what + " at " + path);
            }
        }
        if (!lock_meta_for_attach(fd.fd, deadline)) continue;  // reports the timeout above
        MetaLock ml(fd.fd);

        struct stat st;
        if (::fstat(fd.fd, &st) != 0) platform::fail(errno, "cannot stat " + path);
        if (!S_ISREG(st.st_mode)) throw not_a_segment(path + " is not a regular file, not a libshm segment");
        if (st.st_nlink == 0) continue;  // unlinked while we waited: start over
        std::size_t fsize = static_cast<std::size_t>(st.st_size);

        auto impl = std::make_unique<Segment::Impl>();
        impl->name = name;
        impl->path = path;
        if (fsize >= layout::kHeaderSize) map_file(impl->map, fd.fd, fsize, path);
        Kind kind = classify(impl->map, fsize, fd.fd, name, path);
        if (kind == Kind::foreign)
            throw not_a_segment(path + " is not a libshm segment (bad magic); refusing to touch it");
        if (kind == Kind::dead) {
            // Whoever marked it dead unlinks it before dropping the meta
            // lock; we hold the lock and it is still linked, so that process
            // died in between. Finish its job, then start over.
            unlink_if_same(path, fd.fd);
            continue;
        }

        if (kind == Kind::uninitialised) {
            if (mode == Mode::open) {
                // Its creator holds no lock: either it has not taken it yet
                // (microseconds after creating the file) or it died. A file
                // nobody changed for a second is abandoned.
                timespec now;
                ::clock_gettime(CLOCK_REALTIME, &now);
                if (now.tv_sec - st.st_ctim.tv_sec > 1)
                    throw not_a_segment(what + " (" + path +
                                        ") was left half-initialised by a creator that died; create() or "
                                        "open_or_create() replaces it, shmctl gc removes it");
                waited_uninit = true;
                impl.reset();
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
                continue;
            }
            // Ours to initialise (a fresh file, or one whose creator died).
            impl->map.reset();
            if (sys([&] { return ::ftruncate(fd.fd, 0); }) != 0) platform::fail(errno, "cannot truncate " + path);
            crash_point();
            int rc;
            do rc = ::posix_fallocate(fd.fd, 0, static_cast<off_t>(size));
            while (rc == EINTR);
            if (rc != 0) {
                platform::FsSpace fs = platform::fs_space(fd.fd);
                unlink_if_same(path, fd.fd);
                if (rc == ENOSPC || rc == EFBIG)
                    throw out_of_space("cannot create " + what + ": it needs " + platform::human_bytes(size) +
                                       " but only " + platform::human_bytes(fs.free) + " of " +
                                       platform::human_bytes(fs.total) + " are free in " +
                                       shm_directory().string() +
                                       "; run `shmctl gc` to reclaim segments leaked by dead processes");
                platform::fail(rc, "cannot reserve " + platform::human_bytes(size) + " for " + what);
            }
            crash_point();
            if (made_file || st.st_uid == ::geteuid()) (void)::fchmod(fd.fd, opt.mode);
            map_file(impl->map, fd.fd, size, path);
            Header* h = impl->hdr();
            // The file is all zeros. Identity first, so a half-initialised
            // file is recognisably ours; state = ready last.
            h->magic = layout::kMagic;
            h->version = layout::kVersion;
            h->state.store(layout::kInitialising, std::memory_order_relaxed);
            crash_point();
            h->total_size = size;
            h->max_attach = opt.max_attach;
            h->attach_offset = layout::kHeaderSize;
            h->journal_offset = layout::journal_offset_for(opt.max_attach);
            h->journal_capacity = layout::kJournalCapacity;
            h->heap_offset = layout::heap_offset_for(opt.max_attach);
            h->heap_size = (size - h->heap_offset) & ~std::uint64_t(63);
            h->flags.store(opt.persistent ? std::uint32_t(layout::kPersistent) : 0u, std::memory_order_relaxed);
            h->creator_pid = ::getpid();
            h->creator_uid = ::getuid();
            h->creator_start_time = platform::self_start_time();
            h->created_at_ns = platform::realtime_ns();
            std::snprintf(h->name, sizeof h->name, "%s", name.c_str());
            ::new (h->heap_lock_storage) Mutex();
            heap::init(h);
            crash_point();
            impl->slot = take_slot(fd.fd, h);
            crash_point();
            // Release: publishes every field above; partner is the acquire
            // load in classify() of whoever takes the meta lock next.
            h->state.store(layout::kReady, std::memory_order_release);
            impl->created = true;
        } else {  // ready
            Header* h = impl->hdr();
            std::uint32_t live = sweep_slots(fd.fd, h, kNoSlot, nullptr);
            bool persistent = h->flags.load(std::memory_order_relaxed) & layout::kPersistent;
            if (live == 0 && !persistent) {
                // Every user died without detaching: the segment is already
                // dead by the lifetime contract. Reclaim it, then create anew
                // (or report it gone).
                h->state.store(layout::kDead, std::memory_order_release);
                unlink_if_same(path, fd.fd);
                if (mode == Mode::open)
                    throw not_found(what + " does not exist: every process using it had died; it was reclaimed");
                continue;
            }
            if (mode == Mode::create)
                throw already_exists(what + " already exists (" +
                                     (persistent ? std::string("persistent") : std::to_string(live) + " live processes attached") +
                                     "); use open() or open_or_create(), or remove it with shmctl rm");
            check_heap_lock(fd.fd, h, what + " (" + path + ")");
            impl->slot = take_slot(fd.fd, h);
            if (impl->slot == kNoSlot)
                throw attach_table_full(what + ": all " + std::to_string(h->max_attach) +
                                        " attach slots are held by live processes (set SegmentOptions::max_attach "
                                        "higher when creating it)");
        }
        impl->fd = fd.release();
        impl->attached = true;
        impl->register_handle();
        return impl;
    }
}

}  // namespace

// ---- Segment --------------------------------------------------------------

Segment::Segment(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Segment::Segment(Segment&&) noexcept = default;
Segment& Segment::operator=(Segment&& o) noexcept {
    if (this != &o) {
        detach();
        impl_ = std::move(o.impl_);
    }
    return *this;
}
Segment::~Segment() { detach(); }

// Each public constructor tells the daemon (if any) once the slot is ours;
// if that throws (SHM_DAEMON=required and no daemon), the handle detaches.
Segment Segment::create(std::string_view name, std::size_t size, const SegmentOptions& opt) {
    Segment s(attach(name, Mode::create, size, opt));
    daemon_client::attached(s.impl_->name);
    return s;
}
Segment Segment::open(std::string_view name, const SegmentOptions& opt) {
    Segment s(attach(name, Mode::open, 0, opt));
    daemon_client::attached(s.impl_->name);
    return s;
}
Segment Segment::open_or_create(std::string_view name, std::size_t size, const SegmentOptions& opt) {
    Segment s(attach(name, Mode::open_or_create, size, opt));
    daemon_client::attached(s.impl_->name);
    return s;
}

namespace {
// Open an existing file for administration (no slot). Returns -1 if absent.
int open_admin(const std::string& path, const std::string& what) {
    int fd = sys([&] { return ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW); });
    if (fd < 0) {
        if (errno == ENOENT) return -1;
        if (errno == ELOOP) throw not_a_segment(path + " is a symbolic link, not a libshm segment");
        platform::fail(errno, "cannot open " + what + " at " + path);
    }
    return fd;
}
}  // namespace

bool Segment::unlink(std::string_view name_in) { return unlink_if_unused(name_in, nullptr); }

bool Segment::unlink_if_unused(std::string_view name_in, std::vector<std::int32_t>* live_pids) {
    std::string name(name_in);
    std::string path = segment_path(name).string();
    Fd fd(open_admin(path, "segment " + q(name)));
    if (fd.fd < 0) return false;
    platform::ofd_lock_wait(fd.fd, layout::kMetaLockByte);
    MetaLock ml(fd.fd);
    struct stat st;
    if (::fstat(fd.fd, &st) != 0) platform::fail(errno, "cannot stat " + path);
    if (st.st_nlink == 0) return false;
    Map m;
    if (static_cast<std::size_t>(st.st_size) >= layout::kHeaderSize) map_file(m, fd.fd, st.st_size, path);
    Kind k = classify(m, st.st_size, fd.fd, name, path);
    if (k == Kind::foreign) throw not_a_segment(path + " is not a libshm segment (bad magic); refusing to remove it");
    if (live_pids && k == Kind::ready) {
        // Attaching takes the meta lock we hold: nobody can attach between
        // this check and the unlink.
        Header* h = m.hdr();
        layout::AttachSlot* sl = layout::slots(h);
        live_pids->clear();
        for (std::uint32_t i = 0; i < h->max_attach; ++i) {
            std::int32_t pid = sl[i].pid.load(std::memory_order_acquire);
            if (pid != 0 && slot_alive(fd.fd, h, i)) live_pids->push_back(pid);
        }
        if (!live_pids->empty()) return true;
    }
    if (m.p) m.hdr()->state.store(layout::kDead, std::memory_order_release);
    unlink_if_same(path, fd.fd);
    return true;
}

ReapReport Segment::reap_dead(std::string_view name_in) {
    return reap_dead(name_in, std::chrono::milliseconds::max());
}

ReapReport Segment::reap_dead(std::string_view name_in, std::chrono::milliseconds lock_timeout) {
    std::string name(name_in);
    std::string path = segment_path(name).string();
    ReapReport r;
    Fd fd(open_admin(path, "segment " + q(name)));
    if (fd.fd < 0) return r;
    r.exists = true;
    if (lock_timeout == std::chrono::milliseconds::max()) {
        platform::ofd_lock_wait(fd.fd, layout::kMetaLockByte);
    } else if (!meta_lock_until(fd.fd, std::chrono::steady_clock::now() + lock_timeout)) {
        r.busy = true;
        return r;
    }
    MetaLock ml(fd.fd);
    struct stat st;
    if (::fstat(fd.fd, &st) != 0) platform::fail(errno, "cannot stat " + path);
    if (st.st_nlink == 0) return r;
    r.bytes = static_cast<std::uint64_t>(st.st_blocks) * 512;
    Map m;
    if (static_cast<std::size_t>(st.st_size) >= layout::kHeaderSize) map_file(m, fd.fd, st.st_size, path);
    Kind k = classify(m, st.st_size, fd.fd, name, path);
    if (k == Kind::foreign) throw not_a_segment(path + " is not a libshm segment (bad magic)");
    if (k == Kind::uninitialised) {
        // We hold the meta lock, so nobody is initialising it. Give a creator
        // that has not yet taken the lock a moment, then reclaim.
        timespec now;
        ::clock_gettime(CLOCK_REALTIME, &now);
        if (now.tv_sec - st.st_ctim.tv_sec > 1) {
            if (m.p) m.hdr()->state.store(layout::kDead, std::memory_order_release);
            unlink_if_same(path, fd.fd);
            r.unlinked = true;
        }
        return r;
    }
    if (k == Kind::dead) {
        // Whoever marked it dead holds the meta lock until it has unlinked
        // the file; we hold the lock and the file is still linked, so that
        // process died in between. Finish its job.
        unlink_if_same(path, fd.fd);
        r.unlinked = true;
        return r;
    }
    Header* h = m.hdr();
    r.live_slots = sweep_slots(fd.fd, h, kNoSlot, &r.dead_slots_cleared);
    if (r.live_slots == 0 && !(h->flags.load(std::memory_order_relaxed) & layout::kPersistent)) {
        h->state.store(layout::kDead, std::memory_order_release);
        unlink_if_same(path, fd.fd);
        r.unlinked = true;
    }
    return r;
}

ReapReport Segment::reap_dead() {
    impl_->require_attached();
    ReapReport r;
    Header* h = impl_->hdr();
    platform::ofd_lock_wait(impl_->fd, layout::kMetaLockByte);
    MetaLock ml(impl_->fd);
    r.bytes = h->total_size;
    r.live_slots = sweep_slots(impl_->fd, h, impl_->slot, &r.dead_slots_cleared) + 1;
    return r;
}

void Segment::detach() noexcept {
    if (impl_) impl_->detach();
}
bool Segment::attached() const noexcept { return impl_ && impl_->attached; }
const std::string& Segment::name() const noexcept { return impl_->name; }
std::string Segment::path() const { return impl_->path; }
bool Segment::created() const noexcept { return impl_->created; }
std::size_t Segment::size() const noexcept { return impl_->hdr() ? impl_->hdr()->total_size : 0; }
void* Segment::base() const noexcept { return impl_->map.p; }
std::uint32_t Segment::max_attach() const noexcept { return impl_->hdr()->max_attach; }

std::size_t Segment::free_memory() const {
    impl_->require_attached();
    Header* h = impl_->hdr();
    return h->heap_size - h->used_bytes.load(std::memory_order_relaxed);
}
std::size_t Segment::used_memory() const {
    impl_->require_attached();
    return impl_->hdr()->used_bytes.load(std::memory_order_relaxed);
}

bool Segment::persistent() const noexcept {
    return impl_->hdr() && (impl_->hdr()->flags.load(std::memory_order_relaxed) & layout::kPersistent);
}

void Segment::set_persistent(bool on) {
    impl_->require_attached();
    platform::ofd_lock_wait(impl_->fd, layout::kMetaLockByte);
    MetaLock ml(impl_->fd);
    if (on)
        impl_->hdr()->flags.fetch_or(layout::kPersistent, std::memory_order_relaxed);
    else
        impl_->hdr()->flags.fetch_and(~layout::kPersistent, std::memory_order_relaxed);
}

std::vector<AttachInfo> Segment::attachments() const {
    impl_->require_attached();
    Header* h = impl_->hdr();
    std::vector<AttachInfo> out;
    layout::AttachSlot* s = layout::slots(h);
    for (std::uint32_t i = 0; i < h->max_attach; ++i) {
        std::int32_t pid = s[i].pid.load(std::memory_order_acquire);
        if (pid == 0) continue;
        AttachInfo a;
        a.slot = i;
        a.pid = pid;
        a.start_time = s[i].start_time.load(std::memory_order_relaxed);
        a.uid = s[i].uid;
        a.attached_at_ns = s[i].attached_at_ns.load(std::memory_order_relaxed);
        a.self = i == impl_->slot;
        a.alive = a.self || slot_alive(impl_->fd, h, i);
        out.push_back(a);
    }
    return out;
}

// ---- named objects and heap ---------------------------------------------

namespace {
// A directory entry's type name, which the file may not terminate.
std::string type_name_of(const heap::DirEntry& e) { return std::string(e.type_name, strnlen(e.type_name, sizeof e.type_name)); }

std::string space_message(Header* h, const std::string& what, std::size_t bytes, const std::string& purpose) {
    std::uint64_t used = h->used_bytes.load(std::memory_order_relaxed);
    return what + " (" + platform::human_bytes(h->total_size) + "): cannot allocate " +
           platform::human_bytes(bytes) + purpose + ": " + platform::human_bytes(used) + " used, " +
           platform::human_bytes(h->heap_size - used) + " free, largest free block " +
           platform::human_bytes(heap::largest_free(h));
}
}  // namespace

void* Segment::named_op(std::string_view name, std::uint64_t key, const char* type_name, ObjectKind kind,
                        std::size_t size, std::size_t align, Init init, void* ctx, bool may_find,
                        bool may_construct, bool* constructed, std::size_t* found_size) {
    impl_->require_attached();
    validate_object_name(name);
    Header* h = impl_->hdr();
    heap::Txn t(h);
    heap::DirEntry* e = heap::dir_find(h, name.data(), name.size(), nullptr);
    if (e) {
        if (!may_find)
            throw already_exists("object " + q(name) + " already exists in " + impl_->what());
        if (e->type_key != key)
            throw type_mismatch("object " + q(name) + " in " + impl_->what() + " was constructed as type " +
                                type_name_of(*e) + ", not " + type_name);
        // dir_find() placed it inside the heap; its type fixes its size
        // (a variable-size block's owner checks it).
        if ((!found_size && e->object_size != size) ||
            e->object_offset % std::max<std::size_t>(align, 1) != 0)
            throw corrupted("object " + q(name) + " in " + impl_->what() + " has " +
                            std::to_string(e->object_size) + " bytes at offset " + std::to_string(e->object_offset) +
                            "; a " + type_name + " has " + std::to_string(size));
        if (found_size) *found_size = e->object_size;
        t.commit();
        *constructed = false;
        return impl_->base() + e->object_offset;
    }
    if (!may_construct) return nullptr;
    std::uint64_t obj = heap::allocate(t, size, std::max<std::size_t>(align, 16));
    if (!obj) throw out_of_space(space_message(h, impl_->what(), size, " for object " + q(name)));
    std::uint64_t ent = heap::allocate(t, sizeof(heap::DirEntry), 16);
    if (!ent) throw out_of_space(space_message(h, impl_->what(), size, " for object " + q(name)));
    init(impl_->base() + obj, ctx);
    // The entry is fresh memory owned by this transaction: plain writes are
    // undone by freeing it. It becomes visible with the journaled link.
    auto* d = reinterpret_cast<heap::DirEntry*>(impl_->base() + ent);
    d->next.store(h->dir_head.load(std::memory_order_relaxed), std::memory_order_relaxed);
    d->object_offset = obj;
    d->object_size = size;
    d->type_key = key;
    d->kind = static_cast<std::uint32_t>(kind);
    d->name_len = static_cast<std::uint32_t>(name.size());
    std::memset(d->name, 0, sizeof d->name);
    std::memcpy(d->name, name.data(), name.size());
    std::snprintf(d->type_name, sizeof d->type_name, "%s", type_name);
    t.store(h->dir_head, ent);
    t.store(h->dir_count, h->dir_count.load(std::memory_order_relaxed) + 1);
    t.commit();
    *constructed = true;
    return impl_->base() + obj;
}

bool Segment::named_destroy(std::string_view name, std::uint64_t key, const char* type_name, Fini fini) {
    impl_->require_attached();
    validate_object_name(name);
    Header* h = impl_->hdr();
    heap::Txn t(h);
    heap::DirEntry* prev = nullptr;
    heap::DirEntry* e = heap::dir_find(h, name.data(), name.size(), &prev);
    if (!e) return false;
    if (e->type_key != key)
        throw type_mismatch("object " + q(name) + " in " + impl_->what() + " was constructed as type " +
                            type_name_of(*e) + ", not " + type_name);
    std::uint64_t obj = e->object_offset;
    std::uint64_t ent = static_cast<std::uint64_t>(reinterpret_cast<char*>(e) - impl_->base());
    t.store(prev ? prev->next : h->dir_head, e->next.load(std::memory_order_relaxed));
    t.store(h->dir_count, h->dir_count.load(std::memory_order_relaxed) - 1);
    if (fini) fini(impl_->base() + obj);
    heap::deallocate(t, obj);
    heap::deallocate(t, ent);
    t.commit();
    return true;
}

std::vector<ObjectInfo> Segment::objects() const {
    impl_->require_attached();
    Header* h = impl_->hdr();
    heap::Txn t(h);
    std::vector<ObjectInfo> out;
    std::uint64_t limit = h->dir_count.load(std::memory_order_relaxed);
    for (std::uint64_t e = h->dir_head.load(std::memory_order_relaxed); e;) {
        if (limit-- == 0)
            throw corrupted(impl_->what() + ": object directory is corrupt: it is longer than its count");
        heap::DirEntry* d = heap::dir_entry(h, e);
        out.push_back({std::string(d->name, d->name_len), static_cast<ObjectKind>(d->kind), d->object_offset,
                       d->object_size});
        e = d->next.load(std::memory_order_relaxed);
    }
    t.commit();
    return out;
}

void* Segment::allocate(std::size_t bytes, std::size_t align) {
    impl_->require_attached();
    if (align == 0 || (align & (align - 1)) != 0 || align > 4096)
        throw error(EINVAL, impl_->what() + ": allocation alignment " + std::to_string(align) +
                                " is not a power of two up to 4096");
    Header* h = impl_->hdr();
    heap::Txn t(h);
    std::uint64_t off = heap::allocate(t, bytes, align);
    if (!off) throw out_of_space(space_message(h, impl_->what(), bytes, ""));
    t.commit();
    return impl_->base() + off;
}

void Segment::deallocate(void* p) {
    if (!p) return;
    impl_->require_attached();
    std::uint64_t off = offset_of(p);
    heap::Txn t(impl_->hdr());
    heap::deallocate(t, off);
    t.commit();
}

HeapReport Segment::verify() const {
    impl_->require_attached();
    heap::Txn t(impl_->hdr());
    HeapReport r = heap::verify(impl_->hdr());
    r.recovered = t.recovered();
    t.commit();
    return r;
}

std::uint64_t Segment::offset_of(const void* p) const {
    const char* c = static_cast<const char*>(p);
    if (c < impl_->base() || c >= impl_->base() + impl_->map.n)
        throw error(EINVAL, impl_->what() + ": pointer is not inside the segment");
    return static_cast<std::uint64_t>(c - impl_->base());
}

void* Segment::at_offset(std::uint64_t off) const {
    if (off >= impl_->map.n) throw error(EINVAL, impl_->what() + ": offset " + std::to_string(off) + " is outside the segment");
    return impl_->base() + off;
}

}  // namespace shm
