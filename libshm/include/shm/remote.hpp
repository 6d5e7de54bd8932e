// shm::remote — the Queue, Dict, List, Lock and Event of libshm, across
// hosts, over a NATS JetStream server or cluster (nats-server 2.9 and up,
// with JetStream enabled: `nats-server -js`). A separate library,
// shm::remote (libshm_remote), built when the NATS C client is found;
// programs that do not use it do not link it.
//
//     shm::remote::Store store = shm::remote::connect("nats://10.0.0.1:4222,nats://10.0.0.2:4222");
//     auto q = shm::remote::Queue::open_or_create(store, "jobs");
//     q.put("task 1");                          // producer, on any host
//     shm::remote::Lease l = q.get();           // consumer, on any host
//     run(l.item());
//     l.ack();                                  // never delivered again
//
// The objects mirror the local ones (queue.hpp, work_queue.hpp,
// container.hpp, sync.hpp): the same method names, the same std::chrono
// _for/_until forms, try_/_nowait forms and exceptions (shm::full,
// shm::empty, shm::key_error, shm::index_error, shm::lock_error, ...), so
// that code written against that shared interface runs on both. What
// differs, because the objects live on servers and not in this host's
// memory:
//
//   * Liveness is a time-out. A consumer's items, and a lock's hold, are
//     leases: if the process that holds one dies, or is cut off from the
//     servers, the item is delivered again (the lock is free again) once
//     the lease has run out, not at once as on one host.
//   * Delivery is at least once: an item is delivered again if its lease
//     runs out before it is acknowledged, even to a consumer that is alive
//     but slow. Lease::ack() makes it final.
//   * Dict::update(key, fn), List::update() and increment() are
//     compare-and-set loops: fn may run more than once (with the newer
//     value each time), so it must have no side effects.
//   * Every call that talks to the servers waits at most
//     StoreOptions::request_timeout (5 s by default) for an answer, and
//     throws shm::remote::unavailable, naming the servers and the object,
//     when none comes. Calls that wait for the object (get() on an empty
//     queue, lock() of a held lock, Event::wait()) wait as long as asked,
//     and fail the same way if the servers stop answering meanwhile.
//
// Handles: a Store is a connection, shared by the objects opened from it
// (they keep it alive); it may be copied. Store, Dict, List and Event
// handles may be used by several threads at once. A Queue or a Lock handle
// belongs to one thread at a time (a Lock's hold belongs to the handle:
// open one handle per thread that locks). A handle must not be used in a
// child made by fork(): connect again there (after exec, ideally).
//
// See docs/remote.md for the layout on the servers and the guarantees.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shm/container.hpp"  // shm::Value, key_error, index_error
#include "shm/deadline.hpp"
#include "shm/error.hpp"

