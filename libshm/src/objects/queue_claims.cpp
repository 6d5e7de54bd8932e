// A queue's actors (the processes that use it) and the claims they leave:
// actor ids and whether their processes live (core/liveness.hpp), the
// repair of a claim whose claimer died, and freeing the bytes of released
// slots. See queue.cpp for the design.
#include "objects/queue_internal.hpp"

namespace shm::queue_impl {

bool actor_alive(QueueControl* c, std::uint32_t owner) {
    const std::uint32_t id = owner & kIdMask;
    if (id == 0 || id > Queue::kMaxProcesses) return false;
    return core::identity::alive(c->actors[id - 1].who);
}

namespace {
std::mutex g_register_mutex;
}  // namespace
// Fork generation + 1 of the last successful membarrier registration.
std::atomic<unsigned> g_membarrier_gen{0};

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
    std::atomic_thread_fence(std::memory_order_seq_cst);
    wake_all_consumers(c);
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

void mark_down(QueueControl* c, std::uint64_t k, std::uint32_t x, bool put, std::uint32_t end) {
    for (std::uint32_t i = 0; i < c->capacity;) {
        QueueSlot* s = slot_at(c, k);
        std::uint64_t w = s->word.load(std::memory_order_acquire);
        if (tk(w) != (put ? k : tnext(k))) return;  // finished, or not claimed
        const std::uint32_t o = owner_of(w);
        if (o == 0) {
            // A claim to get keeps the end its slot has. On a lost CAS
            // (finished, or marked by another) look at the slot again.
            if (!s->word.compare_exchange_strong(w, mk(tk(w), put ? end : pos_of(w), x), std::memory_order_acq_rel,
                                                 std::memory_order_relaxed))
                continue;
            crash_point();
        } else if (o != x) {
            return;
        }
        ++i;
        k = tprev(k);
    }
}

// Repair the slot of ticket k, seen as w, if a dead process holds it: a
// claim to put (unpublished, with tail past k) or a claim to get (published,
// with head past k). Returns true if it repaired.
bool repair_slot(QueueControl* c, std::uint64_t k, std::uint64_t w, std::uint32_t me) {
    const bool put_claim = tk(w) == k;
    if (!put_claim && tk(w) != tnext(k)) return false;
    std::uint32_t owner = owner_of(w), end = pos_of(w);
    if (owner == 0) {
        const std::uint64_t cur = (put_claim ? c->tail : c->head).load(std::memory_order_acquire);
        if (owner_of(cur) & kBatchFlag) {
            // The cursor names a batch, which may hold k: hand it over
            // (whether its claimer lives or not), then look again.
            hand_over(c, cur, put_claim);
            w = slot_at(c, k)->word.load(std::memory_order_acquire);
            if (tk(w) != (put_claim ? k : tnext(k))) return false;
            owner = owner_of(w);
            end = pos_of(w);
        } else if (tk(cur) == tnext(k)) {
            // Named by its cursor: the latest claim.
            owner = owner_of(cur);
            if (put_claim) end = pos_of(cur);
        }
        // Else the hand-over is under way, or k is not claimed at all.
        if (owner == 0) return false;
    }
    if ((owner & kIdMask) == me || actor_alive(c, owner)) return false;
    // A claimer's own claim: first name it below, where a batch of its may
    // still have slots naming nobody, so that no walk stops at this slot
    // once it is repaired (a repairer's mark has done so already).
    if (!(owner & kRepairFlag)) mark_down(c, tprev(k), owner, put_claim, end);
    if (!(put_claim ? tombstone_dead(c, k, w, end, me) : release_dead(c, k, w))) return false;
    // The rest of a dead batch above k, while its slots name the same owner.
    if (owner & kRepairFlag) return true;
    for (std::uint32_t i = 1; i < c->capacity; ++i) {
        const std::uint64_t n = tnext(k, i);
        const std::uint64_t nw = slot_at(c, n)->word.load(std::memory_order_acquire);
        if (tk(nw) != (put_claim ? n : tnext(n)) || owner_of(nw) != owner) break;
        if (!(put_claim ? tombstone_dead(c, n, nw, pos_of(nw), me) : release_dead(c, n, nw))) break;
    }
    return true;
}

namespace {
// Under id, taken from a dead process: repair what that process left
// claimed before the id means us, and drop its waiter bits. First the
// claims its cursors still name (a hand-over may move one into its slot
// meanwhile: the scan below finds it there).
void repair_leftovers(QueueControl* c, std::uint32_t id) {
    const std::uint64_t T = c->tail.load(std::memory_order_acquire);
    const std::uint64_t H0 = c->head.load(std::memory_order_acquire);
    // A batch a cursor names: hand it over, for the scan below to find.
    if (owner_of(T) == (id | kBatchFlag)) hand_over(c, T, true);
    if (owner_of(H0) == (id | kBatchFlag)) hand_over(c, H0, false);
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
        // A claim to put holds its own ticket (≡ k), a claim to get the
        // next one.
        const std::uint64_t t = tk(sw);
        if (((t - k) & (c->capacity - 1)) == 0)
            tombstone_dead(c, t, sw, pos_of(sw), id);
        else
            release_dead(c, tprev(t), sw);
    }
    const std::uint64_t bit = ~(1ull << (id - 1));
    c->consumers_waiting.fetch_and(bit);
    c->producers_waiting.fetch_and(bit);
    c->joiners_waiting.fetch_and(bit);
}
}  // namespace

std::uint32_t register_actor(QueueControl* c) {
    // One registration at a time in this process (IdentityRecord's takers
    // must be serialised within a process).
    std::lock_guard<std::mutex> g(g_register_mutex);
    const core::ProcessId me = core::liveness::self();
    for (std::uint32_t i = 0; i < Queue::kMaxProcesses; ++i) {
        const core::identity::Holder h = core::identity::read(c->actors[i].who);
        if (!h.pending && h.id == me) return i + 1;  // registered already (another mapping)
    }
    for (std::uint32_t i = 0; i < Queue::kMaxProcesses; ++i) {
        QueueActor& a = c->actors[i];
        const core::identity::Holder h = core::identity::read(a.who);
        // Counters reset while the record is pending: nothing counts them yet.
        if (!core::identity::take(a.who, h, me, [&] {
                a.taken.store(0, std::memory_order_relaxed);
                a.done.store(0, std::memory_order_relaxed);
            }))
            continue;
        if (!h.id.empty()) repair_leftovers(c, i + 1);
        return i + 1;
    }
    throw error(EUSERS, "shm::Queue: more than " + std::to_string(Queue::kMaxProcesses) +
                            " live processes use this queue");
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

}  // namespace shm::queue_impl
