// The attach table: taking and giving up slots, fork children's own slots,
// reaping the slots of dead processes, unlinking.
//
// Attach slots: a slot is in use while its one-byte OFD lock is held; the
// kernel drops the lock when the holder dies (open file descriptions die with
// the last descriptor), so liveness needs no heartbeat and is immune to pid
// reuse. The pid and start time in the slot are for display.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <vector>

#include "core/liveness.hpp"
#include "core/wait.hpp"
#include "platform/platform.hpp"
#include "store/layout.hpp"
#include "store/lock_holder.hpp"
#include "store/segment_internal.hpp"
#include "store/segment_state.hpp"

namespace shm {

using layout::Header;
using platform::sys;

namespace store {

Fd::~Fd() {
    if (fd >= 0) ::close(fd);
}

void Map::reset() {
    if (p) ::munmap(p, n);
    p = nullptr;
    n = 0;
}

void map_file(Map& m, int fd, std::size_t size, const std::string& what) {
    m.reset();
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) platform::fail(errno, "cannot map " + what);
    m.p = p;
    m.n = size;
}

MetaLock::~MetaLock() { platform::ofd_unlock(fd, layout::kMetaLockByte); }

// Meta lock with a deadline (a racing creator may hold it while it
// initialises a large segment).
bool meta_lock_until(int fd, std::chrono::steady_clock::time_point deadline) {
    return core::wait_until([&] { return platform::ofd_try_lock(fd, layout::kMetaLockByte); },
                            core::Deadline::at(deadline), core::kMetaLockPoll) == core::Waited::ready;
}

void unlink_if_same(const std::string& path, int fd) {
    struct stat a, b;
    if (::fstat(fd, &a) != 0 || ::lstat(path.c_str(), &b) != 0) return;
    if (a.st_dev == b.st_dev && a.st_ino == b.st_ino) ::unlink(path.c_str());
}

bool slot_alive(int fd, Header* h, std::uint32_t i) {
    return core::liveness::holds_lock(fd, layout::slot_lock_byte(h, i));
}

LockHolder lock_holder(int fd, Header* h, const pthread_mutex_t* m, pid_t* tid_out) {
    constexpr unsigned kTidMask = 0x3fffffff, kOwnerDied = 0x40000000;  // FUTEX_TID_MASK, FUTEX_OWNER_DIED
    const unsigned word = __atomic_load_n(reinterpret_cast<const unsigned*>(&m->__data.__lock), __ATOMIC_ACQUIRE);
    const unsigned tid = word & kTidMask;
    if (tid_out) *tid_out = static_cast<pid_t>(tid);
    // Free, or its holder died: the next locker gets it. Any other word
    // (also one with only the waiters bit) makes a locker wait.
    if (word == 0) return LockHolder::free;
    if (word & kOwnerDied) return LockHolder::owner_died;
    if (tid == static_cast<unsigned>(platform::current_tid())) return LockHolder::this_thread;
    auto thread_of = [tid](long pid) {
        char p[64];
        std::snprintf(p, sizeof p, "/proc/%ld/task/%u", pid, tid);
        return tid != 0 && ::access(p, F_OK) == 0;
    };
    if (thread_of(::getpid())) return LockHolder::this_process;
    layout::AttachSlot* s = layout::slots(h);
    for (std::uint32_t i = 0; i < h->max_attach; ++i) {
        const std::int32_t pid = s[i].pid.load(std::memory_order_acquire);
        if (pid > 0 && slot_alive(fd, h, i) && thread_of(pid)) return LockHolder::attached;
    }
    return LockHolder::unknown;
}

void clear_slot(layout::AttachSlot& s) {
    s.start_time.store(0, std::memory_order_relaxed);
    s.attached_at_ns.store(0, std::memory_order_relaxed);
    s.uid = 0;
    s.pid.store(0, std::memory_order_release);
}

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

}  // namespace store

using store::kNoSlot;
using store::MetaLock;