namespace shm::remote {

// ---- errors ------------------------------------------------------------------
// No server of the list could be reached, or the servers did not answer a
// request within StoreOptions::request_timeout. The message names the
// servers and the object. errno EHOSTUNREACH (connect) or ETIMEDOUT.
class unavailable : public shm::error {
public:
    unavailable(int errnum, const std::string& what) : shm::error(errnum, what) {}
};

// The object asks for more replicas than the servers can give (3 replicas
// on a single server, or on a cluster with fewer than 3 servers with
// JetStream up). errno EINVAL.
class not_enough_replicas : public shm::error {
public:
    explicit not_enough_replicas(const std::string& what) : shm::error(EINVAL, what) {}
};

// The name is taken by an object of another kind (a Dict opened as a
// Queue), or the stream/bucket on the servers has a layout this library
// did not make. A shm::type_mismatch (errno EINVAL).
class layout_mismatch : public shm::type_mismatch {
public:
    explicit layout_mismatch(const std::string& what) : shm::type_mismatch(what) {}
};

// ---- the store ---------------------------------------------------------------
struct StoreOptions {
    // The longest any one request to the servers may wait for its answer
    // (also the connect time-out per server).
    std::chrono::milliseconds request_timeout{5000};
    // Replicas of the objects created through this store (each object may
    // set its own): 1 or 3 (JetStream allows up to 5). 0: 3 when the
    // servers report 3 or more servers in their cluster, else 1.
    int replicas = 0;
    // Defaults of the objects' own options (QueueOptions, LockOptions).
    std::chrono::milliseconds lock_lease{10000};
    std::chrono::milliseconds ack_wait{30000};
    std::uint32_t max_deliveries = 4;
    // The name this client shows to the servers (monitoring); "" for none.
    std::string client_name;
};

namespace detail {
struct StoreState;
struct QueueState;
struct LeaseState;
struct KvState;
struct LockState;
}  // namespace detail

class Store {
public:
    // The servers as given to connect(), comma-separated.
    const std::string& servers() const noexcept;
    // The replicas objects get unless their options say otherwise (1 or 3,
    // or as StoreOptions::replicas set it).
    int replicas() const noexcept;
    const StoreOptions& options() const noexcept;
    // Servers this client knows of right now (those given and those the
    // cluster announced).
    std::vector<std::string> known_servers() const;

    // Delete the object `name` (any kind) and its contents from the
    // servers. False if there was none. Handles open on it fail afterwards.
    bool remove(std::string_view name);
    // The kind of the object `name` ("queue", "dict", "list", "lock",
    // "event"), or nullopt if there is none.
    std::optional<std::string> kind(std::string_view name);

    explicit Store(std::shared_ptr<detail::StoreState> s) : s_(std::move(s)) {}
    const std::shared_ptr<detail::StoreState>& state() const noexcept { return s_; }

private:
    std::shared_ptr<detail::StoreState> s_;
};

// Connect to the servers, "nats://host:port" or several of them separated
// by commas (the client fails over between them and learns the rest of
// the cluster from them). Throws shm::remote::unavailable naming the
// servers when none answers within the request time-out, and
// shm::remote::unavailable (ENOTSUP) when the server has no JetStream.
Store connect(std::string_view servers, const StoreOptions& opt = {});

// Object names follow the local rules (names.hpp): 1 to 63 characters of
// [A-Za-z0-9._:/-], not starting with '/'. One name is one object, of one
// kind, in a store (as in a segment).

// ---- Queue -------------------------------------------------------------------
// A work queue: a JetStream stream with work-queue retention (an item is
// deleted once acknowledged) and a durable pull consumer with explicit
// acknowledgement, shared by all the queue's consumers. The shape of
// shm::WorkQueue (get() gives a Lease, ack() ends it), plus task_done() and
// join() as in the JoinableQueue.
struct QueueOptions {
    std::uint32_t max_items = 1024;      // items held at most: waiting, leased (and dead letters)
    std::uint32_t max_item_size = 1 << 20;  // bytes (up to the server's max_payload, 1 MiB by default)
    // An item got and not acknowledged within this time is delivered again
    // (to any consumer). 0: the store's ack_wait (30 s by default).
    std::chrono::milliseconds lease{0};
    // Deliveries before an item is given up on (a dead letter: it stays,
    // counted by unfinished(), until purge()). 0: the store's (4).
    std::uint32_t max_deliveries = 0;
    int replicas = 0;  // 0: the store's
};

class Queue;

// One delivery of an item. ack() once done; until then the item is
// leased, and it is delivered again if the lease runs out first.
class Lease {
public:
    Lease();
    Lease(Lease&&) noexcept;
    Lease& operator=(Lease&&) noexcept;
    ~Lease();

