// shm::admin — see and reclaim what fills the shm directory.
//
// The one administration API: shmctl is built on it, and so is the daemon.
// It works on shm::shm_directory() ($SHM_DIR, else /dev/shm), the directory
// libshm itself uses, and needs neither the daemon nor a slot in any segment:
//
//   * libshm segments are read without attaching: the header with pread() on
//     a read-only descriptor, the liveness of each attach slot with
//     F_OFD_GETLK (the kernel answers for any open file description, across
//     users and pid namespaces). The object directory is read without the
//     heap lock, so the walk is bounded and every offset is checked against
//     the file; a directory that changes while it is read is reported as
//     busy, never misread. A segment of another layout version is reported
//     as such, never interpreted.
//   * Other ("foreign") files — Python multiprocessing's psm_* and sem.mp-*,
//     PyTorch's torch_*, anything else — are in use when a live process maps
//     them or holds them open. Who does is read from /proc/*/maps and
//     /proc/*/fd in one pass over /proc, matching files by device and inode
//     (so renamed and deleted files are never confused with others of the
//     same name); processes that vanish during the pass are skipped. Whether
//     anybody does is also asked of the kernel: a write lease (F_SETLEASE)
//     is granted only on a file that no other open file description (and so
//     no mapping) refers to, in any process, pid namespace or user. Where
//     the lease cannot be taken (another user's file), a process whose /proc
//     entries we may not read makes every file it could have opened
//     "unknown", never "leaked".
//   * Reclaiming: libshm segments through Segment::reap_dead() (which takes
//     the segment's meta lock, so a process attaching meanwhile is never
//     cut off); foreign files only when asked, only when older than a grace
//     period, and only after a re-check just before the unlink: holding the
//     file's lease (so nobody can start using it unseen) or, without one, a
//     second look at /proc. Symbolic links and anything that is not a
//     regular file are never touched.
//
// Signals: while a lease is held (microseconds per file), a process opening
// the file makes the kernel send SIGIO to the holder. The target is dropped
// right after the lease is taken, and if SIGIO still has its default action
// (which terminates) the first probe sets it to ignored; a caller with its
// own SIGIO handler may see a stray signal.
//
// Nothing here needs privileges: a user sees and reclaims what the OS lets
// them; files of other users that cannot be read show as "unknown" with the
// reason, never as errors.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shm/object_kind.hpp"
#include "shm/segment.hpp"

