// Private to the queue's files (queue.cpp, queue_claims.cpp, queue_put.cpp,
// queue_get.cpp): the packing of slot words and cursors, the slot and
// payload of a ticket, the calling thread's actor id, waking and sleeping.
// Everything a put or a get runs per item is inline here.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <mutex>

#include "core/wait.hpp"
#include "objects/queue_layout.hpp"
#include "platform/platform.hpp"
#include "platform/testing.hpp"
#include "shm/queue.hpp"

namespace shm::queue_impl {

using detail::QueueActor;
using detail::QueueControl;
using detail::QueueSlot;
using detail::cursor_owner;
using detail::cursor_pos;
using detail::cursor_ticket;
using detail::kTicketMask;
using detail::ticket_diff;
using testing::crash_point;

constexpr std::uint32_t kTombstone = detail::kQueueTombstone;
// A repairer's mark in the owner field, next to its id.
constexpr std::uint32_t kRepairFlag = detail::kQueueRepairFlag;
constexpr std::uint32_t kIdMask = 0x7f;
// In a cursor: its latest claim took more than one ticket (a batch).
constexpr std::uint32_t kBatchFlag = detail::kQueueBatchFlag;
static_assert(Queue::kMaxProcesses <= kIdMask);
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

// Whether the process an actor id (or a slot's owner field) names is alive
// (an actor record being taken counts as dead: see core::IdentityRecord).
bool actor_alive(QueueControl* c, std::uint32_t owner);

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
    std::uint64_t tag = 0;    // the actor record's tag and start time as
    std::uint64_t start = 0;  // this process took it
    std::uint64_t last_put = ~0ull;  // no ticket: tickets are below 2^32
    std::uint64_t last_get = ~0ull;
    bool asym = false;
};
inline thread_local ActorCache t_actor;

// Register this process for membarrier once per fork generation.
bool membarrier_ready();

// Wake every sleeper in mask, if any.
inline void wake_sleepers(std::atomic<std::uint32_t>& epoch, std::atomic<std::uint64_t>& mask) {
    // Take every sleeper's bit and wake them all: one wake per sleep, not
    // one per operation while a sleeper has yet to run. A sleeper sets its
    // bit again before it sleeps again.
    if (mask.exchange(0, std::memory_order_seq_cst) == 0) return;
    epoch.fetch_add(1, std::memory_order_seq_cst);
    core::wake(epoch, INT_MAX);
}

// Ring the doorbell of actor index i (id i + 1): every thread of that
// process sleeping in a get wakes.
inline void ring(QueueControl* c, unsigned i) {
    c->actors[i].doorbell.fetch_add(1, std::memory_order_seq_cst);
    core::wake(c->actors[i].doorbell, INT_MAX);
}

// Wake one sleeping consumer, if any: an item was published, and one
// consumer takes it (a directed wake, where a broadcast would wake every
// sleeper to find one item). It takes the lowest bit it finds set; a
// consumer that wakes to an item and leaves more behind for other sleepers
// passes the wake on (pass_wake_on). A bit of a consumer that died asleep
// costs one wake: the next item wakes another, and sleepers look at least
// every 50 ms.
inline void wake_one_consumer(QueueControl* c, std::uint64_t mask) {
    while (mask) {
        const std::uint64_t bit = mask & (~mask + 1);
        const std::uint64_t old = c->consumers_waiting.fetch_and(~bit, std::memory_order_seq_cst);
        if (old & bit) {
            ring(c, static_cast<unsigned>(__builtin_ctzll(bit)));
            return;
        }
        mask = old & ~bit;
    }
}

// Wake every sleeping consumer (close, a repair).
inline void wake_all_consumers(QueueControl* c) {
    std::uint64_t m = c->consumers_waiting.exchange(0, std::memory_order_seq_cst);
    for (; m; m &= m - 1) ring(c, static_cast<unsigned>(__builtin_ctzll(m)));
}

