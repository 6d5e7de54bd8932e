// shm::Queue — a bounded multi-producer/multi-consumer queue across
// processes (Python's multiprocessing.Queue / JoinableQueue), lock-free and
// safe against killed processes.
//
// Items are byte strings of at most max_item_size bytes. A queue is bounded
// twice, both set when it is created: it holds at most `capacity` items (a
// power of two) and at most `max_bytes` bytes of item payloads. Its memory
// is reserved in the segment at creation: a 16-byte descriptor per item of
// capacity, plus max_bytes for payloads (plus one largest item, so that no
// item is ever split at the end of the ring). A queue of 100,000 items of up
// to 1 MiB with max_bytes = 64 MiB takes about 67 MiB, not 100 GB.
//
// How it works: every put takes a ticket (its place in the order) and the
// next bytes of a byte ring, in one compare-and-swap on a cursor word that
// packs both with the id of the process that claimed them; every get takes
// the next ticket with one compare-and-swap on another cursor. The item's
// slot, a 64-bit word and its item's position and length, is then written
// and read with plain stores and loads: no lock per item, and one producer
// and one consumer share no line but the item's own. Each claim in flight
// is named by its cursor, or, once the cursor has moved on, by its slot: a
// process that finds a claim held by a process that has died repairs it —
// a half-written item becomes a tombstone that consumers skip (it was never
// put, and its bytes are freed with it), a half-read item is released (it
// was taken, whole, by the dead consumer). Waiting spins briefly, then
// sleeps on a futex; sleepers re-check the liveness of whoever blocks them
// every 50 ms.
//
// Guarantees: FIFO per producer; no item is delivered twice; no item is lost
// while the queue exists, except the one item a killed consumer had taken.
// qsize(), empty(), full() and bytes_used() are snapshots that may be stale
// at once under concurrency, as in Python.
//
// Up to kMaxProcesses processes (distinct pids) may use one queue over its
// life at a time; the slots of processes that died are recycled.
//
// A Queue handle (and a Reservation, until it is committed or dropped)
// keeps the segment's attachment alive: it may outlive the Segment handle
// it was opened from (segment.hpp, "Handles").
#pragma once

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "shm/deadline.hpp"
#include "shm/error.hpp"
#include "shm/object_kind.hpp"

namespace shm {

class Segment;

struct QueueOptions {
    std::uint32_t capacity = 1024;       // items; rounded up to a power of two (2 .. 2^24)
    std::uint32_t max_item_size = 256;   // bytes (1 .. 256 MiB)
    // Bytes of item payloads the queue holds at most (up to 1 TiB); 0 means
    // capacity × max_item_size. Each item counts its length rounded up to
    // the ring's unit: 8 bytes while max_bytes is at most 64 MiB, else the
    // power of two that keeps the ring within 2^23 units.
    std::uint64_t max_bytes = 0;
    // Items queued at most, exactly (Python's maxsize): 1 .. capacity, or 0
    // for the capacity as rounded up. (Last, so that {capacity, item size,
    // bytes} initialisers keep their meaning.)
    std::uint32_t max_items = 0;
};

namespace detail {
struct QueueControl;
struct SegmentState;  // a segment's attachment, shared by handles (segment.hpp)
enum class NamedOp;   // segment.hpp
}  // namespace detail

class Queue {
public:
    static constexpr std::uint32_t kMaxProcesses = 64;

    // Create the queue named `name` in seg (shm::already_exists if taken).
    static Queue create(Segment& seg, std::string_view name, const QueueOptions& opt = {});
    // Open it, creating it with `opt` if absent (an existing queue keeps its options).
    static Queue open_or_create(Segment& seg, std::string_view name, const QueueOptions& opt = {});
    // shm::not_found if absent.
    static Queue open(Segment& seg, std::string_view name);

    // ---- put ---------------------------------------------------------------
    // Blocks while full: `capacity` items queued, or no room for this item
    // in max_bytes. shm::closed after close(); shm::error (EMSGSIZE) for an
    // item over max_item_size or max_bytes, naming the limit.
    void put(std::string_view item) { put_until(item, detail::Deadline::never()); }
    template <class Rep, class Period>
    bool put_for(std::string_view item, const std::chrono::duration<Rep, Period>& d) {
        return put_until(item, detail::Deadline::in(d));
    }
    bool try_put(std::string_view item);          // false when full (of items or of bytes)
    void put_nowait(std::string_view item);       // shm::full when full (of items or of bytes)
    // Puts items in order, blocking while full; returns how many (all). An
    // item over max_item_size or max_bytes refuses the call before any is
    // put (shm::error, EMSGSIZE). As many items as there is room for are
    // claimed at once, with one atomic step, and stay together in the queue;
    // a process killed in the middle leaves the items it published and none
    // of the rest.
    std::size_t put_many(const std::vector<std::string>& items);

