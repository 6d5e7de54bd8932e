// shm::admin: a segment read without attaching to it (inspect_segment).
//
// Reading a segment that other processes are changing
// ----------------------------------------------------
// We never attach and never take the heap lock, so the header and the object
// directory are read with pread() while writers may be at work:
//   * identity fields (magic, version, sizes, creator) are written once,
//     before the segment is published with state = ready, and never again;
//     the header is trusted only once layout::header_problem() finds nothing
//     wrong with it, each time it is read;
//   * an attach slot's liveness is the kernel's answer to F_OFD_GETLK, not
//     anything in the file (liveness.hpp);
//   * the object directory is a list that heap transactions relink. We read
//     the header, walk the list (each entry's offset checked against the
//     heap's bounds, the walk bounded by the entry count), and read the
//     header again: if an update was in progress (journal not empty) or the
//     list head or count changed, the walk is retried, and after a few tries
//     the directory is reported busy instead of being misread.
//   * objects are decoded by the object layer (objects/inspect.hpp) from
//     copies; each field is one aligned word, so a value may be a moment
//     old, never torn across fields that matter for display.
// pread() also means a file truncated under us gives short reads, not
// SIGBUS.
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>
#include <thread>

#include "admin/liveness.hpp"
#include "admin/util.hpp"
#include "objects/inspect.hpp"
#include "platform/platform.hpp"
#include "shm/admin.hpp"
#include "shm/names.hpp"
#include "shm/version.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"

