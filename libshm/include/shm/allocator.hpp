// shm::allocator<T> — Boost containers in a libshm segment.
//
// An allocator for boost::container (vector, map, flat_map, basic_string,
// ...) and the Boost.Interprocess containers built on them, taking its
// memory from a segment's heap, the one construct() and allocate() use:
//
//     using Alloc = shm::allocator<int>;
//     using Vec = boost::container::vector<int, Alloc>;
//     auto seg = shm::Segment::open_or_create("jobs", 64 << 20);
//     auto& lock = seg.find_or_construct<shm::Mutex>("lock");
//     auto& v = seg.find_or_construct<Vec>("v", Alloc(seg));  // construct it empty
//     {
//         std::lock_guard<shm::Mutex> g(lock);
//         v.push_back(42);
//     }
//
// Its pointer type is boost::interprocess::offset_ptr<T>: a distance from
// the pointer's own address, so a container in the segment, and the blocks
// it points to, read the same in every process, wherever each maps the
// segment. The allocator itself keeps an offset_ptr to the segment's base
// and nothing of this process: a copy inside a container in the segment
// (every container keeps one) is valid in every process attached to it.
// Two allocators are equal when they allocate from the same mapping.
//
// The segment must stay attached in this process (by the Segment handle or
// any handle made from it) while its containers are used, as for the
// references construct() returns. Containers are not synchronised: guard
// each with a shm::Mutex (or another of libshm's locks) in the segment.
//
// Heap full: allocate() throws shm::out_of_space and the heap is unchanged;
// the Boost containers then leave the container as it was for push_back,
// emplace_back, insert of one element and the like (their strong
// guarantee), so the program may drop the request and go on.
//
// Inside construct() and destroy(): the segment's heap lock is held while
// they run the object's constructor and destructor, and the allocator
// refuses to allocate or free there (shm::error, EDEADLK) rather than relock
// it. Construct containers empty (an allocator alone, as above: none of
// Boost's containers allocates then) and fill them afterwards; destroy them
// with shm::destroy_container(), which empties them first. seg.destroy<C>()
// of a container that still owns memory ends the program (the refusal is
// thrown from a destructor).
//
// What survives a process killed at any instant (SIGKILL), and what not:
//   - The heap. Every allocate() and deallocate() is a transaction of the
//     segment's crash-safe heap: one interrupted by the death of its process
//     is rolled back by the next user of the heap, and verify() then reports
//     the heap sound. A block allocated but not yet stored in the container
//     when its process died stays allocated and is never freed (a leak, not
//     an inconsistency).
//   - Not the container. A container half-way through its own update (a
//     vector moving to a larger buffer, a map rebalancing its tree, a string
//     growing) is left as the dead process left it: pointers to freed
//     blocks, a size that does not match the elements. Nothing in the
//     container tells. The process that takes the guarding shm::Mutex next
//     is told, by previous_owner_died(), and must repair the container
//     before using it. Keeping each container twice, changed one copy after
//     the other with a word saying which copy is being changed, makes
//     repair always possible: the other copy is intact, and the torn one is
//     abandoned (its blocks leak: it cannot be trusted even to be freed) and
//     rebuilt from it. docs/boost-interprocess.md shows the pattern, and
//     examples/boost_containers.cpp runs it.
//
// Needs Boost (1.71 or later: headers only); libshm itself does not, and
// shm/shm.hpp does not include this header.
#pragma once

#include <cstddef>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

#include <boost/interprocess/offset_ptr.hpp>

#include "shm/error.hpp"
#include "shm/segment.hpp"

namespace shm {

template <class T>
class allocator {
public:
    using value_type = T;
    using pointer = boost::interprocess::offset_ptr<T>;
    using const_pointer = boost::interprocess::offset_ptr<const T>;
    using void_pointer = boost::interprocess::offset_ptr<void>;
    using const_void_pointer = boost::interprocess::offset_ptr<const void>;
    using size_type = std::size_t;
    using difference_type = std::ptrdiff_t;
    using reference = T&;
    using const_reference = const T&;

    template <class U>
    struct rebind {
        using other = allocator<U>;
    };

    // A container's memory stays in the segment its allocator names: it is
    // never handed to a container of another segment by assignment or swap
    // (swapping containers of different segments is undefined, as for any
    // unequal allocators; assignment copies or moves the elements).
    using propagate_on_container_copy_assignment = std::false_type;
    using propagate_on_container_move_assignment = std::false_type;
    using propagate_on_container_swap = std::false_type;
    using is_always_equal = std::false_type;

    // Allocates from `seg`'s heap. shm::error (EBADF) if the handle holds no
    // attachment.
    explicit allocator(const Segment& seg) : base_(attached_base(seg)) {}
    allocator(const allocator&) noexcept = default;
    allocator& operator=(const allocator&) noexcept = default;
    template <class U>
    allocator(const allocator<U>& o) noexcept : base_(o.base_) {}

    // shm::out_of_space when the heap cannot hold n T; the heap is then
    // unchanged.
    pointer allocate(size_type n) {
        if (n > max_size())
            throw out_of_space("shm::allocator: cannot allocate " + std::to_string(n) + " elements of " +
                               std::to_string(sizeof(T)) + " bytes");
        return pointer(static_cast<T*>(detail::heap_allocate(base_.get(), n * sizeof(T), align())));
    }
    void deallocate(pointer p, size_type) { detail::heap_deallocate(base_.get(), p.get()); }

    size_type max_size() const noexcept { return std::numeric_limits<size_type>::max() / sizeof(T); }

    // Where the segment is mapped in this process (its Segment's base()).
    void* segment_base() const noexcept { return base_.get(); }

    template <class U>
    bool operator==(const allocator<U>& o) const noexcept {
        return base_ == o.base_;
    }
    template <class U>
    bool operator!=(const allocator<U>& o) const noexcept {
        return base_ != o.base_;
    }

private:
    template <class>
    friend class allocator;

    static void* attached_base(const Segment& seg) {
        if (!seg.attached()) throw error(EBADF, "shm::allocator: the segment handle holds no attachment");
        return seg.base();
    }
    // The heap aligns every block to 16 bytes; asking for more costs a shim.
    static constexpr std::size_t align() noexcept { return alignof(T) > 16 ? alignof(T) : 16; }

    void_pointer base_;
};

// Destroy the container C named `name` in `seg`: empty it (its elements
// and blocks freed one by one, outside the heap lock), then destroy the
// object. Hold the mutex that guards it. Returns false if there was none.
// A process killed half-way leaves the heap sound; the blocks it had not
// freed yet stay allocated, and a container killed inside swap() is torn
// (repair it as any interrupted update).
template <class C>
bool destroy_container(Segment& seg, std::string_view name) {
    C* c = seg.find<C>(name);
    if (!c) return false;
    {
        C empty(c->get_allocator());
        empty.swap(*c);
    }
    return seg.destroy<C>(name);
}

}  // namespace shm
