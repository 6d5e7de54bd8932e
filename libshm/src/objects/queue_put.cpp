// shm::Queue: the put path (see queue.cpp for the design).
#include "objects/queue_internal.hpp"

#include <cstring>

#include "shm/segment.hpp"

namespace shm {

using namespace queue_impl;

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
    return ticket_diff(t, tk(F)) < static_cast<std::int64_t>(item_limit(c)) && pos_used(c, end, pos_of(F)) <= c->ring_units;
}
[[gnu::noinline, gnu::cold]] void wait_room(QueueControl* c, std::uint64_t t, std::uint32_t end, std::uint32_t id) {
    struct W : SlotWaiter {
        const std::uint64_t t;
        const std::uint32_t end;
        std::uint64_t F = 0;
        W(QueueControl* q, std::uint64_t ticket, std::uint32_t e, std::uint32_t me)
            : SlotWaiter(q, me, q->get_epoch, q->producers_waiting), t(ticket), end(e) {}
        bool ready() {
            for (;;) {
                F = c->free.load(std::memory_order_acquire);
                if (has_room(c, t, end, F)) return true;
                std::uint64_t blocker;
                if (advance_free(c, F, &blocker)) continue;
                b.ticket = blocker;
                b.slot = slot_at(c, blocker);
                b.seen = b.slot->word.load(std::memory_order_acquire);
                return false;
            }
        }
        core::Sleep arm() {
            return sleep.arm([&] { return b.slot->word.load() != b.seen || c->free.load() != F; });
        }
    } w(c, t, end, id);
    core::wait(w, detail::Deadline::never(), core::kQueueNap);
}

[[gnu::always_inline]] inline void publish(QueueControl* c, const Claim& cl, std::uint32_t len) {
    crash_point();
    QueueSlot* s = slot_at(c, cl.ticket);
    s->item.store(detail::slot_item(cl.pos, len), std::memory_order_relaxed);
    crash_point();
    finished_put(c, cl.ticket);
    // Release: the payload, start and len before the word; partner: the
    // consumer's acquire load of the word.
    store_and_wake_one_consumer(s->word, mk(tnext(cl.ticket), cl.end, 0), c);
}

// Closed while we claimed ticket cl.ticket: publish nothing (a tombstone).
[[noreturn, gnu::noinline, gnu::cold]] void closed_claim(QueueControl* c, const Claim& cl) {
    QueueSlot* s = slot_at(c, cl.ticket);
    s->item.store(detail::slot_item(cl.pos, kTombstone), std::memory_order_relaxed);
    finished_put(c, cl.ticket);
    s->word.store(mk(tnext(cl.ticket), cl.end, 0), std::memory_order_seq_cst);
    wake_all_consumers(c);
    throw closed("shm::Queue: put on a closed queue");
}

// After the tail CAS that claimed ticket cl.ticket: wait for its room if
// the CAS was an ABA one, and publish nothing if the queue closed meanwhile
// (throws closed).
inline void claimed(QueueControl* c, std::uint32_t id, const Claim& cl) {
    crash_point();
    if (!has_room(c, cl.ticket, cl.end, c->free.load(std::memory_order_acquire))) wait_room(c, cl.ticket, cl.end, id);
    crash_point();
    if (c->closed.load(std::memory_order_acquire)) closed_claim(c, cl);
}

// One attempt to claim the next ticket and `need` units of bytes into cl,
// made again at once while the cursors move under it. True once claimed
// (throws closed); false when short of slots or bytes: `blocked` is the
// first slot not yet released and F the free cursor seen.
[[gnu::always_inline]] inline bool try_claim_put(QueueControl* c, std::uint32_t id, std::uint32_t need, Claim& cl, Blocker& blocked,
                          std::uint64_t& F) {
    const auto cap = static_cast<std::int64_t>(c->capacity);
    const auto limit = static_cast<std::int64_t>(item_limit(c));
    Backoff backoff;
    for (;;) {
        if (c->closed.load(std::memory_order_acquire)) throw closed("shm::Queue: put on a closed queue");
        std::uint64_t T = c->tail.load(std::memory_order_acquire);
        F = c->free.load(std::memory_order_acquire);
        const std::uint64_t t = tk(T);
        const std::int64_t n = ticket_diff(t, tk(F));
        if (n < 0 || n > cap) continue;  // free moved past the tail we read: read again
        if (n < limit && pos_used(c, pos_of(T), pos_of(F)) + need <= c->ring_units) {
            if ((owner_of(T) & kIdMask) != id || t_actor.last_put != tprev(t)) hand_over(c, T, true);
            cl = Claim{t, pos_of(T), pos_add(c, pos_of(T), need)};
            if (!c->tail.compare_exchange_weak(T, mk(tnext(t), cl.end, id), std::memory_order_acq_rel,
                                               std::memory_order_relaxed)) {
                backoff.failed();
                continue;
            }
            claimed(c, id, cl);
            return true;
        }
        // Short of slots or bytes: free what consumers have released.
        std::uint64_t k;
        if (advance_free(c, F, &k)) continue;
        blocked.ticket = k;
        blocked.slot = slot_at(c, k);
        blocked.seen = blocked.slot->word.load(std::memory_order_acquire);
        return false;
    }
}

