// shm::WorkQueue (shm/work_queue.hpp): items delivered at least once.
//
// The queue's state is a block of the segment's heap, changed only inside
// heap transactions (store/heap.hpp), so that every operation is all or
// nothing whenever its process is killed:
//
//     WQState | ring: capacity × item offset | leases: capacity × LeaseRec
//             | dead: capacity × item offset
//
// An item is a heap block (ItemHdr, then its bytes) from put() until it is
// acknowledged or read as a dead letter. Its offset is in exactly one place:
// the ring (waiting, from `head`), a lease record (delivered to a live or
// not yet recovered consumer), or the dead-letter ring. A get moves it from
// the ring's head to a free lease record that names the getter; ack()
// clears the record and frees the item; recovery moves the item of a record
// whose process has died back to the ring's front (or, after
// max_deliveries, to the dead letters).
//
// The root (a named object) holds the futex words, outside the heap: they
// only wake waiters, who then look at the state under the heap lock.
#include "shm/work_queue.hpp"

#include <climits>
#include <cstring>
#include <string>
#include <unordered_map>

#include "core/liveness.hpp"
#include "core/wait.hpp"
#include "objects/work_queue_layout.hpp"
#include "shm/segment.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"
#include "store/segment_access.hpp"
#include "store/segment_state.hpp"

namespace shm {

namespace {

using namespace work_queue_layout;

// A getter that finds items waiting still looks for dead consumers every
// this many gets of its handle (it always does when it finds none).
inline constexpr std::uint32_t kRecoverEvery = 64;

inline std::uint64_t rd(const Word& w) { return w.load(std::memory_order_relaxed); }  // under the heap lock
inline void raw(Word& w, std::uint64_t v) { w.store(v, std::memory_order_relaxed); }  // fresh blocks only

// One operation: a heap transaction and the queue's checked state.
struct Op {
    detail::SegmentState& seg;
    layout::Header* h;
    heap::Txn t;
    detail::WorkQueueRoot& root;
    WQState* s = nullptr;
    std::uint64_t cap = 0;
    Word* ring = nullptr;
    LeaseRec* leases = nullptr;
    Word* dead = nullptr;

    Op(detail::SegmentState& st, detail::WorkQueueRoot& r) : seg(st), h(st.hdr()), t(h), root(r) {}

    template <class T>
    T* at(std::uint64_t off) const { return reinterpret_cast<T*>(seg.base() + off); }
    [[noreturn]] void bad(const std::string& why) const {
        throw corrupted(seg.what() + ": shm::WorkQueue's state is damaged: " + why);
    }

    std::uint64_t alloc(std::size_t n, const char* what) {
        std::uint64_t off = heap::allocate(t, n, 16);
        if (!off)
            throw out_of_space(seg.what() + ": no room for " + platform::human_bytes(n) + " (" + what + ") in the heap (" +
                               platform::human_bytes(rd(h->used_bytes)) + " of " + platform::human_bytes(h->heap_size) +
                               " used)");
        return off;
    }

    // Whether `cap` elements of `size` bytes at `off` lie in the heap,
    // aligned for the words they hold.
    bool array_ok(std::uint64_t off, std::uint64_t size) const {
        return off % 8 == 0 && layout::in_heap(h, off, cap, size);
    }