namespace {

// Registry of attached handles, so that a forked child takes its own slots.
std::mutex g_registry_mutex;
std::vector<detail::SegmentState*>* g_registry = nullptr;
std::once_flag g_atfork_once;

void atfork_prepare() { g_registry_mutex.lock(); }
void atfork_parent() { g_registry_mutex.unlock(); }
void atfork_child() {
    if (g_registry)
        for (detail::SegmentState* i : *g_registry)
            if (i->attached) i->reattach_in_child();
    g_registry_mutex.unlock();
}

}  // namespace

// ---- an attachment (segment_state.hpp) ---------------------------------------------------------

void detail::SegmentState::require_attached() const {
    if (attached) return;
    if (fork_error)
        throw error(fork_error, what() + ": this process (a fork child) could not take its own attach slot: " +
                                    std::strerror(fork_error));
    throw error(EBADF, what() + ": handle is detached");
}

void detail::SegmentState::register_handle() {
    std::call_once(g_atfork_once, [] { ::pthread_atfork(atfork_prepare, atfork_parent, atfork_child); });
    std::lock_guard<std::mutex> g(g_registry_mutex);
    if (!g_registry) g_registry = new std::vector<detail::SegmentState*>();
    g_registry->push_back(this);
}

void detail::SegmentState::unregister_handle() {
    std::lock_guard<std::mutex> g(g_registry_mutex);
    if (g_registry) g_registry->erase(std::remove(g_registry->begin(), g_registry->end(), this), g_registry->end());
}

