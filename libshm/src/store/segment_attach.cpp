// Creating, opening and attaching to a segment.
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
// Attach slots: see segment_slots.cpp.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <thread>

#include "core/wait.hpp"
#include "platform/platform.hpp"
#include "platform/testing.hpp"
#include "shm/mutex.hpp"
#include "shm/version.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"
#include "store/lock_holder.hpp"
#include "store/segment_internal.hpp"

namespace shm::store {

using layout::Header;
using platform::sys;
using testing::crash_point;

namespace {

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
    auto locked = [&] {
        if (platform::ofd_try_lock(fd, layout::kMetaLockByte)) return true;
        if (!says_ready(fd)) return false;  // perhaps a creator at work: poll
        auto queued = std::chrono::steady_clock::now();
        platform::ofd_lock_wait(fd, layout::kMetaLockByte);
        deadline += std::chrono::steady_clock::now() - queued;
        return true;
    };
    return core::wait_until(locked, core::Deadline::at(deadline), core::kMetaLockPoll) == core::Waited::ready;
}

}  // namespace

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
        throw version_mismatch("segment " + in_quotes(name) + " (" + path + ") has layout version " +
                                   std::to_string(h->version) + "; this libshm " + version() +
                                   " reads only version " + std::to_string(layout::kVersion),
                               h->version, layout::kVersion);
    switch (h->state.load(std::memory_order_acquire)) {
        case layout::kReady:
            // Checked once here, before anything follows an offset of it.
            if (const char* why = layout::header_problem(h, fsize))
                throw corrupted("segment " + in_quotes(name) + " (" + path + ") has an inconsistent header: " + why);
            return Kind::ready;
        case layout::kDead: return Kind::dead;
        default: return Kind::uninitialised;
    }
}