    // ---- get ---------------------------------------------------------------
    // Blocks while empty; shm::closed once closed and drained.
    std::string get();
    // The same into `out`, reusing its memory: no allocation per item once
    // out has grown to the items' size.
    void get(std::string& out);
    // nullopt on time-out, or when closed and drained (closed() tells which).
    template <class Rep, class Period>
    std::optional<std::string> get_for(const std::chrono::duration<Rep, Period>& d) {
        std::string out;
        if (!get_until(out, detail::Deadline::in(d))) return std::nullopt;
        return out;
    }
    std::optional<std::string> try_get();         // nullopt when empty (or closed and drained)
    std::string get_nowait();                     // shm::empty when empty
    // Up to n items that are available now, claimed at once with one
    // atomic step; blocks for the first one only until `d` (empty result on
    // time-out or when closed and drained). A process killed in the middle
    // takes the items it claimed with it, as get() does its one. An item
    // whose place is outside the queue's ring throws shm::corrupted.
    template <class Rep, class Period>
    std::vector<std::string> get_many(std::size_t n, const std::chrono::duration<Rep, Period>& d) {
        std::vector<std::string> out;
        get_many_until(out, n, detail::Deadline::in(d));
        return out;
    }
    // The same into `out`, which is resized to the items got (0 .. n) and
    // whose strings' memory is reused: a loop that keeps `out` allocates
    // nothing per item once its strings have grown. Returns the count.
    template <class Rep, class Period>
    std::size_t get_many(std::vector<std::string>& out, std::size_t n, const std::chrono::duration<Rep, Period>& d) {
        return get_many_until(out, n, detail::Deadline::in(d));
    }

    // ---- zero copy -----------------------------------------------------------
    // Reserve room for an item of up to n bytes and write it in place: it is
    // copied once, by you. commit(len), len <= n, publishes it (the n bytes
    // stay counted until it is got); a Reservation dropped without commit
    // publishes nothing (consumers skip it). Blocks while full; shm::closed
    // after close(); EMSGSIZE if n is over max_item_size or max_bytes.
    // reserve() reserves the largest item the queue takes.
    class Reservation {
    public:
        Reservation(Reservation&&) noexcept;
        Reservation& operator=(Reservation&&) = delete;
        ~Reservation();
        char* data() const noexcept { return data_; }
        std::size_t capacity() const noexcept { return cap_; }
        void commit(std::size_t len);

    private:
        friend class Queue;
        Reservation(Queue* q, std::uint64_t pos, char* data, std::size_t cap)
            : c_(q->c_), seg_(q->seg_), pos_(pos), data_(data), cap_(cap) {}
        detail::QueueControl* c_;  // null once committed (or moved from)
        std::shared_ptr<detail::SegmentState> seg_;
        std::uint64_t pos_;
        char* data_;
        std::size_t cap_;
    };
    Reservation reserve(std::size_t n);
    Reservation reserve();
    // Read the next item in place: fn(const char*, size_t) runs on the
    // queue's memory, then the item's room is released. Blocks while empty; shm::closed once
    // closed and drained.
    template <class Fn>
    void consume(Fn&& fn) {
        View v = get_view(detail::Deadline::never(), true);
        struct Release {
            Queue* q;
            std::uint64_t pos;
            std::uint32_t id;
            ~Release() { q->release_view(pos, id); }
        } r{this, v.pos, v.id};
        fn(static_cast<const char*>(v.data), v.len);
    }

    // ---- JoinableQueue -------------------------------------------------------
    // Mark one item taken by this process as processed. shm::error (EINVAL)
    // when this process has marked as many items as it has taken.
    void task_done();
    // Wait until the queue is empty and every item taken by a live process
    // has been marked done (items taken by processes that died count as done).
    void join();
    template <class Rep, class Period>
    bool join_for(const std::chrono::duration<Rep, Period>& d) {
        return join_until(detail::Deadline::in(d));
    }

