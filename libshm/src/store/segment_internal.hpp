// What the files of the segment store share (segment*.cpp): the descriptor
// holder, the meta lock and the attach table. The attachment itself is
// segment_state.hpp's.
//
//   segment.cpp          the Segment handle: constructors, accessors
//   segment_attach.cpp   creating, opening and attaching (the creation protocol)
//   segment_slots.cpp    the attach table: slots, detach, fork, reaping, unlink
//   segment_objects.cpp  the named-object directory and the raw heap
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "shm/segment.hpp"
#include "store/layout.hpp"
#include "store/segment_hooks.hpp"
#include "store/segment_state.hpp"

namespace shm::store {

inline std::string in_quotes(std::string_view s) { return "'" + std::string(s) + "'"; }

struct Fd {
    int fd = -1;
    Fd() = default;
    explicit Fd(int f) : fd(f) {}
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd();
    int release() {
        int f = fd;
        fd = -1;
        return f;
    }
};

// Map `size` bytes of fd shared, read-write; shm::error naming `what`.
void map_file(Map& m, int fd, std::size_t size, const std::string& what);

// Holds the meta lock (taken by the caller) until the end of the scope.
struct MetaLock {
    int fd;
    explicit MetaLock(int f) : fd(f) {}
    ~MetaLock();
};

// The meta lock, polled until `deadline`; false if it was not got by then.
bool meta_lock_until(int fd, std::chrono::steady_clock::time_point deadline);

// Unlink `path` only if it still names the file open as `fd`.
void unlink_if_same(const std::string& path, int fd);

// ---- the attach table (segment_slots.cpp) --------------------------------
bool slot_alive(int fd, layout::Header* h, std::uint32_t i);
void clear_slot(layout::AttachSlot& s);
// Under the meta lock: clear slots of dead processes, count live ones (not
// counting `own`; *cleared counts the slots cleared).
std::uint32_t sweep_slots(int fd, layout::Header* h, std::uint32_t own, std::uint32_t* cleared);
// Under the meta lock: take a free slot for the calling process, or kNoSlot.
std::uint32_t take_slot(int fd, layout::Header* h);

// ---- the file's state (segment_attach.cpp) --------------------------------
enum class Mode { create, open, open_or_create };

// What the first bytes of a file say it is.
enum class Kind { uninitialised, ready, dead, foreign };

// Under the meta lock: what the file of `fsize` bytes, mapped as m if it is
// at least a header long, is. Throws version_mismatch, or corrupted for a
// ready segment whose header is inconsistent.
Kind classify(const Map& m, std::size_t fsize, int fd, const std::string& name, const std::string& path);

// Attach the calling process to segment `name` (creating it per `mode`),
// telling `hooks` (segment_hooks.hpp), which must outlive the attachment:
// it keeps them for its detach.
std::shared_ptr<detail::SegmentState> attach(std::string_view name, Mode mode, std::size_t size,
                                             const SegmentOptions& opt, const SegmentHooks& hooks);

}  // namespace shm::store
