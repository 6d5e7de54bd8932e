// The library's own way into a Segment handle: what the layers above the
// store (client/, objects/) need of a Segment beyond its public API. Private.
#pragma once

#include <memory>
#include <utility>

#include "shm/segment.hpp"

namespace shm::detail {

struct SegmentAccess {
    // A handle for an attachment made by store::attach().
    static Segment make(std::unique_ptr<Segment::Impl> impl) { return Segment(std::move(impl)); }
};

}  // namespace shm::detail
