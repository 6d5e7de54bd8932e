// The Segment handle: its constructors and what it tells about its segment.
// Its public factories (create, open, open_or_create) are in
// client/segment_factories.cpp: see store/segment_hooks.hpp.
// The attachment it holds is store/segment_internal.hpp's Segment::Impl; see
// that file for where the rest of the store lives.
#include "shm/segment.hpp"

#include <utility>

#include "platform/platform.hpp"
#include "store/layout.hpp"
#include "store/segment_internal.hpp"

namespace shm {

using layout::Header;

// ---- Segment --------------------------------------------------------------

Segment::Segment(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Segment::Segment(Segment&&) noexcept = default;
Segment& Segment::operator=(Segment&& o) noexcept {
    if (this != &o) {
        detach();
        impl_ = std::move(o.impl_);
    }
    return *this;
}
Segment::~Segment() { detach(); }

void Segment::detach() noexcept {
    if (impl_) impl_->detach();
}
bool Segment::attached() const noexcept { return impl_ && impl_->attached; }
const std::string& Segment::name() const noexcept { return impl_->name; }
std::string Segment::path() const { return impl_->path; }
bool Segment::created() const noexcept { return impl_->created; }
std::size_t Segment::size() const noexcept { return impl_->hdr() ? impl_->hdr()->total_size : 0; }
void* Segment::base() const noexcept { return impl_->map.p; }
std::uint32_t Segment::max_attach() const noexcept { return impl_->hdr()->max_attach; }

std::size_t Segment::free_memory() const {
    impl_->require_attached();
    Header* h = impl_->hdr();
    return h->heap_size - h->used_bytes.load(std::memory_order_relaxed);
}
std::size_t Segment::used_memory() const {
    impl_->require_attached();
    return impl_->hdr()->used_bytes.load(std::memory_order_relaxed);
}

bool Segment::persistent() const noexcept {
    return impl_->hdr() && (impl_->hdr()->flags.load(std::memory_order_relaxed) & layout::kPersistent);
}

void Segment::set_persistent(bool on) {
    impl_->require_attached();
    platform::ofd_lock_wait(impl_->fd, layout::kMetaLockByte);
    store::MetaLock ml(impl_->fd);
    if (on)
        impl_->hdr()->flags.fetch_or(layout::kPersistent, std::memory_order_relaxed);
    else
        impl_->hdr()->flags.fetch_and(~layout::kPersistent, std::memory_order_relaxed);
}

}  // namespace shm
