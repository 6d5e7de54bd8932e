// shm::Queue: a ring of slots and a ring of bytes, claimed with a few CAS
// steps per item and no lock (see queue.hpp).
//
// Design note
// -----------
// Every item put gets a ticket (0, 1, 2, ... modulo 2^39). Ticket t lives in
// slot t mod capacity: a 16-byte descriptor (word, start, len). Its payload
// lives in the byte ring, at a byte position handed out in ticket order.
//
// Slot word = ticket << 16 | claimer. For ticket t the slot's states are
//     FREE      ticket t,     claimer 0    not yet claimed
//     WRITING   ticket t,     claimer x    producer x has claimed t (or a
//                                          repairer is making it a tombstone)
//     FULL      ticket t + 1, claimer 0    a consumer may claim it
//     READING   ticket t + 1, claimer c    consumer c is copying it out
//     released  ticket t + capacity, 0     FREE for the next lap
// Each transition is one CAS or one store on the word, so a process killed
// at any instruction leaves each slot in exactly one of these states.
//
// Two cursors pack a ticket and a byte position into one 64-bit word:
//     tail = (next ticket to put, where its bytes start)
//     free = (first ticket whose bytes are not free yet, where they start)
// The bytes in use are tail.pos - free.pos; positions count modulo twice
// the ring so that a full ring differs from an empty one. To put an item
// needing n units, a producer reads tail (t, p) and free (f, q), checks
// t - f < capacity and used + n <= ring, claims slot t (FREE -> WRITING,
// one CAS), writes start = p, then moves tail to (t + 1, p + n) with one
// CAS. Only the holder of slot t moves tail off ticket t, so that CAS
// cannot lose to another producer; a producer that finds slot t already
// WRITING waits for its holder to move tail (a few instructions) or repairs
// it if the holder died. It then copies the payload and publishes FULL.
// An item that would run past the end of the ring is not split: the ring
// has an overhang of one largest item after its end, so every item is
// contiguous (in the budget it still counts only its own units).
//
// Consumers claim FULL slots in ticket order (head is a hint, as before)
// and release them; they do not touch free. Whoever is short of slots or
// bytes (a producer, or full()) moves free past the released slots in one
// CAS: to (k, start of k) for the first ticket k not released. A slot's
// start and len do not change until free has passed it, because no
// producer may claim ticket t + capacity before free has passed t.
//
// Why ABA cannot bite: a stale CAS on a slot word or a cursor could only
// succeed 2^39 tickets later with every other field equal.
//
// Crash repair: a slot WRITING or READING for a claimer whose process is
// dead (the claimer's record holds pid and start time) is taken over with a
// CAS. WRITING becomes a tombstone that consumers skip (the put never
// happened): if the dead producer had not yet moved tail, the repairer moves
// it with no bytes; if it had, its bytes stay claimed until free passes
// the tombstone. READING becomes released (the dead consumer took the item
// whole). A repairer marks the slot with its own id and a repair flag, so a
// repairer that dies mid-repair is taken over the same way, and a process
// that inherits a dead process's id repairs what it left without racing
// another repairer on an unchanged word.
//
// Waiting: spin, then sleep on an epoch futex after setting the process's
// bit in a waiters mask; wakers check the mask after a full fence, so no
// wake-up is lost. Sleeps last at most 50 ms so that a sleeper notices a
// dead blocker, and wakers that wake nobody clear the bits of dead processes.
#include "shm/queue.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <functional>
#include <mutex>

#include "layout.hpp"
#include "queue_layout.hpp"
#include "platform.hpp"
#include "shm/segment.hpp"
#include "testing.hpp"