    // The state, made on first use; every offset it holds checked against
    // the heap (the file is untrusted).
    void open(bool create) {
        std::uint64_t off = root.state.load(std::memory_order_acquire);
        cap = root.capacity;
        if (cap == 0 || cap > kMaxCapacity) bad("capacity " + std::to_string(cap));
        if (!off) {
            if (!create) return;
            make();
            return;
        }
        if (off % 8 != 0 || !layout::in_heap(h, off, sizeof(WQState)))
            bad("its state is misaligned or outside the heap");
        s = at<WQState>(off);
        if (rd(s->magic) != kStateMagic || rd(s->capacity) != cap) bad("wrong magic or capacity");
        if (!array_ok(rd(s->ring), 8) || !array_ok(rd(s->leases), sizeof(LeaseRec)) || !array_ok(rd(s->dead), 8))
            bad("an array is misaligned or outside the heap");
        if (rd(s->head) >= cap || rd(s->dead_head) >= cap || rd(s->waiting) > cap || rd(s->leased) > cap ||
            rd(s->dead_count) > cap || rd(s->waiting) + rd(s->leased) + rd(s->dead_count) > cap)
            bad("counts out of range");
        ring = at<Word>(rd(s->ring));
        leases = at<LeaseRec>(rd(s->leases));
        dead = at<Word>(rd(s->dead));
    }

    void make() {
        std::uint64_t so = alloc(sizeof(WQState), "a work queue");
        std::uint64_t ro = alloc(cap * 8, "a work queue's ring");
        std::uint64_t lo = alloc(cap * sizeof(LeaseRec), "a work queue's leases");
        std::uint64_t dq = alloc(cap * 8, "a work queue's dead letters");
        std::memset(at<char>(so), 0, sizeof(WQState));
        std::memset(at<char>(ro), 0, cap * 8);
        std::memset(at<char>(lo), 0, cap * sizeof(LeaseRec));
        std::memset(at<char>(dq), 0, cap * 8);
        s = at<WQState>(so);
        raw(s->magic, kStateMagic);
        raw(s->capacity, cap);
        raw(s->ring, ro);
        raw(s->leases, lo);
        raw(s->dead, dq);
        ring = at<Word>(ro);
        leases = at<LeaseRec>(lo);
        dead = at<Word>(dq);
        t.store(root.state, so);
    }

    // An item's block, checked.
    ItemHdr* item(std::uint64_t off) const {
        if (off % 8 != 0 || !layout::in_heap(h, off, sizeof(ItemHdr))) bad("an item is misaligned or outside the heap");
        ItemHdr* it = at<ItemHdr>(off);
        if (!layout::in_heap(h, off + sizeof(ItemHdr), rd(it->len))) bad("an item's bytes lie outside the heap");
        return it;
    }
    std::string bytes(std::uint64_t off) const {
        ItemHdr* it = item(off);
        return std::string(at<char>(off + sizeof(ItemHdr)), rd(it->len));
    }

    std::uint64_t held() const { return rd(s->waiting) + rd(s->leased) + rd(s->dead_count); }

    void push_back(std::uint64_t blk) {
        t.store(ring[(rd(s->head) + rd(s->waiting)) % cap], blk);
        t.store(s->waiting, rd(s->waiting) + 1);
    }
    void push_front(std::uint64_t blk) {
        std::uint64_t hd = (rd(s->head) + cap - 1) % cap;
        t.store(ring[hd], blk);
        t.store(s->head, hd);
        t.store(s->waiting, rd(s->waiting) + 1);
    }
    std::uint64_t pop_front() {
        std::uint64_t hd = rd(s->head);
        std::uint64_t blk = rd(ring[hd]);
        t.store(s->head, (hd + 1) % cap);
        t.store(s->waiting, rd(s->waiting) - 1);
        return blk;
    }

