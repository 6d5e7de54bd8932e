// shm::Queue: the get path, task_done() and join() (see queue.cpp for the design).
#include "objects/queue_internal.hpp"

#include <cstring>

#include "shm/segment.hpp"

namespace shm {

using namespace queue_impl;

namespace {
// Wait until ticket h, claimed, is published. Only needed after a head CAS
// that succeeded on a value 2^32 tickets old (see the design note); then
// the ticket is ours and we wait for its item.
[[gnu::noinline, gnu::cold]] void wait_published(QueueControl* c, std::uint64_t h, std::uint32_t id) {
    struct W : SlotWaiter {
        W(QueueControl* q, std::uint64_t t, std::uint32_t me)
            : SlotWaiter(q, me, q->actors[me - 1].doorbell, q->consumers_waiting) {
            b.ticket = t;
            b.slot = slot_at(q, t);
        }
        bool ready() {
            b.seen = b.slot->word.load(std::memory_order_acquire);
            return tk(b.seen) == tnext(b.ticket);
        }
        core::Sleep arm() {
            return sleep.arm([&] { return b.slot->word.load() != b.seen; });
        }
    } w(c, h, id);
    core::wait(w, detail::Deadline::never(), core::kQueueNap);
}

// Release slot s, of ticket h, got (or skipped) by this process.
inline void release_slot(QueueControl* c, std::uint64_t h, QueueSlot* s) {
    const std::uint32_t end = pos_of(s->word.load(std::memory_order_relaxed));
    finished_get(c, h);
    // Release: our copy-out is complete before the slot is released; the
    // producer that next writes these bytes acquires free, which was moved
    // past this slot by someone who acquired this word.
    store_and_wake(s->word, mk(tnext(h, c->capacity), end, 0), c->get_epoch, c->producers_waiting);
}

constexpr std::uint64_t kNoTicket = ~0ull;

// A claimed item: its ticket and its slot (kNoTicket and null: none).
struct Got {
    std::uint64_t ticket = kNoTicket;
    QueueSlot* slot = nullptr;
};

// Count the item of g as taken by actor id, then release its slot. Counted
// before the slot is released, so that join() sees the item either being
// got or taken.
inline void release_got(QueueControl* c, std::uint32_t id, const Got& g) {
    crash_point();
    c->actors[id - 1].taken.fetch_add(1, std::memory_order_relaxed);
    crash_point();
    release_slot(c, g.ticket, g.slot);
}

// An item whose place is outside the ring: the slot is released (the queue
// moves past it) and the get reports the corruption.
[[noreturn, gnu::noinline, gnu::cold]] void bad_got(QueueControl* c, std::uint32_t id, const Got& g,
                                                    std::uint64_t item) {
    release_got(c, id, g);
    throw corrupted("shm::Queue: item " + std::to_string(g.ticket) + " says it has " +
                    std::to_string(detail::item_len(item)) + " bytes at " + std::to_string(detail::item_start(item)) +
                    ", outside the queue's ring; the queue is corrupt");
}

// An item into a caller's buffer. A buffer reused for items of one size
// (the usual case) takes a plain copy: std::string::assign() runs about 70
// instructions for a 64-byte item, a fifth of a get's own work.
inline void copy_out(std::string& out, const void* data, std::size_t len) {
    if (out.size() == len) {
        if (len) std::memcpy(out.data(), data, len);
    } else {
        out.assign(static_cast<const char*>(data), len);
    }
}

// A consumer that slept and got an item: if the next item is published too
// and a consumer sleeps, wake one (a producer wakes one consumer per item,
// and items published out of order, or a wake that went to a consumer that
// then timed out, could leave a published item beside sleepers).
void pass_wake_on(QueueControl* c) {
    const std::uint64_t m = c->consumers_waiting.load(std::memory_order_seq_cst);
    if (m == 0) return;
    const std::uint64_t h = tk(c->head.load(std::memory_order_acquire));
    if (tk(slot_at(c, h)->word.load(std::memory_order_acquire)) == tnext(h)) wake_one_consumer(c, m);
}

// One attempt to claim the next published item, made again at once while
// head moves under it. True once it claimed one (into got) or
// found the queue closed and drained (is_closed); false when empty:
// `blocked` is the slot at head.
[[gnu::always_inline]] inline bool try_claim_get(QueueControl* c, std::uint32_t id, Got& got, bool& is_closed, Blocker& blocked) {
    Backoff backoff;
    for (;;) {
        std::uint64_t H = c->head.load(std::memory_order_acquire);
        const std::uint64_t h = tk(H);
        QueueSlot* s = slot_at(c, h);
        // Acquire: pairs with publish()'s release; the payload is ours.
        const std::uint64_t w = s->word.load(std::memory_order_acquire);
        if (tk(w) == tnext(h)) {
            // Published, and head is at h: nobody has claimed it yet.
            if ((owner_of(H) & kIdMask) != id || t_actor.last_get != tprev(h)) hand_over(c, H, false);
            if (!c->head.compare_exchange_weak(H, mk(tnext(h), 0, id), std::memory_order_acq_rel,
                                               std::memory_order_relaxed)) {
                backoff.failed();
                continue;
            }
            crash_point();
            if (tk(s->word.load(std::memory_order_acquire)) != tnext(h)) wait_published(c, h, id);
            if (detail::item_len(s->item.load(std::memory_order_relaxed)) == kTombstone) {
                release_slot(c, h, s);
                continue;
            }
            got = Got{h, s};
            return true;
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
            is_closed = true;
            return true;
        }
        blocked.ticket = h;
        blocked.slot = s;
        blocked.seen = w;
        return false;
    }
}

// Waits until an item is published or the queue is closed and drained, or until d.
[[gnu::noinline]] bool wait_to_get(QueueControl* c, std::uint32_t id, const detail::Deadline& d, Got& got,
                                   bool& is_closed) {
    struct W : SlotWaiter {
        Got& got;
        bool& is_closed;
        W(QueueControl* q, std::uint32_t me, Got& g, bool& cl)
            : SlotWaiter(q, me, q->actors[me - 1].doorbell, q->consumers_waiting), got(g), is_closed(cl) {}
        bool ready() {
            if (!try_claim_get(c, id, got, is_closed, b)) return false;
            // Woken by a producer's one wake, and more items wait behind
            // this one for other sleepers: pass the wake on.
            if (sleep.armed && !is_closed) pass_wake_on(c);
            return true;
        }
        core::Sleep arm() {
            // seq_cst loads: see store_and_wake.
            return sleep.arm([&] { return b.slot->word.load() != b.seen || c->closed.load(); });
        }
    } w(c, id, got, is_closed);
    return core::wait(w, d, core::kQueueGetWait) == core::Waited::ready;
}

// Claim the next published item into got. False when empty (after waiting
// until d, or at once if !wait) or closed and drained (*is_closed set).
[[gnu::always_inline]] inline bool claim_get(QueueControl* c, std::uint32_t id, const detail::Deadline& d, bool wait,
                                             bool* is_closed, Got& got) {
    Blocker blocked;
    *is_closed = false;
    return try_claim_get(c, id, got, *is_closed, blocked) || (wait && wait_to_get(c, id, d, got, *is_closed));
}

// Get one item into out: claim it (waiting until d, or not at all if
// !wait), copy it out and release its slot. False when empty, or closed and
// drained (then shm::closed if throw_closed).
[[gnu::always_inline]] inline bool get_into(QueueControl* c, std::string& out, const detail::Deadline& d, bool wait,
                                            bool throw_closed) {
    const std::uint32_t id = actor_id(c);
    bool is_closed;
    Got g;
    if (!claim_get(c, id, d, wait, &is_closed, g) || is_closed) {
        if (is_closed && throw_closed) throw shm::closed("shm::Queue::get: the queue is closed and drained");
        return false;
    }
    const std::uint64_t item = g.slot->item.load(std::memory_order_relaxed);
    if (!item_ok(c, item)) bad_got(c, id, g, item);
    copy_out(out, payload_at(c, detail::item_start(item)), detail::item_len(item));
    release_got(c, id, g);
    return true;
}
}  // namespace

void Queue::release_view(std::uint64_t pos, std::uint32_t id) { release_got(c_, id, Got{pos, slot_at(c_, pos)}); }

void Queue::bad_item(std::uint64_t pos, std::uint32_t id, std::uint64_t item) {
    bad_got(c_, id, Got{pos, slot_at(c_, pos)}, item);
}

Queue::View Queue::get_view(const detail::Deadline& d, bool throw_closed) {
    std::uint32_t id = actor_id(c_);
    bool is_closed = false;
    Got g;
    if (!claim_get(c_, id, d, true, &is_closed, g) || is_closed) {
        if (is_closed && throw_closed) throw shm::closed("shm::Queue::get: the queue is closed and drained");
        return View{nullptr, 0, kNoTicket, id};
    }
    const std::uint64_t item = g.slot->item.load(std::memory_order_relaxed);
    if (!item_ok(c_, item)) bad_got(c_, id, g, item);
    return View{payload_at(c_, detail::item_start(item)), detail::item_len(item), g.ticket, id};
}

bool Queue::get_until(std::string& out, const detail::Deadline& d) { return get_into(c_, out, d, true, false); }

std::string Queue::get() {
    View v = get_view(detail::Deadline::never(), true);
    std::string out(static_cast<const char*>(v.data), v.len);
    release_view(v.pos, v.id);
    return out;
}

void Queue::get(std::string& out) { get_into(c_, out, detail::Deadline::never(), true, true); }

bool Queue::try_get_into(std::string& out) { return get_into(c_, out, detail::Deadline::never(), false, false); }

std::optional<std::string> Queue::try_get() {
    std::string out;
    if (!try_get_into(out)) return std::nullopt;
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

namespace {

// Tickets claimed by one CAS of head: from `ticket`, `count` of them.
struct Run {
    std::uint64_t ticket = 0;
    std::uint32_t count = 0;
};

// One attempt to claim the published items at head, up to `most`, with one
// CAS of head; made again at once while head moves under it. True once it
// claimed some (got) or found the queue closed and drained (is_closed);
// false when empty: `blocked` is the slot at head. It claims no further
// than the first item whose place is outside the ring, so that such an
// item is got alone (and reported). More than one ticket marks the cursor
// a batch (kBatchFlag): the next claimer hands over all of it (mark_down).
bool try_claim_run(QueueControl* c, std::uint32_t id, std::uint32_t most, Run& got, bool& is_closed,
                   Blocker& blocked) {
    Backoff backoff;
    for (;;) {
        std::uint64_t H = c->head.load(std::memory_order_acquire);
        const std::uint64_t h = tk(H);
        QueueSlot* s = slot_at(c, h);
        const std::uint64_t w = s->word.load(std::memory_order_acquire);
        if (tk(w) == tnext(h)) {
            // Published, and head is at h: nobody has claimed it yet; nor
            // the published ones after it.
            std::uint32_t count = 1;
            for (; count < most; ++count) {
                const std::uint64_t k = tnext(h, count);
                QueueSlot* ks = slot_at(c, k);
                if (tk(ks->word.load(std::memory_order_acquire)) != tnext(k)) break;
                const std::uint64_t item = ks->item.load(std::memory_order_relaxed);
                if (detail::item_len(item) != kTombstone && !item_ok(c, item)) break;
            }
            if ((owner_of(H) & kIdMask) != id || t_actor.last_get != tprev(h)) hand_over(c, H, false);
            if (!c->head.compare_exchange_weak(H, mk(tnext(h, count), 0, count > 1 ? id | kBatchFlag : id),
                                               std::memory_order_acq_rel, std::memory_order_relaxed)) {
                backoff.failed();
                continue;
            }
            crash_point();
            // An ABA CAS (see the design note): wait for each item.
            for (std::uint32_t i = 0; i < count; ++i) {
                const std::uint64_t k = tnext(h, i);
                if (tk(slot_at(c, k)->word.load(std::memory_order_acquire)) != tnext(k)) wait_published(c, k, id);
            }
            got = Run{h, count};
            return true;
        }
        if (ticket_diff(tk(w), h) > 0) {
            if (c->head.load(std::memory_order_acquire) == H)
                throw corrupted("shm::Queue: the slot of ticket " + std::to_string(h) +
                                " is ahead of the queue's head; the queue is corrupt");
            continue;
        }
        if (c->closed.load(std::memory_order_acquire) && tk(c->tail.load(std::memory_order_acquire)) == h) {
            is_closed = true;
            return true;
        }
        blocked.ticket = h;
        blocked.slot = s;
        blocked.seen = w;
        return false;
    }
}

}  // namespace

std::size_t Queue::get_many_until(std::vector<std::string>& out, std::size_t n, const detail::Deadline& d) {
    // Strings are reused, never shrunk away: resize only at the end.
    std::size_t got = 0;
    auto next = [&]() -> std::string& {
        if (got == out.size()) out.emplace_back();
        return out[got];
    };
    const std::uint32_t id = n ? actor_id(c_) : 0;
    const std::size_t most = batch_claims(c_) ? c_->capacity : 1;
    std::uint64_t bad = kNoTicket, bad_item_word = 0;
    while (got < n) {
        Run r;
        bool is_closed = false;
        Blocker blocked;
        if (!try_claim_run(c_, id, static_cast<std::uint32_t>(std::min(n - got, most)), r, is_closed, blocked)) {
            if (got) break;
            // Nothing there yet: wait for one item as get does.
            Got g;
            if (!wait_to_get(c_, id, d, g, is_closed) || is_closed) break;
            r = Run{g.ticket, 1};
        } else if (is_closed) {
            break;
        }
        // Copy the items out in ticket order, count them as taken, then
        // release their slots in ticket order (a run is finished from its
        // first ticket up: see mark_down); the last release wakes producers.
        std::uint64_t taken = 0;
        for (std::uint32_t i = 0; i < r.count; ++i) {
            const std::uint64_t k = tnext(r.ticket, i);
            const std::uint64_t item = slot_at(c_, k)->item.load(std::memory_order_relaxed);
            if (detail::item_len(item) == kTombstone) continue;
            if (!item_ok(c_, item)) {
                if (bad == kNoTicket) bad = k, bad_item_word = item;
                continue;
            }
            copy_out(next(), payload_at(c_, detail::item_start(item)), detail::item_len(item));
            ++got;
            ++taken;
            crash_point();
        }
        c_->actors[id - 1].taken.fetch_add(taken, std::memory_order_relaxed);
        crash_point();
        for (std::uint32_t i = 0; i < r.count; ++i) {
            const std::uint64_t k = tnext(r.ticket, i);
            QueueSlot* s = slot_at(c_, k);
            const std::uint32_t end = pos_of(s->word.load(std::memory_order_relaxed));
            finished_get(c_, k);
            if (i + 1 < r.count) {
                s->word.store(mk(tnext(k, c_->capacity), end, 0), std::memory_order_release);
                crash_point();
            } else {
                store_and_wake(s->word, mk(tnext(k, c_->capacity), end, 0), c_->get_epoch, c_->producers_waiting);
            }
        }
        if (bad != kNoTicket) break;
    }
    out.resize(got);
    if (bad != kNoTicket)
        throw corrupted("shm::Queue: item " + std::to_string(bad) + " says it has " +
                        std::to_string(detail::item_len(bad_item_word)) + " bytes at " +
                        std::to_string(detail::item_start(bad_item_word)) +
                        ", outside the queue's ring; the queue is corrupt (the items got before it are in out)");
    return got;
}

// ---- join, close, state -----------------------------------------------------------------

namespace {
// Whether a join is over: nothing queued (qsize) and no item being got or
// taken and not yet marked done by a live process. A consumer counts an
// item as taken before it releases its slot, so an item is seen here
// (published, with head past it) or in `taken`.
bool joined(QueueControl* c, std::size_t qsize) {
    if (qsize != 0) return false;
    const std::uint64_t H = c->head.load(std::memory_order_acquire);
    const std::uint64_t T = c->tail.load(std::memory_order_acquire);
    const std::uint64_t F = c->free.load(std::memory_order_acquire);
    // A batch the head names: into its slots, where the owners are read.
    if (owner_of(H) & kBatchFlag) hand_over(c, H, false);
    const std::int64_t n = ticket_diff(tk(T), tk(F));
    for (std::int64_t i = 0; i < n && i < static_cast<std::int64_t>(c->capacity); ++i) {
        const std::uint64_t k = tnext(tk(F), static_cast<std::uint64_t>(i));
        const std::uint64_t w = slot_at(c, k)->word.load(std::memory_order_acquire);
        if (tk(w) != tnext(k)) continue;             // not published, or released
        if (ticket_diff(k, tk(H)) >= 0) return false;  // queued
        std::uint32_t owner = owner_of(w);
        if (owner == 0 && k == tprev(tk(H))) owner = owner_of(H) & kIdMask;
        if (owner == 0 || actor_alive(c, owner)) return false;  // being got (a hand-over may be under way)
    }
    for (std::uint32_t i = 0; i < Queue::kMaxProcesses; ++i) {
        QueueActor& a = c->actors[i];
        if (a.who.tag.load(std::memory_order_acquire) == 0) continue;
        if (a.done.load(std::memory_order_acquire) < a.taken.load(std::memory_order_acquire) &&
            core::identity::alive(a.who))
            return false;
    }
    return true;
}
}  // namespace

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
    struct W : core::Waiter {
        const Queue& q;
        EpochSleep sleep;
        W(const Queue& queue, std::uint32_t id) : q(queue), sleep(queue.c_->join_epoch, queue.c_->joiners_waiting, id) {}
        bool ready() { return joined(q.c_, q.qsize()); }
        core::Sleep arm() { return sleep.arm([&] { return ready(); }); }
        void disarm() { sleep.disarm(); }
    } w(*this, actor_id(c_));
    return core::wait(w, d, core::kQueueJoin) == core::Waited::ready || w.ready();
}

void Queue::join() { join_until(detail::Deadline::never()); }

}  // namespace shm
