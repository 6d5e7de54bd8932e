// The shared-memory layout of shm::Queue (queue.cpp), version 1 with the
// segment layout. Private; admin.cpp reads it to show a queue's state.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "shm/queue.hpp"

namespace shm {

inline constexpr std::uint64_t kQueueMagic = 0x3165'7565'7571'6d73ull;  // "smqueue1"
inline constexpr std::uint32_t kQueueTombstone = 1;

namespace detail {

struct alignas(64) QueueSlot {
    std::atomic<std::uint64_t> word;
    std::uint32_t len;
    std::uint32_t flags;  // kTombstone
};

// One cache line each: a consumer's counters do not share a line with another's.
struct alignas(64) QueueActor {
    std::atomic<std::uint64_t> who;    // pid << 32 | low 32 bits of its start time; 0 = free
    std::atomic<std::uint64_t> taken;  // items this process got
    std::atomic<std::uint64_t> done;   // task_done() calls
    std::uint64_t reserved[5];
};

struct QueueControl {
    std::uint64_t magic;
    std::uint32_t capacity;  // power of two
    std::uint32_t max_item;
    std::uint32_t stride;    // bytes per slot, header included
    std::uint32_t reserved0;
    alignas(64) std::atomic<std::uint64_t> tail;  // next position to put
    alignas(64) std::atomic<std::uint64_t> head;  // next position to get
    alignas(64) std::atomic<std::uint32_t> put_epoch;  // consumers sleep on it
    std::atomic<std::uint64_t> consumers_waiting;      // bit per actor
    alignas(64) std::atomic<std::uint32_t> get_epoch;  // producers sleep on it
    std::atomic<std::uint64_t> producers_waiting;
    alignas(64) std::atomic<std::uint32_t> closed;
    std::atomic<std::uint32_t> join_epoch;
    std::atomic<std::uint64_t> joiners_waiting;
    std::atomic<std::uint64_t> repairs;
    QueueActor actors[Queue::kMaxProcesses];
    // slots follow, 64-byte aligned
};

}  // namespace detail

static_assert(sizeof(detail::QueueSlot) == 64);
static_assert(sizeof(detail::QueueActor) == 64);
static_assert(sizeof(detail::QueueControl) % 64 == 0);
static_assert(offsetof(detail::QueueControl, magic) == 0);
static_assert(offsetof(detail::QueueControl, capacity) == 8);
static_assert(offsetof(detail::QueueControl, max_item) == 12);
static_assert(offsetof(detail::QueueControl, tail) == 64);
static_assert(offsetof(detail::QueueControl, head) == 128);
static_assert(offsetof(detail::QueueControl, closed) == 320);
static_assert(offsetof(detail::QueueControl, repairs) == 336);

}  // namespace shm
