// shm::Queue: a ring of slots claimed with one CAS each (see queue.hpp).
//
// Design note
// -----------
// Slot word = seq << 16 | owner. For the position `pos` that maps to a slot
// (pos mod capacity), its states are
//     FREE     seq == pos,     owner 0     a producer may claim it
//     WRITING  seq == pos,     owner id    claimed by producer `id`
//     FULL     seq == pos + 1, owner 0     a consumer may claim it
//     READING  seq == pos + 1, owner id    claimed by consumer `id`
// and a consumer's release moves it to FREE for pos + capacity. Every
// transition is one CAS or one store on this word, so a process killed at
// any instruction leaves each slot in exactly one of these states. tail and
// head only say where to look next: whoever finds the slot at tail (head)
// claimed moves tail (head) on with a CAS ("helping"), so a claimer that dies
// before moving it blocks nobody.
//
// Why ABA cannot bite: seq grows by one per lap step and has 48 bits; two
// positions that share a slot differ by a multiple of capacity, so a stale
// CAS can only succeed on the same state of the same lap, 2^48 steps apart.
//
// Crash repair: a slot WRITING or READING for an owner whose process is dead
// (the owner's record holds pid and start time) is taken over with a CAS:
// WRITING becomes a FULL tombstone that consumers skip (the put never
// happened), READING becomes FREE (the dead consumer took the item). A
// repairer that dies mid-repair holds the slot under its own id, and the next
// repairer takes it over the same way.
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

