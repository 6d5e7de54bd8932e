// The shared layout of SharedArray and SharedScalar (shm/shared_array.hpp),
// versioned with the segment layout (kLayoutVersion): change a field's
// width, order or meaning: bump the layout version. Private; read by
// shared_array.cpp (the objects) and shared_array_state.cpp (shmctl stat).
//
// One block in the segment's heap, 16-byte aligned, of exactly
// data_offset(flags) + count × element_size bytes (its directory entry
// records that size):
//
//     0    SharedArrayHeader (32 bytes)
//     32   RecursiveMutex, if flags has kHasLock (56 bytes on x86-64, 64 on arm64)
//     data_offset(flags), 16-aligned: count elements of element_size bytes
//
// The creator writes every field inside the heap transaction that creates
// the block, magic last; the block is seen by others only once that
// transaction commits, and never changes shape after. Every field is read
// from a file anyone may write, so opening checks all of them
// (header_problem) before following any.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "shm/shared_array.hpp"
#include "shm/sync.hpp"

namespace shm::detail {

inline constexpr std::uint64_t kSharedArrayMagic = 0x7961'7272'416d'6873ull;  // "shmArray" little-endian

enum SharedArrayFlags : std::uint8_t {
    kHasLock = 1u << 0,  // a RecursiveMutex follows the header
    kScalar = 1u << 1,   // made as a SharedScalar: count is 1
};
inline constexpr std::uint8_t kKnownFlags = kHasLock | kScalar;

struct SharedArrayHeader {
    std::uint64_t magic;         // 0: kSharedArrayMagic
    std::uint64_t count;         // 8: elements
    std::uint64_t type_key;      // 16: element type other: the C++ type's key; else 0
    std::uint32_t element_size;  // 24: bytes per element
    std::uint8_t element_type;   // 28: ElementType (a typecode, or 0 for other)
    std::uint8_t flags;          // 29: SharedArrayFlags
    std::uint16_t reserved;      // 30: 0
};

inline constexpr std::uint64_t kLockOffset = sizeof(SharedArrayHeader);

// Where the elements start, for a block with these flags.
inline constexpr std::uint64_t data_offset(std::uint8_t flags) noexcept {
    const std::uint64_t end = kLockOffset + ((flags & kHasLock) ? sizeof(RecursiveMutex) : 0);
    return (end + 15) & ~std::uint64_t(15);
}

static_assert(std::is_standard_layout_v<SharedArrayHeader>);
static_assert(std::is_trivially_copyable_v<SharedArrayHeader>);
static_assert(sizeof(SharedArrayHeader) == 32 && alignof(SharedArrayHeader) == 8);
static_assert(offsetof(SharedArrayHeader, magic) == 0);
static_assert(offsetof(SharedArrayHeader, count) == 8);
static_assert(offsetof(SharedArrayHeader, type_key) == 16);
static_assert(offsetof(SharedArrayHeader, element_size) == 24);
static_assert(offsetof(SharedArrayHeader, element_type) == 28);
static_assert(offsetof(SharedArrayHeader, flags) == 29);
static_assert(offsetof(SharedArrayHeader, reserved) == 30);
static_assert(kLockOffset % alignof(RecursiveMutex) == 0);
static_assert(data_offset(0) == 32);
static_assert(data_offset(kHasLock) == ((32 + sizeof(RecursiveMutex) + 15) & ~std::size_t(15)));
static_assert(sizeof(RecursiveMutex) != 56 || data_offset(kHasLock) == 96);  // x86-64
static_assert(sizeof(RecursiveMutex) != 64 || data_offset(kHasLock) == 96);  // arm64

// Why a header read from a block of `block_size` bytes cannot be trusted,
// or nullptr: magic, element type and size, flags, and a count whose
// elements fill the block exactly (no overflow). (shared_array.cpp)
const char* header_problem(const SharedArrayHeader& h, std::uint64_t block_size) noexcept;

// Why the bytes of an embedded lock are not a RecursiveMutex as this
// libshm makes one (robust, recursive, process-shared), or nullptr. A lock
// of another kind would make pthread_mutex_lock() misbehave.
const char* lock_problem(const void* lock_bytes) noexcept;

// Whether a and b name elements of the same representation ('l' and 'q').
bool same_representation(ElementType a, ElementType b) noexcept;

}  // namespace shm::detail