namespace shm::admin {

using platform::sys;

namespace {

// pread exactly `n` bytes at `off`; false on a short read or an error.
bool read_bytes(int fd, std::uint64_t off, std::size_t n, void* into) {
    std::size_t got = 0;
    char* p = static_cast<char*>(into);
    while (got < n) {
        ssize_t r = sys([&] { return ::pread(fd, p + got, n - got, static_cast<off_t>(off + got)); });
        if (r <= 0) return false;
        got += static_cast<std::size_t>(r);
    }
    return true;
}

inspect::ReadAt reader(int fd) {
    return [fd](std::uint64_t off, std::size_t n, void* into) { return read_bytes(fd, off, n, into); };
}

// A copy of part of the file, aligned for the structs we read from it.
struct Buf {
    std::vector<std::uint64_t> words;
    const void* data() const { return words.data(); }
};

bool read_at(int fd, std::uint64_t off, std::size_t n, Buf& b) {
    b.words.assign((n + 7) / 8, 0);
    return read_bytes(fd, off, n, b.words.data());
}

bool read_header(int fd, Buf& b, std::size_t fsize) {
    std::size_t n = std::min<std::size_t>(fsize, layout::kHeaderSize);
    if (!read_at(fd, 0, n, b)) return false;
    b.words.resize(layout::kHeaderSize / 8, 0);  // zero the rest of a short file
    return true;
}
const layout::Header* hdr(const Buf& b) { return static_cast<const layout::Header*>(b.data()); }

// ---- objects ------------------------------------------------------------

LockState lock_state(const inspect::LockWord& w, const std::vector<AttachInfo>& attached) {
    LockState l;
    l.recoveries = w.recoveries;
    if (w.owner_tid != 0) {
        l.held = true;
        l.owner_pid = w.owner_pid != 0 ? w.owner_pid : static_cast<std::int32_t>(w.owner_tid);
        l.owner_alive = liveness::lock_owner_alive(w.owner_tid, &attached);
        l.owner_died = !l.owner_alive;
        l.depth = w.depth;
    } else if (w.owner_died) {
        l.owner_pid = w.owner_pid;
        l.owner_died = true;
    }
    return l;
}

std::string read_queue(const inspect::ReadAt& read, const inspect::Place& at, ObjectState& s) {
    inspect::QueueState q;
    std::string problem = inspect::queue_state(read, at, q);
    if (!problem.empty()) return problem;
    s.capacity = q.capacity;
    s.max_item_size = q.max_item_size;
    s.value = q.depth;
    s.closed = q.closed;
    s.repairs = q.repairs;
    s.max_bytes = q.max_bytes;
    s.bytes_used = q.bytes_used;
    return {};
}

std::string read_work_queue(const inspect::ReadAt& read, const inspect::Place& at, ObjectState& s) {
    inspect::WorkQueueState w;
    std::string problem = inspect::work_queue_state(read, at, w);
    if (!problem.empty()) return problem;
    s.capacity = w.capacity;
    s.max_deliveries = w.max_deliveries;
    s.made = w.made;
    s.value = static_cast<std::uint32_t>(w.waiting);
    s.leased = w.leased;
    s.dead_letters = w.dead_letters;
    s.unfinished = w.unfinished;
    s.redeliveries = w.redeliveries;
    s.closed = w.closed;
    for (const auto& h : w.holders)
        s.lease_holders.push_back(LeaseHolder{h.pid, liveness::process_alive(h.pid, h.start_time), h.leases});
    return {};
}

std::string read_shared_array(const inspect::ReadAt& read, const inspect::Place& at,
                              const std::vector<AttachInfo>& attached, ObjectState& s) {
    inspect::SharedArrayState a;
    std::string problem = inspect::shared_array_state(read, at, a);
    if (!problem.empty()) return problem;
    s.element_type = a.element_type;
    s.typecode = a.typecode ? std::string(1, a.typecode) : std::string();
    s.element_size = a.element_size;
    s.length = a.count;
    s.has_lock = a.has_lock;
    if (a.lock) s.lock = lock_state(*a.lock, attached);
    return {};
}

std::string read_sync(const inspect::ReadAt& read, const inspect::Place& at, const std::vector<AttachInfo>& attached,
                      ObjectState& s) {
    inspect::SyncState y;
    std::string problem = inspect::sync_state(read, at, y);
    if (!problem.empty()) return problem;
    if (y.lock) s.lock = lock_state(*y.lock, attached);
    s.value = y.value;
    s.bound = y.bound;
    s.waiters = y.waiters;
    s.is_set = y.is_set;
    s.parties = y.parties;
    s.n_waiting = y.n_waiting;
    s.generation = y.generation;
    s.broken = y.broken;
    return {};
}

void read_object_state(int fd, const std::vector<AttachInfo>& attached, ObjectState& s) {
    const inspect::ReadAt read = reader(fd);
    const inspect::Place at{s.info.kind, s.info.offset, s.info.size};
    std::string problem;
    if (s.info.kind == ObjectKind::dict || s.info.kind == ObjectKind::list) {
        std::uint64_t length = 0;
        problem = inspect::container_length(read, at, length);
        if (problem.empty()) s.length = length;
    } else if (s.info.kind == ObjectKind::queue) {
        problem = read_queue(read, at, s);
    } else if (s.info.kind == ObjectKind::work_queue) {
        problem = read_work_queue(read, at, s);
    } else if (inspect::is_shared_array_kind(s.info.kind)) {
        problem = read_shared_array(read, at, attached, s);
    } else if (inspect::is_sync_kind(s.info.kind)) {
        problem = read_sync(read, at, attached, s);
    } else if (s.info.kind != ObjectKind::raw && std::strcmp(to_string(s.info.kind), "unknown") == 0) {
        // A kind without a reader here yet shows no state; a kind this
        // libshm does not know at all is said to be so.
        problem = "an object kind this libshm does not know";
    }
    s.error = Error{problem, 0};
}

// ---- the object directory ---------------------------------------------------

// Walk the object directory once. Returns "" on success, else what broke.
std::string walk_directory(int fd, const layout::Header* h, std::vector<ObjectState>& out) {
    out.clear();
    const std::uint64_t begin = h->heap_offset;
    const std::uint64_t count = h->dir_count.load(std::memory_order_relaxed);
    if (count > h->heap_size / sizeof(heap::DirEntry)) return "entry count out of range";
    std::set<std::uint64_t> seen;
    Buf b;
    for (std::uint64_t e = h->dir_head.load(std::memory_order_relaxed); e;) {
        if (e % 16 != 0 || e < begin + 16 || !layout::in_heap(h, e, sizeof(heap::DirEntry)))
            return "entry outside the heap";
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
        const std::uint64_t o = d->object_offset;
        if (o < begin + 16 || !layout::in_heap(h, o, d->object_size)) return "object outside the heap";
        ObjectState s;
        s.info = ObjectInfo{std::move(name), static_cast<ObjectKind>(d->kind), o, d->object_size};
        out.push_back(std::move(s));
        e = d->next.load(std::memory_order_relaxed);
    }
    if (seen.size() != count) return "list shorter than its count";
    return {};
}

// Why a header just read cannot be walked now ("" if it can). `settled`:
// reading again will not change that.
std::string not_walkable(const layout::Header* h, std::size_t fsize, const std::vector<AttachInfo>& attached,
                         bool& settled) {
    settled = false;
    if (const char* why = layout::header_problem(h, fsize)) return std::string("its header became inconsistent: ") + why;
    if (h->journal_count.load(std::memory_order_relaxed) == 0) return {};
    // An update is in progress, or was cut short by its process's death
    // (then the next user of the heap rolls it back).
    LockState l = lock_state(inspect::lock_word(h->heap_lock_storage, false), attached);
    if (l.held && l.owner_alive) return "pid " + std::to_string(l.owner_pid) + " is updating it";
    settled = true;  // nobody is finishing it: reading again shows the same
    return "an update was cut short when pid " + std::to_string(l.owner_pid) +
           " died; the segment's next user rolls it back";
}

bool same_directory(const layout::Header* a, const layout::Header* b) {
    return b->journal_count.load(std::memory_order_relaxed) == 0 &&
           b->dir_head.load(std::memory_order_relaxed) == a->dir_head.load(std::memory_order_relaxed) &&
           b->dir_count.load(std::memory_order_relaxed) == a->dir_count.load(std::memory_order_relaxed);
}

void read_objects(int fd, std::size_t fsize, SegmentInfo& si) {
    Buf before, after;
    std::string why, broke_before;
    for (int attempt = 0; attempt < 5; ++attempt) {
        // Read again at once, then with growing pauses.
        if (attempt > 1) std::this_thread::sleep_for(std::chrono::milliseconds(2 << attempt));
        bool settled = false;
        why = read_header(fd, before, fsize) ? not_walkable(hdr(before), fsize, si.slots, settled)
                                             : "header could not be read";
        if (settled) break;
        if (!why.empty()) continue;
        std::string broke = walk_directory(fd, hdr(before), si.objects);
        if (!read_header(fd, after, fsize)) {
            why = "header could not be read";
            continue;
        }
        if (!same_directory(hdr(before), hdr(after))) {
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
        for (ObjectState& o : si.objects) read_object_state(fd, si.slots, o);
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

// ---- the header and the attach table -------------------------------------------

bool set_status(SegmentInfo& si, SegmentStatus status, std::string message, int code = 0) {
    si.status = status;
    si.error = Error{std::move(message), code};
    return false;
}

// Open the file read-only, never following a symlink. False (status set)
// if it is not a regular file we may read.
bool open_file(SegmentInfo& si, Fd& fd, struct stat& st) {
    // O_NONBLOCK: a FIFO planted under a segment's name must not block us.
    fd.reset(sys([&] { return ::open(si.path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY); }));
    if (!fd.valid()) {
        const int err = errno;
        if (err == ELOOP) return set_status(si, SegmentStatus::not_a_segment, "it is a symbolic link", err);
        return set_status(si, SegmentStatus::unreadable, "cannot open it: " + errno_text(err), err);
    }
    if (::fstat(fd.get(), &st) != 0)
        return set_status(si, SegmentStatus::unreadable, "cannot stat it: " + errno_text(errno), errno);
    if (!S_ISREG(st.st_mode)) return set_status(si, SegmentStatus::not_a_segment, "it is not a regular file");
    return true;
}

// What the header says the file is. True for a ready segment of this
// layout whose header layout::header_problem() accepts.
bool identify(const layout::Header* h, std::size_t fsize, int fd, const struct stat& st, SegmentInfo& si) {
    auto uninitialised = [&] {
        // A creator that died leaves a file nobody initialises (meta lock
        // free) and nobody changes: the rule of layout::abandoned().
        si.being_created = liveness::meta_locked(fd) || !layout::abandoned(st);
        return set_status(si, SegmentStatus::uninitialised,
                          si.being_created ? "being created" : "left half-initialised by a creator that died");
    };
    if (h->magic == 0) return uninitialised();
    if (h->magic != layout::kMagic)
        return set_status(si, SegmentStatus::not_a_segment, "not a libshm segment (bad magic)");
    if (fsize < layout::kHeaderSize) return uninitialised();
    // Magic is written before version; version 0 is none: half-initialised.
    if (h->version == 0) return uninitialised();
    si.layout_version = h->version;
    if (h->version != layout::kVersion)
        return set_status(si, SegmentStatus::version_mismatch,
                          "layout version " + std::to_string(h->version) + "; this libshm " + version() +
                              " reads only version " + std::to_string(layout::kVersion));
    std::uint32_t state = h->state.load(std::memory_order_relaxed);
    if (state == layout::kDead)
        return set_status(si, SegmentStatus::dead, "marked removed by a process that died before unlinking it");
    if (state != layout::kReady) return uninitialised();
    if (const char* why = layout::header_problem(h, fsize))
        return set_status(si, SegmentStatus::corrupt, std::string("the header is inconsistent: ") + why);
    si.status = SegmentStatus::ok;
    return true;
}

void read_fields(const layout::Header* h, const std::string& file, SegmentInfo& si) {
    si.heap_size = h->heap_size;
    si.heap_used = std::min<std::uint64_t>(h->used_bytes.load(std::memory_order_relaxed), h->heap_size);
    si.max_attach = h->max_attach;
    si.persistent = (h->flags.load(std::memory_order_relaxed) & layout::kPersistent) != 0;
    si.creator_pid = h->creator_pid;
    si.creator_uid = h->creator_uid;
    si.creator_start_time = h->creator_start_time;
    si.creator_alive = liveness::process_alive(h->creator_pid, h->creator_start_time);
    si.created_at_ns = h->created_at_ns;
    char name[sizeof h->name + 1] = {};
    std::memcpy(name, h->name, sizeof h->name);
    // gc and rm act on si.name: it is the file's, not the header's copy,
    // which anyone who can write the file can make name another segment.
    // The copy is shown only for a file whose name no segment can have.
    if (name[0] && after_prefix(file).empty()) si.name = name;
}

bool read_slots(int fd, const layout::Header* h, SegmentInfo& si) {
    Buf sb;
    if (!read_at(fd, h->attach_offset, std::size_t(h->max_attach) * layout::kSlotSize, sb))
        return set_status(si, SegmentStatus::unreadable, "cannot read its attach table");
    const auto* slots = static_cast<const layout::AttachSlot*>(sb.data());
    try {
        for (std::uint32_t i = 0; i < h->max_attach; ++i) {
            AttachInfo a;
            if (!layout::slot_info(slots[i], i, a)) continue;
            a.alive = liveness::slot_alive(fd, h, i);
            (a.alive ? si.live : si.dead)++;
            si.slots.push_back(a);
        }
    } catch (const std::system_error& e) {
        return set_status(si, SegmentStatus::unreadable, std::string("cannot test its attach slots: ") + e.what(),
                          e.code().value());
    }
    return true;
}

}  // namespace

std::chrono::nanoseconds abandoned_after() noexcept { return layout::kAbandonedAfter; }

SegmentInfo inspect_segment(const std::string& path, bool with_objects) {
    SegmentInfo si;
    si.path = path;
    const std::string file = std::filesystem::path(path).filename().string();
    si.name = after_prefix(file);
    if (si.name.empty()) si.name = file;

    Fd fd;
    struct stat st;
    if (!open_file(si, fd, st)) return si;
    const std::size_t fsize = static_cast<std::size_t>(st.st_size);
    si.total_size = fsize;
    Buf hb;
    if (!read_header(fd.get(), hb, fsize)) {
        set_status(si, SegmentStatus::unreadable, "cannot read its header", errno);
        return si;
    }
    const layout::Header* h = hdr(hb);
    if (!identify(h, fsize, fd.get(), st, si)) return si;
    read_fields(h, file, si);
    if (!read_slots(fd.get(), h, si)) return si;
    if (with_objects) read_objects(fd.get(), fsize, si);
    return si;
}

}  // namespace shm::admin
