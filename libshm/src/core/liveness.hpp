// Liveness: the one answer to "is this process still alive?".
//
// A process is named for good by its pid and its start time (clock ticks
// since boot, field 22 of /proc/<pid>/stat, all 64 bits): a pid the kernel
// hands out again belongs to a process with another start time, so the pair
// never names a later process. A process that has exited and waits to be
// reaped (a zombie) counts as dead. Where a process holds a lock the kernel
// drops at its death (an attach slot's open-file-description lock), the
// lock is the answer instead, and needs no pid at all.
//
// Shared records that name a process (a queue's actors, a Barrier's
// parties) hold a ProcessId and ask alive(); a 64-bit word that must name a
// process in one compare-and-swap names a record instead (IdentityRecord
// below, as the queue's claim words name its actor records).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>

namespace shm::core {

struct ProcessId {
    std::int32_t pid = 0;          // 0: nobody
    std::uint64_t start_time = 0;  // 0: unknown (no such process)

    bool empty() const noexcept { return pid <= 0; }
    friend bool operator==(const ProcessId& a, const ProcessId& b) noexcept {
        return a.pid == b.pid && a.start_time == b.start_time;
    }
    friend bool operator!=(const ProcessId& a, const ProcessId& b) noexcept { return !(a == b); }
};

namespace liveness {

// The calling process (cached; read again after fork).
ProcessId self();

// The process that runs as `pid` now, or an empty ProcessId if none does
// (or it is a zombie). Also answers for a thread id.
ProcessId of(pid_t pid);

// Whether `p` still runs: a process with its pid exists, is not a zombie,
// and started when `p` says. An empty ProcessId is not alive.
bool alive(const ProcessId& p);

// Whether another open file description holds the one-byte lock at `byte`
// of `fd` (see platform::ofd_is_locked): the answer for a process that
// holds a slot lock, given by the kernel at the process's death.
bool holds_lock(int fd, off_t byte);

}  // namespace liveness

// ---- IdentityRecord -------------------------------------------------------
// A process identity in shared memory that processes take over from dead
// holders without a lock, and that anyone reads without one. Two words:
//
//     tag         generation << 33 | pending << 32 | pid    (pid 0: free)
//     start_time  the holder's start time
//
// Only the process that took the record writes start_time, and only while
// the record is pending: take() moves tag from a dead (or free) holder to
// (generation + 1, pending, me) with one CAS, stores start_time, then
// clears pending. A reader loads tag, start_time and tag again, and trusts
// the pair only if tag did not change (the generation defeats ABA when the
// same pid takes the record again).
//
// While pending, start_time may still be the previous holder's. So:
//   - a record is taken over only from a holder that is not alive(), and a
//     pending one only once its pid has gone, or when it names the taker's
//     own pid (the taker may be in the middle of its few stores: it is
//     never robbed while it lives; a process takes one record at a time);
//   - anything else that names the record (a claim in a queue) treats a
//     pending record as dead: its holder uses the record only once it is
//     complete, so whatever names a pending record was left by a holder
//     before it, who is dead.
// Only the holder itself stores to a record it holds, so its word is read
// with relaxed loads by the holder.
struct IdentityRecord {
    std::atomic<std::uint64_t> tag;
    std::atomic<std::uint64_t> start_time;
};
static_assert(sizeof(IdentityRecord) == 16);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

namespace identity {

inline constexpr std::uint64_t kPending = std::uint64_t(1) << 32;
inline constexpr unsigned kGenerationShift = 33;

inline std::int32_t tag_pid(std::uint64_t tag) { return static_cast<std::int32_t>(tag & 0xffffffffu); }
inline bool tag_pending(std::uint64_t tag) { return (tag & kPending) != 0; }

// A consistent reading of a record.
struct Holder {
    std::uint64_t tag = 0;  // as read; take() needs it
    ProcessId id;           // pid 0: free
    bool pending = false;
};
Holder read(const IdentityRecord& r);

// Whether what names this record names a live process: complete and
// alive() (a pending record counts as dead; see above).
bool alive(const IdentityRecord& r);

// Whether `me` may take a record whose holder reads as h: free, dead, or
// pending with its pid gone. A process takes records one at a time (its
// callers serialise their takes), so a pending record that names the
// caller's own pid was left by a dead process that had the pid before.
bool replaceable(const Holder& h, const ProcessId& me);

// Take the record for `me` if its holder, read as `seen`, may be replaced.
// Returns the record's new tag (complete), or 0 if it was not free to take
// or someone else took it first. `while_pending` runs before the record is
// complete, with the record ours (reset per-holder counters there).
template <class F>
std::uint64_t take(IdentityRecord& r, const Holder& seen, const ProcessId& me, F&& while_pending) {
    if (!replaceable(seen, me)) return 0;
    const std::uint64_t gen = (seen.tag >> kGenerationShift) + 1;
    const std::uint64_t base = (gen << kGenerationShift) | static_cast<std::uint32_t>(me.pid);
    std::uint64_t expected = seen.tag;
    if (!r.tag.compare_exchange_strong(expected, base | kPending, std::memory_order_seq_cst)) return 0;
    // Release: a reader that loads this start time then loads the tag
    // again and sees at least the pending tag above.
    r.start_time.store(me.start_time, std::memory_order_release);
    while_pending();
    r.tag.store(base, std::memory_order_release);
    return base;
}

}  // namespace identity

}  // namespace shm::core