// Waits until there is room to claim, or until d.
[[gnu::noinline]] bool wait_to_put(QueueControl* c, std::uint32_t id, std::uint32_t need, const detail::Deadline& d,
                                   Claim& cl) {
    struct W : SlotWaiter {
        const std::uint32_t need;
        Claim& cl;
        std::uint64_t F = 0;
        W(QueueControl* q, std::uint32_t me, std::uint32_t n, Claim& out)
            : SlotWaiter(q, me, q->get_epoch, q->producers_waiting), need(n), cl(out) {}
        bool ready() { return try_claim_put(c, id, need, cl, b, F); }
        core::Sleep arm() {
            // seq_cst loads: see store_and_wake.
            return sleep.arm([&] { return b.slot->word.load() != b.seen || c->free.load() != F || c->closed.load(); });
        }
    } w(c, id, need, cl);
    return core::wait(w, d, core::kQueuePutWait) == core::Waited::ready;
}

// Claim the next ticket and `need` units of bytes into cl. Returns false if
// the queue stays full (of items or of bytes) until d, or at once if !wait.
// Throws closed.
bool claim_put(QueueControl* c, std::uint32_t id, std::uint32_t need, const detail::Deadline& d, bool wait,
               Claim& cl) {
    Blocker blocked;
    std::uint64_t F;
    if (try_claim_put(c, id, need, cl, blocked, F)) return true;
    return wait && wait_to_put(c, id, need, d, cl);
}

[[noreturn]] void too_big(const QueueControl* c, const char* what, std::size_t len) {
    if (len > c->max_item)
        throw error(EMSGSIZE, std::string(what) + ": item of " + std::to_string(len) +
                                  " bytes is over the queue's max_item_size of " + std::to_string(c->max_item));
    throw error(EMSGSIZE, std::string(what) + ": item of " + std::to_string(len) +
                              " bytes is over the queue's max_bytes of " + std::to_string(c->max_bytes));
}
inline bool fits(const QueueControl* c, std::size_t len) { return len <= c->max_item && len <= c->max_bytes; }

// Put one item: claim its ticket and bytes (waiting until d, or not at all
// if !wait), copy it in and publish it. False if the queue stayed full.
// The claim's first try and the publish are inline: one call per put.
[[gnu::always_inline]] inline bool put_one(QueueControl* c, std::string_view item, const detail::Deadline& d,
                                           bool wait) {
    if (!fits(c, item.size())) too_big(c, "shm::Queue::put", item.size());
    const std::uint32_t id = actor_id(c);
    const std::uint32_t need = units_of(c->unit_shift, item.size());
    Claim cl;
    Blocker blocked;
    std::uint64_t F;
    if (!try_claim_put(c, id, need, cl, blocked, F) && !(wait && wait_to_put(c, id, need, d, cl))) return false;
    if (!item.empty()) std::memcpy(payload_at(c, cl.pos), item.data(), item.size());
    publish(c, cl, static_cast<std::uint32_t>(item.size()));
    return true;
}

}  // namespace

bool Queue::put_until(std::string_view item, const detail::Deadline& d) { return put_one(c_, item, d, true); }

bool Queue::try_put(std::string_view item) { return put_one(c_, item, detail::Deadline::never(), false); }

void Queue::put_nowait(std::string_view item) {
    if (!try_put(item))
        throw shm::full("shm::Queue::put_nowait: the queue is full (" + std::to_string(c_->capacity) +
                        " items, or " + std::to_string(c_->max_bytes) + " bytes)");
}

