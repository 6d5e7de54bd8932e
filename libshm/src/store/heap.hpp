// The segment heap: a boundary-tag allocator with segregated free lists,
// plus the named-object directory, all made crash-safe by an undo journal.
//
// Design note
// -----------
// Every heap word lives in shared memory and every change to one goes
// through Txn::store(), which first appends (offset, old value) to the
// journal in the header and publishes the entry by one store of the entry
// count, and only then stores the new value. Txn::commit() sets the count to
// 0: one store commits the whole operation. The heap lock is a robust
// shm::Mutex: when a process dies holding it, the next holder sees
// previous_owner_died() and replays the journal backwards, restoring every
// word the dead process changed; replay is idempotent, so a holder killed
// while replaying is simply replayed again. A killed process therefore leaves
// each allocation, free, construct or destroy either done or not done.
//
// What needs no undo entry (so that one operation may be as large as the
// free heap, not as large as the journal; small transactions journal
// everything and skip the search):
//   J1 A word already journaled by this transaction: replay runs backwards,
//      so its first entry restores the value it had before.
//   J2 A word inside a payload allocated by this transaction (a fresh
//      range): that memory was free when the transaction began, and the
//      words of a free block that mean something (its header and its
//      free-list links, the first 32 bytes) are journaled by the allocation
//      before the range is registered.
// J2 holds only if nothing that existed before the transaction is freed
// during it: a freed block could be handed out again and filled with plain
// writes over data an undo must bring back. So a free of a block that
// existed before is deferred to commit() (or taken over by the caller, see
// take_deferred()), and only blocks allocated by this transaction are freed
// at once.
//
// Large transactions carve their allocations from an arena: once the
// journal is a quarter full, the next allocation takes a whole free block
// (journaled once, marked used so no neighbour merges with it) and later ones
// are cut from it with plain writes (J2); commit() hands back what is left
// and what was freed inside it. An operation therefore needs a few journal
// entries per word it changes in memory that existed before, and a few per
// arena, whatever the number of its allocations.
//
// Block format (offsets from the segment base, 16-byte granularity):
//   b+0  size | kFree       size of the whole block, header included
//   b+8  prev_size          size of the block physically before (0 = first)
//   b+16 payload            free blocks keep next/prev free-list links here
// Bin k holds free blocks with size in [2^k, 2^(k+1)); bin_bitmap has bit k
// set iff bin k is not empty. Adjacent free blocks are always merged.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "store/layout.hpp"

namespace shm::heap {

namespace detail {
// The block format's flags and smallest block (the rest of what the
// allocator knows of it is in heap_blocks.hpp, private to the store layer).
constexpr std::uint64_t kFree = 1;
constexpr std::uint64_t kShim = 2;  // word before an over-aligned payload
constexpr std::uint64_t kFlagMask = 15;
constexpr std::uint64_t kMinBlock = 32;
}  // namespace detail

// Process-local lists of a transaction, kept inline while small: most
// operations allocate and free a block or two, and should not pay malloc.
template <class T, std::size_t N>
class InlineVec {
public:
    void push_back(const T& v) {
        if (spill_.empty() && n_ < N) {
            small_[n_++] = v;
            return;
        }
        if (spill_.empty()) spill_.assign(small_, small_ + n_);
        spill_.push_back(v);
    }
    T* begin() noexcept { return spill_.empty() ? small_ : spill_.data(); }
    T* end() noexcept { return begin() + size(); }
    const T* begin() const noexcept { return spill_.empty() ? small_ : spill_.data(); }
    const T* end() const noexcept { return begin() + size(); }
    std::size_t size() const noexcept { return spill_.empty() ? n_ : spill_.size(); }
    bool empty() const noexcept { return size() == 0; }
    void clear() noexcept {
        n_ = 0;
        spill_.clear();
    }
    std::vector<T> take() {
        std::vector<T> out(begin(), end());
        clear();
        return out;
    }

private:
    T small_[N];
    std::size_t n_ = 0;
    std::vector<T> spill_;
};

// The payload ranges [begin, end) a transaction allocated (J2): a few are
// searched in turn, many are kept sorted and merged.
class FreshRanges {
public:
    bool contains(std::uint64_t off, std::uint64_t len) const noexcept;
    void add(std::uint64_t begin, std::uint64_t end);

private:
    static constexpr std::size_t kSmall = 8;
    struct Range {
        std::uint64_t begin, end;  // trivial: a transaction does not pay to clear it
    };
    Range small_[kSmall];
    std::size_t n_ = 0;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> sorted_;  // once more than kSmall
};

class Txn {
public:
    // Locks the heap lock; rolls back a dead holder's journal if needed.
    explicit Txn(layout::Header* h);
    ~Txn();  // rolls back unless committed; unlocks
    Txn(const Txn&) = delete;
    Txn& operator=(const Txn&) = delete;

