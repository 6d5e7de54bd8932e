// Read-only decoding of a Queue (inspect.hpp): its settings, depth and
// byte fill, from a copy of the start of its control block
// (queue_layout.hpp), counted with the layout's own helpers.
#include <algorithm>
#include <cstring>

#include "objects/inspect.hpp"
#include "objects/queue_layout.hpp"

namespace shm::inspect {

namespace {

using detail::QueueControl;

// The control block up to the last field read here.
constexpr std::size_t kControlRead =
    std::max(offsetof(QueueControl, repairs), offsetof(QueueControl, free)) + sizeof(std::uint64_t);

template <class T>
T field(const unsigned char* c, std::size_t off) {
    T v;
    std::memcpy(&v, c + off, sizeof v);
    return v;
}

}  // namespace

std::string queue_state(const ReadAt& read, const Place& at, QueueState& q) {
    unsigned char c[kControlRead];
    if (at.size < kControlRead || !read(at.offset, kControlRead, c)) return "its control block could not be read";
    auto u64 = [&](std::size_t off) { return field<std::uint64_t>(c, off); };
    auto u32 = [&](std::size_t off) { return field<std::uint32_t>(c, off); };
    const std::uint64_t magic = u64(offsetof(QueueControl, magic));
    if (magic != kQueueMagic && magic != kQueueMagicSingle) return "not initialised, or another layout";
    const std::uint64_t tail = u64(offsetof(QueueControl, tail));
    q.capacity = u32(offsetof(QueueControl, capacity));
    q.max_item_size = u32(offsetof(QueueControl, max_item));
    q.depth = detail::depth_of(tail, u64(offsetof(QueueControl, head)), q.capacity);
    q.closed = u32(offsetof(QueueControl, closed)) != 0;
    q.repairs = u64(offsetof(QueueControl, repairs));
    q.max_bytes = u64(offsetof(QueueControl, max_bytes));
    // As Queue::bytes_used() counts them, without first freeing what
    // consumers released (that would write).
    const std::uint32_t shift = u32(offsetof(QueueControl, unit_shift));
    const std::uint32_t units =
        detail::units_held(tail, u64(offsetof(QueueControl, free)), u32(offsetof(QueueControl, ring_units)));
    q.bytes_used = shift < 40 ? std::uint64_t(units) << shift : 0;
    return {};
}

}  // namespace shm::inspect
