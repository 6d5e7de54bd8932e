// What kind of object a named entry of a segment holds, recorded in the
// segment's directory so that tools (shmctl stat) can show live state without
// knowing the program's types.
//
// A kind is only ever added: a libshm that does not know a kind shows such
// an object without its state, and cannot open it (its type key differs),
// so adding one leaves the layout version as it is.
#pragma once

#include <cstdint>

namespace shm {

enum class ObjectKind : std::uint32_t {
    raw = 0,    // any other trivially placed type
    mutex = 1,             // shm::Mutex
    recursive_mutex = 2,   // shm::RecursiveMutex
    semaphore = 3,         // shm::Semaphore
    bounded_semaphore = 4, // shm::BoundedSemaphore
    condition = 5,         // shm::Condition
    event = 6,             // shm::Event
    barrier = 7,           // shm::Barrier
    dict = 8,              // shm::Dict (its root)
    list = 9,              // shm::List (its root)
    queue = 10,            // shm::Queue
    shared_array = 11,     // shm::SharedArray<T> (Python's Array)
    shared_scalar = 12,    // shm::SharedScalar<T> (Python's Value)
    work_queue = 13,       // shm::WorkQueue (its root)
};

const char* to_string(ObjectKind k) noexcept;

// Specialise for types with a dedicated kind; everything else is `raw`.
template <class T>
struct object_kind_of {
    static constexpr ObjectKind value = ObjectKind::raw;
};

}  // namespace shm
