// The library's own way into a Segment handle: what the layers above the
// store (client/, objects/) need of a Segment beyond its public API. Private.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>
#include <utility>

#include "shm/segment.hpp"
#include "store/segment_state.hpp"

namespace shm::detail {

struct SegmentAccess {
    // A handle for an attachment made by store::attach().
    static Segment make(std::shared_ptr<SegmentState> state) { return Segment(std::move(state)); }
    // The attachment of `seg`, for a handle that shares it (segment_state.hpp);
    // shm::error (EBADF) if seg holds none (moved from, detached).
    static std::shared_ptr<SegmentState> share(const Segment& seg) {
        seg.attachment();
        return seg.state_;
    }

    // A named object of variable size (a queue's block, a shared array), through the
    // segment's directory: see Segment::named_op. Its type key is T's.
    using Init = Segment::Init;
    template <class T>
    static void* named_block(Segment& seg, std::string_view name, const char* type_name, ObjectKind kind,
                             std::size_t size, std::size_t align, Init init, void* ctx, NamedOp op,
                             bool* constructed, std::size_t* found_size) {
        return seg.named_op(name, Segment::type_key<T>(), type_name, kind, size, align, init, ctx, op, constructed,
                            found_size);
    }
    // Destroy such a block (see Segment::named_destroy); false if absent.
    using Fini = Segment::Fini;
    template <class T>
    static bool named_destroy(Segment& seg, std::string_view name, const char* type_name, Fini fini) {
        return seg.named_destroy(name, Segment::type_key<T>(), type_name, fini);
    }
};

}  // namespace shm::detail