    // Change a word of the segment (undo-journaled unless J1 or J2 applies).
    void store(std::atomic<std::uint64_t>& word, std::uint64_t value);
    // The last change of a transaction. If it is also the only change to
    // memory that existed before (nothing is journaled yet), this one store
    // commits the operation by itself and needs no undo entry; otherwise it
    // is journaled like store(). Nothing may be changed after it except by
    // independent work (garbage collection) that has its own undo entries.
    void store_last(std::atomic<std::uint64_t>& word, std::uint64_t value);
    // Hands back the arena, frees the deferred blocks, then commits with one
    // store.
    void commit();
    bool recovered() const noexcept { return recovered_; }
    layout::Header* header() const noexcept { return h_; }

    // Blocks that existed before this transaction and were freed by it; they
    // stay allocated until commit(). A caller with many of them may take
    // them over (and free them later, e.g. a few per later transaction).
    std::size_t deferred_count() const noexcept { return deferred_.size(); }
    std::vector<std::uint64_t> take_deferred() { return deferred_.take(); }
    // Journal entries still free.
    std::size_t journal_room() const noexcept;
    // Whether [off, off + len) lies in memory allocated by this transaction.
    // (Only tracked once the transaction is large: kSaveFrom in heap_blocks.hpp.)
    bool fresh(std::uint64_t off, std::uint64_t len = 8) const noexcept {
        return large_ && large_->fresh.contains(off, len);
    }

private:
    friend std::uint64_t allocate(Txn&, std::size_t, std::size_t);
    friend void deallocate(Txn&, std::uint64_t);
    friend bool expand(Txn&, std::uint64_t, std::size_t);
    bool journaled(std::uint64_t off);
    void finish_arena();

