// Internals of shm::Dict and shm::List shared by their files: one
// operation on a container (Op: a heap transaction plus the helpers that
// read and write containers under it), and how operations are run.
//
//   container_op.cpp      Op's core: allocation, headers, garbage, finish()
//   container_codec.cpp   Value, and the cells that hold values (encode/decode)
//   container_dict.cpp    the dict table and shm::Dict
//   container_list.cpp    the list table and shm::List
//   container_verify.cpp  verify()
//
// The design (journaling, garbage, the size of one operation) is described
// in container_op.cpp.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "objects/container_layout.hpp"
#include "objects/container_value.hpp"
#include "shm/container.hpp"
#include "shm/hash.hpp"
#include "shm/segment.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"
#include "store/segment_access.hpp"
#include "store/segment_state.hpp"

namespace shm::containers {

using layout::Header;
using namespace container_layout;

inline constexpr int kGcBudget = 8;        // garbage pieces freed by each operation
inline constexpr int kDrainBudget = 64;    // ... per transaction when space runs out
inline constexpr std::size_t kDirectRelease = 32;  // more dropped pieces than this go in a batch
inline constexpr std::size_t kInPlace = 64;        // larger dict updates rebuild the table

inline std::uint64_t rd(const Word& w) { return w.load(std::memory_order_relaxed); }  // under the heap lock
inline void raw(Word& w, std::uint64_t v) { w.store(v, std::memory_order_relaxed); }  // fresh blocks only

inline std::uint64_t hash_key(std::string_view k) {
    // FNV-1a (shm/hash.hpp): stable across processes and builds (the table
    // is shared), its high bits folded into the low ones the table indexes by.
    const std::uint64_t h = detail::fnv1a(k);
    return h ^ (h >> 29);
}

using VT = Value::Type;

// What a new nested container holds; nullptr for any other value.
inline const detail::NewContainer* pending(const Value& v) noexcept { return detail::ValueAccess::pending(v); }

// The attachment a container handle holds; shm::error (EBADF) for a handle
// made of a default ContainerRef, which holds none.
inline detail::SegmentState& attached(const std::shared_ptr<detail::SegmentState>& s) {
    if (!s) throw error(EBADF, "shm::Dict/shm::List: this handle refers to no segment");
    return *s;
}

// Whether a container header's count, capacity and table can be followed:
// the count within the capacity, and the capacity room the table's own heap
// block has (appends write past the count with plain stores: never into a
// neighbour). Esz is a constant, so the divisions by it are shifts and
// multiplications: a 64-bit division by a value known only at run time costs
// as much as the whole append path's lock (this runs on every operation).
template <std::uint64_t Esz>
bool header_sound(Header* h, const CHdr* c, bool dict) {
    const std::uint64_t cap = rd(c->capacity), tab = rd(c->table), n = rd(c->count);
    if (n > cap || (dict && ((cap & (cap - 1)) != 0 || rd(c->used) > cap))) return false;
    if (!cap) return true;
    // payload_room() is 0 unless tab starts a live block inside the heap, so
    // this also puts the whole table inside the heap.
    return heap::payload_room(h, tab) / Esz >= cap;
}

// The container header at off, if it is a sound one of the kind `magic`
// says; else nullptr (Op::hdr says what is wrong).
inline CHdr* sound_header(Header* h, char* base, std::uint64_t off, std::uint64_t magic) {
    CHdr* c = reinterpret_cast<CHdr*>(base + off);
    if (off % 8 == 0 && layout::in_heap(h, off, sizeof(CHdr)) && rd(c->magic) == magic &&
        (magic == kDictMagic ? header_sound<sizeof(DEntry)>(h, c, true) : header_sound<sizeof(Cell)>(h, c, false)))
        [[likely]]
        return c;
    return nullptr;
}

// One operation on a container of a segment: the transaction plus helpers.
struct Op {
    const std::shared_ptr<detail::SegmentState>& seg;  // held by the handle operated on
    Header* h;
    char* base;
    heap::Txn t;
    // Several changes in one transaction (update(items), extend()): no change
    // may commit by itself with an unjournaled store.
    bool batch = false;
    // Nested containers this operation dropped: put on the garbage list at
    // its end (finish()).
    std::vector<std::uint64_t> dropped;

    void last(std::atomic<std::uint64_t>& w, std::uint64_t v) {
        if (batch)
            t.store(w, v);
        else
            t.store_last(w, v);
    }

    explicit Op(const std::shared_ptr<detail::SegmentState>& s) : seg(s), h(attached(s).hdr()), base(s->base()), t(h) {}

    template <class T>
    T* at(std::uint64_t off) const { return reinterpret_cast<T*>(base + off); }
    std::string where() const { return seg->what(); }

    std::uint64_t alloc(std::size_t n, const char* what);
    void free_block(std::uint64_t off) { heap::deallocate(t, off); }
    // The container header at off, checked on every use (a few compares):
    // its table, count and capacity are what every read below follows.
    // Inline (every operation asks it); what is wrong is told out of line.
    CHdr* hdr(std::uint64_t off, std::uint64_t magic) const {
        if (CHdr* c = sound_header(h, base, off, magic)) [[likely]]
            return c;
        bad_header(off, magic);
    }
    [[noreturn]] void bad_header(std::uint64_t off, std::uint64_t magic) const;
    // The bytes of a dict key, checked against the heap.
    const char* key_bytes(const DEntry& e) const;
    std::uint64_t new_container(std::uint64_t magic);
    void release_cell(std::uint64_t meta, std::uint64_t data);
    void write_cell(Cell& c, std::pair<std::uint64_t, std::uint64_t> mv);
    // Put what this operation dropped on its way out, then commit. A few
    // pieces are released directly; many go on the garbage list as one batch
    // (one journaled link instead of a few journal entries per piece).
    void finish(int gc_budget = kGcBudget);