namespace shm::admin {

// ---- kinds and states -------------------------------------------------------

// Who made a file, judged by its name.
enum class FileKind {
    libshm,   // libshm.<valid segment name>
    python,   // Python multiprocessing: psm_* (shared_memory), sem.mp-* (named semaphores)
    pytorch,  // torch_*
    other,
};
const char* to_string(FileKind k) noexcept;
FileKind kind_of_name(std::string_view file_name);
// The segment a file name is for ("libshm.<valid segment name>"), or "".
std::string segment_name_of(std::string_view file_name);

enum class State {
    in_use,      // a live process is attached (libshm) or maps / holds it open
    leaked,      // nobody live uses it: gc reclaims it (foreign: with --foreign, past the grace period)
    persistent,  // a libshm segment marked persistent with nobody attached: kept on purpose
    unknown,     // cannot tell (another user's file or processes, another layout version, ...)
};
const char* to_string(State s) noexcept;

// ---- errors -------------------------------------------------------------------

// How every result of this API says that something went wrong: a field
// `error` of this type, empty when nothing did. `message` is a sentence for
// a person; `code` is the errno behind it (EACCES, ECONNREFUSED, EPROTO for
// a reply or header that breaks its rules, ...), or 0 when no errno
// applies (a file that is not a segment). The functions throw (shm::error)
// only when they cannot work at all (the shm directory cannot be read);
// what they find wrong with one file, one object or the daemon goes into
// its result this way.
struct Error {
    std::string message;
    int code = 0;
    explicit operator bool() const noexcept { return !message.empty() || code != 0; }
};

// Progress of a long scan: the stage ("listing the directory", "reading
// segments", "reading /proc", "checking files", "removing files"), items done
// and the total (0 if not known).
using Progress = std::function<void(const char* stage, std::size_t done, std::size_t total)>;

// ---- libshm segments, read without attaching ---------------------------------

enum class SegmentStatus {
    ok,                // a ready segment of this layout version
    uninitialised,     // being created, or left half-made by a creator that died
    dead,              // marked removed by a process that died before unlinking it
    version_mismatch,  // another layout version: not interpreted
    not_a_segment,     // named like a segment, but the magic is wrong
    corrupt,           // the header contradicts itself
    unreadable,        // we may not open it (another user's file)
};
const char* to_string(SegmentStatus s) noexcept;

// The live state of a lock (Mutex, RecursiveMutex, a Barrier's Mutex).
struct LockState {
    bool held = false;
    std::int32_t owner_pid = 0;  // who holds it, or who last held it when owner_died
    bool owner_alive = false;    // the holder's process exists
    bool owner_died = false;     // its owner died holding it; the next locker recovers it
    std::uint64_t recoveries = 0;
    std::uint32_t depth = 0;     // RecursiveMutex: the holder's recursion depth
};

// A process that holds leases of a WorkQueue (delivered items it has not
// acknowledged). A dead one's leases go back to the queue at the next
// get, or recover().
struct LeaseHolder {
    std::int32_t pid = 0;
    bool alive = false;
    std::uint64_t leases = 0;
};

// One named object and its live state. Only the fields of its kind are set.
struct ObjectState {
    ObjectInfo info;  // name, kind, offset, size
    Error error;      // why its state could not be read (empty when it was)
    std::optional<LockState> lock;                  // mutex, recursive_mutex; shared_array, shared_scalar with a lock
    std::optional<std::uint32_t> value;             // semaphore, bounded_semaphore; queue: items in it; work_queue: waiting
    std::optional<std::uint32_t> bound;             // bounded_semaphore
    std::optional<std::uint32_t> waiters;           // semaphores, condition, event (a hint)
    std::optional<bool> is_set;                     // event
    std::optional<std::uint32_t> parties;           // barrier
    std::optional<std::uint32_t> n_waiting;         // barrier
    std::optional<std::uint32_t> generation;        // barrier
    std::optional<bool> broken;                     // barrier
    std::optional<std::uint64_t> length;            // dict, list: number of items; shared_array, shared_scalar: elements
    std::optional<std::uint32_t> capacity;          // queue, work_queue
    std::optional<std::uint32_t> max_item_size;     // queue
    std::optional<std::uint64_t> max_bytes;         // queue: the byte budget
    std::optional<std::uint64_t> bytes_used;        // queue: payload bytes held (queued, being put or got)
    std::optional<bool> closed;                     // queue, work_queue
    std::optional<std::uint64_t> repairs;           // queue: slots of dead processes repaired
    std::optional<std::uint32_t> max_deliveries;    // work_queue
    std::optional<bool> made;                       // work_queue: its state exists (made on first use)
    std::optional<std::uint64_t> leased;            // work_queue: delivered, not yet acknowledged
    std::optional<std::uint64_t> dead_letters;      // work_queue: delivered max_deliveries times, not yet read
    std::optional<std::uint64_t> unfinished;        // work_queue: put, not yet acknowledged or read as dead
    std::optional<std::uint64_t> redeliveries;      // work_queue: leases of dead processes given back
    std::vector<LeaseHolder> lease_holders;         // work_queue: who holds its leases, by pid
    std::optional<std::string> element_type;        // shared_array, shared_scalar: "c_int", ... ("other": a C++ type)
    std::optional<std::string> typecode;            // shared_array, shared_scalar: "i", ... ("" for a C++ type)
    std::optional<std::uint32_t> element_size;      // shared_array, shared_scalar: bytes per element
    std::optional<bool> has_lock;                   // shared_array, shared_scalar: made with a lock
};

struct SegmentInfo {
    std::string path;
    std::string name;  // the segment name (file name without "libshm.")
    SegmentStatus status = SegmentStatus::unreadable;
    Error error;  // set for any status but ok: what is wrong with it

    std::uint32_t layout_version = 0;
    std::uint64_t total_size = 0;
    std::uint64_t heap_size = 0;
    std::uint64_t heap_used = 0;  // allocated blocks, overhead included
    std::uint32_t max_attach = 0;
    bool persistent = false;
    std::int32_t creator_pid = 0;
    std::uint32_t creator_uid = 0;
    std::uint64_t creator_start_time = 0;
    bool creator_alive = false;
    std::int64_t created_at_ns = 0;
    bool being_created = false;  // uninitialised and its creator is at work (meta lock held)

    std::vector<AttachInfo> slots;  // occupied slots only
    std::uint32_t live = 0;
    std::uint32_t dead = 0;

