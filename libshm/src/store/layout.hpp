// The segment's layout in shared memory, version 3 (shm::kLayoutVersion).
// Version 2: the garbage list may hold batches of blocks to free
// (container_layout.hpp, kBatchMagic), which version 1 would misread.
// Version 3: a queue's actor records hold a generation, the pid and its
// full start time (queue_layout.hpp), no longer pid << 32 | 32 bits of it.
//
//   offset 0        Header (one 4 KiB page): identity, sizes, creator, flags,
//                   the heap lock, the heap's bins, the object directory's
//                   head, the journal's count
//   4096            attach table: max_attach × AttachSlot (32 bytes each)
//   journal_offset  undo journal: kJournalCapacity × UndoEntry (64 KiB)
//   heap_offset     heap (64-byte aligned) up to the end of the file
//
// Rules (STYLE.md): only fixed-width integers and lock-free atomics; no
// pointers (offsets from the segment base instead); every shared word that a
// process killed mid-update could leave half-written is ≤ 64 bits. Any change
// of width, order or meaning of a field bumps kLayoutVersion; the layout test
// pins every offset.
#pragma once

#include <pthread.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "shm/mutex.hpp"
#include "shm/segment.hpp"

namespace shm::layout {

inline constexpr std::uint64_t kMagic = 0x3176'6D68'7362'696Cull;  // "libshmv1" little-endian
// Change a field's width, order or meaning: bump the layout version.
inline constexpr std::uint32_t kVersion = kLayoutVersion;
inline constexpr std::size_t kHeaderSize = 4096;
inline constexpr std::size_t kSlotSize = 32;
inline constexpr std::uint32_t kMaxAttachLimit = 4096;
// Words one heap transaction may change (an allocation or free takes ~15).
inline constexpr std::size_t kJournalCapacity = 4096;
inline constexpr std::size_t kBins = 64;

// Header::state. The creator writes every field while holding the meta lock
// and publishes with state = ready (release); readers check it with acquire.
enum State : std::uint32_t {
    kUninit = 0,      // fresh file, or its creator died before finishing
    kInitialising = 1,
    kReady = 2,
    kDead = 3,  // unlinked by whoever set this; never attach to it
};

enum Flags : std::uint32_t {
    kPersistent = 1u << 0,
};

// One undo record: the word at `offset` held `old_value` before the current
// heap transaction changed it.
struct UndoEntry {
    std::atomic<std::uint64_t> offset;
    std::atomic<std::uint64_t> old_value;
};


struct AttachSlot {
    std::atomic<std::int32_t> pid;  // 0 = free
    std::uint32_t uid;
    std::atomic<std::uint64_t> start_time;
    std::atomic<std::int64_t> attached_at_ns;
    std::uint64_t reserved;
};

struct Header {
    // --- identity: read first by anything that opens the file ---
    std::uint64_t magic;                // 0
    std::uint32_t version;              // 8
    std::atomic<std::uint32_t> state;   // 12 (also the byte of the meta lock)
    std::uint64_t total_size;           // 16: file size
    std::uint64_t heap_offset;          // 24
    std::uint64_t heap_size;            // 32
    std::uint64_t attach_offset;        // 40
    std::uint32_t max_attach;           // 48
    std::atomic<std::uint32_t> flags;   // 52
    std::int32_t creator_pid;           // 56
    std::uint32_t creator_uid;          // 60
    std::uint64_t creator_start_time;   // 64
    std::int64_t created_at_ns;         // 72
    char name[208];                     // 80: NUL-terminated segment name
    // --- heap (guarded by heap_lock) ---
    std::uint8_t heap_lock_storage[64];  // 288: shm::Mutex
    std::atomic<std::uint64_t> bin_bitmap;    // 352: bit b set iff bins[b] != 0
    std::atomic<std::uint64_t> used_bytes;    // 360
    std::atomic<std::uint64_t> used_blocks;   // 368
    std::atomic<std::uint64_t> dir_head;      // 376: first directory entry, 0 = none
    std::atomic<std::uint64_t> dir_count;     // 384
    std::atomic<std::uint64_t> bins[kBins];   // 392: free-list heads
    // Undo journal of the heap transaction in progress (see heap.hpp).
    std::atomic<std::uint32_t> journal_count;  // 904: valid entries; 0 = nothing to undo
    std::uint32_t journal_capacity;            // 908
    std::uint64_t journal_offset;              // 912: UndoEntry[journal_capacity]
    std::atomic<std::uint64_t> garbage_head;   // 920: containers waiting to be freed
};

// The meta lock (creation, attach, detach, reap, unlink) is the OFD lock on
// this byte of the file.
inline constexpr off_t kMetaLockByte = 12;

// A creator initialises a segment file while holding its meta lock, and
// takes that lock microseconds after making the file. So a file that is not
// yet ready, whose meta lock nobody holds, and that nobody has changed for
// longer than this was left half-made by a creator that died: anyone may
// reclaim or replace it. abandoned() is the one statement of that rule.
inline constexpr std::chrono::seconds kAbandonedAfter{1};
// Whether an uninitialised segment file whose meta lock is free (the caller
// holds it, or has just seen it free) was abandoned: its status last changed
// (st_ctim) longer than kAbandonedAfter ago.
bool abandoned(const struct stat& st) noexcept;

static_assert(sizeof(Mutex) <= sizeof(Header::heap_lock_storage));
static_assert(alignof(Mutex) <= 8);
static_assert(std::is_standard_layout_v<Header>);
static_assert(sizeof(Header) <= kHeaderSize);
static_assert(sizeof(AttachSlot) == kSlotSize);
static_assert(sizeof(UndoEntry) == 16);
static_assert(offsetof(Header, magic) == 0);
static_assert(offsetof(Header, version) == 8);
static_assert(offsetof(Header, state) == kMetaLockByte);
static_assert(offsetof(Header, total_size) == 16);
static_assert(offsetof(Header, heap_offset) == 24);
static_assert(offsetof(Header, heap_size) == 32);
static_assert(offsetof(Header, attach_offset) == 40);
static_assert(offsetof(Header, max_attach) == 48);
static_assert(offsetof(Header, flags) == 52);
static_assert(offsetof(Header, creator_pid) == 56);
static_assert(offsetof(Header, creator_uid) == 60);
static_assert(offsetof(Header, creator_start_time) == 64);
static_assert(offsetof(Header, created_at_ns) == 72);
static_assert(offsetof(Header, name) == 80);
static_assert(offsetof(Header, heap_lock_storage) == 288);
static_assert(offsetof(Header, bin_bitmap) == 352);
static_assert(offsetof(Header, used_bytes) == 360);
static_assert(offsetof(Header, used_blocks) == 368);
static_assert(offsetof(Header, dir_head) == 376);
static_assert(offsetof(Header, dir_count) == 384);
static_assert(offsetof(Header, bins) == 392);
static_assert(offsetof(Header, journal_count) == 904);
static_assert(offsetof(Header, journal_capacity) == 908);
static_assert(offsetof(Header, journal_offset) == 912);
static_assert(offsetof(Header, garbage_head) == 920);
static_assert(offsetof(AttachSlot, pid) == 0);
static_assert(offsetof(AttachSlot, uid) == 4);
static_assert(offsetof(AttachSlot, start_time) == 8);
static_assert(offsetof(AttachSlot, attached_at_ns) == 16);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
static_assert(std::atomic<std::int64_t>::is_always_lock_free);

inline Mutex& heap_lock(Header* h) { return *reinterpret_cast<Mutex*>(h->heap_lock_storage); }

inline AttachSlot* slots(Header* h) {
    return reinterpret_cast<AttachSlot*>(reinterpret_cast<char*>(h) + h->attach_offset);
}
// The byte of the file whose OFD lock marks slot i as held.
inline off_t slot_lock_byte(const Header* h, std::uint32_t i) {
    return static_cast<off_t>(h->attach_offset + i * kSlotSize);
}
// What slot i says of its process (pid, start time, uid, when it
// attached), for Segment::attachments() and admin alike; false if the slot
// is free. Whether that process is alive is the slot's lock's to say.
inline bool slot_info(const AttachSlot& s, std::uint32_t i, AttachInfo& a) noexcept {
    const std::int32_t pid = s.pid.load(std::memory_order_acquire);
    if (pid == 0) return false;
    a.slot = i;
    a.pid = pid;
    a.uid = s.uid;
    a.start_time = s.start_time.load(std::memory_order_relaxed);
    a.attached_at_ns = s.attached_at_ns.load(std::memory_order_relaxed);
    return true;
}

inline std::uint64_t journal_offset_for(std::uint32_t max_attach) {
    std::uint64_t end = kHeaderSize + std::uint64_t(max_attach) * kSlotSize;
    return (end + 63) & ~std::uint64_t(63);
}

inline std::uint64_t heap_offset_for(std::uint32_t max_attach) {
    return journal_offset_for(max_attach) + kJournalCapacity * sizeof(UndoEntry);
}

inline UndoEntry* journal(Header* h) {
    return reinterpret_cast<UndoEntry*>(reinterpret_cast<char*>(h) + h->journal_offset);
}

// Is [off, off + n) inside the heap? Overflow-safe: offsets and lengths
// come from the file, and every byte of it is untrusted.
inline bool in_heap(const Header* h, std::uint64_t off, std::uint64_t n) {
    const std::uint64_t begin = h->heap_offset, end = h->heap_offset + h->heap_size;
    return off >= begin && off <= end && n <= end - off;
}
// The same for `count` elements of `size` bytes each.
inline bool in_heap(const Header* h, std::uint64_t off, std::uint64_t count, std::uint64_t size) {
    return count <= h->heap_size / size && in_heap(h, off, count * size);
}

// Why the header of a segment whose state is ready cannot be trusted, or
// nullptr when every field that anything dereferences is consistent with
// the file (its size, the attach table, the journal, the heap, the
// directory's head, the heap lock). The one answer to "is this a valid
// segment": Segment's open and create and admin's inspection both ask it
// (layout.cpp). Everything reached through the heap (directory entries,
// objects, containers, queues) is checked where it is looked up or opened.
const char* header_problem(const Header* h, std::uint64_t file_size) noexcept;

}  // namespace shm::layout