// After a change a sleeper may wait for: wake the sleepers of mask.
inline void wake(std::atomic<std::uint32_t>& epoch, std::atomic<std::uint64_t>& mask) {
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
inline void store_and_wake(std::atomic<std::uint64_t>& word, std::uint64_t value, std::atomic<std::uint32_t>& epoch,
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

// store_and_wake() for a slot that now holds an item: wake one consumer.
inline void store_and_wake_one_consumer(std::atomic<std::uint64_t>& word, std::uint64_t value, QueueControl* c) {
    std::uint64_t m;
#if defined(__SANITIZE_THREAD__)
    word.store(value, std::memory_order_release);
    m = c->consumers_waiting.fetch_or(0, std::memory_order_seq_cst);
#else
    if (t_actor.asym) {
        word.store(value, std::memory_order_release);
        std::atomic_signal_fence(std::memory_order_seq_cst);
        m = c->consumers_waiting.load(std::memory_order_relaxed);
    } else {
        word.store(value, std::memory_order_seq_cst);
        m = c->consumers_waiting.load(std::memory_order_seq_cst);
    }
#endif
    if (m) wake_one_consumer(c, m);
}

// A queue waiter sleeps on an epoch, or a consumer on its doorbell
// (core::wait()'s arm and disarm): it sets its bit in the waiters mask,
// fences the wakers that skip their fence (see store_and_wake), reads the
// word, and sleeps on it unless what it waits for has changed meanwhile.
// Another thread of this process may share the bit: clearing it makes that
// one look again.
struct EpochSleep {
    std::atomic<std::uint32_t>& epoch;
    std::atomic<std::uint64_t>& mask;
    const std::uint64_t bit;
    bool armed = false;  // it has slept (or tried to) at least once
    EpochSleep(std::atomic<std::uint32_t>& e, std::atomic<std::uint64_t>& m, std::uint32_t id)
        : epoch(e), mask(m), bit(1ull << (id - 1)) {}

    template <class Changed>
    core::Sleep arm(Changed&& changed) {
        core::Sleep s;
        armed = true;
        mask.fetch_or(bit, std::memory_order_seq_cst);
#if !defined(__SANITIZE_THREAD__)
        // Where the kernel has no membarrier nobody registered, so nobody
        // skips; where it refuses us alone (a seccomp filter), poll often
        // instead.
        const int e = platform::membarrier_all();
        if (e != 0 && e != ENOSYS && e != EINVAL) s.poll = core::kQueueUnfencedPoll;
#endif
        s.word = &epoch;
        s.expected = epoch.load(std::memory_order_seq_cst);
        s.skip = changed();
        return s;
    }
    void disarm() { mask.fetch_and(~bit, std::memory_order_seq_cst); }
};

// After a claim's compare-and-swap lost to another claimer's: pause before
// the next try, twice as long after each loss in a row, up to kMaxPauses.
// Two producers (or two consumers) that run at once on two CPUs otherwise
// pull the cursor's cache line to and fro on every try and each claims
// little; backing off lets the winner make a run of claims with the line
// in its cache. A loss means another claim succeeded: the queue moves
// meanwhile, and no state is held while pausing.
struct Backoff {
    static constexpr unsigned kMaxPauses = 1024;  // some tens of microseconds at most
    unsigned n = 0;
    void failed() {
        n = n ? std::min(n * 2, kMaxPauses) : 1;
        for (unsigned i = 0; i < n; ++i) platform::cpu_relax();
    }
};

// Repairs of claims left by dead processes (queue_claims.cpp).
bool repair_slot(QueueControl* c, std::uint64_t k, std::uint64_t w, std::uint32_t me);

// What holds a queue waiter back: the slot of one ticket, whose word it saw.
struct Blocker {
    std::uint64_t ticket = 0;
    QueueSlot* slot = nullptr;
    std::uint64_t seen = 0;
};

// The part every queue waiter shares (the slow path of a put or a get: the
// fast path tries once without one): it is blocked by a slot, and its
// liveness re-check repairs that slot if a dead process holds it.
struct SlotWaiter {
    QueueControl* c;
    std::uint32_t id;
    EpochSleep sleep;
    Blocker b;

    SlotWaiter(QueueControl* q, std::uint32_t me, std::atomic<std::uint32_t>& epoch, std::atomic<std::uint64_t>& mask)
        : c(q), id(me), sleep(epoch, mask, me) {}
    bool recheck() { return repair_slot(c, b.ticket, b.seen, id); }
    void disarm() { sleep.disarm(); }
    // Changes when the blocking slot, or which slot blocks, changes (as of
    // the last ready()): core::yield_briefly() tells a peer's turn from a
    // stranger's by it.
    std::uint64_t progress() const { return b.seen ^ b.ticket; }
};

// This process's actor id in c, registered on first use (queue_claims.cpp).
std::uint32_t register_actor(QueueControl* c);

inline std::uint32_t actor_id(QueueControl* c) {
    unsigned gen = platform::fork_generation();
    // The record still names this process: its tag (generation and pid) and
    // its start time are ours (a dead process that had our pid, in a queue
    // now mapped at the same address, has another start time).
    if (t_actor.c == c && t_actor.gen == gen &&
        c->actors[t_actor.id - 1].who.tag.load(std::memory_order_relaxed) == t_actor.tag &&
        c->actors[t_actor.id - 1].who.start_time.load(std::memory_order_relaxed) == t_actor.start)
        return t_actor.id;
    // Registered before the id is used, so that our stores that skip their
    // fence are fenced by sleepers (see store_and_wake).
    const bool asym = membarrier_ready();
    std::uint32_t id = register_actor(c);
    ActorCache a;
    a.c = c;
    a.gen = gen;
    a.id = id;
    a.tag = c->actors[id - 1].who.tag.load(std::memory_order_relaxed);
    a.start = c->actors[id - 1].who.start_time.load(std::memory_order_relaxed);
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

// Move free past the slots consumers have released (queue_claims.cpp).
bool advance_free(QueueControl* c, std::uint64_t F, std::uint64_t* blocker);

// Whether the queue may take batch claims: it was made by a library that
// knows them (see kQueueMagicSingle).
inline bool batch_claims(const QueueControl* c) { return c->magic == kQueueMagic; }

// Name owner x in the slots of its claims from ticket k down that are still
// in flight (to put: unpublished; to get: published) and name nobody; a
// claim to put is marked as ending at `end` (a batch's tickets all end
// where the batch does: a repair makes them tombstones together). It goes
// on past slots that already name x and stops at the first slot that is
// not in flight or names another. Claims are handed over before a cursor
// moves past them, so the only in-flight slots naming nobody are those of
// the claim a cursor names; a batch's claimer finishes its tickets in
// order, and a repairer marks below a slot before it repairs it, so no such
// slot lies below one that stops the walk (queue.cpp, design note).
void mark_down(QueueControl* c, std::uint64_t k, std::uint32_t x, bool put, std::uint32_t end);

// Hand the latest claim a cursor names (cur) over to its slot, if that
// claim is still in flight: to put (unpublished) or to get (published).
inline void hand_over(QueueControl* c, std::uint64_t cur, bool put) {
    const std::uint32_t x = owner_of(cur) & kIdMask;
    if (x == 0) return;
    const std::uint64_t k = tprev(tk(cur));
    if (owner_of(cur) & kBatchFlag) {
        mark_down(c, k, x, put, pos_of(cur));
        return;
    }
    QueueSlot* s = slot_at(c, k);
    std::uint64_t w = s->word.load(std::memory_order_acquire);
    if (owner_of(w) != 0 || tk(w) != (put ? k : tnext(k))) return;  // finished, or handed over
    // A claim to put hands over where its bytes end (where tail says the
    // next ticket's begin); a claim to get keeps the end its slot has.
    s->word.compare_exchange_strong(w, mk(tk(w), put ? pos_of(cur) : pos_of(w), x), std::memory_order_acq_rel,
                                    std::memory_order_relaxed);
}

// Repairs of claims left by dead processes (queue_claims.cpp).
bool tombstone_dead(QueueControl* c, std::uint64_t k, std::uint64_t w, std::uint32_t end, std::uint32_t me);
bool release_dead(QueueControl* c, std::uint64_t k, std::uint64_t w);

// Whether a slot's item (start, len) lies inside the ring and its overhang.
inline bool item_ok(const QueueControl* c, std::uint64_t item) {
    const std::uint32_t start = detail::item_start(item), len = detail::item_len(item);
    return start < 2ull * c->ring_units && len <= c->max_item && len <= c->max_bytes;
}

}  // namespace shm::queue_impl