    const std::string& item() const noexcept { return item_; }
    std::uint32_t deliveries() const noexcept { return deliveries_; }  // 1 the first time
    std::uint64_t id() const noexcept { return id_; }  // the item's sequence in the stream
    // Acknowledge, and wait for the server to confirm (up to the request
    // time-out). True once confirmed: the item is never delivered again
    // (but see docs/remote.md: nats-server before 2.10.17 may, when the
    // consumer's leader changes).
    // False if the server did not confirm (not acknowledged, or the
    // confirmation was lost: the item may be delivered again).
    bool ack();
    // Acknowledge without waiting for the confirmation (one message to the
    // servers, as a plain JetStream ack): the item is never delivered again,
    // unless the acknowledgement is lost on the way (a server lost just
    // then), in which case it is delivered again after its lease, as an
    // item whose holder died. For throughput; ack() when the caller must
    // know.
    void ack_nowait();
    // Give the item back now, to be delivered again at once.
    void nak();
    // Ask for another full lease (for long work).
    void extend();
    bool acked() const noexcept { return acked_; }

private:
    friend class Queue;
    friend struct detail::QueueState;
    std::shared_ptr<detail::LeaseState> s_;
    std::string item_;
    std::uint32_t deliveries_ = 0;
    std::uint64_t id_ = 0;
    bool acked_ = false;
};

class Queue {
public:
    // shm::already_exists if the name is taken.
    static Queue create(Store& store, std::string_view name, const QueueOptions& opt = {});
    // Open it, creating it with `opt` if absent (an existing queue keeps its
    // options, as a local one does). shm::remote::layout_mismatch if the
    // name is another kind of object.
    static Queue open_or_create(Store& store, std::string_view name, const QueueOptions& opt = {});
    static Queue open(Store& store, std::string_view name);  // shm::not_found if absent

    // ---- put: blocks while full (max_items waiting and leased) ------------
    // An item is in the queue once put() returns: the servers have stored
    // it (on a majority of the replicas). A put that had to be retried
    // (a server lost meanwhile) is stored once (message ids).
    // shm::error (EMSGSIZE) for an item over max_item_size.
    void put(std::string_view item) { put_until(item, shm::detail::Deadline::never()); }
    template <class Rep, class Period>
    bool put_for(std::string_view item, const std::chrono::duration<Rep, Period>& d) {
        return put_until(item, shm::detail::Deadline::in(d));
    }
    bool try_put(std::string_view item);     // false when full
    void put_nowait(std::string_view item);  // shm::full when full
    bool put_until(std::string_view item, const shm::detail::Deadline& d);
    // Puts items pipelined (up to 256 awaiting the servers' answer at once)
    // and returns, with items.size(), once the servers have stored every
    // one of them, blocking while full. In order, except that items that
    // had to be sent again (the queue was full, or a server was lost) come
    // after the others; each is stored once.
    std::size_t put_many(const std::vector<std::string>& items);
    // ---- pipelined puts ---------------------------------------------------
    // put_async() sends the item and returns without waiting for the
    // servers' answer (up to 256 of them unanswered at once), as
    // multiprocessing's Queue.put() hands its item to a feeder thread. It
    // still blocks while the queue is full: the handle learns the room left
    // from the servers, spends it, and asks again (after settling what it
    // sent) when it is used up; put_async_until() returns false, having
    // sent nothing, if there is still no room at `d`. The items are stored
    // once each, in the order of this handle's puts (put(), put_many() and
    // join() settle first), except that when several handles race for the
    // last room, one the servers refused is sent again after the others.
    // flush() returns once the servers have stored every item this handle
    // sent (retrying what a lost server left unanswered) and says how many
    // it settled. Until then an item may be lost with this process; the
    // handle's destruction flushes (and reports on stderr what it could
    // not store). An exception from put_async() or flush() (the servers
    // unreachable) leaves the unconfirmed items to a later flush(). While
    // one thread puts, another may call flush() or join() on the handle
    // (the one exception to a handle's one thread at a time).
    void put_async(std::string_view item) { put_async_until(item, shm::detail::Deadline::never()); }
    template <class Rep, class Period>
    bool put_async_for(std::string_view item, const std::chrono::duration<Rep, Period>& d) {
        return put_async_until(item, shm::detail::Deadline::in(d));
    }
    bool put_async_until(std::string_view item, const shm::detail::Deadline& d);
    std::size_t flush();
    std::size_t unflushed() const noexcept;  // sent by put_async(), not yet confirmed