namespace shm {

using detail::QueueActor;
using detail::QueueControl;
using detail::QueueSlot;
using detail::cursor_pack;
using detail::cursor_pos;
using detail::cursor_ticket;
using detail::kTicketMask;
using detail::ticket_diff;
using testing::crash_point;

namespace {

constexpr std::uint32_t kTombstone = detail::kQueueTombstone;
// A repairer's mark in the claimer field, next to its id.
constexpr std::uint32_t kRepairFlag = 0x8000;
constexpr std::uint32_t kIdMask = 0x7f;
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
constexpr long kPollMs = 50;
// A producer waiting for another to move tail off a ticket it has claimed
// (a few instructions, unless that process is descheduled) naps this long.
constexpr long kNapMs = 1;

static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

inline std::uint64_t mk(std::uint64_t ticket, std::uint32_t claimer) { return ((ticket & kTicketMask) << 16) | claimer; }
inline std::uint32_t owner_of(std::uint64_t w) { return static_cast<std::uint32_t>(w & 0xffff); }
// Signed distance between the slot's ticket and a ticket.
inline std::int64_t diff(std::uint64_t w, std::uint64_t t) { return ticket_diff(w >> 16, t); }
inline std::uint64_t tnext(std::uint64_t t, std::uint64_t k = 1) { return (t + k) & kTicketMask; }

// Move the head hint from pos to pos + 1 if nobody has yet. Takes pos by
// value: a failed compare_exchange writes the current value into its
// `expected` argument, which must not clobber the caller's position.
inline void advance_head(QueueControl* c, std::uint64_t pos) {
    c->head.compare_exchange_strong(pos, tnext(pos), std::memory_order_release, std::memory_order_relaxed);
}

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

// Store a slot word a sleeper may wait for, then wake the sleepers of mask.
// The store and the mask load are both seq_cst (an XCHG and a plain load on
// x86, cheaper than a store, MFENCE and load); a sleeper sets its bit with a
// seq_cst RMW, then re-reads the word with a seq_cst load: in the single
// order of seq_cst operations one of us sees the other. Release, too: the
// store publishes what was written before it.
void store_and_wake(std::atomic<std::uint64_t>& word, std::uint64_t value, std::atomic<std::uint32_t>& epoch,
                    std::atomic<std::uint64_t>& mask) {
#if defined(__SANITIZE_THREAD__)
    word.store(value, std::memory_order_release);
    if (mask.fetch_or(0, std::memory_order_seq_cst) == 0) return;
#else
    word.store(value, std::memory_order_seq_cst);
    if (mask.load(std::memory_order_seq_cst) == 0) return;
#endif
    wake_sleepers(epoch, mask);
}

// Sleep until the epoch moves, the deadline, or the poll interval.
// Returns false if the deadline has passed.
bool sleep_on(std::atomic<std::uint32_t>& epoch, std::atomic<std::uint64_t>& mask, std::uint32_t id,
              const std::function<bool()>& ready, const detail::Deadline& d, long poll_ms = kPollMs) {
    if (d.passed()) return false;
    const std::uint64_t bit = 1ull << (id - 1);
    mask.fetch_or(bit, std::memory_order_seq_cst);
    std::uint32_t e = epoch.load(std::memory_order_seq_cst);
    if (!ready()) {
        detail::Deadline p = detail::Deadline::in(std::chrono::milliseconds(poll_ms));
        if (!d.infinite && d.clock == CLOCK_MONOTONIC &&
            (d.abs.tv_sec < p.abs.tv_sec || (d.abs.tv_sec == p.abs.tv_sec && d.abs.tv_nsec < p.abs.tv_nsec)))
            p = d;
        platform::futex_wait(&epoch, e, &p.abs, p.clock);
    }
    mask.fetch_and(~bit, std::memory_order_seq_cst);
    // Another thread of this process may share the bit: make it re-check.
    return !d.passed();
}

// The calling process's actor id for a queue, cached per thread and
// refreshed after fork, or when the record no longer names this process (a
// queue at the same address in a new mapping).
struct ActorCache {
    QueueControl* c = nullptr;
    unsigned gen = ~0u;
    std::uint32_t id = 0;
    std::uint64_t who = 0;
};
thread_local ActorCache t_actor;
std::mutex g_register_mutex;

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
}  // namespace

Queue Queue::attach(Segment& seg, std::string_view name, const QueueOptions& opt_in, bool may_find, bool may_create) {
    CreateArgs a{};
    std::size_t bytes = sizeof(QueueControl);
    if (may_create) {
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
    Segment::Init init = [](void* where, void* ctx) {
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
            s->word.store(mk(i, 0), std::memory_order_relaxed);
            s->start.store(0, std::memory_order_relaxed);
            s->len.store(0, std::memory_order_relaxed);
        }
        c->magic = kQueueMagic;
    };
    bool constructed = false;
    void* p = seg.named_op(name, Segment::type_key<QueueControl>(), "shm::Queue", ObjectKind::queue, bytes, 64, init,
                           &a, may_find, may_create, &constructed);
    if (!p) throw not_found("shm::Queue '" + std::string(name) + "' does not exist in segment '" + seg.name() + "'");
    auto* c = static_cast<QueueControl*>(p);
    if (c->magic != kQueueMagic) throw corrupted("shm::Queue '" + std::string(name) + "': bad magic");
    return Queue(seg, c);
}

Queue Queue::create(Segment& seg, std::string_view name, const QueueOptions& opt) {
    return attach(seg, name, opt, false, true);
}
Queue Queue::open_or_create(Segment& seg, std::string_view name, const QueueOptions& opt) {
    return attach(seg, name, opt, true, true);
}
Queue Queue::open(Segment& seg, std::string_view name) { return attach(seg, name, {}, true, false); }

// ---- repair ---------------------------------------------------------------------------

namespace {

// Take over slot of ticket k, seen as w, from a claimer that is dead.
// `me` marks the slot while the repair runs. Returns true if it repaired.
bool take_over(QueueControl* c, std::uint64_t k, std::uint64_t w, std::uint32_t me) {
    QueueSlot* s = slot_at(c, k);
    if (diff(w, k) == 0) {
        // WRITING: the put never happened; make it a tombstone. A distinct
        // mark (flag toggled if the word already names us) so that no other
        // repairer's CAS on the old word can succeed as well.
        std::uint32_t mark = (owner_of(w) & kIdMask) == me ? owner_of(w) ^ kRepairFlag : (me | kRepairFlag);
        if (!s->word.compare_exchange_strong(w, mk(k, mark), std::memory_order_acq_rel, std::memory_order_relaxed))
            return false;
        crash_point();
        for (;;) {
            std::uint64_t T = c->tail.load(std::memory_order_acquire);
            // Moved on: the dead producer had its bytes (and wrote start
            // before moving tail); they are freed with the tombstone.
            if (cursor_ticket(T) != k) break;
            // Still at k: nobody but the slot's holder moves tail off k.
            s->start.store(cursor_pos(T), std::memory_order_relaxed);
            if (c->tail.compare_exchange_strong(T, cursor_pack(tnext(k), cursor_pos(T)), std::memory_order_release,
                                                std::memory_order_relaxed))
                break;
        }
        crash_point();
        s->len.store(kTombstone, std::memory_order_relaxed);
        crash_point();
        s->word.store(mk(tnext(k), 0), std::memory_order_release);  // partner: consumers' acquire loads
        c->repairs.fetch_add(1, std::memory_order_relaxed);
        wake(c->put_epoch, c->consumers_waiting);
        wake(c->get_epoch, c->producers_waiting);
        return true;
    }
    if (diff(w, tnext(k)) == 0) {
        // READING: the dead consumer took the item whole; release the slot.
        if (!s->word.compare_exchange_strong(w, mk(k + c->capacity, 0), std::memory_order_acq_rel,
                                             std::memory_order_relaxed))
            return false;
        c->repairs.fetch_add(1, std::memory_order_relaxed);
        wake(c->get_epoch, c->producers_waiting);
        return true;
    }
    return false;
}

// Repair the slot of ticket k, seen as w, if its claimer is dead.
bool repair_slot(QueueControl* c, std::uint64_t k, std::uint64_t w, std::uint32_t me) {
    const std::uint32_t owner = owner_of(w);
    if (owner == 0 || (owner & kIdMask) == me || actor_alive(c, owner)) return false;
    return take_over(c, k, w, me);
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
            for (std::uint32_t k = 0; k < c->capacity; ++k) {
                std::uint64_t sw = slot_at(c, k)->word.load(std::memory_order_acquire);
                if (owner_of(sw) == 0 || (owner_of(sw) & kIdMask) != id) continue;
                const std::uint64_t t = sw >> 16;
                // WRITING holds its own ticket (t ≡ k), READING the next one.
                const std::uint64_t ticket = ((t - k) & (c->capacity - 1)) == 0 ? t : ((t - 1) & kTicketMask);
                take_over(c, ticket, sw, id);
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
    std::uint32_t id = register_actor(c);
    t_actor = ActorCache{c, gen, id, c->actors[id - 1].who.load(std::memory_order_relaxed)};
    return id;
}

// Move free past the slots consumers have released, from F (as read) on.
// Returns true if free moved (by us or by someone else). *blocker is the
// first ticket not released: what a producer short of room waits for.
bool advance_free(QueueControl* c, std::uint64_t F, std::uint64_t* blocker) {
    const std::uint64_t T = c->tail.load(std::memory_order_acquire);
    const std::uint64_t t = cursor_ticket(T), f = cursor_ticket(F);
    const std::int64_t n = ticket_diff(t, f);
    *blocker = f;
    if (n <= 0 || n > static_cast<std::int64_t>(c->capacity)) return c->free.load(std::memory_order_acquire) != F;
    std::uint64_t k = f;
    std::int64_t i = 0;
    // Acquire: a consumer's copy-out is complete before it released the
    // slot; our release CAS of free passes that on to the producer that
    // next writes those bytes.
    while (i < n && slot_at(c, k)->word.load(std::memory_order_acquire) == mk(k + c->capacity, 0)) {
        k = tnext(k);
        ++i;
    }
    *blocker = k;
    if (i == 0) return c->free.load(std::memory_order_acquire) != F;
    // Where ticket k's bytes start: tail's position if nothing is claimed
    // after the released ones, else k's start (written before tail moved
    // past k, which our acquire load of tail saw).
    const std::uint32_t p = i == n ? cursor_pos(T) : slot_at(c, k)->start.load(std::memory_order_relaxed);
    c->free.compare_exchange_strong(F, cursor_pack(k, p), std::memory_order_acq_rel, std::memory_order_acquire);
    return true;
}

}  // namespace

// ---- put ------------------------------------------------------------------------------

namespace {

struct Claim {
    std::uint64_t ticket;
    std::uint32_t pos;
};

// Claim the next ticket and `need` units of bytes. Returns nullopt if the
// queue stays full (of items or of bytes) until d, or at once if !wait.
// Throws closed.
std::optional<Claim> claim_put(QueueControl* c, std::uint32_t id, std::uint32_t need, const detail::Deadline& d,
                               bool wait) {
    int spins = 0;
    const auto cap = static_cast<std::int64_t>(c->capacity);
    for (;;) {
        if (c->closed.load(std::memory_order_acquire)) throw closed("shm::Queue: put on a closed queue");
        const std::uint64_t T = c->tail.load(std::memory_order_acquire);
        const std::uint64_t F = c->free.load(std::memory_order_acquire);
        const std::uint64_t t = cursor_ticket(T);
        const std::int64_t n = ticket_diff(t, cursor_ticket(F));
        if (n < 0 || n > cap) continue;  // free moved past the tail we read: read again
        if (n < cap && pos_used(c, cursor_pos(T), cursor_pos(F)) + need <= c->ring_units) {
            QueueSlot* s = slot_at(c, t);
            std::uint64_t w = s->word.load(std::memory_order_acquire);
            if (w == mk(t, 0)) {
                // acq_rel: a repairer that takes this claim over (its CAS
                // reads ours) then sees tail at t or later.
                if (!s->word.compare_exchange_weak(w, mk(t, id), std::memory_order_acq_rel, std::memory_order_relaxed))
                    continue;
                crash_point();
                s->start.store(cursor_pos(T), std::memory_order_relaxed);
                crash_point();
                std::uint64_t expect = T;
                // Release: start before tail leaves t (advance_free reads it).
                if (!c->tail.compare_exchange_strong(expect, cursor_pack(tnext(t), pos_add(c, cursor_pos(T), need)),
                                                     std::memory_order_release, std::memory_order_relaxed))
                    continue;  // a repairer took the slot over (it thought us dead): it is a tombstone now
                crash_point();
                if (c->closed.load(std::memory_order_acquire)) {
                    // Closed while we claimed: publish nothing.
                    s->len.store(kTombstone, std::memory_order_relaxed);
                    s->word.store(mk(tnext(t), 0), std::memory_order_release);
                    wake(c->put_epoch, c->consumers_waiting);
                    throw closed("shm::Queue: put on a closed queue");
                }
                return Claim{t, cursor_pos(T)};
            }
            if (diff(w, t) == 0 && owner_of(w) != 0) {
                // Another producer holds ticket t and is about to move tail.
                if (spins >= kSpin + kYield && repair_slot(c, t, w, id)) continue;
                if (backoff(spins)) continue;
                if (!sleep_on(c->get_epoch, c->producers_waiting, id,
                              [&] { return c->tail.load(std::memory_order_acquire) != T; }, d, kNapMs))
                    return std::nullopt;
            }
            continue;  // tail moved on since we read it
        }
        // Short of slots or bytes: free what consumers have released.
        std::uint64_t blocker;
        if (advance_free(c, F, &blocker)) continue;
        if (!wait) return std::nullopt;
        QueueSlot* b = slot_at(c, blocker);
        const std::uint64_t bw = b->word.load(std::memory_order_acquire);
        if (owner_of(bw) != 0 && spins >= kSpin + kYield && repair_slot(c, blocker, bw, id)) continue;
        if (backoff(spins)) continue;
        if (!sleep_on(c->get_epoch, c->producers_waiting, id,
                      [&] {
                          // seq_cst: see store_and_wake.
                          return b->word.load() != bw || c->free.load() != F || c->closed.load();
                      },
                      d))
            return std::nullopt;
    }
}

void publish(QueueControl* c, std::uint64_t t, std::size_t len) {
    crash_point();
    QueueSlot* s = slot_at(c, t);
    s->len.store(static_cast<std::uint32_t>(len), std::memory_order_relaxed);
    // Release: the payload and len before FULL; partner: the consumer's
    // acquire CAS of the word.
    store_and_wake(s->word, mk(tnext(t), 0), c->put_epoch, c->consumers_waiting);
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
    auto cl = claim_put(c_, id, units_of(c_->unit_shift, item.size()), d, true);
    if (!cl) return false;
    if (!item.empty()) std::memcpy(payload_at(c_, cl->pos), item.data(), item.size());
    publish(c_, cl->ticket, item.size());
    return true;
}

bool Queue::try_put(std::string_view item) {
    if (!fits(c_, item.size())) too_big(c_, "shm::Queue::put", item.size());
    std::uint32_t id = actor_id(c_);
    auto cl = claim_put(c_, id, units_of(c_->unit_shift, item.size()), detail::Deadline::never(), false);
    if (!cl) return false;
    if (!item.empty()) std::memcpy(payload_at(c_, cl->pos), item.data(), item.size());
    publish(c_, cl->ticket, item.size());
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

Queue::Reservation Queue::reserve() { return reserve(std::min<std::uint64_t>(c_->max_item, c_->max_bytes)); }

Queue::Reservation Queue::reserve(std::size_t n) {
    if (!fits(c_, n)) too_big(c_, "shm::Queue::reserve", n);
    std::uint32_t id = actor_id(c_);
    auto cl = claim_put(c_, id, units_of(c_->unit_shift, n), detail::Deadline::never(), true);
    return Reservation(this, cl->ticket, payload_at(c_, cl->pos), n);
}

Queue::Reservation::Reservation(Reservation&& o) noexcept : q_(o.q_), pos_(o.pos_), data_(o.data_), cap_(o.cap_) {
    o.q_ = nullptr;
}

void Queue::Reservation::commit(std::size_t len) {
    if (!q_) throw error(EINVAL, "shm::Queue::Reservation: already committed");
    if (len > cap_)
        throw error(EMSGSIZE, "shm::Queue::Reservation::commit: " + std::to_string(len) +
                                  " bytes is over the " + std::to_string(cap_) + " bytes reserved");
    publish(q_->c_, pos_, len);
    q_ = nullptr;
}

Queue::Reservation::~Reservation() {
    if (!q_) return;
    QueueSlot* s = slot_at(q_->c_, pos_);
    s->len.store(kTombstone, std::memory_order_relaxed);
    s->word.store(mk(tnext(pos_), 0), std::memory_order_release);
    wake(q_->c_->put_epoch, q_->c_->consumers_waiting);
}

// ---- get ------------------------------------------------------------------------------

namespace {
// Claim the next FULL slot. Returns its ticket, or nullopt when empty
// (after waiting until d) or closed and drained (*is_closed set).
std::optional<std::uint64_t> claim_get(QueueControl* c, std::uint32_t id, const detail::Deadline& d, bool wait,
                                       bool* is_closed) {
    int spins = 0;
    *is_closed = false;
    for (;;) {
        std::uint64_t pos = c->head.load(std::memory_order_acquire);
        QueueSlot* s = slot_at(c, pos);
        std::uint64_t w = s->word.load(std::memory_order_acquire);
        std::int64_t dif = diff(w, tnext(pos));
        if (dif == 0) {
            if (owner_of(w) == 0) {
                // Acquire: pairs with publish()'s release; the payload is ours.
                if (s->word.compare_exchange_weak(w, mk(tnext(pos), id), std::memory_order_acquire,
                                                  std::memory_order_relaxed)) {
                    crash_point();
                    advance_head(c, pos);
                    crash_point();
                    if (s->len.load(std::memory_order_relaxed) == kTombstone) {
                        s->word.store(mk(pos + c->capacity, 0), std::memory_order_release);
                        wake(c->get_epoch, c->producers_waiting);
                        continue;
                    }
                    return pos;
                }
            } else {
                advance_head(c, pos);
            }
            continue;
        }
        if (dif > 0) {
            // Ticket pos was taken by someone who did not move head on.
            advance_head(c, pos);
            continue;
        }
        // Empty here (FREE, or WRITING by a producer).
        if (c->closed.load(std::memory_order_acquire) && cursor_ticket(c->tail.load(std::memory_order_acquire)) == pos) {
            *is_closed = true;
            return std::nullopt;
        }
        if (!wait) return std::nullopt;
        if (owner_of(w) != 0 && spins >= kSpin + kYield && repair_slot(c, pos, w, id)) continue;
        if (backoff(spins)) continue;
        if (!sleep_on(c->put_epoch, c->consumers_waiting, id,
                      [&] { return s->word.load() != w || c->closed.load(); }, d))  // seq_cst: see store_and_wake
            return std::nullopt;
    }
}
}  // namespace

void Queue::release_view(std::uint64_t pos, std::uint32_t id) {
    crash_point();
    // Counted as taken before the slot is released, so that join() sees the
    // item either being got (READING) or taken.
    c_->actors[id - 1].taken.fetch_add(1, std::memory_order_relaxed);
    // Release: our copy-out is complete before the slot is released; the
    // producer that next writes these bytes acquires free, which was moved
    // past this slot by someone who acquired this word.
    store_and_wake(slot_at(c_, pos)->word, mk(pos + c_->capacity, 0), c_->get_epoch, c_->producers_waiting);
}

Queue::View Queue::get_view(const detail::Deadline& d, bool throw_closed) {
    std::uint32_t id = actor_id(c_);
    bool is_closed = false;
    auto pos = claim_get(c_, id, d, true, &is_closed);
    if (!pos) {
        if (is_closed && throw_closed) throw shm::closed("shm::Queue::get: the queue is closed and drained");
        return View{nullptr, 0, ~0ull, id};
    }
    QueueSlot* s = slot_at(c_, *pos);
    return View{payload_at(c_, s->start.load(std::memory_order_relaxed)), s->len.load(std::memory_order_relaxed), *pos,
                id};
}

bool Queue::get_until(std::string& out, const detail::Deadline& d) {
    View v = get_view(d, false);
    if (v.pos == ~0ull) return false;
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
    auto pos = claim_get(c_, id, detail::Deadline::never(), false, &is_closed);
    if (!pos) return std::nullopt;
    QueueSlot* s = slot_at(c_, *pos);
    std::string out(payload_at(c_, s->start.load(std::memory_order_relaxed)), s->len.load(std::memory_order_relaxed));
    release_view(*pos, id);
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
            // here (READING) or in `taken` below.
            const std::uint64_t T = c_->tail.load(std::memory_order_acquire);
            const std::uint64_t F = c_->free.load(std::memory_order_acquire);
            const std::int64_t n = ticket_diff(cursor_ticket(T), cursor_ticket(F));
            for (std::int64_t i = 0; i < n && i < static_cast<std::int64_t>(c_->capacity); ++i) {
                const std::uint64_t k = tnext(cursor_ticket(F), static_cast<std::uint64_t>(i));
                const std::uint64_t w = slot_at(c_, k)->word.load(std::memory_order_acquire);
                if (diff(w, tnext(k)) == 0 && owner_of(w) != 0 && actor_alive(c_, owner_of(w))) return false;
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
    const std::int64_t n = ticket_diff(cursor_ticket(c_->tail.load(std::memory_order_acquire)),
                                       c_->head.load(std::memory_order_acquire));
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
    if (ticket_diff(cursor_ticket(T), cursor_ticket(F)) <= 0) return 0;
    return std::uint64_t(pos_used(c_, cursor_pos(T), cursor_pos(F))) << c_->unit_shift;
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
