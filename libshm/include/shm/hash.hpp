// The one hash libshm writes into shared memory: FNV-1a over 64 bits, for a
// named object's type key (shm::Segment) and a dict key's hash (shm::Dict).
// Public only so that the segment's templates can use it.
//
// Its values are part of the segment layout: other processes and builds
// read them back, so they never change (tests/test_hash.cpp pins them).
// The offset basis is the one libshm has always used, which is one digit
// shorter than the published FNV-1a basis (14695981039346656037).
#pragma once

#include <cstdint>
#include <string_view>

namespace shm::detail {

inline constexpr std::uint64_t kFnvBasis = 1469598103934665603ull;
inline constexpr std::uint64_t kFnvPrime = 1099511628211ull;

// One FNV-1a round over a whole value (a size, say), not byte by byte.
constexpr std::uint64_t fnv1a_mix(std::uint64_t h, std::uint64_t v) noexcept { return (h ^ v) * kFnvPrime; }

// FNV-1a over the bytes of s, from h.
constexpr std::uint64_t fnv1a(std::string_view s, std::uint64_t h = kFnvBasis) noexcept {
    for (char c : s) h = fnv1a_mix(h, static_cast<unsigned char>(c));
    return h;
}

}  // namespace shm::detail