namespace shm {


using detail::QueueActor;
using detail::QueueControl;
using detail::QueueSlot;

namespace {

constexpr std::uint32_t kTombstone = kQueueTombstone;
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

static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

inline std::uint64_t mk(std::uint64_t seq, std::uint32_t owner) { return (seq << 16) | owner; }
inline std::uint32_t owner_of(std::uint64_t w) { return static_cast<std::uint32_t>(w & 0xffff); }
// Signed distance between the slot's 48-bit sequence and a position.
inline std::int64_t diff(std::uint64_t w, std::uint64_t pos) {
    return static_cast<std::int64_t>(((w >> 16) - pos) << 16) >> 16;
}

// Move a cursor (tail or head) from pos to pos + 1 if nobody has yet. Takes
// pos by value: a failed compare_exchange writes the current value into its
// `expected` argument, which must not clobber the caller's position.
inline void advance(std::atomic<std::uint64_t>& cursor, std::uint64_t pos) {
    cursor.compare_exchange_strong(pos, pos + 1, std::memory_order_release, std::memory_order_relaxed);
}

inline QueueSlot* slot_at(QueueControl* c, std::uint64_t pos) {
    char* base = reinterpret_cast<char*>(c) + sizeof(QueueControl);
    return reinterpret_cast<QueueSlot*>(base + (pos & (c->capacity - 1)) * c->stride);
}
inline char* payload(QueueSlot* s) { return reinterpret_cast<char*>(s) + sizeof(QueueSlot); }

bool who_alive(std::uint64_t who) {
    if (!who) return false;
    pid_t pid = static_cast<pid_t>(who >> 32);
    std::uint64_t st = platform::process_start_time(pid);
    return st != 0 && (st & 0xffffffffu) == (who & 0xffffffffu);
}

bool actor_alive(QueueControl* c, std::uint32_t id) {
    if (id == 0 || id > Queue::kMaxProcesses) return false;
    return who_alive(c->actors[id - 1].who.load(std::memory_order_acquire));
}

void wake(std::atomic<std::uint32_t>& epoch, std::atomic<std::uint64_t>& mask, int n) {
    // Full fence: orders our publication before the mask load; the sleeper
    // sets its bit (seq_cst) before re-checking the slot. One of us sees the
    // other.
#if defined(__SANITIZE_THREAD__)
    // TSan does not model fences; a seq_cst read-modify-write of the mask
    // orders the same way (it reads the latest value of the mask).
    if (mask.fetch_or(0, std::memory_order_seq_cst) == 0) return;
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (mask.load(std::memory_order_relaxed) == 0) return;
#endif
    // Take every sleeper's bit and wake them all: one wake per sleep, not
    // one per operation while a sleeper has yet to run. A sleeper sets its
    // bit again before it sleeps again.
    if (mask.exchange(0, std::memory_order_seq_cst) == 0) return;
    epoch.fetch_add(1, std::memory_order_seq_cst);
    platform::futex_wake(&epoch, INT_MAX);
    (void)n;
}

// Sleep until the epoch moves, the deadline, or the poll interval.
// Returns false if the deadline has passed.
bool sleep_on(std::atomic<std::uint32_t>& epoch, std::atomic<std::uint64_t>& mask, std::uint32_t id,
              const std::function<bool()>& ready, const detail::Deadline& d) {
    if (d.passed()) return false;
    const std::uint64_t bit = 1ull << (id - 1);
    mask.fetch_or(bit, std::memory_order_seq_cst);
    std::uint32_t e = epoch.load(std::memory_order_seq_cst);
    if (!ready()) {
        detail::Deadline p = detail::Deadline::in(std::chrono::milliseconds(kPollMs));
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

}  // namespace

// ---- creation ------------------------------------------------------------------

Queue Queue::attach(Segment& seg, std::string_view name, const QueueOptions& opt_in, bool may_find, bool may_create) {
    QueueOptions opt = opt_in;
    if (may_create) {
        if (opt.capacity < 2 || opt.capacity > (1u << 24))
            throw error(EINVAL, "shm::Queue '" + std::string(name) + "': capacity must be 2 .. 2^24, not " +
                                    std::to_string(opt.capacity));
        if (opt.max_item_size < 1 || opt.max_item_size > (256u << 20))
            throw error(EINVAL, "shm::Queue '" + std::string(name) + "': max_item_size must be 1 byte .. 256 MiB");
        std::uint32_t cap = 2;
        while (cap < opt.capacity) cap *= 2;
        opt.capacity = cap;
    }
    const std::uint32_t stride = static_cast<std::uint32_t>((sizeof(QueueSlot) + opt.max_item_size + 63) & ~std::size_t(63));
    const std::size_t bytes = sizeof(QueueControl) + std::size_t(opt.capacity) * stride;
    Segment::Init init = [](void* where, void* ctx) {
        auto* o = static_cast<const QueueOptions*>(ctx);
        auto* c = ::new (where) QueueControl();
        c->capacity = o->capacity;
        c->max_item = o->max_item_size;
        c->stride = static_cast<std::uint32_t>((sizeof(QueueSlot) + o->max_item_size + 63) & ~std::size_t(63));
        for (std::uint32_t i = 0; i < c->capacity; ++i) {
            QueueSlot* s = slot_at(c, i);
            s->word.store(mk(i, 0), std::memory_order_relaxed);
            s->len = 0;
            s->flags = 0;
        }
        c->magic = kQueueMagic;
    };
    bool constructed = false;
    void* p = seg.named_op(name, Segment::type_key<QueueControl>(), "shm::Queue", ObjectKind::queue,
                           may_create ? bytes : sizeof(QueueControl), 64, init, &opt, may_find, may_create, &constructed);
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

// ---- actors and repair ------------------------------------------------------------

namespace {

// Take over slots a dead process left claimed. Returns true if it repaired.
bool repair_slot(QueueControl* c, QueueSlot* s, std::uint64_t w, std::uint32_t me) {
    std::uint32_t owner = owner_of(w);
    if (owner == 0 || owner == me || actor_alive(c, owner)) return false;
    std::uint64_t seq = w >> 16;
    const std::uint64_t index = static_cast<std::uint64_t>(reinterpret_cast<char*>(s) -
                                                           (reinterpret_cast<char*>(c) + sizeof(QueueControl))) /
                                c->stride;
    const bool writing = ((seq - index) & (c->capacity - 1)) == 0;
    if (writing) {
        // Half-written: take it, make it a tombstone, publish.
        if (!s->word.compare_exchange_strong(w, mk(seq, me), std::memory_order_acq_rel)) return false;
        s->flags = kTombstone;
        s->len = 0;
        s->word.store(mk(seq + 1, 0), std::memory_order_release);  // partner: consumers' acquire loads
        c->repairs.fetch_add(1, std::memory_order_relaxed);
        wake(c->put_epoch, c->consumers_waiting, INT_MAX);
    } else {
        // Half-read: the dead consumer took the item; free the slot.
        if (!s->word.compare_exchange_strong(w, mk(seq - 1 + c->capacity, 0), std::memory_order_acq_rel)) return false;
        c->repairs.fetch_add(1, std::memory_order_relaxed);
        wake(c->get_epoch, c->producers_waiting, INT_MAX);
    }
    return true;
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
                QueueSlot* s = slot_at(c, k);
                std::uint64_t sw = s->word.load(std::memory_order_acquire);
                if (owner_of(sw) != id) continue;
                // Our id now names a live process: repair by hand.
                const std::uint64_t seq = sw >> 16;
                if (((seq - k) & (c->capacity - 1)) == 0) {
                    if (s->word.compare_exchange_strong(sw, mk(seq, id), std::memory_order_acq_rel)) {
                        s->flags = kTombstone;
                        s->len = 0;
                        s->word.store(mk(seq + 1, 0), std::memory_order_release);
                        c->repairs.fetch_add(1, std::memory_order_relaxed);
                    }
                } else if (s->word.compare_exchange_strong(sw, mk(seq - 1 + c->capacity, 0), std::memory_order_acq_rel)) {
                    c->repairs.fetch_add(1, std::memory_order_relaxed);
                }
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

}  // namespace

// ---- put ------------------------------------------------------------------------------

namespace {
// Claim the slot at tail. Returns the position, or nullopt if the queue is
// full (after waiting until d). Throws closed.
std::optional<std::uint64_t> claim_put(QueueControl* c, std::uint32_t id, const detail::Deadline& d, bool wait) {
    int spins = 0;
    for (;;) {
        if (c->closed.load(std::memory_order_acquire)) throw closed("shm::Queue: put on a closed queue");
        std::uint64_t pos = c->tail.load(std::memory_order_acquire);
        QueueSlot* s = slot_at(c, pos);
        std::uint64_t w = s->word.load(std::memory_order_acquire);
        std::int64_t dif = diff(w, pos);
        if (dif == 0) {
            if (owner_of(w) == 0) {
                // Acquire: the consumer's release of this slot (its copy-out
                // is complete) happens before our write.
                if (s->word.compare_exchange_weak(w, mk(pos, id), std::memory_order_acquire, std::memory_order_relaxed)) {
                    advance(c->tail, pos);
                    if (c->closed.load(std::memory_order_acquire)) {
                        // Closed while we claimed: publish nothing.
                        s->flags = kTombstone;
                        s->len = 0;
                        s->word.store(mk(pos + 1, 0), std::memory_order_release);
                        wake(c->put_epoch, c->consumers_waiting, INT_MAX);
                        throw closed("shm::Queue: put on a closed queue");
                    }
                    return pos;
                }
            } else {
                advance(c->tail, pos);
            }
            continue;
        }
        if (dif > 0) {
            // Position pos was claimed (and maybe repaired) by someone who
            // did not move tail on: help.
            advance(c->tail, pos);
            continue;
        }
        // Full here: the slot still holds (or is handing out) the previous lap.
        if (!wait) return std::nullopt;
        if (owner_of(w) != 0 && spins >= kSpin + kYield && repair_slot(c, s, w, id)) continue;
        if (backoff(spins)) continue;
        if (!sleep_on(c->get_epoch, c->producers_waiting, id,
                      [&] { return s->word.load(std::memory_order_acquire) != w || c->closed.load(); }, d))
            return std::nullopt;
    }
}

void publish(QueueControl* c, QueueSlot* s, std::uint64_t pos, std::size_t len) {
    s->len = static_cast<std::uint32_t>(len);
    s->flags = 0;
    // Release: the payload and len before FULL; partner: the consumer's
    // acquire load of the word.
    s->word.store(mk(pos + 1, 0), std::memory_order_release);
    wake(c->put_epoch, c->consumers_waiting, 1);
}
}  // namespace

bool Queue::put_until(std::string_view item, const detail::Deadline& d) {
    if (item.size() > c_->max_item)
        throw error(EMSGSIZE, "shm::Queue::put: item of " + std::to_string(item.size()) +
                                  " bytes is over the queue's max_item_size of " + std::to_string(c_->max_item));
    std::uint32_t id = actor_id(c_);
    auto pos = claim_put(c_, id, d, true);
    if (!pos) return false;
    QueueSlot* s = slot_at(c_, *pos);
    if (!item.empty()) std::memcpy(payload(s), item.data(), item.size());
    publish(c_, s, *pos, item.size());
    return true;
}

bool Queue::try_put(std::string_view item) {
    if (item.size() > c_->max_item)
        throw error(EMSGSIZE, "shm::Queue::put: item of " + std::to_string(item.size()) +
                                  " bytes is over the queue's max_item_size of " + std::to_string(c_->max_item));
    std::uint32_t id = actor_id(c_);
    auto pos = claim_put(c_, id, detail::Deadline::never(), false);
    if (!pos) return false;
    QueueSlot* s = slot_at(c_, *pos);
    if (!item.empty()) std::memcpy(payload(s), item.data(), item.size());
    publish(c_, s, *pos, item.size());
    return true;
}

void Queue::put_nowait(std::string_view item) {
    if (!try_put(item))
        throw shm::full("shm::Queue::put_nowait: the queue is full (" + std::to_string(c_->capacity) + " items)");
}

std::size_t Queue::put_many(const std::vector<std::string>& items) {
    for (const auto& it : items) put(it);
    return items.size();
}

Queue::Reservation Queue::reserve() {
    std::uint32_t id = actor_id(c_);
    auto pos = claim_put(c_, id, detail::Deadline::never(), true);
    QueueSlot* s = slot_at(c_, *pos);
    return Reservation(this, *pos, payload(s), c_->max_item);
}

Queue::Reservation::Reservation(Reservation&& o) noexcept : q_(o.q_), pos_(o.pos_), data_(o.data_), cap_(o.cap_) {
    o.q_ = nullptr;
}

void Queue::Reservation::commit(std::size_t len) {
    if (!q_) throw error(EINVAL, "shm::Queue::Reservation: already committed");
    if (len > cap_)
        throw error(EMSGSIZE, "shm::Queue::Reservation::commit: " + std::to_string(len) +
                                  " bytes is over the queue's max_item_size of " + std::to_string(cap_));
    publish(q_->c_, slot_at(q_->c_, pos_), pos_, len);
    q_ = nullptr;
}

Queue::Reservation::~Reservation() {
    if (!q_) return;
    QueueSlot* s = slot_at(q_->c_, pos_);
    s->flags = kTombstone;
    s->len = 0;
    s->word.store(mk(pos_ + 1, 0), std::memory_order_release);
    wake(q_->c_->put_epoch, q_->c_->consumers_waiting, INT_MAX);
}

// ---- get ------------------------------------------------------------------------------

namespace {
// Claim the next FULL slot. Returns its position, or nullopt when empty
// (after waiting until d) or closed and drained (*is_closed set).
std::optional<std::uint64_t> claim_get(QueueControl* c, std::uint32_t id, const detail::Deadline& d, bool wait,
                                       bool* is_closed) {
    int spins = 0;
    *is_closed = false;
    for (;;) {
        std::uint64_t pos = c->head.load(std::memory_order_acquire);
        QueueSlot* s = slot_at(c, pos);
        std::uint64_t w = s->word.load(std::memory_order_acquire);
        std::int64_t dif = diff(w, pos + 1);
        if (dif == 0) {
            if (owner_of(w) == 0) {
                // Acquire: pairs with publish()'s release; the payload is ours.
                if (s->word.compare_exchange_weak(w, mk(pos + 1, id), std::memory_order_acquire, std::memory_order_relaxed)) {
                    advance(c->head, pos);
                    if (s->flags & kTombstone) {
                        s->word.store(mk(pos + c->capacity, 0), std::memory_order_release);
                        wake(c->get_epoch, c->producers_waiting, INT_MAX);
                        continue;
                    }
                    return pos;
                }
            } else {
                advance(c->head, pos);
            }
            continue;
        }
        if (dif > 0) {
            // Position pos was taken by someone who did not move head on.
            advance(c->head, pos);
            continue;
        }
        // Empty here (FREE, or WRITING by a producer).
        if (c->closed.load(std::memory_order_acquire) && c->tail.load(std::memory_order_acquire) == pos) {
            *is_closed = true;
            return std::nullopt;
        }
        if (!wait) return std::nullopt;
        if (owner_of(w) != 0 && spins >= kSpin + kYield && repair_slot(c, s, w, id)) continue;
        if (backoff(spins)) continue;
        if (!sleep_on(c->put_epoch, c->consumers_waiting, id,
                      [&] { return s->word.load(std::memory_order_acquire) != w || c->closed.load(); }, d))
            return std::nullopt;
    }
}
}  // namespace

void Queue::release_view(std::uint64_t pos) {
    QueueSlot* s = slot_at(c_, pos);
    // Release: our copy-out is complete before the slot is FREE for the next
    // lap; partner: the producer's acquire CAS.
    s->word.store(mk(pos + c_->capacity, 0), std::memory_order_release);
    c_->actors[actor_id(c_) - 1].taken.fetch_add(1, std::memory_order_relaxed);
    wake(c_->get_epoch, c_->producers_waiting, 1);
}

Queue::View Queue::get_view(const detail::Deadline& d, bool throw_closed) {
    std::uint32_t id = actor_id(c_);
    bool is_closed = false;
    auto pos = claim_get(c_, id, d, true, &is_closed);
    if (!pos) {
        if (is_closed && throw_closed) throw shm::closed("shm::Queue::get: the queue is closed and drained");
        return View{nullptr, 0, ~0ull};
    }
    QueueSlot* s = slot_at(c_, *pos);
    return View{payload(s), s->len, *pos};
}

bool Queue::get_until(std::string& out, const detail::Deadline& d) {
    View v = get_view(d, false);
    if (v.pos == ~0ull) return false;
    out.assign(static_cast<const char*>(v.data), v.len);
    release_view(v.pos);
    return true;
}

std::string Queue::get() {
    View v = get_view(detail::Deadline::never(), true);
    std::string out(static_cast<const char*>(v.data), v.len);
    release_view(v.pos);
    return out;
}

std::optional<std::string> Queue::try_get() {
    std::uint32_t id = actor_id(c_);
    bool is_closed = false;
    auto pos = claim_get(c_, id, detail::Deadline::never(), false, &is_closed);
    if (!pos) return std::nullopt;
    QueueSlot* s = slot_at(c_, *pos);
    std::string out(payload(s), s->len);
    release_view(*pos);
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
    wake(c_->join_epoch, c_->joiners_waiting, INT_MAX);
}

bool Queue::join_until(const detail::Deadline& d) {
    std::uint32_t id = actor_id(c_);
    for (;;) {
        auto finished = [&] {
            if (qsize() != 0) return false;
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
    std::uint64_t t = c_->tail.load(std::memory_order_acquire), h = c_->head.load(std::memory_order_acquire);
    if (t <= h) return 0;
    return static_cast<std::size_t>(std::min<std::uint64_t>(t - h, c_->capacity));
}

bool Queue::full() const noexcept { return qsize() >= c_->capacity; }
std::uint32_t Queue::capacity() const noexcept { return c_->capacity; }
std::uint32_t Queue::max_item_size() const noexcept { return c_->max_item; }
std::uint64_t Queue::repairs() const noexcept { return c_->repairs.load(std::memory_order_relaxed); }

}  // namespace shm