    // ---- get: blocks while empty --------------------------------------------
    // A get with nothing fetched asks the servers for up to 32 items that
    // are there now, in one request (get_many: for the n it asks for, no
    // more); the others wait in this handle, leased to it, for its next gets. One held
    // for more than half its lease is given back (delivered again at once)
    // rather than handed out; those left when the handle is destroyed are
    // given back. A get that returns has left no request on the servers
    // that could still take an item: an item that comes to the handle when
    // no get waits is given back at once. A server shutting down or a
    // leader changing is retried, within the request time-out.
    Lease get();
    template <class Rep, class Period>
    std::optional<Lease> get_for(const std::chrono::duration<Rep, Period>& d) {
        return get_until(shm::detail::Deadline::in(d));
    }
    // One short request to the servers, which wait at most 200 ms for an
    // item (not instantaneous, as a local try_get is): nullopt if none came.
    std::optional<Lease> try_get();
    Lease get_nowait();  // shm::empty when empty
    std::optional<Lease> get_until(const shm::detail::Deadline& d);
    // Up to n items that are available now, in one request; blocks for the
    // first one only until `d` (empty result on time-out).
    template <class Rep, class Period>
    std::vector<Lease> get_many(std::size_t n, const std::chrono::duration<Rep, Period>& d) {
        return get_many_until(n, shm::detail::Deadline::in(d));
    }
    std::vector<Lease> get_many_until(std::size_t n, const shm::detail::Deadline& d);

    // ---- JoinableQueue ---------------------------------------------------------
    // Acknowledge the oldest item got through this handle and not yet
    // acknowledged (Python's task_done()). shm::error (EINVAL) if there is
    // none. Returns Lease::ack()'s result.
    bool task_done();
    // Wait until every item put has been acknowledged (unfinished() is 0:
    // dead letters count until purge()). join() waits as long as that takes.
    void join() { join_until(shm::detail::Deadline::never()); }
    template <class Rep, class Period>
    bool join_for(const std::chrono::duration<Rep, Period>& d) {
        return join_until(shm::detail::Deadline::in(d));
    }
    bool join_until(const shm::detail::Deadline& d);

    // ---- state: snapshots, from the servers -------------------------------
    // Waiting to be delivered. Items a get fetched and a handle holds for
    // its next gets count as leased, not waiting.
    std::size_t qsize() const;
    bool empty() const { return qsize() == 0; }
    bool full() const;
    std::size_t leased() const;      // delivered and not yet acknowledged
    std::size_t unfinished() const;  // put and not yet acknowledged (dead letters too)
    std::uint32_t max_items() const noexcept;
    std::uint32_t max_item_size() const noexcept;
    std::uint32_t max_deliveries() const noexcept;
    // Items a get() asks the servers for at once, this handle (1 to 4096;
    // 32 by default): those beyond the one it returns wait in the handle,
    // leased to it, for its next gets. 1 fetches none ahead: for a worker
    // that takes long over each item, so that the others go to the other
    // workers (a held item is given back after half its lease, and each
    // delivery counts towards max_deliveries).
    void set_prefetch(std::uint32_t n) noexcept;
    std::uint32_t prefetch() const noexcept;
    std::chrono::milliseconds lease() const noexcept;
    int replicas() const noexcept;
    const std::string& name() const noexcept;
    // Drop every item, waiting, leased or dead.
    void purge();

