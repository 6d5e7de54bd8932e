// The hashes that are written into segments: a named object's type key (in
// its directory entry) and a dict key's hash (in the dict's table). Other
// processes, other builds and the fuzz corpus read them back, so their
// values are pinned here: a change of the hash is a change of the layout.
#include <cstdint>
#include <map>
#include <string>

#include <shm/hash.hpp>
#include <shm/shm.hpp>

#include "objects/container_op.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"
#include "support.hpp"

namespace {

// The type key of every named object of `seg`, by name, from the directory.
std::map<std::string, std::uint64_t> type_keys(shm::Segment& seg) {
    std::map<std::string, std::uint64_t> keys;
    const auto* h = static_cast<const shm::layout::Header*>(seg.base());
    for (std::uint64_t e = h->dir_head.load(); e;) {
        const auto* d = static_cast<const shm::heap::DirEntry*>(seg.at_offset(e));
        keys[std::string(d->name, d->name_len)] = d->type_key;
        e = d->next.load();
    }
    return keys;
}

}  // namespace

TEST_CASE("a dict key's hash is pinned", "[hash]") {
    using shm::containers::hash_key;
    CHECK(hash_key("") == 0x14650fb0d0b57e00ull);
    CHECK(hash_key("a") == 0x44bd8ad65621cfa5ull);
    CHECK(hash_key("key") == 0x14a001518f856193ull);
    CHECK(hash_key("foobar") == 0x88fad7c4ef29b9f7ull);
    CHECK(hash_key("a much longer key, with spaces") == 0xad2d5f3c9251521dull);
}

TEST_CASE("a named object's type key is pinned", "[hash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("hash", 1 << 20);
    seg.construct<std::uint64_t>("u", 1u);
    seg.construct<shm::Event>("e");
    seg.construct<shm::Mutex>("m");
    const auto keys = type_keys(seg);
    REQUIRE(keys.size() == 3);
    // The mangled name ("m", "N3shm5EventE") and the size (8) are the same
    // on every 64-bit Linux target of the Itanium C++ ABI.
    CHECK(keys.at("u") == 0x9bd4ad00c67d9d86ull);
    CHECK(keys.at("e") == 0x8fdda91b80cf8efeull);
#if defined(__x86_64__)
    // A Mutex's size follows pthread_mutex_t's (56 bytes here).
    CHECK(keys.at("m") == 0x9f58e6e1cadfee05ull);
#endif
}

TEST_CASE("the one hash is a constexpr FNV-1a that gives the pinned keys", "[hash]") {
    using shm::detail::fnv1a;
    using shm::detail::fnv1a_mix;
    static_assert(fnv1a("") == shm::detail::kFnvBasis);
    static_assert(fnv1a("ab") == fnv1a_mix(fnv1a_mix(shm::detail::kFnvBasis, 'a'), 'b'));
    static_assert(fnv1a("b", fnv1a("a")) == fnv1a("ab"));
    // std::uint64_t's type key above: its mangled name, then its size.
    CHECK(fnv1a_mix(fnv1a("m"), 8) == 0x9bd4ad00c67d9d86ull);
    const std::uint64_t h = fnv1a("key");
    CHECK((h ^ (h >> 29)) == 0x14a001518f856193ull);
}
