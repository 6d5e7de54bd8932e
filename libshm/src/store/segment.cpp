// The Segment handle: its constructors and what it tells about its segment.
// Its public factories (create, open, open_or_create) are in
// client/segment_factories.cpp: see store/segment_hooks.hpp.
// The attachment it holds, shared with the handles made from it, is
// store/segment_state.hpp's; store/segment_internal.hpp says where the rest
// of the store lives.
#include "shm/segment.hpp"

#include <utility>

#include "platform/platform.hpp"
#include "store/layout.hpp"
#include "store/segment_internal.hpp"
#include "store/segment_state.hpp"

namespace shm {

using layout::Header;

// ---- Segment --------------------------------------------------------------

Segment::Segment(std::shared_ptr<detail::SegmentState> state)
    : state_(std::move(state)), name_(state_->name), path_(state_->path), created_(state_->created) {}
// A moved-from handle is empty: no attachment, no name (which is how
// attachment() tells it from a detached one).
Segment::Segment(Segment&& o) noexcept
    : state_(std::move(o.state_)), name_(std::move(o.name_)), path_(std::move(o.path_)), created_(o.created_) {
    o.name_.clear();
    o.path_.clear();
    o.created_ = false;
}
Segment& Segment::operator=(Segment&& o) noexcept {
    if (this != &o) {
        state_ = std::move(o.state_);  // drops our hold on what we had
        name_ = std::move(o.name_);
        path_ = std::move(o.path_);
        created_ = o.created_;
        o.name_.clear();
        o.path_.clear();
        o.created_ = false;
    }
    return *this;
}
Segment::~Segment() = default;

detail::SegmentState& Segment::attachment() const {
    if (!state_) {
        if (name_.empty()) throw error(EBADF, "shm::Segment: this handle holds no segment (it was moved from)");
        throw error(EBADF, "segment '" + name_ + "': handle is detached");
    }
    state_->require_attached();
    return *state_;
}

void Segment::detach() noexcept { state_.reset(); }
std::shared_ptr<const void> Segment::share() const {
    attachment();
    return state_;
}
bool Segment::attached() const noexcept { return state_ && state_->attached; }
const std::string& Segment::name() const noexcept { return name_; }
std::string Segment::path() const { return path_; }
bool Segment::created() const noexcept { return created_; }
std::size_t Segment::size() const noexcept { return state_ && state_->hdr() ? state_->hdr()->total_size : 0; }
void* Segment::base() const noexcept { return state_ ? state_->base() : nullptr; }
std::uint32_t Segment::max_attach() const noexcept { return state_ && state_->hdr() ? state_->hdr()->max_attach : 0; }

std::size_t Segment::free_memory() const {
    Header* h = attachment().hdr();
    return h->heap_size - h->used_bytes.load(std::memory_order_relaxed);
}
std::size_t Segment::used_memory() const {
    return attachment().hdr()->used_bytes.load(std::memory_order_relaxed);
}

bool Segment::persistent() const noexcept {
    return state_ && state_->hdr() && (state_->hdr()->flags.load(std::memory_order_relaxed) & layout::kPersistent);
}

void Segment::set_persistent(bool on) {
    detail::SegmentState& st = attachment();
    platform::ofd_lock_wait(st.fd, layout::kMetaLockByte);
    store::MetaLock ml(st.fd);
    if (on)
        st.hdr()->flags.fetch_or(layout::kPersistent, std::memory_order_relaxed);
    else
        st.hdr()->flags.fetch_and(~layout::kPersistent, std::memory_order_relaxed);
}

}  // namespace shm
