// The named-object directory and the raw heap of an attached segment.
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "platform/platform.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"
#include "store/segment_internal.hpp"
#include "store/segment_state.hpp"

namespace shm {

using layout::Header;
using store::in_quotes;

// ---- named objects and heap ---------------------------------------------

namespace {
// A directory entry's type name, which the file may not terminate.
std::string type_name_of(const heap::DirEntry& e) { return std::string(e.type_name, strnlen(e.type_name, sizeof e.type_name)); }

std::string space_message(Header* h, const std::string& what, std::size_t bytes, const std::string& purpose) {
    std::uint64_t used = h->used_bytes.load(std::memory_order_relaxed);
    return what + " (" + platform::human_bytes(h->total_size) + "): cannot allocate " +
           platform::human_bytes(bytes) + purpose + ": " + platform::human_bytes(used) + " used, " +
           platform::human_bytes(h->heap_size - used) + " free, largest free block " +
           platform::human_bytes(heap::largest_free(h));
}
}  // namespace

void* Segment::named_op(std::string_view name, std::uint64_t key, const char* type_name, ObjectKind kind,
                        std::size_t size, std::size_t align, Init init, void* ctx, detail::NamedOp op,
                        bool* constructed, std::size_t* found_size) {
    detail::SegmentState& st = attachment();
    validate_object_name(name);
    Header* h = st.hdr();
    heap::Txn t(h);
    heap::DirEntry* e = heap::dir_find(h, name.data(), name.size(), nullptr);
    if (e) {
        if (op == detail::NamedOp::construct)
            throw already_exists("object " + in_quotes(name) + " already exists in " + st.what());
        if (e->type_key != key)
            throw type_mismatch("object " + in_quotes(name) + " in " + st.what() + " was constructed as type " +
                                type_name_of(*e) + ", not " + type_name);
        // dir_find() placed it inside the heap; its type fixes its size
        // (a variable-size block's owner checks it).
        if ((!found_size && e->object_size != size) ||
            e->object_offset % std::max<std::size_t>(align, 1) != 0)
            throw corrupted("object " + in_quotes(name) + " in " + st.what() + " has " +
                            std::to_string(e->object_size) + " bytes at offset " + std::to_string(e->object_offset) +
                            "; a " + type_name + " has " + std::to_string(size));
        if (found_size) *found_size = e->object_size;
        t.commit();
        *constructed = false;
        return st.base() + e->object_offset;
    }
    if (op == detail::NamedOp::find) return nullptr;
    std::uint64_t obj = heap::allocate(t, size, std::max<std::size_t>(align, 16));
    if (!obj) throw out_of_space(space_message(h, st.what(), size, " for object " + in_quotes(name)));
    std::uint64_t ent = heap::allocate(t, sizeof(heap::DirEntry), 16);
    if (!ent) throw out_of_space(space_message(h, st.what(), size, " for object " + in_quotes(name)));
    init(st.base() + obj, ctx);
    // The entry is fresh memory owned by this transaction: plain writes are
    // undone by freeing it. It becomes visible with the journaled link.
    auto* d = reinterpret_cast<heap::DirEntry*>(st.base() + ent);
    d->next.store(h->dir_head.load(std::memory_order_relaxed), std::memory_order_relaxed);
    d->object_offset = obj;
    d->object_size = size;
    d->type_key = key;
    d->kind = static_cast<std::uint32_t>(kind);
    d->name_len = static_cast<std::uint32_t>(name.size());
    std::memset(d->name, 0, sizeof d->name);
    std::memcpy(d->name, name.data(), name.size());
    std::snprintf(d->type_name, sizeof d->type_name, "%s", type_name);
    t.store(h->dir_head, ent);
    t.store(h->dir_count, h->dir_count.load(std::memory_order_relaxed) + 1);
    t.commit();
    *constructed = true;
    return st.base() + obj;
}

bool Segment::named_destroy(std::string_view name, std::uint64_t key, const char* type_name, Fini fini) {
    detail::SegmentState& st = attachment();
    validate_object_name(name);
    Header* h = st.hdr();
    heap::Txn t(h);
    heap::DirEntry* prev = nullptr;
    heap::DirEntry* e = heap::dir_find(h, name.data(), name.size(), &prev);
    if (!e) return false;
    if (e->type_key != key)
        throw type_mismatch("object " + in_quotes(name) + " in " + st.what() + " was constructed as type " +
                            type_name_of(*e) + ", not " + type_name);
    std::uint64_t obj = e->object_offset;
    std::uint64_t ent = static_cast<std::uint64_t>(reinterpret_cast<char*>(e) - st.base());
    t.store(prev ? prev->next : h->dir_head, e->next.load(std::memory_order_relaxed));
    t.store(h->dir_count, h->dir_count.load(std::memory_order_relaxed) - 1);
    if (fini) fini(st.base() + obj);
    heap::deallocate(t, obj);
    heap::deallocate(t, ent);
    t.commit();
    return true;
}

std::vector<ObjectInfo> Segment::objects() const {
    detail::SegmentState& st = attachment();
    Header* h = st.hdr();
    heap::Txn t(h);
    std::vector<ObjectInfo> out;
    std::uint64_t limit = h->dir_count.load(std::memory_order_relaxed);
    for (std::uint64_t e = h->dir_head.load(std::memory_order_relaxed); e;) {
        if (limit-- == 0)
            throw corrupted(st.what() + ": object directory is corrupt: it is longer than its count");
        heap::DirEntry* d = heap::dir_entry(h, e);
        out.push_back({std::string(d->name, d->name_len), static_cast<ObjectKind>(d->kind), d->object_offset,
                       d->object_size});
        e = d->next.load(std::memory_order_relaxed);
    }
    t.commit();
    return out;
}

void* Segment::allocate(std::size_t bytes, std::size_t align) {
    detail::SegmentState& st = attachment();
    if (align == 0 || (align & (align - 1)) != 0 || align > 4096)
        throw error(EINVAL, st.what() + ": allocation alignment " + std::to_string(align) +
                                " is not a power of two up to 4096");
    Header* h = st.hdr();
    heap::Txn t(h);
    std::uint64_t off = heap::allocate(t, bytes, align);
    if (!off) throw out_of_space(space_message(h, st.what(), bytes, ""));
    t.commit();
    return st.base() + off;
}

void Segment::deallocate(void* p) {
    if (!p) return;
    detail::SegmentState& st = attachment();
    std::uint64_t off = offset_of(p);
    heap::Txn t(st.hdr());
    heap::deallocate(t, off);
    t.commit();
}

namespace {
// The header of the segment mapped at `base`, checked for what a wrong
// pointer would most likely break: not a segment at all, or a call from
// inside a heap transaction of this thread (it would relock the heap lock).
Header* heap_at(void* base, const char* op) {
    auto* h = static_cast<Header*>(base);
    if (!h) throw error(EBADF, std::string("shm::allocator: ") + op + " through an allocator that has no segment");
    if (h->magic != layout::kMagic)
        throw corrupted(std::string("shm::allocator: ") + op + ": no libshm segment is mapped at its address");
    if (layout::heap_lock(h).held_by_caller())
        throw error(EDEADLK, "segment '" + std::string(h->name, strnlen(h->name, sizeof h->name)) + "': " + op +
                                 " from inside construct() or destroy(): construct containers empty, and empty "
                                 "them before destroying them (shm::destroy_container)");
    return h;
}
}  // namespace

void* detail::heap_allocate(void* base, std::size_t bytes, std::size_t align) {
    Header* h = heap_at(base, "allocate");
    if (align == 0 || (align & (align - 1)) != 0 || align > 4096)
        throw error(EINVAL, "shm::allocator: allocation alignment " + std::to_string(align) +
                                " is not a power of two up to 4096");
    heap::Txn t(h);
    std::uint64_t off = heap::allocate(t, bytes, align);
    if (!off)
        throw out_of_space(space_message(h, "segment '" + std::string(h->name, strnlen(h->name, sizeof h->name)) + "'",
                                         bytes, " for a container"));
    t.commit();
    return static_cast<char*>(base) + off;
}

void detail::heap_deallocate(void* base, void* p) {
    if (!p) return;
    Header* h = heap_at(base, "deallocate");
    heap::Txn t(h);
    heap::deallocate(t, static_cast<std::uint64_t>(static_cast<char*>(p) - static_cast<char*>(base)));
    t.commit();
}

HeapReport Segment::verify() const {
    detail::SegmentState& st = attachment();
    heap::Txn t(st.hdr());
    HeapReport r = heap::verify(st.hdr());
    r.recovered = t.recovered();
    t.commit();
    return r;
}

std::uint64_t Segment::offset_of(const void* p) const {
    detail::SegmentState& st = attachment();
    const char* c = static_cast<const char*>(p);
    if (c < st.base() || c >= st.base() + st.map.n)
        throw error(EINVAL, st.what() + ": pointer is not inside the segment");
    return static_cast<std::uint64_t>(c - st.base());
}

void* Segment::at_offset(std::uint64_t off) const {
    detail::SegmentState& st = attachment();
    if (off >= st.map.n) throw error(EINVAL, st.what() + ": offset " + std::to_string(off) + " is outside the segment");
    return st.base() + off;
}

}  // namespace shm