    explicit Queue(std::shared_ptr<detail::QueueState> s) : s_(std::move(s)) {}

private:
    std::shared_ptr<detail::QueueState> s_;
};

// ---- Dict and List ---------------------------------------------------------------
// A key-value bucket per object (history 1). Values are shm::Value:
// null, bool, int, double, string, bytes, and nested lists and dicts,
// which are stored as values (copies): a nested container read back is a
// new container (Value::is_new_container(), new_list_items() /
// new_dict_items()), not a shared handle as in a segment.
// Keys are any byte strings (the empty string too); they are stored
// encoded, since the servers take only [-/_=.a-zA-Z0-9] in keys.
// Limits: a value (a List: the whole list) up to max_item_size of the
// servers (1 MiB by default).
//
// A local copy (ObjectOptions::local_copy, Dict and List): the handle
// keeps a copy of the whole bucket in this process, kept up to date by a
// watch on the servers (a thread per handle; memory for every key and
// value). Its reads (get, find, contains, size, keys, values, items; a
// List's get, size, index, count, snapshot, slice) then answer from
// memory, with no round trip. What they promise instead of "the servers'
// value now":
//  - read your writes: a change made through this handle is in its copy
//    when the call that made it returns;
//  - monotonic: a read never sees an older value of a key than one read
//    before through the same handle;
//  - another writer's change arrives about one network delay after its
//    call returns; sync() waits until the copy holds every change the
//    servers had stored when sync() was called;
//  - a snapshot (size, keys, items, ...) is of one instant of the copy.
// Writes still go to the servers and are as durable as without the copy;
// a compare-and-set (update, increment, setdefault, pop, erase) tries the
// copy's revision first and reads from the servers only if that revision
// was stale. If the watch ends (the bucket removed, the servers gone for
// longer than the client reconnects), reads go to the servers again.
struct ObjectOptions {
    int replicas = 0;         // 0: the store's
    bool local_copy = false;  // Dict and List: answer reads from a watched copy
};

class Dict {
public:
    static Dict open_or_create(Store& store, std::string_view name, const ObjectOptions& opt = {});
    static Dict open(Store& store, std::string_view name);  // shm::not_found if absent
    // opt.local_copy is used; opt.replicas is not (the bucket exists).
    static Dict open(Store& store, std::string_view name, const ObjectOptions& opt);

    Value get(std::string_view key) const;  // shm::key_error if missing
    Value at(std::string_view key) const { return get(key); }
    Value get(std::string_view key, const Value& dflt) const;
    template <class T>
    T get(std::string_view key) const { return get(key).as<T>(); }
    std::optional<Value> find(std::string_view key) const;

    void set(std::string_view key, const Value& v);
    // Pipelined sets, as Queue::put_async(): set_async() sends the value and
    // returns without waiting for the servers' answer (up to 256 unanswered
    // per handle; it waits for answers when that many are out). flush()
    // returns once the servers have stored every value this handle sent,
    // and says how many it settled; unflushed() counts them. This handle's
    // operations keep their order: every other call but get(), find() and
    // contains() flushes first; those answer with the value this handle set
    // last, from the local copy if there is one, else after a flush. A
    // value the servers did not confirm is sent again under its message id
    // (stored once), unless this handle set the key again after it: the
    // later value is the one sent. Until it is flushed, a value may be lost
    // with its process (destroying the handle flushes, and reports on
    // stderr what it could not store). A value too large to pipeline (near
    // the servers' message limit) goes as set() does, after a flush.
    void set_async(std::string_view key, const Value& v);
    std::size_t flush();
    std::size_t unflushed() const noexcept;
    bool erase(std::string_view key);  // false if missing
    Value pop(std::string_view key);   // shm::key_error if missing
    Value pop(std::string_view key, const Value& dflt);
    bool contains(std::string_view key) const;
    // A scan of the bucket: a snapshot of each key, not of all at one instant.
    std::size_t size() const;
    bool empty() const { return size() == 0; }
    void clear();
    std::vector<std::string> keys() const;
    std::vector<Value> values() const;
    std::vector<std::pair<std::string, Value>> items() const;
    void update(const std::vector<std::pair<std::string, Value>>& items);  // one set() each
    // Set it only if absent (one atomic create); returns the value now there.
    Value setdefault(std::string_view key, const Value& dflt);
    // Atomic read-modify-write by compare-and-set: fn gets the current value
    // (null if missing) and its result is stored if nobody changed the key
    // meanwhile; else fn runs again with the newer value. fn may run more
    // than once. An exception from fn changes nothing.
    Value update(std::string_view key, const std::function<Value(const Value&)>& fn);
    // d[key] += n, atomically (by compare-and-set); a missing key counts
    // from 0. Returns the new value. As the local Dict's increment().
    std::int64_t increment(std::string_view key) { return increment_int(key, 1); }
    template <class N, std::enable_if_t<std::is_integral_v<N> && !std::is_same_v<N, bool>, int> = 0>
    std::int64_t increment(std::string_view key, N n) {
        return increment_int(key, static_cast<std::int64_t>(n));
    }
    double increment(std::string_view key, double n);