namespace {

// Under the meta lock, on a segment being attached: is its heap lock's
// owner believable? A holder dying is recorded by the kernel in the lock
// word (FUTEX_OWNER_DIED), but a word that names a thread which is not
// holding it (the file was written by someone else) would make the first
// heap operation wait forever. So a word that names a thread is trusted if
// that thread belongs to a process attached to the segment, or if the lock
// is released within a moment (transactions last microseconds); else the
// segment is refused as corrupt.
void check_heap_lock(int fd, Header* h, const std::string& what) {
    const auto* pm = reinterpret_cast<const pthread_mutex_t*>(h->heap_lock_storage);
    pid_t tid = 0;
    switch (lock_holder(fd, h, pm, &tid)) {
        case LockHolder::free:
        case LockHolder::owner_died:
        case LockHolder::this_process:  // another handle of ours, in a transaction
        case LockHolder::attached: return;
        case LockHolder::this_thread:
            throw corrupted(what + " has an inconsistent header: its heap lock names this thread, which does not hold it");
        case LockHolder::unknown: break;
    }
    Mutex& m = layout::heap_lock(h);
    if (m.try_lock_for(std::chrono::milliseconds(100))) {
        m.unlock();  // a dead holder's journal is rolled back by the next transaction
        return;
    }
    throw corrupted(what + " has an inconsistent header: its heap lock names thread " + std::to_string(tid) +
                    ", of no process attached to it, and stays held");
}

// One call of attach(): what is asked, and what the attempts so far learnt.
struct Request {
    std::string name;
    std::string path;
    std::string what;
    Mode mode;
    std::size_t size;
    const SegmentOptions& opt;
    std::chrono::steady_clock::time_point deadline;
    bool waited_uninit = false;  // open() found the file half-initialised
};

// The options of a create, before anything is touched.
void check_create_options(const Request& rq) {
    if (rq.mode == Mode::open) return;
    if (rq.opt.max_attach == 0 || rq.opt.max_attach > layout::kMaxAttachLimit)
        throw error(EINVAL, rq.what + ": max_attach must be 1.." + std::to_string(layout::kMaxAttachLimit) +
                                ", not " + std::to_string(rq.opt.max_attach));
    std::uint64_t min = layout::heap_offset_for(rq.opt.max_attach) + 4096;
    if (rq.size < min)
        throw error(EINVAL, rq.what + ": size " + std::to_string(rq.size) + " is too small; with " +
                                std::to_string(rq.opt.max_attach) + " attach slots the minimum is " +
                                std::to_string(min) + " bytes");
}

[[noreturn]] void fail_deadline(const Request& rq) {
    if (rq.waited_uninit)
        throw not_a_segment(rq.what + " (" + rq.path + ") was left half-initialised by a creator that died; "
                                      "create() or open_or_create() replaces it, shmctl gc removes it");
    throw timeout(rq.what + ": timed out after " + std::to_string(rq.opt.timeout.count()) +
                  " ms waiting for another process to finish creating it");
}

// Open the file, making it unless only opening. False if it vanished
// meanwhile (start over); *made_file tells whether this call made it.
bool open_file(const Request& rq, Fd& fd, bool* made_file) {
    *made_file = false;
    if (rq.mode != Mode::open) {
        fd.fd = sys([&] {
            return ::open(rq.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, rq.opt.mode);
        });
        if (fd.fd < 0 && errno != EEXIST) platform::fail(errno, "cannot create " + rq.what + " at " + rq.path);
        *made_file = fd.fd >= 0;
        crash_point();
    }
    if (fd.fd >= 0) return true;
    fd.fd = sys([&] { return ::open(rq.path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW); });
    if (fd.fd >= 0) return true;
    if (errno == ENOENT) {
        if (rq.mode == Mode::open) throw not_found(rq.what + " does not exist (no " + rq.path + ")");
        return false;  // removed meanwhile: create it
    }
    if (errno == ELOOP) throw not_a_segment(rq.path + " is a symbolic link, not a libshm segment");
    platform::fail(errno, "cannot open " + rq.what + " at " + rq.path);
}

// The header of a new segment in the zeroed file. Identity first, so a
// half-initialised file is recognisably ours; state = ready comes later.
void write_header(const Request& rq, Header* h) {
    h->magic = layout::kMagic;
    h->version = layout::kVersion;
    h->state.store(layout::kInitialising, std::memory_order_relaxed);
    crash_point();
    h->total_size = rq.size;
    h->max_attach = rq.opt.max_attach;
    h->attach_offset = layout::kHeaderSize;
    h->journal_offset = layout::journal_offset_for(rq.opt.max_attach);
    h->journal_capacity = layout::kJournalCapacity;
    h->heap_offset = layout::heap_offset_for(rq.opt.max_attach);
    h->heap_size = (rq.size - h->heap_offset) & ~std::uint64_t(63);
    h->flags.store(rq.opt.persistent ? std::uint32_t(layout::kPersistent) : 0u, std::memory_order_relaxed);
    h->creator_pid = ::getpid();
    h->creator_uid = ::getuid();
    h->creator_start_time = platform::self_start_time();
    h->created_at_ns = platform::realtime_ns();
    std::snprintf(h->name, sizeof h->name, "%s", rq.name.c_str());
    ::new (h->heap_lock_storage) Mutex();
    heap::init(h);
}

// Reserve the file's `size` bytes in the filesystem; out_of_space (after
// unlinking the file) if they are not there.
void reserve_space(const Request& rq, int fd) {
    int rc;
    do rc = ::posix_fallocate(fd, 0, static_cast<off_t>(rq.size));
    while (rc == EINTR);
    if (rc == 0) return;
    platform::FsSpace fs = platform::fs_space(fd);
    unlink_if_same(rq.path, fd);
    if (rc == ENOSPC || rc == EFBIG)
        throw out_of_space("cannot create " + rq.what + ": it needs " + platform::human_bytes(rq.size) +
                           " but only " + platform::human_bytes(fs.free) + " of " +
                           platform::human_bytes(fs.total) + " are free in " + shm_directory().string() +
                           "; run `shmctl gc` to reclaim segments leaked by dead processes");
    platform::fail(rc, "cannot reserve " + platform::human_bytes(rq.size) + " for " + rq.what);
}

// Under the meta lock: initialise a file that is not ready (a fresh one, or
// one whose creator died) as a new segment, and take its first slot.
void initialise(const Request& rq, int fd, bool made_file, const struct stat& st, detail::SegmentState& impl) {
    impl.map.reset();
    if (sys([&] { return ::ftruncate(fd, 0); }) != 0) platform::fail(errno, "cannot truncate " + rq.path);
    crash_point();
    reserve_space(rq, fd);
    crash_point();
    if (made_file || st.st_uid == ::geteuid()) (void)::fchmod(fd, rq.opt.mode);
    map_file(impl.map, fd, rq.size, rq.path);
    Header* h = impl.hdr();
    write_header(rq, h);
    crash_point();
    impl.slot = take_slot(fd, h);
    crash_point();
    // Release: publishes every field above; partner is the acquire
    // load in classify() of whoever takes the meta lock next.
    h->state.store(layout::kReady, std::memory_order_release);
    impl.created = true;
}

// Under the meta lock: join a ready segment. False if every user had died:
// then it is reclaimed and the caller starts over (to create it anew).
bool join_ready(const Request& rq, int fd, detail::SegmentState& impl) {
    Header* h = impl.hdr();
    std::uint32_t live = sweep_slots(fd, h, kNoSlot, nullptr);
    bool persistent = h->flags.load(std::memory_order_relaxed) & layout::kPersistent;
    if (live == 0 && !persistent) {
        // Every user died without detaching: the segment is already
        // dead by the lifetime contract. Reclaim it, then create anew
        // (or report it gone).
        h->state.store(layout::kDead, std::memory_order_release);
        unlink_if_same(rq.path, fd);
        if (rq.mode == Mode::open)
            throw not_found(rq.what + " does not exist: every process using it had died; it was reclaimed");
        return false;
    }
    if (rq.mode == Mode::create)
        throw already_exists(rq.what + " already exists (" +
                             (persistent ? std::string("persistent") : std::to_string(live) + " live processes attached") +
                             "); use open() or open_or_create(), or remove it with shmctl rm");
    check_heap_lock(fd, h, rq.what + " (" + rq.path + ")");
    impl.slot = take_slot(fd, h);
    if (impl.slot == kNoSlot)
        throw attach_table_full(rq.what + ": all " + std::to_string(h->max_attach) +
                                " attach slots are held by live processes (set SegmentOptions::max_attach "
                                "higher when creating it)");
    return true;
}

// Under the meta lock on the open file: attach to it, initialising it if
// it is not ready and that is allowed. nullptr: start over.
std::shared_ptr<detail::SegmentState> attach_locked(Request& rq, Fd& fd, bool made_file) {
    struct stat st;
    if (::fstat(fd.fd, &st) != 0) platform::fail(errno, "cannot stat " + rq.path);
    if (!S_ISREG(st.st_mode)) throw not_a_segment(rq.path + " is not a regular file, not a libshm segment");
    if (st.st_nlink == 0) return nullptr;  // unlinked while we waited: start over
    std::size_t fsize = static_cast<std::size_t>(st.st_size);

    auto impl = std::make_shared<detail::SegmentState>();
    impl->name = rq.name;
    impl->path = rq.path;
    if (fsize >= layout::kHeaderSize) map_file(impl->map, fd.fd, fsize, rq.path);
    Kind kind = classify(impl->map, fsize, fd.fd, rq.name, rq.path);
    if (kind == Kind::foreign)
        throw not_a_segment(rq.path + " is not a libshm segment (bad magic); refusing to touch it");
    if (kind == Kind::dead) {
        // Whoever marked it dead unlinks it before dropping the meta
        // lock; we hold the lock and it is still linked, so that process
        // died in between. Finish its job, then start over.
        unlink_if_same(rq.path, fd.fd);
        return nullptr;
    }
    if (kind == Kind::uninitialised) {
        if (rq.mode == Mode::open) {
            // Its creator holds no lock: either it has not taken it yet
            // (microseconds after creating the file) or it died: the rule
            // of layout::abandoned().
            if (layout::abandoned(st))
                throw not_a_segment(rq.what + " (" + rq.path +
                                    ") was left half-initialised by a creator that died; create() or "
                                    "open_or_create() replaces it, shmctl gc removes it");
            rq.waited_uninit = true;
            impl.reset();
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
            return nullptr;
        }
        initialise(rq, fd.fd, made_file, st, *impl);
    } else if (!join_ready(rq, fd.fd, *impl)) {
        return nullptr;
    }
    impl->fd = fd.release();
    impl->attached = true;
    impl->register_handle();
    return impl;
}

}  // namespace

