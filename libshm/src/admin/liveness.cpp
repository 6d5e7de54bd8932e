// Admin's liveness decisions (liveness.hpp).
#include "admin/liveness.hpp"

#include <unistd.h>

#include <string>
#include <system_error>

#include "core/liveness.hpp"
#include "platform/platform.hpp"
#include "shm/admin.hpp"

namespace shm::admin::liveness {

bool slot_alive(int fd, const layout::Header* h, std::uint32_t i) {
    return core::liveness::holds_lock(fd, layout::slot_lock_byte(h, i));
}

bool meta_locked(int fd) {
    try {
        return platform::ofd_is_locked(fd, layout::kMetaLockByte);
    } catch (const std::system_error&) {
        return false;
    }
}

bool process_alive(pid_t pid, std::uint64_t start_time) { return core::liveness::alive({pid, start_time}); }

bool lock_owner_alive(pid_t tid, const std::vector<AttachInfo>* attached) {
    if (tid <= 0) return false;
    // The thread exists, and is no zombie (/proc/<tid> names threads too).
    if (core::liveness::of(tid).empty()) return false;
    if (!attached) return true;
    // One of a live attached process's threads: that process holds its
    // slot, so its pid, and the tid among its tasks, name it and no other.
    for (const AttachInfo& a : *attached) {
        if (!a.alive || a.pid <= 0) continue;
        const std::string task = "/proc/" + std::to_string(a.pid) + "/task/" + std::to_string(tid);
        if (::access(task.c_str(), F_OK) == 0) return true;
    }
    return false;
}

}  // namespace shm::admin::liveness