    // With a local copy: wait until it holds every change the servers had
    // stored when sync() was called (unavailable if not within the request
    // time-out). Without one: nothing to do (reads go to the servers).
    void sync() const;
    bool has_local_copy() const noexcept;

    const std::string& name() const noexcept;
    explicit Dict(std::shared_ptr<detail::KvState> s) : s_(std::move(s)) {}

private:
    std::int64_t increment_int(std::string_view key, std::int64_t n);
    std::shared_ptr<detail::KvState> s_;
};

// The whole list is one value of its bucket, replaced by compare-and-set at
// every change: each operation is atomic, and costs the size of the whole
// list on the wire (twice for a change). Meant for lists of up to some
// thousands of small items; use a Dict or a Queue for more.
class List {
public:
    static List open_or_create(Store& store, std::string_view name, const ObjectOptions& opt = {});
    static List open(Store& store, std::string_view name);
    static List open(Store& store, std::string_view name, const ObjectOptions& opt);  // as Dict's

    void append(const Value& v);
    void extend(const std::vector<Value>& vs);
    void insert(std::int64_t index, const Value& v);  // Python semantics: clamps
    Value get(std::int64_t index) const;               // negative from the end; shm::index_error
    Value at(std::int64_t index) const { return get(index); }
    template <class T>
    T get(std::int64_t index) const { return get(index).as<T>(); }
    void set(std::int64_t index, const Value& v);
    Value pop(std::int64_t index = -1);
    void remove(const Value& v);              // first equal item; shm::error (ENOENT) if none
    std::size_t index(const Value& v) const;  // shm::error (ENOENT) if none
    std::size_t count(const Value& v) const;
    std::size_t size() const;
    bool empty() const { return size() == 0; }
    void clear();
    std::vector<Value> snapshot() const;
    std::vector<Value> slice(std::int64_t start, std::int64_t stop) const;
    // Atomically replace the item at index with fn(item) (compare-and-set:
    // fn may run more than once); returns it.
    Value update(std::int64_t index, const std::function<Value(const Value&)>& fn);
    void assign(const std::vector<Value>& items);
    bool assign_if(const std::vector<Value>& expected, const std::vector<Value>& items);

    void sync() const;  // as Dict::sync()
    bool has_local_copy() const noexcept;

