// The shared-memory layout of shm::Queue (queue*.cpp), versioned with the
// segment layout (kLayoutVersion): change a field's width, order or meaning:
// bump the layout version. Private; queue_state.cpp decodes it for
// inspection (objects/inspect.hpp).
//
// A queue is one block in its segment:
//     QueueControl | capacity × QueueSlot (16 B) | byte ring
// The byte ring holds the items' payloads: ring_units units of
// 2^unit_shift bytes (the byte budget), followed by an overhang of
// units(largest item) so that an item starting near the end stays
// contiguous instead of wrapping.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/liveness.hpp"
#include "shm/queue.hpp"

namespace shm {

inline constexpr std::uint64_t kQueueMagic = 0x3465'7565'7571'6d73ull;  // "smqueue4"
// A queue made before batch claims (kQueueBatchFlag): the same layout, and
// every claim takes one ticket. Opened as it is: its processes may be of a
// library that does not know batch claims, so nobody makes one in it.
inline constexpr std::uint64_t kQueueMagicSingle = 0x3365'7565'7571'6d73ull;  // "smqueue3"

namespace detail {

// Tickets (one per item put, in order) count modulo 2^32. A byte position
// counts ring units modulo 2 × ring_units (so that a full ring and an empty
// one differ); the unit it names is position mod ring_units.
//
// Slot words and the three cursors share one packing:
//     ticket << 32 | position << 8 | owner
// owner is an actor id (1 .. 64, 0 for none; QueueControl::actors names its
// process), plus kQueueRepairFlag in a slot word that a repairer has marked,
// or kQueueBatchFlag in a cursor whose latest claim took more than one
// ticket. tail = (next ticket to put, where its bytes start, who claimed
// the ticket before it); head = (next ticket to get, 0, who claimed the
// ticket before it); free = (first ticket whose bytes are not free yet,
// where they start, 0).
inline constexpr unsigned kTicketBits = 32;
inline constexpr std::uint64_t kTicketMask = (std::uint64_t(1) << kTicketBits) - 1;
inline constexpr unsigned kPosBits = 24;
inline constexpr std::uint32_t kMaxRingUnits = std::uint32_t(1) << (kPosBits - 1);
inline constexpr std::uint64_t kPosMask = (std::uint64_t(1) << kPosBits) - 1;
inline constexpr std::uint32_t kQueueRepairFlag = 0x80;  // in slot words
inline constexpr std::uint32_t kQueueBatchFlag = 0x80;   // in the tail and head cursors
inline constexpr std::uint64_t qword(std::uint64_t ticket, std::uint64_t pos, std::uint32_t owner) {
    return ((ticket & kTicketMask) << 32) | ((pos & kPosMask) << 8) | (owner & 0xffu);
}
inline constexpr std::uint64_t cursor_ticket(std::uint64_t w) { return w >> 32; }
inline constexpr std::uint32_t cursor_pos(std::uint64_t w) { return static_cast<std::uint32_t>((w >> 8) & kPosMask); }
inline constexpr std::uint32_t cursor_owner(std::uint64_t w) { return static_cast<std::uint32_t>(w & 0xffu); }
// Signed distance a - b between two tickets.
inline constexpr std::int64_t ticket_diff(std::uint64_t a, std::uint64_t b) {
    return static_cast<std::int32_t>(static_cast<std::uint32_t>(a - b));
}

// The fill of a queue, counted the same way by the queue (queue.cpp) and by
// its inspector (queue_state.cpp) from the cursors tail, head and free.
// Items in it: tickets between head and tail, at most the capacity.
inline constexpr std::uint32_t depth_of(std::uint64_t tail, std::uint64_t head, std::uint32_t capacity) {
    const std::int64_t n = ticket_diff(cursor_ticket(tail), cursor_ticket(head));
    return n <= 0 ? 0 : n < capacity ? static_cast<std::uint32_t>(n) : capacity;
}
// Ring units from the free cursor's position to the tail's (positions count
// modulo twice the ring).
inline constexpr std::uint32_t units_between(std::uint32_t ring_units, std::uint32_t tail_pos, std::uint32_t free_pos) {
    return tail_pos >= free_pos ? tail_pos - free_pos : tail_pos + 2 * ring_units - free_pos;
}
// Units held by items queued, being put or being got: none when free has
// caught up with tail.
inline constexpr std::uint32_t units_held(std::uint64_t tail, std::uint64_t free, std::uint32_t ring_units) {
    return ticket_diff(cursor_ticket(tail), cursor_ticket(free)) <= 0
               ? 0
               : units_between(ring_units, cursor_pos(tail), cursor_pos(free));
}

inline constexpr std::uint32_t kQueueTombstone = 0xffffffffu;  // QueueSlot::len of an item that was never put

// One per ticket modulo capacity; see queue.cpp for the states of word.
// item describes the item of the slot's current ticket, in one word so that
// its producer writes it with one store just before it publishes (consumers
// read it after): start | len << 32, where start is the byte position where
// the payload begins and len its bytes, or kQueueTombstone.
struct QueueSlot {
    std::atomic<std::uint64_t> word;
    std::atomic<std::uint64_t> item;
};
inline constexpr std::uint64_t slot_item(std::uint32_t start, std::uint32_t len) {
    return std::uint64_t(start) | (std::uint64_t(len) << 32);
}
inline constexpr std::uint32_t item_start(std::uint64_t item) { return static_cast<std::uint32_t>(item); }
inline constexpr std::uint32_t item_len(std::uint64_t item) { return static_cast<std::uint32_t>(item >> 32); }

// An actor: a process that uses the queue, under the id (1 .. 64) that
// claims in slot words and cursors name. Its identity record holds the
// process's pid and full start time (core/liveness.hpp): a claim word has 8
// bits for its claimer, so it names the record, and the record the process.
// A process takes the id of a dead one with one CAS of the record's tag,
// whose generation changes each time. One cache line each: a consumer's
// counters do not share a line with another's.
struct alignas(64) QueueActor {
    core::IdentityRecord who;           // the process holding this id; pid 0 = free
    std::atomic<std::uint64_t> taken;   // items this process got
    std::atomic<std::uint64_t> done;    // task_done() calls
    // The futex word this process's consumers sleep on: a producer that
    // publishes an item rings one sleeping consumer's doorbell, not all.
    // (Reserved, zero, in queues made before: old processes sleep on
    // put_epoch, which a producer bumps only on close; they see new items
    // at their 50 ms poll.)
    std::atomic<std::uint32_t> doorbell;
    std::uint32_t reserved32;
    std::uint64_t reserved[3];
};

struct QueueControl;
// The most items the queue holds: max_items, or the capacity in a queue
// made before max_items existed (the field was reserved, zero).
inline std::uint32_t item_limit(const QueueControl* c) noexcept;

struct QueueControl {
    std::uint64_t magic;
    std::uint32_t capacity;    // items, a power of two
    std::uint32_t max_item;    // bytes
    std::uint64_t max_bytes;   // the byte budget as set (ring_units << unit_shift rounds it up)
    std::uint32_t ring_units;  // units in the ring, at most kMaxRingUnits
    std::uint32_t unit_shift;  // log2 of the unit: 3 (8 bytes) for rings up to 64 MiB
    std::uint64_t ring_offset; // bytes from this block's start to the ring
    std::uint32_t max_items;   // items queued at most, 1 .. capacity (0 in older queues: capacity)
    std::uint32_t reserved1;
    std::uint64_t reserved0[2];
    alignas(64) std::atomic<std::uint64_t> tail;  // cursor: next ticket to put
    alignas(64) std::atomic<std::uint64_t> head;  // cursor: next ticket to get
    alignas(64) std::atomic<std::uint64_t> free;  // cursor: first ticket whose bytes are not yet free
    alignas(64) std::atomic<std::uint32_t> put_epoch;  // bumped on close (consumers sleep on their doorbells)
    std::atomic<std::uint64_t> consumers_waiting;      // bit per actor
    alignas(64) std::atomic<std::uint32_t> get_epoch;  // producers sleep on it
    std::atomic<std::uint64_t> producers_waiting;
    alignas(64) std::atomic<std::uint32_t> closed;
    std::atomic<std::uint32_t> join_epoch;
    std::atomic<std::uint64_t> joiners_waiting;
    std::atomic<std::uint64_t> repairs;
    QueueActor actors[Queue::kMaxProcesses];
    // slots follow, then the ring at ring_offset
};

inline std::uint32_t item_limit(const QueueControl* c) noexcept { return c->max_items ? c->max_items : c->capacity; }

}  // namespace detail

// Pinned: change a field's width, order or meaning: bump the layout version.
static_assert(sizeof(detail::QueueSlot) == 16);
static_assert(offsetof(detail::QueueSlot, word) == 0);
static_assert(offsetof(detail::QueueSlot, item) == 8);
static_assert(sizeof(detail::QueueActor) == 64);
static_assert(offsetof(detail::QueueActor, who) == 0);
static_assert(offsetof(detail::QueueActor, taken) == 16);
static_assert(offsetof(detail::QueueActor, done) == 24);
static_assert(offsetof(detail::QueueActor, doorbell) == 32);
static_assert(sizeof(detail::QueueControl) == 448 + 64 * Queue::kMaxProcesses);
static_assert(offsetof(detail::QueueControl, magic) == 0);
static_assert(offsetof(detail::QueueControl, capacity) == 8);
static_assert(offsetof(detail::QueueControl, max_item) == 12);
static_assert(offsetof(detail::QueueControl, max_bytes) == 16);
static_assert(offsetof(detail::QueueControl, ring_units) == 24);
static_assert(offsetof(detail::QueueControl, unit_shift) == 28);
static_assert(offsetof(detail::QueueControl, ring_offset) == 32);
static_assert(offsetof(detail::QueueControl, max_items) == 40);
static_assert(offsetof(detail::QueueControl, reserved0) == 48);
static_assert(offsetof(detail::QueueControl, tail) == 64);
static_assert(offsetof(detail::QueueControl, head) == 128);
static_assert(offsetof(detail::QueueControl, free) == 192);
static_assert(offsetof(detail::QueueControl, put_epoch) == 256);
static_assert(offsetof(detail::QueueControl, consumers_waiting) == 264);
static_assert(offsetof(detail::QueueControl, get_epoch) == 320);
static_assert(offsetof(detail::QueueControl, producers_waiting) == 328);
static_assert(offsetof(detail::QueueControl, closed) == 384);
static_assert(offsetof(detail::QueueControl, join_epoch) == 388);
static_assert(offsetof(detail::QueueControl, joiners_waiting) == 392);
static_assert(offsetof(detail::QueueControl, repairs) == 400);
static_assert(offsetof(detail::QueueControl, actors) == 448);

}  // namespace shm