    // ---- state ---------------------------------------------------------------
    // Further puts fail with shm::closed; consumers drain what is left, then
    // get shm::closed (or nullopt); every blocked producer and consumer wakes.
    void close();
    bool closed() const noexcept;
    std::size_t qsize() const noexcept;
    bool empty() const noexcept { return qsize() == 0; }
    bool full() const noexcept;
    std::uint32_t capacity() const noexcept;
    std::uint32_t max_items() const noexcept;  // capacity unless QueueOptions::max_items set it
    std::uint32_t max_item_size() const noexcept;
    std::uint64_t max_bytes() const noexcept;
    // Payload bytes held by queued items and items being put or got, in
    // ring units (see QueueOptions::max_bytes).
    std::uint64_t bytes_used() const noexcept;
    // Slots found claimed by dead processes and repaired so far.
    std::uint64_t repairs() const noexcept;

private:
    struct View {
        const void* data;
        std::size_t len;
        std::uint64_t pos;
        std::uint32_t id;  // this process's actor id
    };
    Queue(std::shared_ptr<detail::SegmentState> seg, detail::QueueControl* c) : seg_(std::move(seg)), c_(c) {}
    static Queue attach(Segment& seg, std::string_view name, const QueueOptions& opt, detail::NamedOp op);
    bool put_until(std::string_view item, const detail::Deadline& d);
    bool get_until(std::string& out, const detail::Deadline& d);
    std::size_t get_many_until(std::vector<std::string>& out, std::size_t n, const detail::Deadline& d);
    bool try_get_into(std::string& out);
    bool join_until(const detail::Deadline& d);
    View get_view(const detail::Deadline& d, bool throw_closed);
    [[noreturn]] void bad_item(std::uint64_t pos, std::uint32_t id, std::uint64_t item);
    void release_view(std::uint64_t pos, std::uint32_t id);

    std::shared_ptr<detail::SegmentState> seg_;  // keeps c_'s mapping alive
    detail::QueueControl* c_;
};

// ---- typed layer -------------------------------------------------------------
// queue_codec<T> turns a T into bytes and back. Provided for trivially
// copyable types (their bytes) and std::string; specialise it for others:
//     template <> struct shm::queue_codec<Point> {
//         static std::string encode(const Point&);
//         static Point decode(std::string_view);
//     };
template <class T, class = void>
struct queue_codec;

template <class T>
struct queue_codec<T, std::enable_if_t<std::is_trivially_copyable_v<T>>> {
    static std::string_view encode(const T& v) { return {reinterpret_cast<const char*>(&v), sizeof(T)}; }
    static T decode(std::string_view b) {
        if (b.size() != sizeof(T))
            throw error(EINVAL, "shm::TypedQueue: item of " + std::to_string(b.size()) + " bytes, expected " +
                                    std::to_string(sizeof(T)));
        T v;
        std::memcpy(static_cast<void*>(&v), b.data(), sizeof(T));
        return v;
    }
};

template <>
struct queue_codec<std::string> {
    static std::string_view encode(const std::string& s) { return s; }
    static std::string decode(std::string_view b) { return std::string(b); }
};

template <class T>
class TypedQueue {
public:
    explicit TypedQueue(Queue q) : q_(std::move(q)) {}
    void put(const T& v) { q_.put(queue_codec<T>::encode(v)); }
    template <class Rep, class Period>
    bool put_for(const T& v, const std::chrono::duration<Rep, Period>& d) { return q_.put_for(queue_codec<T>::encode(v), d); }
    bool try_put(const T& v) { return q_.try_put(queue_codec<T>::encode(v)); }
    T get() { return queue_codec<T>::decode(q_.get()); }
    template <class Rep, class Period>
    std::optional<T> get_for(const std::chrono::duration<Rep, Period>& d) {
        auto b = q_.get_for(d);
        if (!b) return std::nullopt;
        return queue_codec<T>::decode(*b);
    }
    std::optional<T> try_get() {
        auto b = q_.try_get();
        if (!b) return std::nullopt;
        return queue_codec<T>::decode(*b);
    }
    Queue& raw() noexcept { return q_; }

private:
    Queue q_;
};

template <>
struct object_kind_of<detail::QueueControl> {
    static constexpr ObjectKind value = ObjectKind::queue;
};

}  // namespace shm