    const std::string& name() const noexcept;
    explicit List(std::shared_ptr<detail::KvState> s) : s_(std::move(s)) {}

private:
    std::shared_ptr<detail::KvState> s_;
};

// ---- Lock ----------------------------------------------------------------------
// A lock with a lease and a fencing token. The hold is a key of the lock's
// bucket; the bucket's entries expire after the lease (its max age), and
// while the lock is held a thread of this handle rewrites the key every
// lease/3, renewing it. If the holder dies, or is cut off from the servers
// for a lease, the key expires and the lock is free again: liveness across
// hosts is a time-out. So a holder cut off long enough may still believe it
// holds the lock after another process took it; every acquisition
// therefore carries a fencing token, an increasing number (the key's
// revision), that a resource given the token can check (docs/remote.md).
// Lockable: std::lock_guard and std::unique_lock work.
struct LockOptions {
    std::chrono::milliseconds lease{0};  // 0: the store's lock_lease (10 s)
    int replicas = 0;                    // 0: the store's
};

class Lock {
public:
    // An existing lock keeps its lease.
    static Lock open_or_create(Store& store, std::string_view name, const LockOptions& opt = {});
    static Lock open(Store& store, std::string_view name);
    Lock(Lock&&) noexcept;
    Lock& operator=(Lock&&) noexcept;
    ~Lock();  // releases a hold

    // Blocks while another holder has it (or until its lease runs out).
    // shm::lock_error (EDEADLK) if this handle holds it already.
    void lock() { try_lock_until(shm::detail::Deadline::never()); }
    bool try_lock();  // one attempt (a request to the servers)
    template <class Rep, class Period>
    bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
        return try_lock_until(shm::detail::Deadline::in(d));
    }
    template <class Clock, class Duration>
    bool try_lock_until(const std::chrono::time_point<Clock, Duration>& tp) {
        return try_lock_until(shm::detail::Deadline::at(tp));
    }
    bool try_lock_until(const shm::detail::Deadline& d);
    // Release the hold. shm::lock_error (EPERM) if this handle does not
    // hold it. If the lease had run out and another holder took the lock,
    // this changes nothing on the servers (the other holder keeps it).
    void unlock();

    // The fencing token of this handle's current hold (the revision of the
    // write that acquired it; every acquisition gets a larger one), 0 when
    // not held.
    std::uint64_t token() const noexcept;
    // True while this handle holds the lock as far as it knows: false after
    // unlock(), or once a renewal found the hold lost (the lease ran out
    // and, maybe, another process took it).
    bool held() const noexcept;
    std::chrono::milliseconds lease() const noexcept;
    const std::string& name() const noexcept;

    explicit Lock(std::shared_ptr<detail::LockState> s);

private:
    std::shared_ptr<detail::LockState> s_;
};

// ---- Event ---------------------------------------------------------------------
// A flag in a bucket. A waiter woken by set() returns true even if clear()
// followed at once (as the local Event and Python's).
class Event {
public:
    static Event open_or_create(Store& store, std::string_view name, const ObjectOptions& opt = {});
    static Event open(Store& store, std::string_view name);

    void set();
    void clear();
    bool is_set() const;
    void wait() { wait_until(shm::detail::Deadline::never()); }
    template <class Rep, class Period>
    bool wait_for(const std::chrono::duration<Rep, Period>& d) {
        return wait_until(shm::detail::Deadline::in(d));
    }
    template <class Clock, class Duration>
    bool wait_until(const std::chrono::time_point<Clock, Duration>& tp) {
        return wait_until(shm::detail::Deadline::at(tp));
    }
    bool wait_until(const shm::detail::Deadline& d);  // true if set, false on time-out

    const std::string& name() const noexcept;
    explicit Event(std::shared_ptr<detail::KvState> s) : s_(std::move(s)) {}

private:
    std::shared_ptr<detail::KvState> s_;
};

// ---- the encoding of values ---------------------------------------------------
// How Dict and List values are stored (docs/remote.md): public so that
// other clients (the Python package) read and write the same bytes.
// decode_value() of bytes it did not make throws shm::corrupted.
std::string encode_value(const Value& v);
Value decode_value(std::string_view bytes);
// The KV key for a Dict key, and back (shm::corrupted for a key of another form).
std::string encode_key(std::string_view key);
std::string decode_key(std::string_view kv_key);

}  // namespace shm::remote