    // ---- values (container_codec.cpp) --------------------------------------
    // Make the content of a new cell for v (allocating what it needs).
    std::pair<std::uint64_t, std::uint64_t> encode(const Value& v);
    Value decode(const Cell& c) const;
    // A process-local deep copy (for values that are about to be freed).
    Value copy_out(const Cell& c, int depth = 0) const;

    // ---- garbage (container_op.cpp) ----------------------------------------
    void to_garbage(std::uint64_t c);
    // Move a container's contents to the garbage list and leave it empty.
    void detach_contents(CHdr* c);
    // Free up to `budget` pieces of garbage. Returns whether garbage is left.
    bool collect(int budget);

    // ---- dict (container_dict.cpp) -----------------------------------------
    // Index of the key's entry, or -1; *insert_at gets the slot where it
    // would go (first tombstone or the empty slot ending the probe).
    std::int64_t dict_find(CHdr* c, std::string_view key, std::uint64_t hash, std::int64_t* insert_at) const;
    // Rebuild the table with room for `target` live entries (dropping the
    // tombstones); the new table is fresh memory.
    void dict_grow(CHdr* c, std::uint64_t target);
    // For more than kInPlace new keys, rebuild the table with room for all of
    // them, even if it has room: the writes that follow go to fresh memory.
    void dict_reserve(CHdr* c, std::uint64_t extra);
    // Returns true if the key was new.
    bool dict_set(std::uint64_t coff, std::string_view key, const Value& v);
    void dict_erase_at(CHdr* c, std::int64_t i);

    // ---- list (container_list.cpp) -----------------------------------------
    Cell* cells(CHdr* c) const { return at<Cell>(rd(c->table)); }
    // Copy the table into a new one of capacity `cap`, leaving a gap at
    // `gap` (or dropping index `drop`), and swap it in.
    void list_rebuild(CHdr* c, std::uint64_t cap, std::int64_t gap, std::int64_t drop);
    // Capacity `cap` at least: in place where the heap block after the
    // table is free and large enough, else by a rebuild.
    void list_grow(CHdr* c, std::uint64_t cap);
    // Room for `extra` more items at the end, in one growth.
    void list_reserve(CHdr* c, std::uint64_t extra);
    void list_append(std::uint64_t coff, const Value& v);
};

// Run op(Op&) as one transaction; if it runs out of space while garbage is
// waiting, drain the garbage (in transactions of its own) and retry once.
template <class F>
auto run(const std::shared_ptr<detail::SegmentState>& seg, F&& f) -> decltype(f(std::declval<Op&>())) {
    for (int attempt = 0;; ++attempt) {
        try {
            Op op(seg);
            if constexpr (std::is_void_v<decltype(f(op))>) {
                f(op);
                op.finish();
                return;
            } else {
                auto r = f(op);
                op.finish();
                return r;
            }
        } catch (const out_of_space&) {
            if (attempt > 0) throw;
            if (!seg->hdr()->garbage_head.load(std::memory_order_relaxed)) throw;
            for (bool left = true; left;) {
                Op op(seg);
                op.finish(kDrainBudget);
                left = rd(seg->hdr()->garbage_head) != 0;
            }
        }
    }
}

// A read: one transaction that changes nothing (no garbage collection).
template <class F>
auto read(const std::shared_ptr<detail::SegmentState>& seg, F&& f) -> decltype(f(std::declval<Op&>())) {
    Op op(seg);
    if constexpr (std::is_void_v<decltype(f(op))>) {
        f(op);
        op.t.commit();
    } else {
        auto r = f(op);
        op.t.commit();
        return r;
    }
}

// ---- helpers of the public operations ----------------------------------------

// Index i of a list of n items, Python-style (negative from the end);
// shm::index_error naming `op` if out of range.
std::int64_t normalize(std::int64_t i, std::uint64_t n, const char* op);
// A container Value from another handle is stored as a copy.
Value storable(const Value& v);
// Whether v is or holds a handle to a stored container.
bool has_handles(const Value& v);
// Copy handles out before taking the lock (a handle may be of this segment).
// Returns v itself when it holds none (no copy on the common path).
const Value& prepare(const Value& v, Value& scratch);
// The problems verify() finds in the container at off and in the heap.
std::vector<std::string> verify_container(const std::shared_ptr<detail::SegmentState>& seg, std::uint64_t off, std::uint64_t magic, const char* what);

// The header of the container rooted at the named object `name` (a
// DictRoot or ListRoot), made on first use; shm::not_found if there is no
// such object and create is false. The handle is {share(seg), this}.
template <class Root>
std::uint64_t open_root(Segment& seg, std::string_view name, bool create, std::uint64_t magic) {
    Root* r = create ? &seg.find_or_construct<Root>(name) : seg.find<Root>(name);
    if (!r)
        throw not_found(std::string(magic == kDictMagic ? "dict '" : "list '") + std::string(name) +
                        "' does not exist in segment '" + seg.name() + "'");
    const std::shared_ptr<detail::SegmentState> st = detail::SegmentAccess::share(seg);
    std::uint64_t off = r->header.load(std::memory_order_acquire);
    if (off) {
        read(st, [&](Op& op) { op.hdr(off, magic); });  // a handle to a valid header only
        return off;
    }
    return run(st, [&](Op& op) {
        std::uint64_t cur = rd(r->header);
        if (cur) return cur;
        std::uint64_t c = op.new_container(magic);
        op.t.store(r->header, c);
        return c;
    });
}

}  // namespace shm::containers
