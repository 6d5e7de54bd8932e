// Read-only decoders of the objects' live state, for looking at a segment
// without attaching to it (shm::admin, and so shmctl stat). Private.
//
// Each decoder lives beside its object's layout and is the one reader of
// that layout outside the object's own code:
//   sync_state.cpp       Mutex, RecursiveMutex, Semaphore, BoundedSemaphore,
//                        Condition, Event, Barrier (shm/mutex.hpp, shm/sync.hpp)
//   container_state.cpp  Dict and List (container_layout.hpp)
//   queue_state.cpp      Queue (queue_layout.hpp)
//   work_queue_state.cpp WorkQueue (work_queue_layout.hpp)
//   shared_array_state.cpp  SharedArray, SharedScalar (shared_array_layout.hpp)
//
// They never touch a mapping: every byte comes through a ReadAt, which
// copies it out of the file (pread), so a file that other processes change
// or truncate meanwhile gives a value a moment old or a short read, never a
// fault. Every offset read from the file is checked before it is followed.
// What they cannot read is returned as a sentence ("" when all went well);
// whether a process named in a state is alive is for the caller to decide.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "shm/object_kind.hpp"

namespace shm::inspect {

// Copy n bytes of the segment file at `offset` into `into`; false on a short
// read or an error.
using ReadAt = std::function<bool(std::uint64_t offset, std::size_t n, void* into)>;

// Where an object is in the file, as its directory entry says.
struct Place {
    ObjectKind kind = ObjectKind::raw;
    std::uint64_t offset = 0;
    std::uint64_t size = 0;
};

// A robust mutex's lock word, as glibc and the kernel keep it.
struct LockWord {
    pid_t owner_tid = 0;          // the holder's thread id, 0 when free
    bool owner_died = false;      // the kernel marked its holder dead (FUTEX_OWNER_DIED)
    std::int32_t owner_pid = 0;   // the pid the holder wrote for display (0 if none)
    std::uint64_t recoveries = 0;
    std::uint32_t depth = 0;      // RecursiveMutex: the holder's recursion depth
};
// Decode a shm::Mutex (or, with `recursive`, a shm::RecursiveMutex) from a
// copy of its bytes (sizeof the type, aligned for it): the heap lock in a
// segment header is read this way too. (sync_state.cpp)
LockWord lock_word(const void* bytes, bool recursive) noexcept;

// The state of a synchronisation object; only the fields of its kind are set.
struct SyncState {
    std::optional<LockWord> lock;              // mutex, recursive_mutex
    std::optional<std::uint32_t> value;        // semaphores
    std::optional<std::uint32_t> bound;        // bounded_semaphore
    std::optional<std::uint32_t> waiters;      // semaphores, condition, event (a hint)
    std::optional<bool> is_set;                // event
    std::optional<std::uint32_t> parties;      // barrier
    std::optional<std::uint32_t> n_waiting;    // barrier
    std::optional<std::uint32_t> generation;   // barrier
    std::optional<bool> broken;                // barrier
};
// Whether `kind` is one that sync_state() reads.
bool is_sync_kind(ObjectKind kind) noexcept;
std::string sync_state(const ReadAt& read, const Place& at, SyncState& out);

// The number of items of a Dict or List. (container_state.cpp)
std::string container_length(const ReadAt& read, const Place& at, std::uint64_t& length);

// A Queue's settings and fill. (queue_state.cpp)
struct QueueState {
    std::uint32_t capacity = 0;
    std::uint32_t max_item_size = 0;
    std::uint32_t depth = 0;        // items in it
    std::uint64_t max_bytes = 0;    // the byte budget
    std::uint64_t bytes_used = 0;   // payload bytes held (queued, being put or got)
    bool closed = false;
    std::uint64_t repairs = 0;      // slots of dead processes repaired
};
std::string queue_state(const ReadAt& read, const Place& at, QueueState& out);

// A WorkQueue's settings, counts and the processes its lease records name.
// (work_queue_state.cpp)
struct WorkQueueState {
    std::uint32_t capacity = 0;
    std::uint32_t max_deliveries = 0;
    bool made = false;               // its state exists (it is made on first use)
    std::uint64_t waiting = 0;       // put, not yet delivered
    std::uint64_t leased = 0;        // delivered, not yet acknowledged
    std::uint64_t dead_letters = 0;  // delivered max_deliveries times, not yet read
    std::uint64_t unfinished = 0;    // put, not yet acknowledged or read as a dead letter
    std::uint64_t redeliveries = 0;  // leases of dead processes given back
    bool closed = false;
    struct Holder {
        std::int32_t pid = 0;
        std::uint64_t start_time = 0;  // with pid: which process (core/liveness.hpp)
        std::uint64_t leases = 0;
    };
    std::vector<Holder> holders;  // one per process, by pid
};
std::string work_queue_state(const ReadAt& read, const Place& at, WorkQueueState& out);

// A SharedArray's or SharedScalar's element type, length and lock.
// (shared_array_state.cpp)
struct SharedArrayState {
    std::string element_type;       // ctypes' name: "c_int", ...; "other" for a C++ type
    char typecode = 0;              // Python's typecode: 'i', ...; 0 for a C++ type
    std::uint32_t element_size = 0;
    std::uint64_t count = 0;
    bool scalar = false;            // a SharedScalar (Python's Value)
    bool has_lock = false;
    std::optional<LockWord> lock;   // when it has one
};
bool is_shared_array_kind(ObjectKind kind) noexcept;
std::string shared_array_state(const ReadAt& read, const Place& at, SharedArrayState& out);

}  // namespace shm::inspect
