// shm::Queue: a ring of slots and a ring of bytes. A put or a get claims its
// ticket with one compare-and-swap on a cursor and no lock (see queue.hpp).
//
// Design note
// -----------
// Every item put gets a ticket (0, 1, 2, ... modulo 2^32). Ticket t lives in
// slot t mod capacity: a 16-byte descriptor (word, start, len). Its payload
// lives in the byte ring, at a byte position handed out in ticket order.
// Slot words and cursors pack (ticket, byte position, owner); see
// queue_layout.hpp.
//
// Cursors. tail = (next ticket to put, where its bytes start, who claimed
// the ticket before it). head = (next ticket to get, who claimed the ticket
// before it). free = (first ticket whose bytes are not free yet, where they
// start). A producer claims ticket t and n units of bytes with one CAS of
// tail from (t, p, x) to (t + 1, p + n, me); a consumer claims ticket h with
// one CAS of head from (h, y) to (h + 1, me). With one producer and one
// consumer each cursor stays in its owner's cache: the only shared lines an
// item touches are its slot and its payload, written with plain stores.
//
// Slot states for ticket t (the slot's word):
//     unpublished  (t, ·, 0)         free; or claimed (tail is past t) and
//                                    being written, its claimer named by tail
//                  (t, e, x)         claimed by x, being written, its bytes
//                                    end at e (x may be a repairer's mark)
//     published    (t + 1, e, 0)     an item (or a tombstone, len says), its
//                                    bytes ending at e; queued while head is
//                                    at t, being got once head is past t, its
//                                    getter named by head
//                  (t + 1, e, y)     being got by y
//     released     (t + cap, e, 0)   got; the slot is unpublished for the
//                                    next lap, and e still tells free where
//                                    ticket t's bytes ended
// A claim names its claimer in the cursor. Before a process moves a cursor
// on again, from (t + 1, x) to (t + 2, me), it hands ticket t's claim over to
// the slot, if t is still unpublished (unpublished (t, ·, 0) -> (t, e, x)) or
// still being got (published (t + 1, e, 0) -> (t + 1, e, x)), with one CAS.
// So every claim in flight is named either by its cursor (the latest claim)
// or by its slot, and a process killed at any instruction leaves each slot
// in exactly one of these states. A thread skips the hand-over when it knows
// it has itself finished ticket t: the single producer and single consumer
// of a pipeline never hand over at all.
//
// Bytes. A producer may claim ticket t only while t - free < capacity and
// the bytes in use (tail.pos - free.pos, positions counting modulo twice the
// ring) leave room for it. Whoever is short of either (a producer, or
// bytes_used()) moves free past the released slots in one CAS, to (k, end of
// k - 1) for the first ticket k not released. An item that would run past
// the end of the ring is not split: the ring has an overhang of one largest
// item after its end, so every item is contiguous (in the budget it still
// counts only its own units).
//
// ABA. A CAS that read its expected value 2^32 tickets earlier and finds it
// again succeeds. For the two claims this is made harmless: after its CAS a
// producer re-checks the room against free, and a consumer re-checks that
// its ticket is published, and each waits if not (the claim is theirs). A
// hand-over or repair CAS would also need the same position and owner.
//
// Crash repair: a claim whose claimer (named by the slot or by the cursor;
// an id names a pid and its start time) is dead is taken over with a CAS. A
// claim to put becomes a tombstone that consumers skip (the put never
// happened; its bytes are freed with it). A claim to get becomes released
// (the dead consumer took the item whole). A repairer marks the slot with
// its own id and a repair flag, so a repairer that dies mid-repair is taken
// over the same way, and a process that inherits a dead process's id
// repairs what it left before it uses the id.
//
// Waiting: spin, then sleep on an epoch futex after setting the process's
// bit in a waiters mask. A waker stores, then loads the mask; a sleeper sets
// its bit, then re-checks. Where the kernel allows, every process using a
// queue registers for membarrier(2), wakers order store and load with a
// compiler barrier only, and the sleeper runs membarrier_all(), which fences
// every CPU running a registered process: one of the two sees the other,
// and the hot path carries no fence. Elsewhere wakers use a seq_cst store
// and load. Sleeps last at most 50 ms so that a sleeper notices a dead
// blocker, and wakers that wake nobody clear the bits of dead processes.
#include "shm/queue.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <mutex>

#include "store/layout.hpp"
#include "objects/queue_layout.hpp"
#include "platform/platform.hpp"
#include "shm/segment.hpp"
#include "platform/testing.hpp"
#include "store/segment_access.hpp"

