// The shared-memory layout of shm::WorkQueue (work_queue.cpp), versioned
// with the segment layout (kLayoutVersion): change a field's width, order
// or meaning: bump the layout version. Private; work_queue_state.cpp
// decodes it for inspection (objects/inspect.hpp).
//
// The root is a named object (detail::WorkQueueRoot, shm/work_queue.hpp);
// its `state` is the offset of one heap block, made on first use:
//     WQState | ring: capacity × item offset | leases: capacity × LeaseRec
//             | dead: capacity × item offset
// (each array a heap block of its own, at the offset WQState names).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shm/work_queue.hpp"

namespace shm::work_queue_layout {

using Word = std::atomic<std::uint64_t>;
inline constexpr std::uint64_t kStateMagic = 0x3175'6571'6b72'6f77ull;  // "workqu1"
inline constexpr std::uint32_t kMaxCapacity = 1u << 24;
inline constexpr std::uint32_t kMaxDeliveries = 1u << 16;
inline constexpr unsigned kIndexBits = 24;  // a lease id: generation << 24 | record index

struct WQState {
    Word magic;
    Word capacity;
    Word ring;          // offset of capacity words: item offsets
    Word head;          // the ring's first waiting item
    Word waiting;
    Word leases;        // offset of capacity LeaseRecs
    Word leased;
    Word dead;          // offset of capacity words: dead letters
    Word dead_head;
    Word dead_count;
    Word unfinished;    // put, not yet acknowledged or read as a dead letter
    Word closed;
    Word generation;    // of the last lease id handed out
    Word redeliveries;
    Word reserved[2];
};
struct LeaseRec {
    Word item;        // 0: free
    Word id;
    Word pid;
    Word start_time;
};
struct ItemHdr {
    Word len;
    Word deliveries;
    Word last_pid;
    Word reserved;
};
// Pinned: change a field's width, order or meaning: bump the layout version.
static_assert(sizeof(WQState) == 128);
static_assert(sizeof(LeaseRec) == 32);
static_assert(sizeof(ItemHdr) == 32);
static_assert(offsetof(WQState, capacity) == 8 && offsetof(WQState, unfinished) == 80);
static_assert(offsetof(detail::WorkQueueRoot, state) == 8);
static_assert(offsetof(detail::WorkQueueRoot, items_seq) == 16 && offsetof(detail::WorkQueueRoot, sleepers) == 28);
static_assert(sizeof(detail::WorkQueueRoot) == 32);

}  // namespace shm::work_queue_layout