std::shared_ptr<detail::SegmentState> attach(std::string_view name, Mode mode, std::size_t size,
                                             const SegmentOptions& opt, const SegmentHooks& hooks) {
    Request rq{std::string(name), "", "", mode, size, opt, {}};
    rq.path = segment_path(rq.name).string();
    rq.what = "segment " + in_quotes(rq.name);
    check_create_options(rq);
    // Quotas are the daemon's (when there is one), asked before any file is made.
    if (hooks.before_create &&
        (mode == Mode::create || (mode == Mode::open_or_create && ::access(rq.path.c_str(), F_OK) != 0)))
        hooks.before_create(rq.name, size);
    rq.deadline = std::chrono::steady_clock::now() + opt.timeout;
    for (;;) {
        if (std::chrono::steady_clock::now() > rq.deadline) fail_deadline(rq);
        Fd fd;
        bool made_file = false;
        if (!open_file(rq, fd, &made_file)) continue;
        if (!lock_meta_for_attach(fd.fd, rq.deadline)) continue;  // reports the timeout above
        std::shared_ptr<detail::SegmentState> impl;
        {
            MetaLock ml(fd.fd);
            impl = attach_locked(rq, fd, made_file);
        }
        if (!impl) continue;
        impl->hooks = &hooks;
        // The slot is ours: tell the layer above. If that throws, the
        // attachment is given up with its last holder, impl (and the layer
        // told of that too).
        if (hooks.attached) hooks.attached(impl->name);
        return impl;
    }
}

}  // namespace shm::store