namespace shm {

using detail::QueueActor;
using detail::QueueControl;
using detail::QueueSlot;
using detail::cursor_owner;
using detail::cursor_pos;
using detail::cursor_ticket;
using detail::kTicketMask;
using detail::ticket_diff;
using testing::crash_point;

namespace {

constexpr std::uint32_t kTombstone = detail::kQueueTombstone;
// A repairer's mark in the owner field, next to its id.
constexpr std::uint32_t kRepairFlag = detail::kQueueRepairFlag;
constexpr std::uint32_t kIdMask = 0x7f;
static_assert(Queue::kMaxProcesses <= kIdMask);
// Before sleeping: kSpin pauses (a PAUSE is 10-50 ns, so a few µs: a
// cross-CPU wake-up costs tens of µs here), then kYield sched_yield()s so
// that a peer waiting for this CPU gets it, then the futex.
constexpr int kSpin = 100;
constexpr int kYield = 8;

// One step of waiting before sleeping; false once it is time to sleep.
inline bool backoff(int& spins) {
    if (spins < kSpin) {
        ++spins;
        platform::cpu_relax();
        return true;
    }
    if (spins < kSpin + kYield) {
        ++spins;
        ::sched_yield();
        return true;
    }
    return false;
}
inline bool spun_out(int spins) { return spins >= kSpin + kYield; }
constexpr long kPollMs = 50;
// What a sleeper polls at when it could not fence the wakers (see sleep_on).
constexpr long kUnfencedPollMs = 2;
// A claimant waiting after an ABA claim (see the design note) naps this long.
constexpr long kNapMs = 1;

static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

inline std::uint64_t mk(std::uint64_t ticket, std::uint32_t pos, std::uint32_t owner) {
    return detail::qword(ticket, pos, owner);
}
inline std::uint64_t tk(std::uint64_t w) { return cursor_ticket(w); }
inline std::uint32_t owner_of(std::uint64_t w) { return cursor_owner(w); }
inline std::uint32_t pos_of(std::uint64_t w) { return cursor_pos(w); }
inline std::uint64_t tnext(std::uint64_t t, std::uint64_t k = 1) { return (t + k) & kTicketMask; }
inline std::uint64_t tprev(std::uint64_t t) { return (t - 1) & kTicketMask; }

// The slot of ticket t. Four slots share a cache line; consecutive tickets
// go to different lines (a line holds tickets capacity/4 apart), so that a
// producer and a consumer a few tickets apart do not write the same line.
inline QueueSlot* slot_at(QueueControl* c, std::uint64_t t) {
    auto* base = reinterpret_cast<QueueSlot*>(reinterpret_cast<char*>(c) + sizeof(QueueControl));
    const std::uint64_t i = t & (c->capacity - 1);
    if (c->capacity < 16) return base + i;
    const std::uint64_t quarter = c->capacity >> 2;  // a power of two
    return base + (((i & (quarter - 1)) << 2) | (i >> __builtin_ctzll(quarter)));
}
// The payload at byte position p (counted modulo 2 × ring_units).
inline char* payload_at(QueueControl* c, std::uint32_t p) {
    const std::uint32_t u = p >= c->ring_units ? p - c->ring_units : p;
    return reinterpret_cast<char*>(c) + c->ring_offset + (std::size_t(u) << c->unit_shift);
}
inline std::uint32_t pos_add(const QueueControl* c, std::uint32_t p, std::uint32_t n) {
    std::uint64_t q = std::uint64_t(p) + n;
    if (q >= 2ull * c->ring_units) q -= 2ull * c->ring_units;
    return static_cast<std::uint32_t>(q);
}
inline std::uint32_t pos_used(const QueueControl* c, std::uint32_t tail, std::uint32_t free) {
    return tail >= free ? tail - free : tail + 2 * c->ring_units - free;
}
inline std::uint32_t units_of(unsigned shift, std::size_t len) {
    return static_cast<std::uint32_t>((len + (std::size_t(1) << shift) - 1) >> shift);
}

bool who_alive(std::uint64_t who) {
    if (!who) return false;
    pid_t pid = static_cast<pid_t>(who >> 32);
    std::uint64_t st = platform::process_start_time(pid);
    return st != 0 && (st & 0xffffffffu) == (who & 0xffffffffu);
}

bool actor_alive(QueueControl* c, std::uint32_t owner) {
    const std::uint32_t id = owner & kIdMask;
    if (id == 0 || id > Queue::kMaxProcesses) return false;
    return who_alive(c->actors[id - 1].who.load(std::memory_order_acquire));
}

// The calling process's actor id for a queue, cached per thread and
// refreshed after fork, or when the record no longer names this process (a
// queue at the same address in a new mapping). last_put and last_get are
// the tickets this thread last finished putting and getting in that queue
// (what lets it skip a hand-over), asym whether this process is registered
// for membarrier.
struct ActorCache {
    QueueControl* c = nullptr;
    unsigned gen = ~0u;
    std::uint32_t id = 0;
    std::uint64_t who = 0;
    std::uint64_t last_put = ~0ull;  // no ticket: tickets are below 2^32
    std::uint64_t last_get = ~0ull;
    bool asym = false;
};
thread_local ActorCache t_actor;
std::mutex g_register_mutex;
// Fork generation + 1 of the last successful membarrier registration.
std::atomic<unsigned> g_membarrier_gen{0};

// Register this process for membarrier once per fork generation.
bool membarrier_ready() {
#if defined(__SANITIZE_THREAD__)
    return false;  // TSan does not model membarrier; use seq_cst (see store_and_wake)
#else
    const unsigned want = platform::fork_generation() + 1;
    if (g_membarrier_gen.load(std::memory_order_acquire) == want) return true;
    if (!platform::membarrier_register()) return false;
    g_membarrier_gen.store(want, std::memory_order_release);
    return true;
#endif
}

// Wake every sleeper in mask, if any.
void wake_sleepers(std::atomic<std::uint32_t>& epoch, std::atomic<std::uint64_t>& mask) {
    // Take every sleeper's bit and wake them all: one wake per sleep, not
    // one per operation while a sleeper has yet to run. A sleeper sets its
    // bit again before it sleeps again.
    if (mask.exchange(0, std::memory_order_seq_cst) == 0) return;
    epoch.fetch_add(1, std::memory_order_seq_cst);
    platform::futex_wake(&epoch, INT_MAX);
}

// After a change a sleeper may wait for: wake the sleepers of mask.
void wake(std::atomic<std::uint32_t>& epoch, std::atomic<std::uint64_t>& mask) {
    // Full fence: orders our change before the mask load; the sleeper sets
    // its bit (seq_cst) before re-checking. One of us sees the other.
#if defined(__SANITIZE_THREAD__)
    // TSan does not model fences; a seq_cst read-modify-write of the mask
    // orders the same way (it reads the latest value of the mask).
    if (mask.fetch_or(0, std::memory_order_seq_cst) == 0) return;
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (mask.load(std::memory_order_relaxed) == 0) return;
#endif
    wake_sleepers(epoch, mask);
}

// Store a slot word a sleeper may wait for (release: it publishes what was
// written before it), then wake the sleepers of mask. The store must come
// before the mask load in every observer's eyes. In a process registered
// for membarrier a compiler barrier suffices, because a sleeper runs
// membarrier_all() between setting its bit and re-reading the word. Else
// the store and the load are seq_cst (an XCHG and a plain load on x86).
void store_and_wake(std::atomic<std::uint64_t>& word, std::uint64_t value, std::atomic<std::uint32_t>& epoch,
                    std::atomic<std::uint64_t>& mask) {
#if defined(__SANITIZE_THREAD__)
    word.store(value, std::memory_order_release);
    if (mask.fetch_or(0, std::memory_order_seq_cst) == 0) return;
#else
    if (t_actor.asym) {
        word.store(value, std::memory_order_release);
        std::atomic_signal_fence(std::memory_order_seq_cst);
        if (mask.load(std::memory_order_relaxed) == 0) return;
    } else {
        word.store(value, std::memory_order_seq_cst);
        if (mask.load(std::memory_order_seq_cst) == 0) return;
    }
#endif
    wake_sleepers(epoch, mask);
}

// Sleep until the epoch moves, the deadline, or the poll interval.
// Returns false if the deadline has passed.
template <class Ready>
bool sleep_on(std::atomic<std::uint32_t>& epoch, std::atomic<std::uint64_t>& mask, std::uint32_t id, Ready&& ready,
              const detail::Deadline& d, long poll_ms = kPollMs) {
    if (d.passed()) return false;
    const std::uint64_t bit = 1ull << (id - 1);
    mask.fetch_or(bit, std::memory_order_seq_cst);
#if !defined(__SANITIZE_THREAD__)
    // Fence the wakers that skip theirs (see store_and_wake). Where the
    // kernel has no membarrier nobody registered, so nobody skips; where it
    // refuses us alone (a seccomp filter), poll often instead.
    const int e = platform::membarrier_all();
    if (e != 0 && e != ENOSYS && e != EINVAL) poll_ms = std::min(poll_ms, kUnfencedPollMs);
#endif
    std::uint32_t ep = epoch.load(std::memory_order_seq_cst);
    if (!ready()) {
        detail::Deadline p = detail::Deadline::in(std::chrono::milliseconds(poll_ms));
        if (!d.infinite && d.clock == CLOCK_MONOTONIC &&
            (d.abs.tv_sec < p.abs.tv_sec || (d.abs.tv_sec == p.abs.tv_sec && d.abs.tv_nsec < p.abs.tv_nsec)))
            p = d;
        platform::futex_wait(&epoch, ep, &p.abs, p.clock);
    }
    mask.fetch_and(~bit, std::memory_order_seq_cst);
    // Another thread of this process may share the bit: make it re-check.
    return !d.passed();
}

// The ring's unit and size for a queue's options: the smallest unit (from
// 8 bytes up) that keeps the ring within kMaxRingUnits.
struct RingShape {
    std::uint32_t shift = 3;
    std::uint32_t units = 0;
    std::uint64_t max_bytes = 0;  // the budget as the queue reports it
};
RingShape ring_shape(std::uint32_t capacity, std::uint32_t max_item, std::uint64_t max_bytes) {
    RingShape r;
    for (r.shift = 3;; ++r.shift) {
        std::uint64_t units;
        if (max_bytes == 0)
            // As many units as `capacity` items of max_item bytes can take.
            units = std::uint64_t(capacity) * std::max<std::uint32_t>(1, units_of(r.shift, max_item));
        else
            units = (max_bytes + (std::uint64_t(1) << r.shift) - 1) >> r.shift;
        if (units <= detail::kMaxRingUnits) {
            r.units = static_cast<std::uint32_t>(units);
            break;
        }
    }
    r.max_bytes = max_bytes ? max_bytes : std::uint64_t(capacity) * max_item;
    return r;
}

constexpr std::uint64_t kMaxBytesLimit = std::uint64_t(1) << 40;

}  // namespace

// ---- creation ------------------------------------------------------------------

namespace {
struct CreateArgs {
    std::uint32_t capacity, max_item, shift, units;
    std::uint64_t max_bytes, ring_offset;
};
std::uint64_t ring_offset_for(std::uint32_t capacity) {
    return (sizeof(QueueControl) + std::uint64_t(capacity) * sizeof(QueueSlot) + 63) & ~std::uint64_t(63);
}

// Why the control block of a queue found in its block of `size` bytes cannot
// be trusted, or nullptr. The segment is a file anyone with write access
// may have changed: the shape checked here (capacity, ring, offsets) is what
// every put and get indexes with, so it is checked once, when the queue is
// opened; an item's place in the ring is checked when it is got.
const char* control_problem(const QueueControl* c, std::uint64_t size) {
    if (size < sizeof(QueueControl)) return "its block is smaller than a control block";
    if (c->magic != kQueueMagic) return "bad magic";
    if (c->capacity < 2 || c->capacity > (1u << 24) || (c->capacity & (c->capacity - 1)) != 0)
        return "its capacity is not a power of two in 2 .. 2^24";
    if (c->max_item < 1 || c->max_item > (256u << 20) || c->max_bytes == 0 || c->max_bytes > kMaxBytesLimit)
        return "its item or byte limit is out of range";
    if (c->ring_units == 0 || c->ring_units > detail::kMaxRingUnits || c->unit_shift < 3 || c->unit_shift > 24)
        return "its byte ring has an impossible shape";
    if (c->ring_offset != ring_offset_for(c->capacity)) return "its byte ring is not where its capacity puts it";
    const std::uint64_t largest = std::min<std::uint64_t>(c->max_item, c->max_bytes);
    const std::uint64_t ring = (std::uint64_t(c->ring_units) + units_of(c->unit_shift, largest)) << c->unit_shift;
    if (c->ring_offset + ring > size) return "its byte ring does not fit its block";
    return nullptr;
}

// Whether a slot's item (start, len) lies inside the ring and its overhang.
bool item_ok(const QueueControl* c, std::uint64_t item) {
    const std::uint32_t start = detail::item_start(item), len = detail::item_len(item);
    return start < 2ull * c->ring_units && len <= c->max_item && len <= c->max_bytes;
}
}  // namespace

Queue Queue::attach(Segment& seg, std::string_view name, const QueueOptions& opt_in, detail::NamedOp op) {
    CreateArgs a{};
    std::size_t bytes = sizeof(QueueControl);
    if (op != detail::NamedOp::find) {
        QueueOptions opt = opt_in;
        if (opt.capacity < 2 || opt.capacity > (1u << 24))
            throw error(EINVAL, "shm::Queue '" + std::string(name) + "': capacity must be 2 .. 2^24, not " +
                                    std::to_string(opt.capacity));
        if (opt.max_item_size < 1 || opt.max_item_size > (256u << 20))
            throw error(EINVAL, "shm::Queue '" + std::string(name) + "': max_item_size must be 1 byte .. 256 MiB");
        if (opt.max_bytes > kMaxBytesLimit)
            throw error(EINVAL, "shm::Queue '" + std::string(name) + "': max_bytes must be at most 1 TiB (0: capacity × max_item_size)");
        std::uint32_t cap = 2;
        while (cap < opt.capacity) cap *= 2;
        const RingShape r = ring_shape(cap, opt.max_item_size, opt.max_bytes);
        a.capacity = cap;
        a.max_item = opt.max_item_size;
        a.shift = r.shift;
        a.units = r.units;
        a.max_bytes = r.max_bytes;
        a.ring_offset = ring_offset_for(cap);
        // The overhang: one largest item past the end of the ring.
        const std::uint64_t largest = std::min<std::uint64_t>(opt.max_item_size, r.max_bytes);
        bytes = static_cast<std::size_t>(a.ring_offset +
                                         ((std::uint64_t(r.units) + units_of(r.shift, largest)) << r.shift));
    }
    detail::SegmentAccess::Init init = [](void* where, void* ctx) {
        auto* a = static_cast<const CreateArgs*>(ctx);
        auto* c = ::new (where) QueueControl();
        c->capacity = a->capacity;
        c->max_item = a->max_item;
        c->max_bytes = a->max_bytes;
        c->ring_units = a->units;
        c->unit_shift = a->shift;
        c->ring_offset = a->ring_offset;
        for (std::uint32_t i = 0; i < c->capacity; ++i) {
            QueueSlot* s = slot_at(c, i);
            s->word.store(mk(i, 0, 0), std::memory_order_relaxed);
            s->item.store(0, std::memory_order_relaxed);
        }
        c->magic = kQueueMagic;
    };
    bool constructed = false;
    std::size_t size = bytes;
    void* p = detail::SegmentAccess::named_block<QueueControl>(seg, name, "shm::Queue", ObjectKind::queue, bytes, 64,
                                                               init, &a, op, &constructed, &size);
    if (!p) throw not_found("shm::Queue '" + std::string(name) + "' does not exist in segment '" + seg.name() + "'");
    auto* c = static_cast<QueueControl*>(p);
    if (const char* why = control_problem(c, size))
        throw corrupted("shm::Queue '" + std::string(name) + "' in segment '" + seg.name() + "' is corrupt: " + why);
    return Queue(detail::SegmentAccess::share(seg), c);
}

Queue Queue::create(Segment& seg, std::string_view name, const QueueOptions& opt) {
    return attach(seg, name, opt, detail::NamedOp::construct);
}
Queue Queue::open_or_create(Segment& seg, std::string_view name, const QueueOptions& opt) {
    return attach(seg, name, opt, detail::NamedOp::find_or_construct);
}
Queue Queue::open(Segment& seg, std::string_view name) { return attach(seg, name, {}, detail::NamedOp::find); }

// ---- repair ---------------------------------------------------------------------------

namespace {

// Make the unpublished claim of ticket k, seen as w, a tombstone; its bytes
// end at `end`. The claimer is dead; `me` marks the slot while the repair
// runs, distinctly (flag toggled if the word already names us) so that no
// other repairer's CAS on the old word can succeed as well. Returns true if
// it repaired.
bool tombstone_dead(QueueControl* c, std::uint64_t k, std::uint64_t w, std::uint32_t end, std::uint32_t me) {
    QueueSlot* s = slot_at(c, k);
    const std::uint32_t mark = (owner_of(w) & kIdMask) == me ? owner_of(w) ^ kRepairFlag : (me | kRepairFlag);
    if (!s->word.compare_exchange_strong(w, mk(k, end, mark), std::memory_order_acq_rel, std::memory_order_relaxed))
        return false;
    crash_point();
    s->item.store(detail::slot_item(end, kTombstone), std::memory_order_relaxed);
    crash_point();
    s->word.store(mk(tnext(k), end, 0), std::memory_order_release);  // partner: consumers' acquire loads
    crash_point();
    c->repairs.fetch_add(1, std::memory_order_relaxed);
    wake(c->put_epoch, c->consumers_waiting);
    wake(c->get_epoch, c->producers_waiting);
    return true;
}

// Release the published slot of ticket k, seen as w, that a dead consumer
// was getting: it took the item whole.
bool release_dead(QueueControl* c, std::uint64_t k, std::uint64_t w) {
    if (!slot_at(c, k)->word.compare_exchange_strong(w, mk(k + c->capacity, pos_of(w), 0), std::memory_order_acq_rel,
                                                     std::memory_order_relaxed))
        return false;
    c->repairs.fetch_add(1, std::memory_order_relaxed);
    wake(c->get_epoch, c->producers_waiting);
    return true;
}

// Repair the slot of ticket k, seen as w, if a dead process holds it: a
// claim to put (unpublished, with tail past k) or a claim to get (published,
// with head past k). Returns true if it repaired.
bool repair_slot(QueueControl* c, std::uint64_t k, std::uint64_t w, std::uint32_t me) {
    const bool put_claim = tk(w) == k;
    if (!put_claim && tk(w) != tnext(k)) return false;
    std::uint32_t owner = owner_of(w), end = pos_of(w);
    if (owner == 0) {
        // Named by its cursor if it is the latest claim (else the hand-over
        // is under way, or k is not claimed at all).
        const std::uint64_t cur = (put_claim ? c->tail : c->head).load(std::memory_order_acquire);
        if (tk(cur) != tnext(k)) return false;
        owner = owner_of(cur);
        if (put_claim) end = pos_of(cur);
        if (owner == 0) return false;
    }
    if ((owner & kIdMask) == me || actor_alive(c, owner)) return false;
    return put_claim ? tombstone_dead(c, k, w, end, me) : release_dead(c, k, w);
}

std::uint32_t register_actor(QueueControl* c) {
    std::lock_guard<std::mutex> g(g_register_mutex);
    const std::uint64_t me = (static_cast<std::uint64_t>(::getpid()) << 32) | (platform::self_start_time() & 0xffffffffu);
    for (std::uint32_t i = 0; i < Queue::kMaxProcesses; ++i)
        if (c->actors[i].who.load(std::memory_order_acquire) == me) return i + 1;
    for (std::uint32_t i = 0; i < Queue::kMaxProcesses; ++i) {
        std::uint64_t w = c->actors[i].who.load(std::memory_order_acquire);
        if (w != 0 && who_alive(w)) continue;
        if (!c->actors[i].who.compare_exchange_strong(w, me, std::memory_order_acq_rel)) continue;
        const std::uint32_t id = i + 1;
        c->actors[i].taken.store(0, std::memory_order_relaxed);
        c->actors[i].done.store(0, std::memory_order_relaxed);
        if (w != 0) {
            // The previous holder of this id died: repair what it left
            // claimed before the id means us, and drop its waiter bits.
            // First the claims its cursors still name (a hand-over may move
            // one into its slot meanwhile: the scan below finds it there).
            const std::uint64_t T = c->tail.load(std::memory_order_acquire);
            if (owner_of(T) == id) {
                const std::uint64_t k = tprev(tk(T));
                const std::uint64_t sw = slot_at(c, k)->word.load(std::memory_order_acquire);
                if (tk(sw) == k && owner_of(sw) == 0) tombstone_dead(c, k, sw, pos_of(T), id);
            }
            const std::uint64_t H = c->head.load(std::memory_order_acquire);
            if (owner_of(H) == id) {
                const std::uint64_t k = tprev(tk(H));
                const std::uint64_t sw = slot_at(c, k)->word.load(std::memory_order_acquire);
                if (tk(sw) == tnext(k) && owner_of(sw) == 0) release_dead(c, k, sw);
            }
            for (std::uint32_t k = 0; k < c->capacity; ++k) {
                const std::uint64_t sw = slot_at(c, k)->word.load(std::memory_order_acquire);
                if (owner_of(sw) == 0 || (owner_of(sw) & kIdMask) != id) continue;
                // A claim to put holds its own ticket (≡ k), a claim to get
                // the next one.
                const std::uint64_t t = tk(sw);
                if (((t - k) & (c->capacity - 1)) == 0)
                    tombstone_dead(c, t, sw, pos_of(sw), id);
                else
                    release_dead(c, tprev(t), sw);
            }
            const std::uint64_t bit = ~(1ull << i);
            c->consumers_waiting.fetch_and(bit);
            c->producers_waiting.fetch_and(bit);
            c->joiners_waiting.fetch_and(bit);
        }
        return id;
    }
    throw error(EUSERS, "shm::Queue: more than " + std::to_string(Queue::kMaxProcesses) +
                            " live processes use this queue");
}

inline std::uint32_t actor_id(QueueControl* c) {
    unsigned gen = platform::fork_generation();
    if (t_actor.c == c && t_actor.gen == gen &&
        c->actors[t_actor.id - 1].who.load(std::memory_order_relaxed) == t_actor.who)
        return t_actor.id;
    // Registered before the id is used, so that our stores that skip their
    // fence are fenced by sleepers (see store_and_wake).
    const bool asym = membarrier_ready();
    std::uint32_t id = register_actor(c);
    ActorCache a;
    a.c = c;
    a.gen = gen;
    a.id = id;
    a.who = c->actors[id - 1].who.load(std::memory_order_relaxed);
    a.asym = asym;
    t_actor = a;
    return id;
}
// After finishing a put or a get of ticket t in c: this thread need not hand it over.
inline void finished_put(QueueControl* c, std::uint64_t t) {
    if (t_actor.c == c) t_actor.last_put = t;
}
inline void finished_get(QueueControl* c, std::uint64_t t) {
    if (t_actor.c == c) t_actor.last_get = t;
}

// Move free past the slots consumers have released, from F (as read) on.
// Returns true if free moved (by us or by someone else). *blocker is the
// first ticket not released: what a producer short of room waits for.
bool advance_free(QueueControl* c, std::uint64_t F, std::uint64_t* blocker) {
    const std::uint64_t T = c->tail.load(std::memory_order_acquire);
    const std::uint64_t t = tk(T), f = tk(F);
    const std::int64_t n = ticket_diff(t, f);
    *blocker = f;
    if (n <= 0 || n > static_cast<std::int64_t>(c->capacity)) return c->free.load(std::memory_order_acquire) != F;
    std::uint64_t k = f;
    std::int64_t i = 0;
    std::uint32_t end = 0;
    // Acquire: a consumer's copy-out is complete before it released the
    // slot; our release CAS of free passes that on to the producer that
    // next writes those bytes. A released slot keeps its word until free
    // has passed it (nobody may claim ticket k + capacity before).
    for (; i < n; ++i, k = tnext(k)) {
        const std::uint64_t w = slot_at(c, k)->word.load(std::memory_order_acquire);
        if (tk(w) != tnext(k, c->capacity) || owner_of(w) != 0) break;
        end = pos_of(w);
    }
    *blocker = k;
    if (i == 0) return c->free.load(std::memory_order_acquire) != F;
    c->free.compare_exchange_strong(F, mk(k, end, 0), std::memory_order_acq_rel, std::memory_order_acquire);
    return true;
}

// Hand the latest claim a cursor names (cur) over to its slot, if that
// claim is still in flight: to put (unpublished) or to get (published).
void hand_over(QueueControl* c, std::uint64_t cur, bool put) {
    const std::uint32_t x = owner_of(cur);
    if (x == 0) return;
    const std::uint64_t k = tprev(tk(cur));
    QueueSlot* s = slot_at(c, k);
    std::uint64_t w = s->word.load(std::memory_order_acquire);
    if (owner_of(w) != 0 || tk(w) != (put ? k : tnext(k))) return;  // finished, or handed over
    // A claim to put hands over where its bytes end (where tail says the
    // next ticket's begin); a claim to get keeps the end its slot has.
    s->word.compare_exchange_strong(w, mk(tk(w), put ? pos_of(cur) : pos_of(w), x), std::memory_order_acq_rel,
                                    std::memory_order_relaxed);
}

}  // namespace

// ---- put ------------------------------------------------------------------------------

namespace {

struct Claim {
    std::uint64_t ticket;
    std::uint32_t pos, end;  // where its bytes begin and end
};

// Whether ticket t, whose bytes end at `end`, is within capacity of free (F)
// and its bytes are free. True right after a claim, except after a tail CAS
// that succeeded on a value 2^32 tickets old (see the design note); then the
// ticket is ours and wait_room() waits for its room.
inline bool has_room(QueueControl* c, std::uint64_t t, std::uint32_t end, std::uint64_t F) {
    return ticket_diff(t, tk(F)) < static_cast<std::int64_t>(c->capacity) && pos_used(c, end, pos_of(F)) <= c->ring_units;
}
[[gnu::noinline, gnu::cold]] void wait_room(QueueControl* c, std::uint64_t t, std::uint32_t end, std::uint32_t id) {
    int spins = 0;
    for (;;) {
        const std::uint64_t F = c->free.load(std::memory_order_acquire);
        if (has_room(c, t, end, F)) return;
        std::uint64_t blocker;
        if (advance_free(c, F, &blocker)) continue;
        QueueSlot* b = slot_at(c, blocker);
        const std::uint64_t bw = b->word.load(std::memory_order_acquire);
        if (spun_out(spins) && repair_slot(c, blocker, bw, id)) continue;
        if (backoff(spins)) continue;
        sleep_on(c->get_epoch, c->producers_waiting, id,
                 [&] { return b->word.load() != bw || c->free.load() != F; }, detail::Deadline::never(), kNapMs);
    }
}

void publish(QueueControl* c, const Claim& cl, std::uint32_t len) {
    crash_point();
    QueueSlot* s = slot_at(c, cl.ticket);
    s->item.store(detail::slot_item(cl.pos, len), std::memory_order_relaxed);
    crash_point();
    finished_put(c, cl.ticket);
    // Release: the payload, start and len before the word; partner: the
    // consumer's acquire load of the word.
    store_and_wake(s->word, mk(tnext(cl.ticket), cl.end, 0), c->put_epoch, c->consumers_waiting);
}

// Claim the next ticket and `need` units of bytes into cl. Returns false if
// the queue stays full (of items or of bytes) until d, or at once if !wait.
// Throws closed.
bool claim_put(QueueControl* c, std::uint32_t id, std::uint32_t need, const detail::Deadline& d, bool wait,
               Claim& cl) {
    int spins = 0;
    const auto cap = static_cast<std::int64_t>(c->capacity);
    for (;;) {
        if (c->closed.load(std::memory_order_acquire)) throw closed("shm::Queue: put on a closed queue");
        std::uint64_t T = c->tail.load(std::memory_order_acquire);
        const std::uint64_t F = c->free.load(std::memory_order_acquire);
        const std::uint64_t t = tk(T);
        const std::int64_t n = ticket_diff(t, tk(F));
        if (n < 0 || n > cap) continue;  // free moved past the tail we read: read again
        if (n < cap && pos_used(c, pos_of(T), pos_of(F)) + need <= c->ring_units) {
            if (owner_of(T) != id || t_actor.last_put != tprev(t)) hand_over(c, T, true);
            cl = Claim{t, pos_of(T), pos_add(c, pos_of(T), need)};
            if (!c->tail.compare_exchange_weak(T, mk(tnext(t), cl.end, id), std::memory_order_acq_rel,
                                               std::memory_order_relaxed))
                continue;
            crash_point();
            if (!has_room(c, t, cl.end, c->free.load(std::memory_order_acquire))) wait_room(c, t, cl.end, id);
            crash_point();
            if (c->closed.load(std::memory_order_acquire)) {
                // Closed while we claimed: publish nothing.
                QueueSlot* s = slot_at(c, t);
                s->item.store(detail::slot_item(cl.pos, kTombstone), std::memory_order_relaxed);
                finished_put(c, t);
                s->word.store(mk(tnext(t), cl.end, 0), std::memory_order_release);
                wake(c->put_epoch, c->consumers_waiting);
                throw closed("shm::Queue: put on a closed queue");
            }
            return true;
        }
        // Short of slots or bytes: free what consumers have released.
        std::uint64_t blocker;
        if (advance_free(c, F, &blocker)) continue;
        if (!wait) return false;
        QueueSlot* b = slot_at(c, blocker);
        const std::uint64_t bw = b->word.load(std::memory_order_acquire);
        if (spun_out(spins) && repair_slot(c, blocker, bw, id)) continue;
        if (backoff(spins)) continue;
        if (!sleep_on(c->get_epoch, c->producers_waiting, id,
                      [&] {
                          // seq_cst: see store_and_wake.
                          return b->word.load() != bw || c->free.load() != F || c->closed.load();
                      },
                      d))
            return false;
    }
}

[[noreturn]] void too_big(const QueueControl* c, const char* what, std::size_t len) {
    if (len > c->max_item)
        throw error(EMSGSIZE, std::string(what) + ": item of " + std::to_string(len) +
                                  " bytes is over the queue's max_item_size of " + std::to_string(c->max_item));
    throw error(EMSGSIZE, std::string(what) + ": item of " + std::to_string(len) +
                              " bytes is over the queue's max_bytes of " + std::to_string(c->max_bytes));
}
inline bool fits(const QueueControl* c, std::size_t len) { return len <= c->max_item && len <= c->max_bytes; }

}  // namespace

bool Queue::put_until(std::string_view item, const detail::Deadline& d) {
    if (!fits(c_, item.size())) too_big(c_, "shm::Queue::put", item.size());
    std::uint32_t id = actor_id(c_);
    Claim cl;
    if (!claim_put(c_, id, units_of(c_->unit_shift, item.size()), d, true, cl)) return false;
    if (!item.empty()) std::memcpy(payload_at(c_, cl.pos), item.data(), item.size());
    publish(c_, cl, static_cast<std::uint32_t>(item.size()));
    return true;
}

bool Queue::try_put(std::string_view item) {
    if (!fits(c_, item.size())) too_big(c_, "shm::Queue::put", item.size());
    std::uint32_t id = actor_id(c_);
    Claim cl;
    if (!claim_put(c_, id, units_of(c_->unit_shift, item.size()), detail::Deadline::never(), false, cl)) return false;
    if (!item.empty()) std::memcpy(payload_at(c_, cl.pos), item.data(), item.size());
    publish(c_, cl, static_cast<std::uint32_t>(item.size()));
    return true;
}

void Queue::put_nowait(std::string_view item) {
    if (!try_put(item))
        throw shm::full("shm::Queue::put_nowait: the queue is full (" + std::to_string(c_->capacity) +
                        " items, or " + std::to_string(c_->max_bytes) + " bytes)");
}

std::size_t Queue::put_many(const std::vector<std::string>& items) {
    for (const auto& it : items) put(it);
    return items.size();
}

namespace {
// A Reservation keeps its ticket and where its bytes begin in one word.
inline std::uint64_t reservation_word(const Claim& cl) { return cl.ticket | (std::uint64_t(cl.pos) << 32); }
Claim reserved_claim(QueueControl* c, std::uint64_t word, std::size_t reserved) {
    const auto pos = static_cast<std::uint32_t>(word >> 32);
    return Claim{word & kTicketMask, pos, pos_add(c, pos, units_of(c->unit_shift, reserved))};
}
}  // namespace

Queue::Reservation Queue::reserve() { return reserve(std::min<std::uint64_t>(c_->max_item, c_->max_bytes)); }

Queue::Reservation Queue::reserve(std::size_t n) {
    if (!fits(c_, n)) too_big(c_, "shm::Queue::reserve", n);
    std::uint32_t id = actor_id(c_);
    Claim cl;
    claim_put(c_, id, units_of(c_->unit_shift, n), detail::Deadline::never(), true, cl);
    return Reservation(this, reservation_word(cl), payload_at(c_, cl.pos), n);
}

Queue::Reservation::Reservation(Reservation&& o) noexcept
    : c_(o.c_), seg_(std::move(o.seg_)), pos_(o.pos_), data_(o.data_), cap_(o.cap_) {
    o.c_ = nullptr;
}


void Queue::Reservation::commit(std::size_t len) {
    if (!c_) throw error(EINVAL, "shm::Queue::Reservation: already committed");
    if (len > cap_)
        throw error(EMSGSIZE, "shm::Queue::Reservation::commit: " + std::to_string(len) +
                                  " bytes is over the " + std::to_string(cap_) + " bytes reserved");
    publish(c_, reserved_claim(c_, pos_, cap_), static_cast<std::uint32_t>(len));
    c_ = nullptr;
    seg_.reset();
}

Queue::Reservation::~Reservation() {
    if (!c_) return;
    publish(c_, reserved_claim(c_, pos_, cap_), kTombstone);
}

// ---- get ------------------------------------------------------------------------------

namespace {
// Wait until ticket h, claimed, is published. Only needed after a head CAS
// that succeeded on a value 2^32 tickets old (see the design note); then
// the ticket is ours and we wait for its item.
[[gnu::noinline, gnu::cold]] void wait_published(QueueControl* c, std::uint64_t h, std::uint32_t id) {
    QueueSlot* s = slot_at(c, h);
    int spins = 0;
    for (;;) {
        const std::uint64_t w = s->word.load(std::memory_order_acquire);
        if (tk(w) == tnext(h)) return;
        if (spun_out(spins) && repair_slot(c, h, w, id)) continue;
        if (backoff(spins)) continue;
        sleep_on(c->put_epoch, c->consumers_waiting, id, [&] { return s->word.load() != w; },
                 detail::Deadline::never(), kNapMs);
    }
}

// Release the slot of ticket h, got (or skipped) by this process.
void release_slot(QueueControl* c, std::uint64_t h) {
    QueueSlot* s = slot_at(c, h);
    const std::uint32_t end = pos_of(s->word.load(std::memory_order_relaxed));
    finished_get(c, h);
    // Release: our copy-out is complete before the slot is released; the
    // producer that next writes these bytes acquires free, which was moved
    // past this slot by someone who acquired this word.
    store_and_wake(s->word, mk(tnext(h, c->capacity), end, 0), c->get_epoch, c->producers_waiting);
}

// Claim the next published item. Returns its ticket, or kNoTicket when
// empty (after waiting until d) or closed and drained (*is_closed set).
constexpr std::uint64_t kNoTicket = ~0ull;
std::uint64_t claim_get(QueueControl* c, std::uint32_t id, const detail::Deadline& d, bool wait, bool* is_closed) {
    int spins = 0;
    *is_closed = false;
    for (;;) {
        std::uint64_t H = c->head.load(std::memory_order_acquire);
        const std::uint64_t h = tk(H);
        QueueSlot* s = slot_at(c, h);
        // Acquire: pairs with publish()'s release; the payload is ours.
        const std::uint64_t w = s->word.load(std::memory_order_acquire);
        if (tk(w) == tnext(h)) {
            // Published, and head is at h: nobody has claimed it yet.
            if (owner_of(H) != id || t_actor.last_get != tprev(h)) hand_over(c, H, false);
            if (!c->head.compare_exchange_weak(H, mk(tnext(h), 0, id), std::memory_order_acq_rel,
                                               std::memory_order_relaxed))
                continue;
            crash_point();
            if (tk(s->word.load(std::memory_order_acquire)) != tnext(h)) wait_published(c, h, id);
            if (detail::item_len(s->item.load(std::memory_order_relaxed)) == kTombstone) {
                release_slot(c, h);
                continue;
            }
            return h;
        }
        if (ticket_diff(tk(w), h) > 0) {
            // Released: head moved on since we read it. If it did not, the
            // slot is ahead of every ticket ever got: not a state the
            // protocol makes, and waiting would never end.
            if (c->head.load(std::memory_order_acquire) == H)
                throw corrupted("shm::Queue: the slot of ticket " + std::to_string(h) +
                                " is ahead of the queue's head; the queue is corrupt");
            continue;
        }
        // Unpublished (empty here, or being written), or still holding the
        // item of ticket h - capacity, being got.
        if (c->closed.load(std::memory_order_acquire) && tk(c->tail.load(std::memory_order_acquire)) == h) {
            *is_closed = true;
            return kNoTicket;
        }
        if (!wait) return kNoTicket;
        if (spun_out(spins) && repair_slot(c, h, w, id)) continue;
        if (backoff(spins)) continue;
        if (!sleep_on(c->put_epoch, c->consumers_waiting, id,
                      [&] { return s->word.load() != w || c->closed.load(); }, d))  // seq_cst: see store_and_wake
            return kNoTicket;
    }
}
}  // namespace

void Queue::release_view(std::uint64_t pos, std::uint32_t id) {
    crash_point();
    // Counted as taken before the slot is released, so that join() sees the
    // item either being got or taken.
    c_->actors[id - 1].taken.fetch_add(1, std::memory_order_relaxed);
    crash_point();
    release_slot(c_, pos);
}

// An item whose place is outside the ring: the slot is released (the queue
// moves past it) and the get reports the corruption.
void Queue::bad_item(std::uint64_t pos, std::uint32_t id, std::uint64_t item) {
    release_view(pos, id);
    throw corrupted("shm::Queue: item " + std::to_string(pos) + " says it has " +
                    std::to_string(detail::item_len(item)) + " bytes at " + std::to_string(detail::item_start(item)) +
                    ", outside the queue's ring; the queue is corrupt");
}

Queue::View Queue::get_view(const detail::Deadline& d, bool throw_closed) {
    std::uint32_t id = actor_id(c_);
    bool is_closed = false;
    const std::uint64_t pos = claim_get(c_, id, d, true, &is_closed);
    if (pos == kNoTicket) {
        if (is_closed && throw_closed) throw shm::closed("shm::Queue::get: the queue is closed and drained");
        return View{nullptr, 0, kNoTicket, id};
    }
    const std::uint64_t item = slot_at(c_, pos)->item.load(std::memory_order_relaxed);
    if (!item_ok(c_, item)) bad_item(pos, id, item);
    return View{payload_at(c_, detail::item_start(item)), detail::item_len(item), pos, id};
}

bool Queue::get_until(std::string& out, const detail::Deadline& d) {
    View v = get_view(d, false);
    if (v.pos == kNoTicket) return false;
    out.assign(static_cast<const char*>(v.data), v.len);
    release_view(v.pos, v.id);
    return true;
}

std::string Queue::get() {
    View v = get_view(detail::Deadline::never(), true);
    std::string out(static_cast<const char*>(v.data), v.len);
    release_view(v.pos, v.id);
    return out;
}

void Queue::get(std::string& out) {
    View v = get_view(detail::Deadline::never(), true);
    out.assign(static_cast<const char*>(v.data), v.len);
    release_view(v.pos, v.id);
}

std::optional<std::string> Queue::try_get() {
    std::uint32_t id = actor_id(c_);
    bool is_closed = false;
    const std::uint64_t pos = claim_get(c_, id, detail::Deadline::never(), false, &is_closed);
    if (pos == kNoTicket) return std::nullopt;
    const std::uint64_t item = slot_at(c_, pos)->item.load(std::memory_order_relaxed);
    if (!item_ok(c_, item)) bad_item(pos, id, item);
    std::string out(payload_at(c_, detail::item_start(item)), detail::item_len(item));
    release_view(pos, id);
    return out;
}

std::string Queue::get_nowait() {
    auto v = try_get();
    if (!v) {
        if (closed() && qsize() == 0) throw shm::closed("shm::Queue::get_nowait: the queue is closed and drained");
        throw shm::empty("shm::Queue::get_nowait: the queue is empty");
    }
    return std::move(*v);
}

std::vector<std::string> Queue::get_many_until(std::size_t n, const detail::Deadline& d) {
    std::vector<std::string> out;
    if (n == 0) return out;
    std::string first;
    if (!get_until(first, d)) return out;
    out.push_back(std::move(first));
    while (out.size() < n) {
        auto v = try_get();
        if (!v) break;
        out.push_back(std::move(*v));
    }
    return out;
}

// ---- join, close, state -----------------------------------------------------------------

void Queue::task_done() {
    std::uint32_t id = actor_id(c_);
    QueueActor& a = c_->actors[id - 1];
    std::uint64_t done = a.done.load(std::memory_order_relaxed);
    for (;;) {
        if (done >= a.taken.load(std::memory_order_relaxed))
            throw error(EINVAL, "shm::Queue::task_done: called more times than this process got items (" +
                                    std::to_string(done) + ")");
        if (a.done.compare_exchange_weak(done, done + 1, std::memory_order_release, std::memory_order_relaxed)) break;
    }
    wake(c_->join_epoch, c_->joiners_waiting);
}

bool Queue::join_until(const detail::Deadline& d) {
    std::uint32_t id = actor_id(c_);
    for (;;) {
        auto finished = [&] {
            if (qsize() != 0) return false;
            // No item is being got by a live process: a consumer counts an
            // item as taken before it releases its slot, so an item is seen
            // here (published, with head past it) or in `taken` below.
            const std::uint64_t H = c_->head.load(std::memory_order_acquire);
            const std::uint64_t T = c_->tail.load(std::memory_order_acquire);
            const std::uint64_t F = c_->free.load(std::memory_order_acquire);
            const std::int64_t n = ticket_diff(tk(T), tk(F));
            for (std::int64_t i = 0; i < n && i < static_cast<std::int64_t>(c_->capacity); ++i) {
                const std::uint64_t k = tnext(tk(F), static_cast<std::uint64_t>(i));
                const std::uint64_t w = slot_at(c_, k)->word.load(std::memory_order_acquire);
                if (tk(w) != tnext(k)) continue;             // not published, or released
                if (ticket_diff(k, tk(H)) >= 0) return false;  // queued
                std::uint32_t owner = owner_of(w);
                if (owner == 0 && k == tprev(tk(H))) owner = owner_of(H);
                if (owner == 0 || actor_alive(c_, owner)) return false;  // being got (a hand-over may be under way)
            }
            for (std::uint32_t i = 0; i < kMaxProcesses; ++i) {
                QueueActor& a = c_->actors[i];
                std::uint64_t who = a.who.load(std::memory_order_acquire);
                if (!who) continue;
                if (a.done.load(std::memory_order_acquire) < a.taken.load(std::memory_order_acquire) && who_alive(who))
                    return false;
            }
            return true;
        };
        if (finished()) return true;
        if (!sleep_on(c_->join_epoch, c_->joiners_waiting, id, finished, d)) return finished();
    }
}

void Queue::join() { join_until(detail::Deadline::never()); }

void Queue::close() {
    c_->closed.store(1, std::memory_order_seq_cst);
    for (auto* e : {&c_->put_epoch, &c_->get_epoch, &c_->join_epoch}) {
        e->fetch_add(1, std::memory_order_seq_cst);
        platform::futex_wake(e, INT_MAX);
    }
}

bool Queue::closed() const noexcept { return c_->closed.load(std::memory_order_acquire) != 0; }

std::size_t Queue::qsize() const noexcept {
    const std::int64_t n =
        ticket_diff(tk(c_->tail.load(std::memory_order_acquire)), tk(c_->head.load(std::memory_order_acquire)));
    if (n <= 0) return 0;
    return static_cast<std::size_t>(std::min<std::int64_t>(n, c_->capacity));
}

std::uint64_t Queue::bytes_used() const noexcept {
    // Free what consumers have released first, so that this counts only
    // items still queued or being put or got.
    for (int i = 0; i < 4; ++i) {
        std::uint64_t blocker;
        if (!advance_free(c_, c_->free.load(std::memory_order_acquire), &blocker)) break;
    }
    const std::uint64_t F = c_->free.load(std::memory_order_acquire);
    const std::uint64_t T = c_->tail.load(std::memory_order_acquire);
    if (ticket_diff(tk(T), tk(F)) <= 0) return 0;
    return std::uint64_t(pos_used(c_, pos_of(T), pos_of(F))) << c_->unit_shift;
}

bool Queue::full() const noexcept {
    if (qsize() >= c_->capacity) return true;
    return bytes_used() + (std::uint64_t(1) << c_->unit_shift) > (std::uint64_t(c_->ring_units) << c_->unit_shift);
}
std::uint32_t Queue::capacity() const noexcept { return c_->capacity; }
std::uint32_t Queue::max_item_size() const noexcept { return c_->max_item; }
std::uint64_t Queue::max_bytes() const noexcept { return c_->max_bytes; }
std::uint64_t Queue::repairs() const noexcept { return c_->repairs.load(std::memory_order_relaxed); }

}  // namespace shm
