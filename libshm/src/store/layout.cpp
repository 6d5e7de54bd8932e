// The one check of a segment header (layout.hpp): what Segment's open and
// create and admin's inspection trust before they follow any offset. And the
// one rule for a half-made file left by a creator that died (abandoned()).
#include "store/layout.hpp"

#include <time.h>

#include <cstring>
#include <new>

namespace shm::layout {

namespace {
// The pthread kind word of a heap lock as shm::Mutex() makes it (robust,
// error-checking, process-shared), read from a fresh one so that it follows
// glibc rather than a copy of its constants. A lock of another kind would
// make pthread_mutex_lock() misbehave in ways no caller expects.
int expected_lock_kind() {
    alignas(Mutex) unsigned char buf[sizeof(Mutex)];
    auto* m = ::new (buf) Mutex();
    const int kind = reinterpret_cast<const pthread_mutex_t*>(buf)->__data.__kind;
    m->~Mutex();
    return kind;
}
}  // namespace

const char* header_problem(const Header* h, std::uint64_t file_size) noexcept {
    if (h->total_size != file_size) return "its size does not match the file";
    if (h->max_attach == 0 || h->max_attach > kMaxAttachLimit) return "its attach table size is out of range";
    if (h->attach_offset != kHeaderSize) return "its attach table is not where the layout puts it";
    if (h->journal_offset != journal_offset_for(h->max_attach) || h->journal_capacity != kJournalCapacity)
        return "its journal is not where the layout puts it";
    if (h->heap_offset != heap_offset_for(h->max_attach) || h->heap_offset > h->total_size ||
        h->heap_size > h->total_size - h->heap_offset || h->total_size - h->heap_offset - h->heap_size >= 64 ||
        h->heap_size < 64 || h->heap_size % 64 != 0)
        return "its heap does not fit the file";
    if (std::memchr(h->name, 0, sizeof h->name) == nullptr) return "its name is not terminated";
    static const int lock_kind = expected_lock_kind();
    if (reinterpret_cast<const pthread_mutex_t*>(h->heap_lock_storage)->__data.__kind != lock_kind)
        return "its heap lock is not a libshm lock";
    if (h->journal_count.load(std::memory_order_relaxed) > h->journal_capacity)
        return "its journal count is out of range";
    const std::uint64_t dir = h->dir_head.load(std::memory_order_relaxed);
    if ((dir != 0 && (dir % 16 != 0 || !in_heap(h, dir, 1))) ||
        h->dir_count.load(std::memory_order_relaxed) > h->heap_size / 16)
        return "its object directory is outside the heap";
    const std::uint64_t garbage = h->garbage_head.load(std::memory_order_relaxed);
    if (garbage != 0 && (garbage % 16 != 0 || !in_heap(h, garbage, 64))) return "its garbage list is outside the heap";
    for (const auto& b : h->bins) {
        const std::uint64_t v = b.load(std::memory_order_relaxed);
        if (v != 0 && (v % 16 != 0 || !in_heap(h, v, 32))) return "a free list of its heap is outside the heap";
    }
    return nullptr;
}

bool abandoned(const struct stat& st) noexcept {
    timespec now;
    ::clock_gettime(CLOCK_REALTIME, &now);
    const std::int64_t age_ns = (std::int64_t(now.tv_sec) - st.st_ctim.tv_sec) * 1000000000 +
                                (now.tv_nsec - st.st_ctim.tv_nsec);
    return age_ns > std::chrono::nanoseconds(kAbandonedAfter).count();
}

}  // namespace shm::layout
