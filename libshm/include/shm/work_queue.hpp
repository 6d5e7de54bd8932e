// shm::WorkQueue — a queue whose items are delivered at least once: an item
// got under a lease stays owned by its consumer until the consumer
// acknowledges it, and if the consumer dies first the item is delivered
// again, at the front of the queue, with its delivery count.
//
//     shm::WorkQueue q = shm::WorkQueue::open_or_create(seg, "tasks", {.capacity = 256, .max_deliveries = 4});
//     q.put("task 1");                       // producer
//     shm::Lease l = q.get();                // consumer: blocks while empty
//     run(l.item());                         // l.deliveries(): 1 the first time
//     l.ack();                               // never delivered again
//
// Liveness is the kernel's word, as everywhere in libshm: a lease belongs to
// the process that took it (its pid and start time), and once that process
// has gone (killed, crashed, exited without acknowledging) its leases are
// delivered again. There is no heartbeat and no time-out. A consumer that
// finds the queue empty looks for the leases of dead processes before it
// sleeps and every 50 ms while it sleeps; recover() does it at once (a
// supervisor that saw a worker die calls it).
//
// An item delivered max_deliveries times whose consumer died each time is
// not delivered again: it becomes a dead letter, which the application
// reads with try_get_dead() (the item, its deliveries, the pid of its last
// consumer).
//
// Every operation is one journaled transaction of the segment's heap,
// under its robust lock: a process killed at any instruction of put, get,
// ack or redelivery leaves the queue as it was before that operation or
// as it is after it, never in between (the next user of the heap rolls an
// unfinished one back). So nothing acknowledged is delivered again, and
// nothing put is lost: it is waiting, leased to a live process, a dead
// letter, or acknowledged.
//
// Bounds: `capacity` items at once, counting those waiting, leased and dead
// letters, so that a redelivery always has room; put() blocks (or refuses)
// while full. Item bytes live in the segment's heap until acknowledged
// (shm::out_of_space if the heap is full, changing nothing).
//
// Order: FIFO per producer; redelivered items go to the front.
// qsize(), leased(), dead_letters() and unfinished() are snapshots.
//
// A WorkQueue handle keeps the segment's attachment alive (segment.hpp,
// "Handles"). A Lease may be acknowledged by any process that holds it
// (a copy sent elsewhere): its id names the delivery, not the process.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shm/deadline.hpp"
#include "shm/error.hpp"
#include "shm/object_kind.hpp"

namespace shm {

class Segment;
class WorkQueue;

namespace detail {
struct SegmentState;
// The named object that roots a WorkQueue: its options, the offset of its
// state in the heap (0 until first used) and the words its waiters sleep
// on. Private; its layout is pinned in work_queue.cpp.
struct WorkQueueRoot {
    std::uint32_t capacity = 0;
    std::uint32_t max_deliveries = 0;
    std::atomic<std::uint64_t> state{0};
    std::atomic<std::uint32_t> items_seq{0};  // bumped when an item becomes ready
    std::atomic<std::uint32_t> space_seq{0};  // bumped when room is made
    std::atomic<std::uint32_t> done_seq{0};   // bumped when nothing is unfinished
    std::atomic<std::uint32_t> sleepers{0};   // waiters on any of the three
    WorkQueueRoot(std::uint32_t cap, std::uint32_t max_del) : capacity(cap), max_deliveries(max_del) {}
};
}  // namespace detail

template <> struct object_kind_of<detail::WorkQueueRoot> { static constexpr ObjectKind value = ObjectKind::work_queue; };

struct WorkQueueOptions {
    std::uint32_t capacity = 1024;      // items at once: waiting, leased and dead letters (1 .. 2^24)
    std::uint32_t max_deliveries = 4;   // deliveries before an item whose consumers died becomes a dead letter (1 .. 2^16)
};

// One delivery of an item. ack() once done; until then the item belongs to
// the process that got it, and is delivered again if that process dies.
class Lease {
public:
    const std::string& item() const noexcept { return item_; }
    std::uint32_t deliveries() const noexcept { return deliveries_; }  // 1 the first time
    std::uint64_t id() const noexcept { return id_; }
    // Acknowledge: the item is done and never delivered again. False if
    // this delivery is no longer held (acknowledged already, here or by a
    // copy of the lease elsewhere).
    bool ack();
    bool acked() const noexcept { return acked_; }

private:
    friend class WorkQueue;
    std::shared_ptr<detail::SegmentState> seg_;
    detail::WorkQueueRoot* root_ = nullptr;
    std::string item_;
    std::uint32_t deliveries_ = 0;
    std::uint64_t id_ = 0;
    bool acked_ = false;
};

struct DeadLetter {
    std::string item;
    std::uint32_t deliveries = 0;  // all of them ended with the consumer's death
    std::int32_t last_pid = 0;     // the consumer that died last
};

class WorkQueue {
public:
    // Create it (shm::already_exists if the name is taken).
    static WorkQueue create(Segment& seg, std::string_view name, const WorkQueueOptions& opt = {});
    // Open it, creating it with `opt` if absent (an existing one keeps its options).
    static WorkQueue open_or_create(Segment& seg, std::string_view name, const WorkQueueOptions& opt = {});
    // shm::not_found if absent.
    static WorkQueue open(Segment& seg, std::string_view name);

