// A segment's attachment in this process (detail::SegmentState): what the
// Segment handle and every handle made from it share. Private to the
// library; the store's own helpers are in segment_internal.hpp.
//
// Ownership: the Segment handle that attached holds it by shared_ptr, and
// so does every handle made from that Segment (Dict, List, nested
// containers and the Values holding them, Queue, Queue::Reservation). The
// attachment is given up, in the destructor, when the last of them goes:
// its slot is released, the segment unlinked if that was the last live user
// of a non-persistent segment, the mapping unmapped. Until then every
// pointer into the mapping stays valid, whatever happened to the handles.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "store/layout.hpp"
#include "store/segment_hooks.hpp"

namespace shm {

namespace store {

inline constexpr std::uint32_t kNoSlot = ~0u;

// A shared read-write mapping of a segment file, unmapped at destruction.
struct Map {
    void* p = nullptr;
    std::size_t n = 0;
    Map() = default;
    Map(const Map&) = delete;
    Map& operator=(const Map&) = delete;
    ~Map() { reset(); }
    void reset();
    layout::Header* hdr() const { return static_cast<layout::Header*>(p); }
};

}  // namespace store

namespace detail {

struct SegmentState {
    std::string name;
    std::string path;
    int fd = -1;
    store::Map map;
    std::uint32_t slot = store::kNoSlot;
    bool created = false;
    bool attached = false;
    int fork_error = 0;
    const store::SegmentHooks* hooks = nullptr;  // told of the detach

    SegmentState() = default;
    SegmentState(const SegmentState&) = delete;
    SegmentState& operator=(const SegmentState&) = delete;
    ~SegmentState() { detach(); }

    layout::Header* hdr() const { return map.hdr(); }
    char* base() const { return static_cast<char*>(map.p); }
    std::string what() const { return "segment '" + name + "'"; }

    // shm::error (EBADF) unless attached, with the reason.
    void require_attached() const;
    // Joins the registry of attachments that a fork child re-attaches.
    void register_handle();
    void unregister_handle();
    // In a fork child: take a slot of this process's own.
    void reattach_in_child() noexcept;
    // Give up the slot (and unlink the segment if this was the last live
    // user and it is not persistent), unmap and close. Idempotent; run by
    // the destructor, when the last holder goes.
    void detach() noexcept;
};

}  // namespace detail
}  // namespace shm
