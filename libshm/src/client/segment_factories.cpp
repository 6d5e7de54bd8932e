// The public ways to attach a segment: the store's attach protocol, with
// this process's registration at shmd. They are here, above both layers, so
// that the store knows nothing of the daemon: store/segment_hooks.hpp says
// why this is where the daemon client's hooks are handed to the store.
#include "client/daemon_client.hpp"
#include "store/segment_access.hpp"
#include "store/segment_hooks.hpp"
#include "store/segment_internal.hpp"

namespace shm {

namespace {
// Quotas asked before a create; each attach and detach reported (with
// SHM_DAEMON=required, a missing daemon makes the attach fail and undo).
constexpr store::SegmentHooks kDaemonHooks{&daemon_client::before_create, &daemon_client::attached,
                                          &daemon_client::detached};
}  // namespace

Segment Segment::create(std::string_view name, std::size_t size, const SegmentOptions& opt) {
    return detail::SegmentAccess::make(store::attach(name, store::Mode::create, size, opt, kDaemonHooks));
}

Segment Segment::open(std::string_view name, const SegmentOptions& opt) {
    return detail::SegmentAccess::make(store::attach(name, store::Mode::open, 0, opt, kDaemonHooks));
}

Segment Segment::open_or_create(std::string_view name, std::size_t size, const SegmentOptions& opt) {
    return detail::SegmentAccess::make(store::attach(name, store::Mode::open_or_create, size, opt, kDaemonHooks));
}

}  // namespace shm
