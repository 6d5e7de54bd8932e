// Read-only decoding of SharedArray and SharedScalar (inspect.hpp,
// shared_array_layout.hpp): a copy of the header, checked as opening checks
// it, and of the lock, decoded as the sync objects' locks are.
#include <cstring>

#include "objects/inspect.hpp"
#include "objects/shared_array_layout.hpp"

namespace shm::inspect {

bool is_shared_array_kind(ObjectKind kind) noexcept {
    return kind == ObjectKind::shared_array || kind == ObjectKind::shared_scalar;
}

std::string shared_array_state(const ReadAt& read, const Place& at, SharedArrayState& s) {
    using namespace detail;
    // Header and lock, aligned for both.
    alignas(16) unsigned char buf[kLockOffset + sizeof(RecursiveMutex)];
    SharedArrayHeader h;
    if (at.size < sizeof h || !read(at.offset, sizeof h, buf)) return "its header could not be read";
    std::memcpy(&h, buf, sizeof h);
    if (const char* why = header_problem(h, at.size)) return std::string("not interpreted: ") + why;
    const auto type = static_cast<ElementType>(h.element_type);
    s.element_type = to_string(type);
    s.typecode = typecode(type);
    s.element_size = h.element_size;
    s.count = h.count;
    s.scalar = (h.flags & kScalar) != 0;
    s.has_lock = (h.flags & kHasLock) != 0;
    if (s.has_lock) {
        if (!read(at.offset + kLockOffset, sizeof(RecursiveMutex), buf + kLockOffset)) return "its lock could not be read";
        if (const char* why = lock_problem(buf + kLockOffset)) return std::string("not interpreted: ") + why;
        s.lock = lock_word(buf + kLockOffset, true);
    }
    return {};
}

}  // namespace shm::inspect
