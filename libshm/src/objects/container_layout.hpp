// The shared-memory layout of shm::Dict and shm::List (container.cpp),
// versioned with the segment layout (kLayoutVersion). Private;
// container_state.cpp decodes it for inspection (objects/inspect.hpp).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shm::container_layout {

inline constexpr std::uint64_t kDictMagic = 0x7463'6964'6d68'7301ull;
inline constexpr std::uint64_t kListMagic = 0x7473'696c'6d68'7302ull;
// A batch of memory to free, only ever on the garbage list: count items in
// table, each the payload offset of a block, or a container's offset | 1.
inline constexpr std::uint64_t kBatchMagic = 0x6863'7462'6d68'7303ull;
inline constexpr std::uint64_t kEmpty = 0, kTomb = 1;

using Word = std::atomic<std::uint64_t>;

struct Cell {
    Word meta;
    Word data;
};
struct CHdr {
    Word magic;
    Word count;
    Word capacity;
    Word table;
    Word used;
    Word next_garbage;
    Word cursor;
    Word reserved;
};
struct DEntry {
    Word hash;
    Word key;
    Word key_len;
    Cell v;
};
static_assert(sizeof(Cell) == 16);
static_assert(sizeof(CHdr) == 64);
static_assert(sizeof(DEntry) == 40);

static_assert(offsetof(CHdr, magic) == 0);
static_assert(offsetof(CHdr, count) == 8);
// Pinned: change a field's width, order or meaning: bump the layout version.
static_assert(offsetof(Cell, meta) == 0);
static_assert(offsetof(Cell, data) == 8);
static_assert(offsetof(CHdr, capacity) == 16);
static_assert(offsetof(CHdr, table) == 24);
static_assert(offsetof(CHdr, used) == 32);
static_assert(offsetof(CHdr, next_garbage) == 40);
static_assert(offsetof(CHdr, cursor) == 48);
static_assert(offsetof(CHdr, reserved) == 56);
static_assert(offsetof(DEntry, hash) == 0);
static_assert(offsetof(DEntry, key) == 8);
static_assert(offsetof(DEntry, key_len) == 16);
static_assert(offsetof(DEntry, v) == 24);

}  // namespace shm::container_layout
