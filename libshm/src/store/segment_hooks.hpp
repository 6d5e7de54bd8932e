// What the segment store tells the layer above it about attachments.
//
// The store (store/) includes nothing from client/, objects/ or admin/: it
// knows of shmd only as this table of three hooks, called at three points
// of an attachment's life:
//   before_create(name, bytes)  before a create (or an open_or_create that
//                               finds no file) makes anything; may throw
//                               (a quota refused it) and then nothing is made
//   attached(name)              once the slot is this process's; may throw
//                               (a daemon that is required is missing), and
//                               then the attachment is given up again
//   detached(name)              when the slot is given up; must not throw
// Any hook may be null.
//
// Who supplies the table: the public ways to attach, Segment::create, open
// and open_or_create, are defined in client/segment_factories.cpp, above
// both layers; they pass the daemon client's table to store::attach(), and
// the attachment keeps it for its detach. Every attachment is made there, so
// every attachment has its hooks from its first step to its last, and there
// is no process-wide registration to get right: a registrar run by a static
// initialiser would be dropped by the linker from a static libshm.a when
// nothing refers to its object file, and could run after a Segment opened
// by another static initialiser.
#pragma once

#include <cstdint>
#include <string>

namespace shm::store {

struct SegmentHooks {
    void (*before_create)(const std::string& name, std::uint64_t bytes) = nullptr;
    void (*attached)(const std::string& name) = nullptr;
    void (*detached)(const std::string& name) noexcept = nullptr;
};

}  // namespace shm::store
