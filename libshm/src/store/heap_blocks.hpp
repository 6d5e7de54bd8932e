// The heap's block format, shared by the allocator (heap.cpp), its
// transactions (heap_txn.cpp) and its checker (heap_verify.cpp). Private to
// the store layer. The format itself is described in heap.hpp.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "store/heap.hpp"

namespace shm::heap::detail {

using layout::Header;

// kFree, kShim, kFlagMask and kMinBlock: heap.hpp.
constexpr std::uint64_t kShimMagic = 0x6d696873'6d687362ull;

// J1 and J2 only save journal entries (an entry too many is harmless: replay
// restores the oldest value, and a fresh block freed at commit rather than at
// once is still freed). Below this many entries a transaction neither looks
// for them nor keeps what it would need to (Txn::Large); a block this large
// is tracked as fresh from the start.
constexpr std::uint32_t kSaveFrom = 256;
constexpr std::uint64_t kLargeBlock = 1024;

inline char* base(Header* h) { return reinterpret_cast<char*>(h); }
inline std::atomic<std::uint64_t>& word(Header* h, std::uint64_t off) {
    return *reinterpret_cast<std::atomic<std::uint64_t>*>(base(h) + off);
}
inline std::uint64_t load(Header* h, std::uint64_t off) {
    return word(h, off).load(std::memory_order_relaxed);  // under the heap lock
}

inline std::uint64_t heap_begin(Header* h) { return h->heap_offset; }
inline std::uint64_t heap_end(Header* h) { return h->heap_offset + h->heap_size; }

// Block fields.
inline std::uint64_t size_of(Header* h, std::uint64_t b) { return load(h, b) & ~kFlagMask; }
inline bool is_free(Header* h, std::uint64_t b) { return (load(h, b) & kFree) != 0; }
inline std::uint64_t prev_size(Header* h, std::uint64_t b) { return load(h, b + 8); }
inline std::uint64_t next_free(Header* h, std::uint64_t b) { return load(h, b + 16); }
inline std::uint64_t prev_free(Header* h, std::uint64_t b) { return load(h, b + 24); }

inline int bin_of(std::uint64_t size) { return 63 - __builtin_clzll(size); }

// "segment 'name'", for messages.
std::string where(Header* h);
[[noreturn]] void corrupt(Header* h, const std::string& what);

// Free the block of payload p now (it is not in an open arena).
void free_now(Txn& t, std::uint64_t p);

}  // namespace shm::heap::detail