    // Move the leases of dead processes back to the ring's front (or to
    // the dead letters); returns how many.
    std::size_t recover() {
        if (!s || rd(s->leased) == 0) return 0;
        std::unordered_map<std::int64_t, bool> alive;  // each pid asked once
        const std::uint32_t max_del = root.max_deliveries;
        std::size_t moved = 0;
        for (std::uint64_t i = 0; i < cap && rd(s->leased) > 0; ++i) {
            LeaseRec& r = leases[i];
            const std::uint64_t blk = rd(r.item);
            if (!blk) continue;
            const core::ProcessId owner{static_cast<std::int32_t>(rd(r.pid)), rd(r.start_time)};
            auto [it, fresh] = alive.try_emplace(owner.pid, false);
            if (fresh) it->second = core::liveness::alive(owner);
            // (Two records of one pid with different start times: the dead one's.)
            if (it->second && core::liveness::alive(owner)) continue;
            ItemHdr* ih = item(blk);
            t.store(r.item, 0);
            t.store(r.id, 0);
            t.store(s->leased, rd(s->leased) - 1);
            t.store(s->redeliveries, rd(s->redeliveries) + 1);
            if (rd(ih->deliveries) >= max_del) {
                t.store(dead[(rd(s->dead_head) + rd(s->dead_count)) % cap], blk);
                t.store(s->dead_count, rd(s->dead_count) + 1);
            } else {
                push_front(blk);
            }
            ++moved;
        }
        return moved;
    }
};

std::uint32_t checked_capacity(const WorkQueueOptions& o) {
    if (o.capacity == 0 || o.capacity > kMaxCapacity)
        throw error(EINVAL, "shm::WorkQueue: capacity must be 1 .. 2^24, not " + std::to_string(o.capacity));
    if (o.max_deliveries == 0 || o.max_deliveries > kMaxDeliveries)
        throw error(EINVAL, "shm::WorkQueue: max_deliveries must be 1 .. 65536, not " + std::to_string(o.max_deliveries));
    return o.capacity;
}

void wake(std::atomic<std::uint32_t>& word, const detail::WorkQueueRoot& root) {
    // seq_cst: ordered before the sleepers load (core/wait.hpp: no lost wake-up).
    word.fetch_add(1, std::memory_order_seq_cst);
    if (root.sleepers.load(std::memory_order_seq_cst) > 0) core::wake(word, INT_MAX);
}

}  // namespace

// ---- making and opening ------------------------------------------------------

WorkQueue::WorkQueue(std::shared_ptr<detail::SegmentState> seg, detail::WorkQueueRoot* root, std::string name)
    : seg_(std::move(seg)), root_(root), name_(std::move(name)) {
    Op op(*seg_, *root_);  // the state, made now if this is the first handle; checked
    op.open(true);
    op.t.commit();
}

WorkQueue WorkQueue::create(Segment& seg, std::string_view name, const WorkQueueOptions& opt) {
    checked_capacity(opt);
    auto& r = seg.construct<detail::WorkQueueRoot>(name, opt.capacity, opt.max_deliveries);
    return WorkQueue(detail::SegmentAccess::share(seg), &r, std::string(name));
}

WorkQueue WorkQueue::open_or_create(Segment& seg, std::string_view name, const WorkQueueOptions& opt) {
    checked_capacity(opt);
    auto& r = seg.find_or_construct<detail::WorkQueueRoot>(name, opt.capacity, opt.max_deliveries);
    return WorkQueue(detail::SegmentAccess::share(seg), &r, std::string(name));
}

WorkQueue WorkQueue::open(Segment& seg, std::string_view name) {
    auto* r = seg.find<detail::WorkQueueRoot>(name);
    if (!r) throw not_found("work queue '" + std::string(name) + "' does not exist in segment '" + seg.name() + "'");
    return WorkQueue(detail::SegmentAccess::share(seg), r, std::string(name));
}

// ---- put ---------------------------------------------------------------------

bool WorkQueue::try_put(std::string_view item) {
    {
        Op op(*seg_, *root_);
        op.open(true);
        if (rd(op.s->closed)) throw shm::closed("shm::WorkQueue '" + name_ + "' is closed");
        if (op.held() >= op.cap) return false;
        std::uint64_t blk = op.alloc(sizeof(ItemHdr) + item.size(), "an item");
        ItemHdr* ih = op.at<ItemHdr>(blk);
        raw(ih->len, item.size());
        raw(ih->deliveries, 0);
        raw(ih->last_pid, 0);
        raw(ih->reserved, 0);
        if (!item.empty()) std::memcpy(op.at<char>(blk + sizeof(ItemHdr)), item.data(), item.size());
        op.push_back(blk);
        op.t.store(op.s->unfinished, rd(op.s->unfinished) + 1);
        op.t.commit();
    }
    wake(root_->items_seq, *root_);
    return true;
}

bool WorkQueue::put_until(std::string_view item, const detail::Deadline& d) {
    struct W : core::Waiter {
        WorkQueue& q;
        std::string_view item;
        std::uint32_t seen = 0;
        bool ready() {
            seen = q.root_->space_seq.load(std::memory_order_seq_cst);
            return q.try_put(item);
        }
        bool recheck() { return q.recover() > 0; }  // a dead consumer's dead letter makes no room, a redelivery none either
        std::uint64_t progress() const { return seen; }  // moves when room is made (core::yield_briefly)
        core::Sleep arm() {
            q.root_->sleepers.fetch_add(1, std::memory_order_seq_cst);
            return core::Sleep{&q.root_->space_seq, seen};
        }
        void disarm() { q.root_->sleepers.fetch_sub(1, std::memory_order_seq_cst); }
    } w{{}, *this, item};
    return core::wait(w, d, core::kWorkQueueWait) == core::Waited::ready;
}

void WorkQueue::put(std::string_view item) { put_until(item, detail::Deadline::never()); }

// ---- get ---------------------------------------------------------------------

namespace {
struct Got {
    std::string item;
    std::uint32_t deliveries;
    std::uint64_t id;
};
// One attempt to get: the item now leased, or nullopt with *drained set
// when the queue is closed and nothing is waiting or leased.
std::optional<Got> take(Op& op, bool look_for_dead, bool* drained, std::size_t* recovered) {
    *drained = false;
    if (!op.s) return std::nullopt;
    if (look_for_dead || rd(op.s->waiting) == 0) *recovered = op.recover();
    if (rd(op.s->waiting) == 0) {
        *drained = rd(op.s->closed) && rd(op.s->leased) == 0;
        return std::nullopt;
    }
    // A free record: there is one, as waiting + leased <= capacity.
    std::uint64_t i = rd(op.s->generation) % op.cap;
    for (std::uint64_t n = 0; n < op.cap && rd(op.leases[i].item); ++n) i = (i + 1) % op.cap;
    LeaseRec& r = op.leases[i];
    if (rd(r.item)) op.bad("no free lease record");
    const std::uint64_t blk = op.pop_front();
    ItemHdr* ih = op.item(blk);
    const core::ProcessId me = core::liveness::self();
    const std::uint64_t gen = rd(op.s->generation) + 1;
    const std::uint64_t id = gen << kIndexBits | i;
    op.t.store(op.s->generation, gen);
    op.t.store(r.item, blk);
    op.t.store(r.id, id);
    op.t.store(r.pid, static_cast<std::uint64_t>(me.pid));
    op.t.store(r.start_time, me.start_time);
    op.t.store(op.s->leased, rd(op.s->leased) + 1);
    op.t.store(ih->deliveries, rd(ih->deliveries) + 1);
    op.t.store(ih->last_pid, static_cast<std::uint64_t>(me.pid));
    return Got{op.bytes(blk), static_cast<std::uint32_t>(rd(ih->deliveries)), id};
}
}  // namespace

std::optional<Lease> WorkQueue::try_get() {
    bool drained = false;
    return attempt_get(&drained);
}

std::optional<Lease> WorkQueue::attempt_get(bool* drained) {
    std::optional<Got> g;
    std::size_t recovered = 0;
    {
        Op op(*seg_, *root_);
        op.open(false);
        g = take(op, ++gets_ % kRecoverEvery == 0, drained, &recovered);
        op.t.commit();
    }
    if (recovered) wake(root_->items_seq, *root_);
    if (!g) return std::nullopt;
    Lease l;
    l.seg_ = seg_;
    l.root_ = root_;
    l.item_ = std::move(g->item);
    l.deliveries_ = g->deliveries;
    l.id_ = g->id;
    return l;
}

std::optional<Lease> WorkQueue::get_until(const detail::Deadline& d) {
    struct W : core::Waiter {
        WorkQueue& q;
        std::optional<Lease> got;
        bool drained = false;
        std::uint32_t seen = 0;
        bool ready() {
            seen = q.root_->items_seq.load(std::memory_order_seq_cst);
            got = q.attempt_get(&drained);
            return got.has_value() || drained;
        }
        bool recheck() { return q.recover() > 0; }
        std::uint64_t progress() const { return seen; }  // moves when an item is put (core::yield_briefly)
        core::Sleep arm() {
            q.root_->sleepers.fetch_add(1, std::memory_order_seq_cst);
            return core::Sleep{&q.root_->items_seq, seen};
        }
        void disarm() { q.root_->sleepers.fetch_sub(1, std::memory_order_seq_cst); }
    } w{{}, *this, std::nullopt};
    core::wait(w, d, core::kWorkQueueWait);
    return std::move(w.got);
}

Lease WorkQueue::get() {
    std::optional<Lease> l = get_until(detail::Deadline::never());
    if (!l) throw shm::closed("shm::WorkQueue '" + name_ + "' is closed and drained");
    return std::move(*l);
}

// ---- ack, recover, dead letters ----------------------------------------------------

bool Lease::ack() {
    if (acked_ || !root_) return false;
    const bool ok = WorkQueue::ack_in(seg_, root_, id_);
    acked_ = true;
    return ok;
}

bool WorkQueue::ack(std::uint64_t lease_id) { return ack_in(seg_, root_, lease_id); }

bool WorkQueue::ack_in(const std::shared_ptr<detail::SegmentState>& seg, detail::WorkQueueRoot* root,
                       std::uint64_t lease_id) {
    bool done = false;
    {
        Op op(*seg, *root);
        op.open(false);
        const std::uint64_t i = lease_id & ((std::uint64_t(1) << kIndexBits) - 1);
        if (!op.s || i >= op.cap) return false;
        LeaseRec& r = op.leases[i];
        const std::uint64_t blk = rd(r.item);
        if (!blk || rd(r.id) != lease_id) return false;
        op.item(blk);
        op.t.store(r.item, 0);
        op.t.store(r.id, 0);
        op.t.store(op.s->leased, rd(op.s->leased) - 1);
        op.t.store(op.s->unfinished, rd(op.s->unfinished) - 1);
        heap::deallocate(op.t, blk);
        done = rd(op.s->unfinished) == 0;
        op.t.commit();
    }
    wake(root->space_seq, *root);
    if (done) wake(root->done_seq, *root);
    return true;
}

std::size_t WorkQueue::recover() {
    std::size_t n = 0;
    {
        Op op(*seg_, *root_);
        op.open(false);
        n = op.recover();
        op.t.commit();
    }
    if (n) wake(root_->items_seq, *root_);
    return n;
}

std::optional<DeadLetter> WorkQueue::try_get_dead() {
    std::optional<DeadLetter> out;
    bool done = false;
    {
        Op op(*seg_, *root_);
        op.open(false);
        if (!op.s || rd(op.s->dead_count) == 0) return std::nullopt;
        const std::uint64_t dh = rd(op.s->dead_head);
        const std::uint64_t blk = rd(op.dead[dh]);
        ItemHdr* ih = op.item(blk);
        out = DeadLetter{op.bytes(blk), static_cast<std::uint32_t>(rd(ih->deliveries)),
                         static_cast<std::int32_t>(rd(ih->last_pid))};
        op.t.store(op.s->dead_head, (dh + 1) % op.cap);
        op.t.store(op.s->dead_count, rd(op.s->dead_count) - 1);
        op.t.store(op.s->unfinished, rd(op.s->unfinished) - 1);
        heap::deallocate(op.t, blk);
        done = rd(op.s->unfinished) == 0;
        op.t.commit();
    }
    wake(root_->space_seq, *root_);
    if (done) wake(root_->done_seq, *root_);
    return out;
}

// ---- join, close, counts -------------------------------------------------------------

bool WorkQueue::join_until(const detail::Deadline& d) {
    struct W : core::Waiter {
        WorkQueue& q;
        std::uint32_t seen = 0;
        bool ready() {
            seen = q.root_->done_seq.load(std::memory_order_seq_cst);
            return q.unfinished() == 0;
        }
        bool recheck() { return q.recover() > 0; }
        core::Sleep arm() {
            q.root_->sleepers.fetch_add(1, std::memory_order_seq_cst);
            return core::Sleep{&q.root_->done_seq, seen};
        }
        void disarm() { q.root_->sleepers.fetch_sub(1, std::memory_order_seq_cst); }
    } w{{}, *this};
    return core::wait(w, d, core::kWorkQueueJoin) == core::Waited::ready;
}

void WorkQueue::join() { join_until(detail::Deadline::never()); }

void WorkQueue::close() {
    {
        Op op(*seg_, *root_);
        op.open(true);
        op.t.store(op.s->closed, 1);
        op.t.commit();
    }
    wake(root_->items_seq, *root_);
    wake(root_->space_seq, *root_);
}

namespace {
template <class F>
std::uint64_t read_state(detail::SegmentState& seg, detail::WorkQueueRoot& root, F f) {
    Op op(seg, root);
    op.open(false);
    std::uint64_t v = op.s ? f(*op.s) : 0;
    op.t.commit();
    return v;
}
}  // namespace

bool WorkQueue::closed() const { return read_state(*seg_, *root_, [](WQState& s) { return rd(s.closed); }) != 0; }
std::size_t WorkQueue::qsize() const { return read_state(*seg_, *root_, [](WQState& s) { return rd(s.waiting); }); }
std::size_t WorkQueue::leased() const { return read_state(*seg_, *root_, [](WQState& s) { return rd(s.leased); }); }
std::size_t WorkQueue::dead_letters() const {
    return read_state(*seg_, *root_, [](WQState& s) { return rd(s.dead_count); });
}
std::size_t WorkQueue::unfinished() const {
    return read_state(*seg_, *root_, [](WQState& s) { return rd(s.unfinished); });
}
std::uint64_t WorkQueue::redeliveries() const {
    return read_state(*seg_, *root_, [](WQState& s) { return rd(s.redeliveries); });
}

std::vector<std::string> WorkQueue::verify() const {
    std::vector<std::string> out;
    try {
        Op op(*seg_, *root_);
        op.open(false);
        if (!op.s) return out;
        std::uint64_t held = 0;
        for (std::uint64_t i = 0; i < op.cap; ++i) {
            const LeaseRec& r = op.leases[i];
            if (!rd(r.item)) continue;
            ++held;
            op.item(rd(r.item));
            if ((rd(r.id) & ((std::uint64_t(1) << kIndexBits) - 1)) != i)
                out.push_back("lease record " + std::to_string(i) + " holds the id of another record");
        }
        if (held != rd(op.s->leased))
            out.push_back(std::to_string(held) + " lease records held, the count says " + std::to_string(rd(op.s->leased)));
        for (std::uint64_t k = 0; k < rd(op.s->waiting); ++k) op.item(rd(op.ring[(rd(op.s->head) + k) % op.cap]));
        for (std::uint64_t k = 0; k < rd(op.s->dead_count); ++k) op.item(rd(op.dead[(rd(op.s->dead_head) + k) % op.cap]));
        if (rd(op.s->unfinished) != op.held())
            out.push_back("unfinished is " + std::to_string(rd(op.s->unfinished)) + ", items held " +
                          std::to_string(op.held()));
        op.t.commit();
    } catch (const corrupted& e) {
        out.push_back(e.what());
    }
    return out;
}

}  // namespace shm