    // Filled when objects were asked for and the status is ok.
    bool objects_read = false;
    bool directory_busy = false;  // the directory changed while read, or an update is unfinished
    std::string directory_note;
    std::vector<ObjectState> objects;
};

// Inspect the segment file at `path` (never follows a symlink). Never
// throws for what it finds in the file: that goes into status and error.
SegmentInfo inspect_segment(const std::string& path, bool with_objects);

// A segment file that is not yet initialised, that nobody is initialising
// and that nobody has changed for longer than this was left half-made by a
// creator that died (uninitialised, being_created false): gc reclaims it.
std::chrono::nanoseconds abandoned_after() noexcept;

// ---- the directory ----------------------------------------------------------

// One regular file of the shm directory as lstat() shows it.
struct FileStat {
    std::string name;  // file name
    std::uint64_t dev = 0, ino = 0;
    std::uint32_t uid = 0, gid = 0, mode = 0;
    std::uint64_t size = 0;       // st_size
    std::uint64_t allocated = 0;  // st_blocks * 512: what removing it frees
    std::int64_t mtime_ns = 0;
};

struct Listing {
    std::string dir;
    std::uint64_t dev = 0;             // the directory's filesystem
    std::vector<FileStat> files;       // regular files, sorted by name
    std::vector<std::string> skipped;  // names of entries that are not regular files
};

// List the shm directory without opening any file in it (cheap: one
// lstat per entry). Throws shm::error when the directory cannot be read.
Listing list_directory(const Progress& progress = {});

struct User {
    pid_t pid = 0;
    std::string comm;
    bool attached = false;  // libshm: holds a live attach slot
    bool mapped = false;
    bool open = false;
};

// One regular file of the shm directory.
struct Entry {
    std::string name;  // file name
    std::string path;
    FileKind kind = FileKind::other;
    State state = State::unknown;
    std::string note;  // why unknown, what kind of leak, ... (empty if nothing to say)
    std::uint64_t dev = 0, ino = 0;
    std::uint32_t uid = 0, gid = 0, mode = 0;
    std::uint64_t size = 0;       // st_size
    std::uint64_t allocated = 0;  // st_blocks * 512: what removing it frees
    std::int64_t mtime_ns = 0;
    std::int64_t age_ns = 0;  // libshm: since creation; others: since last modified (mtime)
    std::vector<User> users;
    std::optional<SegmentInfo> segment;  // libshm files (without objects)
};

struct FsUsage {
    std::uint64_t size = 0;
    std::uint64_t used = 0;
    std::uint64_t free = 0;  // available to unprivileged users
};

struct Scan {
    std::string dir;
    FsUsage fs;
    std::vector<Entry> entries;  // regular files, sorted by name
    std::vector<std::string> skipped;  // names of entries that are not regular files
    bool processes_scanned = false;    // /proc was read (there were foreign files)
    // Processes whose maps or open files we were not allowed to read: a
    // foreign file they could use is "unknown", never "leaked".
    std::size_t uninspected_processes = 0;
};

// List the shm directory and classify every regular file. /proc is read
// once, and only if there are foreign files.
Scan scan(const Progress& progress = {});

// Look at one file of the shm directory (a file name, or a segment name
// that names "libshm.<name>"); nullopt if there is no such file.
std::optional<Entry> lookup(std::string_view name);

// The usage of the filesystem holding `dir` (all zero if it cannot be asked).
FsUsage fs_usage(const std::string& dir);

// ---- reclaiming -------------------------------------------------------------

struct GcOptions {
    bool dry_run = false;
    bool foreign = false;  // also remove foreign files that nobody uses
    std::chrono::nanoseconds min_age = std::chrono::minutes(5);  // for foreign files
    Progress progress;
};

struct GcAction {
    enum Outcome {
        reclaimed,      // unlinked (or would be, with dry_run)
        cleared,        // dead attach slots cleared; the segment stays (live users or persistent)
        kept,           // looked leaked but was in use, changed or gone at the re-check
        skipped,        // not ours to decide (unreadable, other layout version, ...)
        failed,         // the OS refused, or something went wrong
    };
    Outcome outcome = skipped;
    std::string name;
    FileKind kind = FileKind::other;
    std::uint32_t uid = 0;           // the file's owner
    std::uint64_t bytes = 0;         // freed (or that would be)
    std::uint32_t dead_slots = 0;    // libshm: dead attach slots cleared
    std::string reason;              // why this outcome (every outcome but failed)
    Error error;                     // failed: what went wrong
};
const char* to_string(GcAction::Outcome o) noexcept;

struct GcReport {
    bool dry_run = false;
    std::vector<GcAction> actions;
    std::uint64_t bytes_freed = 0;
    std::size_t files_reclaimed = 0;
    std::uint32_t dead_slots_cleared = 0;
    std::size_t failures = 0;
    // Foreign files that look leaked and were left alone (no --foreign, or
    // younger than min_age).
    std::size_t foreign_left = 0;
    std::uint64_t foreign_left_bytes = 0;
};

// scan(), then reclaim what it found leaked.
GcReport gc(const GcOptions& opt);
// Reclaim what `scan` (made by scan() just before) found leaked; for a
// caller that also wants the scan itself (shmd tracks the segments it
// shows). opt.progress then reports only the removals.
GcReport gc(const Scan& scan, const GcOptions& opt);

struct RemoveResult {
    enum Outcome { removed, not_found, not_libshm, in_use, failed };
    Outcome outcome = failed;
    std::string name;     // as given
    std::string segment;  // the segment it names (once that is known)
    std::vector<pid_t> live_pids;  // in_use: who is attached
    std::uint64_t bytes = 0;       // removed: the file's allocated size
    Error error;                   // every outcome but removed: why not
};

// Remove a libshm segment by segment name or file name. Refuses one with
// live attachers unless `force` (they keep their mapping; the name goes).
RemoveResult remove_segment(std::string_view name, bool force);

// ---- the daemon (shmd) -------------------------------------------------------

// Where shmd listens: $SHM_DAEMON_SOCKET, else $XDG_RUNTIME_DIR/shmd.sock for
// a user who is not root when that socket exists, else /run/shmd/shmd.sock.
// The library registers with the daemon at this same path.
std::string daemon_socket();

// Whether an error from the functions below means that no daemon listens at
// the socket (ENOENT, ECONNREFUSED, ...), as opposed to one that failed to
// answer (ETIMEDOUT, EACCES, EPROTO, ...).
bool daemon_absent(int err) noexcept;

// The daemon's counters and settings. Nothing here throws for a daemon that
// is missing or misbehaves: `running` is false and `error` says why.
struct DaemonStatus {
    std::string socket;    // asked at
    bool running = false;  // a daemon answered
    Error error;           // when not running: why (error.code: see daemon_absent)