    // ---- put: blocks while full; shm::closed after close() -----------------
    void put(std::string_view item);
    bool try_put(std::string_view item);  // false if full
    template <class Rep, class Period>
    bool put_for(std::string_view item, std::chrono::duration<Rep, Period> d) {
        return put_until(item, detail::Deadline::in(d));
    }
    bool put_until(std::string_view item, const detail::Deadline& d);

    // ---- get: blocks while empty; shm::closed once closed and drained ------
    Lease get();
    std::optional<Lease> try_get();  // nullopt if empty (or closed and drained)
    template <class Rep, class Period>
    std::optional<Lease> get_for(std::chrono::duration<Rep, Period> d) {
        return get_until(detail::Deadline::in(d));
    }
    std::optional<Lease> get_until(const detail::Deadline& d);  // nullopt on time-out or closed and drained

    // Acknowledge the delivery `lease_id` (Lease::ack()).
    bool ack(std::uint64_t lease_id);

    // Deliver again, now, the leases of processes that have died; returns how many
    // items went back to the front (or to the dead letters).
    std::size_t recover();

    std::optional<DeadLetter> try_get_dead();

    // ---- join: until every item put is acknowledged or read as a dead letter
    void join();
    bool join_until(const detail::Deadline& d);

    // After close(), put() throws shm::closed; get() drains what is waiting
    // (and what is redelivered), then throws shm::closed once nothing is
    // waiting or leased.
    void close();
    bool closed() const;

    std::size_t qsize() const;        // waiting
    std::size_t leased() const;       // held by consumers
    std::size_t dead_letters() const; // waiting to be read by try_get_dead()
    std::size_t unfinished() const;   // put, and not yet acknowledged or read as a dead letter
    std::uint32_t capacity() const noexcept { return root_->capacity; }
    std::uint32_t max_deliveries() const noexcept { return root_->max_deliveries; }
    std::uint64_t redeliveries() const;  // items delivered again over the queue's life

    // Problems found in the queue's state (none, normally).
    std::vector<std::string> verify() const;

private:
    WorkQueue(std::shared_ptr<detail::SegmentState> seg, detail::WorkQueueRoot* root, std::string name);
    friend class Lease;
    std::optional<Lease> attempt_get(bool* drained);
    static bool ack_in(const std::shared_ptr<detail::SegmentState>& seg, detail::WorkQueueRoot* root,
                       std::uint64_t lease_id);
    std::shared_ptr<detail::SegmentState> seg_;
    detail::WorkQueueRoot* root_;
    std::string name_;
    std::uint32_t gets_ = 0;  // this handle's gets, to look for dead consumers now and then
};

}  // namespace shm