namespace {

// Closed while we claimed `count` tickets from cl.ticket: publish nothing
// (tombstones, each ending where the batch does).
[[noreturn, gnu::noinline, gnu::cold]] void closed_batch(QueueControl* c, const Claim& cl, std::uint32_t count) {
    for (std::uint32_t i = 0; i < count; ++i) {
        const std::uint64_t t = tnext(cl.ticket, i);
        QueueSlot* s = slot_at(c, t);
        s->item.store(detail::slot_item(cl.end, kTombstone), std::memory_order_relaxed);
        finished_put(c, t);
        s->word.store(mk(tnext(t), cl.end, 0), std::memory_order_seq_cst);
    }
    wake_all_consumers(c);
    throw closed("shm::Queue: put on a closed queue");
}

// One attempt to claim tickets for items[from], items[from + 1], ... with
// one CAS of tail: as many as have room now (slots and bytes), in one run
// of tickets whose bytes follow one another. Returns how many (0 when not
// even the first has room: put it alone, which waits). A claim of more
// than one ticket marks the cursor a batch (kBatchFlag): the next claimer
// hands over all of it (mark_down). Throws closed.
std::uint32_t try_claim_put_many(QueueControl* c, std::uint32_t id, const std::vector<std::string>& items,
                                 std::size_t from, Claim& cl) {
    const auto cap = static_cast<std::int64_t>(c->capacity);
    const auto limit = static_cast<std::int64_t>(item_limit(c));
    const std::size_t want = batch_claims(c) ? items.size() - from : 1;
    Backoff backoff;
    bool freed = false;
    for (;;) {
        if (c->closed.load(std::memory_order_acquire)) throw closed("shm::Queue: put on a closed queue");
        std::uint64_t T = c->tail.load(std::memory_order_acquire);
        std::uint64_t F = c->free.load(std::memory_order_acquire);
        const std::uint64_t t = tk(T);
        const std::int64_t n = ticket_diff(t, tk(F));
        if (n < 0 || n > cap) continue;  // free moved past the tail we read: read again
        const std::uint32_t used = pos_used(c, pos_of(T), pos_of(F));
        std::uint32_t count = 0, units = 0;
        while (count < want && n + count < limit) {
            const std::uint32_t u = units_of(c->unit_shift, items[from + count].size());
            if (used + units + u > c->ring_units) break;
            units += u;
            ++count;
        }
        // Short of room for all of them: once, free what consumers have
        // released, and count again.
        std::uint64_t blocker;
        if (count < want && !freed && advance_free(c, F, &blocker)) {
            freed = true;
            continue;
        }
        if (count == 0) return 0;
        if ((owner_of(T) & kIdMask) != id || t_actor.last_put != tprev(t)) hand_over(c, T, true);
        cl = Claim{t, pos_of(T), pos_add(c, pos_of(T), units)};
        if (!c->tail.compare_exchange_weak(T, mk(tnext(t, count), cl.end, count > 1 ? id | kBatchFlag : id),
                                           std::memory_order_acq_rel, std::memory_order_relaxed)) {
            backoff.failed();
            continue;
        }
        crash_point();
        // An ABA CAS (see claimed()): wait for the last ticket's room.
        const std::uint64_t last = tnext(t, count - 1);
        if (!has_room(c, last, cl.end, c->free.load(std::memory_order_acquire))) wait_room(c, last, cl.end, id);
        crash_point();
        if (c->closed.load(std::memory_order_acquire)) closed_batch(c, cl, count);
        return count;
    }
}

}  // namespace

std::size_t Queue::put_many(const std::vector<std::string>& items) {
    // Refuse before putting any: a refusal changes nothing.
    for (const auto& it : items)
        if (!fits(c_, it.size())) too_big(c_, "shm::Queue::put_many", it.size());
    const std::uint32_t id = actor_id(c_);
    for (std::size_t i = 0; i < items.size();) {
        Claim cl;
        const std::uint32_t count = try_claim_put_many(c_, id, items, i, cl);
        if (count == 0) {
            // No room even for one: wait for it as put does.
            const std::string& it = items[i++];
            claim_put(c_, id, units_of(c_->unit_shift, it.size()), detail::Deadline::never(), true, cl);
            if (!it.empty()) std::memcpy(payload_at(c_, cl.pos), it.data(), it.size());
            publish(c_, cl, static_cast<std::uint32_t>(it.size()));
            continue;
        }
        // Each ticket in order (a batch is finished from its first ticket
        // up: see mark_down), its item copied, described and published with
        // a release store; the last store also wakes a sleeping consumer,
        // which passes the wake on while items are left.
        std::uint32_t pos = cl.pos;
        for (std::uint32_t j = 0; j < count; ++j, ++i) {
            const std::string& it = items[i];
            const std::uint64_t t = tnext(cl.ticket, j);
            const std::uint32_t end = pos_add(c_, pos, units_of(c_->unit_shift, it.size()));
            if (!it.empty()) std::memcpy(payload_at(c_, pos), it.data(), it.size());
            crash_point();
            QueueSlot* s = slot_at(c_, t);
            s->item.store(detail::slot_item(pos, static_cast<std::uint32_t>(it.size())), std::memory_order_relaxed);
            finished_put(c_, t);
            if (j + 1 < count)
                s->word.store(mk(tnext(t), end, 0), std::memory_order_release);
            else
                store_and_wake_one_consumer(s->word, mk(tnext(t), end, 0), c_);
            pos = end;
        }
    }
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

}  // namespace shm