    // When running, the reply's fields (docs/shmctl.md, "status --json", and docs/shmd.md).
    std::string version;
    pid_t pid = 0;
    std::string shm_dir;       // the directory it serves (canonical path)
    double uptime_s = 0;
    std::uint64_t connections = 0;  // open connections
    std::uint64_t clients = 0;      // processes connected to it
    std::uint64_t processes = 0;    // processes it watches (connected or found attached to a segment)
    std::uint64_t segments = 0;     // segments it tracks
    std::uint64_t bytes = 0;        // their total size
    std::uint64_t reclaims = 0;     // segments (and, with --reclaim-foreign, files) reclaimed so far
    std::uint64_t reclaimed_bytes = 0;
    std::uint64_t sweeps = 0;
    double last_sweep_s_ago = 0;
    double sweep_interval_s = 0;    // 0: no periodic sweep
    std::uint64_t requests = 0;
    std::uint64_t refused = 0;
    std::uint64_t user_quota = 0;   // bytes per user; 0: none
    std::string reserve;            // kept free: "10%", a byte count, or "0"
    bool reclaim_foreign = false;
    // The whole reply as JSON text (without "v", "ok" and "id"), for
    // fields added after this API.
    std::string reply_json;
};

// Ask the daemon at `socket` (empty: daemon_socket()) for its status, one
// request on a fresh connection. With no daemon this costs one failed
// connect.
DaemonStatus daemon_status(const std::string& socket = {},
                           std::chrono::milliseconds timeout = std::chrono::seconds(2));

struct TrackedSegment {
    std::string name;  // segment name (the file is "libshm." + name)
    std::uint64_t bytes = 0;
    bool registered = false;  // a client registered it (else found in the directory)
    std::vector<pid_t> pids;  // the live processes it watches using it
};

struct DaemonTracked {
    DaemonStatus status;  // status.running false: no answer (nothing else is set)
    std::vector<TrackedSegment> segments;  // sorted by name
};

// The segments the daemon tracks, every page of them: its status first (for
// the directory it serves), then the list. With no daemon this costs one
// failed connect.
DaemonTracked daemon_tracked(const std::string& socket = {},
                             std::chrono::milliseconds timeout = std::chrono::seconds(2));

// ---- processes ----------------------------------------------------------------

// A process as /proc/<pid>/stat shows it now.
struct ProcessInfo {
    pid_t pid = 0;
    std::uint64_t start_time = 0;  // clock ticks since boot: with the pid, names one process for good
    std::string comm;              // its command name
};
// nullopt if there is no such process, or it has exited (a zombie).
std::optional<ProcessInfo> process_info(pid_t pid);

// ---- helpers ----------------------------------------------------------------

// "30s", "5m", "2h", "1d", "1h30m", "0", "250ms" → duration; false if malformed.
bool parse_duration(std::string_view text, std::chrono::nanoseconds& out);

// "512 B", "1.5 KiB", "2.0 GiB": binary units, one decimal; libshm's own
// messages use the same.
std::string human_bytes(std::uint64_t n);

}  // namespace shm::admin
