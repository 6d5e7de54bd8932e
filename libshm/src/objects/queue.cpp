// shm::Queue: a ring of slots and a ring of bytes. A put or a get claims its
// ticket with one compare-and-swap on a cursor and no lock (see queue.hpp).
//
// This file: the design, creation and the checks of a control block found
// in a segment, and the queue's state. queue_claims.cpp: actors, their
// liveness, and the repair of claims that dead processes left.
// queue_put.cpp and queue_get.cpp: the two paths (and join). What they
// share per item is inline in queue_internal.hpp.
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
// Runs. put_many() and get_many() claim a run of tickets t .. t + n - 1
// with one CAS, from (t, p, x) to (t + n, p', me | batch); the batch flag
// says the cursor names a run, whose lower tickets it does not name. The
// claimer finishes its tickets in order, lowest first. Whoever hands a run
// over (the next claimer, a waiter about to repair, join) walks down from
// its top ticket, naming the claimer in each slot still in flight that
// names nobody, past slots that already name it, and stops at the first
// slot that is finished or names another: the slots below it are finished
// or named. A repairer walks down the same way from a slot before it
// repairs it, so that no walk can stop at a repaired slot above one that
// names nobody; it then repairs the dead claimer's slots above it too. A
// claim to put in a run is marked as ending where the run ends: repaired,
// its tickets become tombstones that free the run's bytes together. Queues
// made before runs (magic "smqueue3") are opened as they are and claimed
// one ticket at a time, since their processes may not know the flag.
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
// an id names an actor record, which holds a pid and its full start time,
// see queue_layout.hpp) is dead is taken over with a CAS. A
// claim to put becomes a tombstone that consumers skip (the put never
// happened; its bytes are freed with it). A claim to get becomes released
// (the dead consumer took the item whole). A repairer marks the slot with
// its own id and a repair flag, so a repairer that dies mid-repair is taken
// over the same way, and a process that inherits a dead process's id
// repairs what it left before it uses the id. While a process takes an
// actor record over, the record counts as dead to whatever names it: only
// the dead holder before it can have left a claim under that id.
//
// Waiting goes through core::wait() (core/wait.hpp, policies kQueueGetWait and kQueuePutWait):
// spin, yield, then sleep on an epoch futex after setting the process's
// bit in a waiters mask. A waker stores, then loads the mask; a sleeper sets
// its bit, then re-checks. Where the kernel allows, every process using a
// queue registers for membarrier(2), wakers order store and load with a
// compiler barrier only, and the sleeper runs membarrier_all(), which fences
// every CPU running a registered process: one of the two sees the other,
// and the hot path carries no fence. Elsewhere wakers use a seq_cst store
// and load. Before every sleep the waiter checks whoever blocks it (its
// liveness re-check repairs a dead claimer's slot), and sleeps last at most
// 50 ms so that a blocker that dies meanwhile is noticed; a waker takes
// every bit it finds (a dead sleeper's too) when it wakes.
#include "objects/queue_internal.hpp"

#include "store/layout.hpp"
#include "shm/segment.hpp"
#include "store/segment_access.hpp"

namespace shm {

using namespace queue_impl;

namespace {

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
    std::uint32_t capacity, max_items, max_item, shift, units;
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
    if (c->magic != kQueueMagic && c->magic != kQueueMagicSingle) return "bad magic";
    if (c->capacity < 2 || c->capacity > (1u << 24) || (c->capacity & (c->capacity - 1)) != 0)
        return "its capacity is not a power of two in 2 .. 2^24";
    if (c->max_item < 1 || c->max_item > (256u << 20) || c->max_bytes == 0 || c->max_bytes > kMaxBytesLimit)
        return "its item or byte limit is out of range";
    if (c->ring_units == 0 || c->ring_units > detail::kMaxRingUnits || c->unit_shift < 3 || c->unit_shift > 24)
        return "its byte ring has an impossible shape";
    if (c->max_items > c->capacity) return "its item limit is above its capacity";
    if (c->ring_offset != ring_offset_for(c->capacity)) return "its byte ring is not where its capacity puts it";
    const std::uint64_t largest = std::min<std::uint64_t>(c->max_item, c->max_bytes);
    const std::uint64_t ring = (std::uint64_t(c->ring_units) + units_of(c->unit_shift, largest)) << c->unit_shift;
    if (c->ring_offset + ring > size) return "its byte ring does not fit its block";
    return nullptr;
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
        if (opt.max_items > opt.capacity)
            throw error(EINVAL, "shm::Queue '" + std::string(name) + "': max_items (" + std::to_string(opt.max_items) +
                                    ") must be at most the capacity (" + std::to_string(opt.capacity) + ")");
        std::uint32_t cap = 2;
        while (cap < opt.capacity) cap *= 2;
        a.max_items = opt.max_items ? opt.max_items : cap;
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
        c->max_items = a->max_items;
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

// ---- close, state -----------------------------------------------------------------------


void Queue::close() {
    c_->closed.store(1, std::memory_order_seq_cst);
    for (auto* e : {&c_->put_epoch, &c_->get_epoch, &c_->join_epoch}) {
        e->fetch_add(1, std::memory_order_seq_cst);
        core::wake(*e, INT_MAX);
    }
    // Consumers sleep on their doorbells: ring every one that has a
    // process, asleep or not (a bit cleared by a waker that has yet to ring
    // must not leave one asleep).
    for (unsigned i = 0; i < Queue::kMaxProcesses; ++i)
        if (core::identity::tag_pid(c_->actors[i].who.tag.load(std::memory_order_relaxed)) != 0) ring(c_, i);
    c_->consumers_waiting.store(0, std::memory_order_seq_cst);
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
    if (qsize() >= item_limit(c_)) return true;
    return bytes_used() + (std::uint64_t(1) << c_->unit_shift) > (std::uint64_t(c_->ring_units) << c_->unit_shift);
}
std::uint32_t Queue::capacity() const noexcept { return c_->capacity; }
std::uint32_t Queue::max_items() const noexcept { return item_limit(c_); }
std::uint32_t Queue::max_item_size() const noexcept { return c_->max_item; }
std::uint64_t Queue::max_bytes() const noexcept { return c_->max_bytes; }
std::uint64_t Queue::repairs() const noexcept { return c_->repairs.load(std::memory_order_relaxed); }


}  // namespace shm
