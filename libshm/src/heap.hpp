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
// Block format (offsets from the segment base, 16-byte granularity):
//   b+0  size | kFree       size of the whole block, header included
//   b+8  prev_size          size of the block physically before (0 = first)
//   b+16 payload            free blocks keep next/prev free-list links here
// Bin k holds free blocks with size in [2^k, 2^(k+1)); bin_bitmap has bit k
// set iff bin k is not empty. Adjacent free blocks are always merged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "layout.hpp"

namespace shm::heap {

class Txn {
public:
    // Locks the heap lock; rolls back a dead holder's journal if needed.
    explicit Txn(layout::Header* h);
    ~Txn();  // rolls back unless committed; unlocks
    Txn(const Txn&) = delete;
    Txn& operator=(const Txn&) = delete;

    void store(std::atomic<std::uint64_t>& word, std::uint64_t value);
    // The last change of a transaction. If it is also the only change to
    // memory that existed before (nothing is journaled yet), this one store
    // commits the operation by itself and needs no undo entry; otherwise it
    // is journaled like store(). Nothing may be changed after it except by
    // independent work (garbage collection) that has its own undo entries.
    void store_last(std::atomic<std::uint64_t>& word, std::uint64_t value);
    void commit();
    bool recovered() const noexcept { return recovered_; }
    layout::Header* header() const noexcept { return h_; }

private:
    layout::Header* h_;
    bool committed_ = false;
    bool recovered_ = false;
};

// Lay out an empty heap. Called by the creator before the segment is ready.
void init(layout::Header* h);

// Undo the journal (the heap lock must be held).
void rollback(layout::Header* h);

// Offset of a payload of `bytes` aligned to `align`, or 0 if nothing fits.
std::uint64_t allocate(Txn& t, std::size_t bytes, std::size_t align);
// Throws shm::corrupted for an offset that is not a live allocation.
void deallocate(Txn& t, std::uint64_t payload);
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

// The directory entry at offset e, checked (placement, name, object inside
// the heap); throws shm::corrupted naming what is wrong.
DirEntry* dir_entry(layout::Header* h, std::uint64_t e);
// Walks at most dir_count entries; throws shm::corrupted for a bad entry or
// a list longer than its count (a cycle).
DirEntry* dir_find(layout::Header* h, const char* name, std::size_t len, DirEntry** prev);

}  // namespace shm::heap
