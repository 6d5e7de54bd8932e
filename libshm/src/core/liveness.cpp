#include "core/liveness.hpp"

#include "platform/platform.hpp"

namespace shm::core {

namespace liveness {

ProcessId self() { return ProcessId{platform::current_pid(), platform::self_start_time()}; }

ProcessId of(pid_t pid) {
    if (pid <= 0) return {};
    const std::uint64_t st = platform::process_start_time(pid);
    if (st == 0) return {};
    return ProcessId{static_cast<std::int32_t>(pid), st};
}

bool alive(const ProcessId& p) {
    if (p.empty()) return false;
    const std::uint64_t st = platform::process_start_time(p.pid);
    return st != 0 && st == p.start_time;
}

bool holds_lock(int fd, off_t byte) { return platform::ofd_is_locked(fd, byte); }

}  // namespace liveness

namespace identity {

Holder read(const IdentityRecord& r) {
    Holder h;
    for (;;) {
        const std::uint64_t t1 = r.tag.load(std::memory_order_acquire);
        const std::uint64_t st = r.start_time.load(std::memory_order_acquire);
        const std::uint64_t t2 = r.tag.load(std::memory_order_acquire);
        if (t1 != t2) continue;  // taken meanwhile: read again
        h.tag = t1;
        h.id = ProcessId{tag_pid(t1), st};
        h.pending = tag_pending(t1);
        if (h.id.pid <= 0) h.id = {};
        return h;
    }
}

bool alive(const IdentityRecord& r) {
    const Holder h = read(r);
    return !h.pending && liveness::alive(h.id);
}

bool replaceable(const Holder& h, const ProcessId& me) {
    if (h.id.empty()) return true;
    // A pending holder may be between its stores: wait until its pid has
    // gone (a pid only, since its start time may not be written yet).
    if (h.pending) return h.id.pid == me.pid || liveness::of(h.id.pid).empty();
    return !liveness::alive(h.id);
}

}  // namespace identity

}  // namespace shm::core