// In a fork child: open a new file description and take a slot of our
// own; the inherited descriptor (shared with the parent, and so holding
// the parent's lock) is closed, which leaves the parent's lock alone.
void detail::SegmentState::reattach_in_child() noexcept {
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
        std::uint32_t s = store::take_slot(nfd, hdr());
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

void detail::SegmentState::detach() noexcept {
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
            store::clear_slot(layout::slots(h)[slot]);
            platform::ofd_unlock(fd, layout::slot_lock_byte(h, slot));
            slot = kNoSlot;
            if (h->state.load(std::memory_order_acquire) == layout::kReady &&
                !(h->flags.load(std::memory_order_relaxed) & layout::kPersistent)) {
                std::uint32_t live = store::sweep_slots(fd, h, kNoSlot, nullptr);
                if (live == 0) {
                    h->state.store(layout::kDead, std::memory_order_release);
                    store::unlink_if_same(path, fd);
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
    if (hooks && hooks->detached) hooks->detached(name);
}

// ---- administration without a slot -----------------------------------------

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

// Under the meta lock, on a ready segment: the pids of its live slots.
std::vector<std::int32_t> live_pids_of(int fd, Header* h) {
    std::vector<std::int32_t> out;
    layout::AttachSlot* sl = layout::slots(h);
    for (std::uint32_t i = 0; i < h->max_attach; ++i) {
        std::int32_t pid = sl[i].pid.load(std::memory_order_acquire);
        if (pid != 0 && store::slot_alive(fd, h, i)) out.push_back(pid);
    }
    return out;
}
}  // namespace

bool Segment::unlink(std::string_view name_in) { return unlink_if_unused(name_in, nullptr); }

bool Segment::unlink_if_unused(std::string_view name_in, std::vector<std::int32_t>* live_pids) {
    std::string name(name_in);
    std::string path = segment_path(name).string();
    store::Fd fd(open_admin(path, "segment " + store::in_quotes(name)));
    if (fd.fd < 0) return false;
    platform::ofd_lock_wait(fd.fd, layout::kMetaLockByte);
    MetaLock ml(fd.fd);
    struct stat st;
    if (::fstat(fd.fd, &st) != 0) platform::fail(errno, "cannot stat " + path);
    if (st.st_nlink == 0) return false;
    store::Map m;
    if (static_cast<std::size_t>(st.st_size) >= layout::kHeaderSize) store::map_file(m, fd.fd, st.st_size, path);
    store::Kind k = store::classify(m, st.st_size, fd.fd, name, path);
    if (k == store::Kind::foreign)
        throw not_a_segment(path + " is not a libshm segment (bad magic); refusing to remove it");
    if (live_pids && k == store::Kind::ready) {
        // Attaching takes the meta lock we hold: nobody can attach between
        // this check and the unlink.
        *live_pids = live_pids_of(fd.fd, m.hdr());
        if (!live_pids->empty()) return true;
    }
    if (m.p) m.hdr()->state.store(layout::kDead, std::memory_order_release);
    store::unlink_if_same(path, fd.fd);
    return true;
}

ReapReport Segment::reap_dead(std::string_view name_in) {
    return reap_dead(name_in, std::chrono::milliseconds::max());
}

namespace {
// reap_dead(), under the meta lock, of a file that is not ready: unlink it
// if it is abandoned (r.unlinked says whether it was).
void reap_unready(store::Kind k, const store::Map& m, const struct stat& st, const std::string& path, int fd,
                  ReapReport& r) {
    if (k == store::Kind::uninitialised) {
        // We hold the meta lock, so nobody is initialising it. Give a creator
        // that has not yet taken the lock a moment (layout::abandoned()),
        // then reclaim.
        if (layout::abandoned(st)) {
            if (m.p) m.hdr()->state.store(layout::kDead, std::memory_order_release);
            store::unlink_if_same(path, fd);
            r.unlinked = true;
        }
        return;
    }
    // Dead: whoever marked it dead holds the meta lock until it has unlinked
    // the file; we hold the lock and the file is still linked, so that
    // process died in between. Finish its job.
    store::unlink_if_same(path, fd);
    r.unlinked = true;
}
}  // namespace

ReapReport Segment::reap_dead(std::string_view name_in, std::chrono::milliseconds lock_timeout) {
    std::string name(name_in);
    std::string path = segment_path(name).string();
    ReapReport r;
    store::Fd fd(open_admin(path, "segment " + store::in_quotes(name)));
    if (fd.fd < 0) return r;
    r.exists = true;
    if (lock_timeout == std::chrono::milliseconds::max()) {
        platform::ofd_lock_wait(fd.fd, layout::kMetaLockByte);
    } else if (!store::meta_lock_until(fd.fd, std::chrono::steady_clock::now() + lock_timeout)) {
        r.busy = true;
        return r;
    }
    MetaLock ml(fd.fd);
    struct stat st;
    if (::fstat(fd.fd, &st) != 0) platform::fail(errno, "cannot stat " + path);
    if (st.st_nlink == 0) return r;
    r.bytes = static_cast<std::uint64_t>(st.st_blocks) * 512;
    store::Map m;
    if (static_cast<std::size_t>(st.st_size) >= layout::kHeaderSize) store::map_file(m, fd.fd, st.st_size, path);
    store::Kind k = store::classify(m, st.st_size, fd.fd, name, path);
    if (k == store::Kind::foreign) throw not_a_segment(path + " is not a libshm segment (bad magic)");
    if (k != store::Kind::ready) {
        reap_unready(k, m, st, path, fd.fd, r);
        return r;
    }
    Header* h = m.hdr();
    r.live_slots = store::sweep_slots(fd.fd, h, kNoSlot, &r.dead_slots_cleared);
    if (r.live_slots == 0 && !(h->flags.load(std::memory_order_relaxed) & layout::kPersistent)) {
        h->state.store(layout::kDead, std::memory_order_release);
        store::unlink_if_same(path, fd.fd);
        r.unlinked = true;
    }
    return r;
}

// ---- the attach table of an attached segment ---------------------------------

ReapReport Segment::reap_dead() {
    detail::SegmentState& st = attachment();
    ReapReport r;
    Header* h = st.hdr();
    platform::ofd_lock_wait(st.fd, layout::kMetaLockByte);
    MetaLock ml(st.fd);
    r.bytes = h->total_size;
    r.live_slots = store::sweep_slots(st.fd, h, st.slot, &r.dead_slots_cleared) + 1;
    return r;
}

std::vector<AttachInfo> Segment::attachments() const {
    detail::SegmentState& st = attachment();
    Header* h = st.hdr();
    std::vector<AttachInfo> out;
    layout::AttachSlot* s = layout::slots(h);
    for (std::uint32_t i = 0; i < h->max_attach; ++i) {
        AttachInfo a;
        if (!layout::slot_info(s[i], i, a)) continue;
        a.self = i == st.slot;
        a.alive = a.self || store::slot_alive(st.fd, h, i);
        out.push_back(a);
    }
    return out;
}

}  // namespace shm