    layout::Header* h_;
    bool committed_ = false;
    bool recovered_ = false;
    // Process-local bookkeeping of this transaction (nothing of it needs to
    // survive a crash: the journal alone undoes the transaction).
    InlineVec<std::uint64_t, 8> deferred_;  // payload offsets
    struct Arena {
        std::uint64_t begin = 0, cur = 0, end = 0;  // blocks are cut at cur; end = 0: none open
        std::vector<std::uint64_t> freed;           // blocks of the arena freed again
    };
    // What only a large transaction needs, made when it becomes large; a
    // small one pays nothing for it.
    struct Large {
        FreshRanges fresh;
        std::uint64_t filter[4] = {};  // a bit per hash of each journaled offset: most misses skip the search
        std::unordered_set<std::uint64_t> journaled;  // the journal's offsets
        std::uint32_t indexed = 0;                    // journal entries in `journaled`
        Arena arena;
    };
    std::unique_ptr<Large> large_;
    Large& large();
};

// An operation whose only change is one store that commits it by itself,
// as Txn::store_last() does when nothing is journaled: the heap lock (a
// dead holder's journal rolled back first, as Txn does), then plain writes
// to memory nothing reaches yet, then commit(). No journal, no frees, no
// allocation: for the hottest path (a scalar appended into spare room);
// anything more is a Txn. Releasing it without commit() changes nothing.
class OneStore {
public:
    explicit OneStore(layout::Header* h);
    ~OneStore();  // unlocks
    OneStore(const OneStore&) = delete;
    OneStore& operator=(const OneStore&) = delete;
    // Release: the plain writes the store makes reachable come first;
    // partner: the next lock holder's reads.
    void commit(std::atomic<std::uint64_t>& word, std::uint64_t value);

private:
    layout::Header* h_;
};

// Lay out an empty heap. Called by the creator before the segment is ready.
void init(layout::Header* h);

// Undo the journal (the heap lock must be held).
void rollback(layout::Header* h);

// Offset of a payload of `bytes` aligned to `align`, or 0 if nothing fits.
std::uint64_t allocate(Txn& t, std::size_t bytes, std::size_t align);
// Throws shm::corrupted for an offset that is not a live allocation. A block
// that existed before the transaction is freed at commit (see Txn).
void deallocate(Txn& t, std::uint64_t payload);
// Grow the live allocation at payload p (from allocate(t, _, 16)) in place
// to at least `bytes`, taking room from the free block that follows it.
// Returns false, changing nothing, where it cannot (the next block is in
// use or too small, or an arena is open): the caller allocates and copies.
// The room gained was free when the transaction began: the caller may fill
// it with plain writes (J2; its block header and links are journaled here).
bool expand(Txn& t, std::uint64_t p, std::size_t bytes);
// The payload bytes of the live block whose payload starts at p (no
// over-aligned shim), read from its header; 0 where p is not such a block.
// A quick check for callers that keep a capacity of their own beside a
// block (it does not walk the heap: heap::verify() does).
// Inline: every container operation asks it of its table.
inline std::uint64_t payload_room(layout::Header* h, std::uint64_t p) {
    const std::uint64_t begin = h->heap_offset, end = begin + h->heap_size;
    if (p % 16 != 0 || p < begin + 16 || p >= end) return 0;
    const std::uint64_t b = p - 16;
    const std::uint64_t w =
        reinterpret_cast<const std::atomic<std::uint64_t>*>(reinterpret_cast<const char*>(h) + b)
            ->load(std::memory_order_relaxed);  // under the heap lock
    if (w & (detail::kFree | detail::kShim)) return 0;
    const std::uint64_t size = w & ~detail::kFlagMask;
    if (size < detail::kMinBlock || size > end - b) return 0;
    return size - 16;
}
// Largest request allocate() could satisfy right now.
std::uint64_t largest_free(layout::Header* h);

// Walk everything (the heap lock must be held).
HeapReport verify(layout::Header* h);

// --- object directory ---
struct DirEntry {
    std::atomic<std::uint64_t> next;  // offset of the next entry, 0 = end
    std::uint64_t object_offset;
    std::uint64_t object_size;
    std::uint64_t type_key;
    std::uint32_t kind;
    std::uint32_t name_len;
    char name[64];
    char type_name[64];
};
static_assert(sizeof(DirEntry) == 168);
// Pinned: change a field's width, order or meaning: bump the layout version.
static_assert(offsetof(DirEntry, next) == 0);
static_assert(offsetof(DirEntry, object_offset) == 8);
static_assert(offsetof(DirEntry, object_size) == 16);
static_assert(offsetof(DirEntry, type_key) == 24);
static_assert(offsetof(DirEntry, kind) == 32);
static_assert(offsetof(DirEntry, name_len) == 36);
static_assert(offsetof(DirEntry, name) == 40);
static_assert(offsetof(DirEntry, type_name) == 104);

// The directory entry at offset e, checked (placement, name, object inside
// the heap); throws shm::corrupted naming what is wrong.
DirEntry* dir_entry(layout::Header* h, std::uint64_t e);
// Walks at most dir_count entries; throws shm::corrupted for a bad entry or
// a list longer than its count (a cycle).
DirEntry* dir_find(layout::Header* h, const char* name, std::size_t len, DirEntry** prev);

}  // namespace shm::heap
