// shm::SharedArray<T> and shm::SharedScalar<T> — Python multiprocessing's
// Array(typecode, size_or_initializer, lock=True) and Value(typecode, value,
// lock=True) across processes: a fixed number of plain elements in a
// segment, with an optional embedded shm::RecursiveMutex (multiprocessing's
// default lock is an RLock), chosen when the object is created.
//
//     auto a = shm::SharedArray<double>::open_or_create(seg, "weights", 1000);
//     {
//         std::lock_guard<shm::RecursiveMutex> g(a.get_lock());
//         if (a.get_lock().previous_owner_died()) { /* a writer died mid-update */ }
//         for (double& w : a) w *= 0.5;
//     }
//     auto n = shm::SharedScalar<std::int64_t>::open_or_create(seg, "done");
//     n.fetch_add(1);  // one atomic instruction, no lock
//
// The elements are plain memory in the segment: reading and writing them is
// as fast as any memory, and as unsynchronised. Hold get_lock() around
// updates that others may make at the same time (as with Python's
// get_lock()), or use the atomic operations. A process killed while holding
// the lock is reported to the next locker (previous_owner_died()); what it
// had half-written stays as it left it, for that locker to repair.
//
// One shared layout serves every element type, both shapes (array and
// scalar) and the type-erased functions below, which a language binding uses
// without knowing T at compile time: a header (magic, count, element type
// and size, whether it has a lock and whether it is a scalar), then the lock
// if there is one, then the elements, 16-byte aligned. Opening checks the
// header (the file is untrusted input) and the element type against the
// caller's: a SharedArray<std::int32_t> opened as SharedArray<double> is
// refused with shm::type_mismatch and nothing changes.
//
// Handles (SharedArray, SharedScalar, SharedArrayInfo) keep the segment's
// attachment alive, like a Queue or a Dict: they may outlive the Segment
// handle they were opened from (segment.hpp, "Handles"). Copies share the
// same elements.
//
// Needs C++17; with C++20, span() gives a std::span, and the atomic
// operations use std::atomic_ref (the same instructions either way).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>

#if __has_include(<span>)
#include <span>
#endif

#include "shm/error.hpp"
#include "shm/segment.hpp"
#include "shm/sync.hpp"

namespace shm {

// ---- element types ------------------------------------------------------------

// The element type of a shared array: ctypes' names, and as values Python's
// typecodes (static_cast<char>), each with a fixed-width C++ type. On LP64
// Linux, C long is 64 bits, so 'l'/'L' are the same size as 'q'/'Q'.
enum class ElementType : std::uint8_t {
    other = 0,          // a trivially copyable C++ type with no typecode (a struct), known by its type key
    c_char = 'c',       // char: one byte of characters (Python: bytes of length 1)
    c_byte = 'b',       // std::int8_t (signed char)
    c_ubyte = 'B',      // std::uint8_t (unsigned char)
    c_short = 'h',      // std::int16_t
    c_ushort = 'H',     // std::uint16_t
    c_int = 'i',        // std::int32_t
    c_uint = 'I',       // std::uint32_t
    c_long = 'l',       // std::int64_t (long)
    c_ulong = 'L',      // std::uint64_t (unsigned long)
    c_longlong = 'q',   // std::int64_t (long long)
    c_ulonglong = 'Q',  // std::uint64_t (unsigned long long)
    c_float = 'f',      // float
    c_double = 'd',     // double
    c_bool = '?',       // bool
};

// The type of a typecode ('i', 'd', ...), or nullopt for any other character.
std::optional<ElementType> from_typecode(char typecode) noexcept;
// The typecode of a type ('\0' for other).
char typecode(ElementType t) noexcept;
// Bytes per element (0 for other: the C++ type's size).
std::size_t element_size(ElementType t) noexcept;
// Its ctypes name ("c_int", ...; "other").
const char* to_string(ElementType t) noexcept;

// The element type of a C++ type: its typecode for the fundamental types
// above (long is 'l', long long is 'q', std::int64_t is whichever of them
// it is), else other. Opening accepts any type of the same representation:
// a 'q' array opens as SharedArray<long> too.
template <class T>
inline constexpr ElementType element_type_v = std::is_same_v<T, char>                 ? ElementType::c_char
                                             : std::is_same_v<T, signed char>        ? ElementType::c_byte
                                             : std::is_same_v<T, unsigned char>      ? ElementType::c_ubyte
                                             : std::is_same_v<T, short>              ? ElementType::c_short
                                             : std::is_same_v<T, unsigned short>     ? ElementType::c_ushort
                                             : std::is_same_v<T, int>                ? ElementType::c_int
                                             : std::is_same_v<T, unsigned>           ? ElementType::c_uint
                                             : std::is_same_v<T, long>               ? ElementType::c_long
                                             : std::is_same_v<T, unsigned long>      ? ElementType::c_ulong
                                             : std::is_same_v<T, long long>          ? ElementType::c_longlong
                                             : std::is_same_v<T, unsigned long long> ? ElementType::c_ulonglong
                                             : std::is_same_v<T, float>              ? ElementType::c_float
                                             : std::is_same_v<T, double>             ? ElementType::c_double
                                             : std::is_same_v<T, bool>               ? ElementType::c_bool
                                                                                     : ElementType::other;

// ---- the type-erased view, for bindings -----------------------------------------

namespace detail {
struct SegmentState;  // a segment's attachment, shared by handles (segment.hpp)
}

// A shared array or scalar as a binding sees it: everything needed to wrap
// its bytes (a memoryview of `count` elements of `element_size` bytes in
// the struct format typecode() at `data`; for a C++ type, typecode() is
// '\0': plain bytes) and its lock. `attachment` keeps the mapping alive:
// data and lock stay valid while this object (or a copy) lives, whatever
// happens to the Segment handle.
struct SharedArrayInfo {
    std::string name;
    ElementType type = ElementType::other;
    std::size_t element_size = 0;
    std::size_t count = 0;           // elements; 1 for a scalar
    bool scalar = false;             // made as a SharedScalar (Python's Value), not a SharedArray
    void* data = nullptr;            // the first element, 16-byte aligned
    RecursiveMutex* lock = nullptr;  // nullptr: made without a lock
    std::shared_ptr<detail::SegmentState> attachment;

    char typecode() const noexcept { return shm::typecode(type); }
    std::size_t bytes() const noexcept { return count * element_size; }
};

// Create a shared array of `count` elements of `type` (not other) named
// `name` in seg: zero-filled, then the first `initial_bytes` bytes copied
// from `initial` (at most count × element size, else shm::error EINVAL),
// all before any other process can see it. shm::already_exists if the name
// is taken; shm::out_of_space (the segment unchanged) if it does not fit,
// count × element size overflowing included. A count of 0 is allowed.
SharedArrayInfo create_shared_array(Segment& seg, std::string_view name, ElementType type, std::size_t count,
                                    bool with_lock = true, const void* initial = nullptr,
                                    std::size_t initial_bytes = 0);
// The same, or the existing one if there is one: it keeps its length and
// lock (check count and lock), and must hold `type` (or a type of the same
// representation) and be an array, else shm::type_mismatch.
SharedArrayInfo open_or_create_shared_array(Segment& seg, std::string_view name, ElementType type,
                                            std::size_t count, bool with_lock = true, const void* initial = nullptr,
                                            std::size_t initial_bytes = 0);
// A scalar: one element, scalar set.
SharedArrayInfo create_shared_scalar(Segment& seg, std::string_view name, ElementType type, bool with_lock = true,
                                     const void* initial = nullptr, std::size_t initial_bytes = 0);
SharedArrayInfo open_or_create_shared_scalar(Segment& seg, std::string_view name, ElementType type,
                                             bool with_lock = true, const void* initial = nullptr,
                                             std::size_t initial_bytes = 0);
// Open the array or scalar named `name`, of any element type (info.scalar
// and info.type say what it is). shm::not_found if absent,
// shm::type_mismatch if the name holds another kind of object,
// shm::corrupted if its header is damaged.
SharedArrayInfo open_shared_array(Segment& seg, std::string_view name);
// Destroy the array or scalar named `name` and free its memory; false if
// there was none, shm::error (EBUSY) while its lock is held. Handles still
// open keep pointing at freed memory: destroy only what nobody uses.
bool destroy_shared_array(Segment& seg, std::string_view name);

namespace detail {

// What a typed handle asks of the type-erased layer (shared_array.cpp).
enum class ArrayShape : std::uint8_t { any, array, scalar };
struct ArrayRequest {
    ElementType type = ElementType::other;
    std::size_t element_size = 0;   // sizeof(T)
    std::uint64_t type_key = 0;     // other: the C++ type's key; else 0
    const char* type_name = "";     // for messages
    ArrayShape shape = ArrayShape::any;
    bool check_type = false;        // opening: the elements must be of this type
    std::size_t count = 0;          // creating
    bool with_lock = true;          // creating
    const void* initial = nullptr;  // creating
    std::size_t initial_bytes = 0;
};
SharedArrayInfo attach_shared_array(Segment& seg, std::string_view name, const ArrayRequest& rq, NamedOp op);

// The key of a C++ element type without a typecode: FNV-1a over its mangled
// name and size, as the segment keys named objects.
template <class T>
std::uint64_t element_type_key() noexcept {
    std::uint64_t h = 1469598103934665603ull;
    for (const char* p = typeid(T).name(); *p; ++p) {
        h ^= static_cast<unsigned char>(*p);
        h *= 1099511628211ull;
    }
    h ^= sizeof(T);
    h *= 1099511628211ull;
    return h;
}

template <class T>
ArrayRequest array_request(ArrayShape shape) {
    ArrayRequest rq;
    rq.type = element_type_v<T>;
    rq.element_size = sizeof(T);
    rq.type_key = element_type_v<T> == ElementType::other ? element_type_key<T>() : 0;
    rq.type_name = typeid(T).name();
    rq.shape = shape;
    rq.check_type = true;
    return rq;
}

[[noreturn]] void throw_no_lock(const SharedArrayInfo& info);
[[noreturn]] void throw_out_of_range(const SharedArrayInfo& info, std::size_t i);

// One element as one atomic access: T of 1, 2, 4 or 8 bytes, aligned to its
// size (every element of a shared array of such a T is).
template <class T>
inline constexpr bool atomic_sized_v =
    std::is_trivially_copyable_v<T> && (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8);
template <class T>
inline constexpr bool atomic_arithmetic_v =
    std::is_integral_v<T> && !std::is_same_v<T, bool> && atomic_sized_v<T>;

#if defined(__cpp_lib_atomic_ref)
template <class T>
T atomic_load(T* p) noexcept {
    return std::atomic_ref<T>(*p).load();
}
template <class T>
void atomic_store(T* p, T v) noexcept {
    std::atomic_ref<T>(*p).store(v);
}
template <class T>
T atomic_exchange(T* p, T v) noexcept {
    return std::atomic_ref<T>(*p).exchange(v);
}
template <class T>
bool atomic_compare_exchange(T* p, T& expected, T desired) noexcept {
    return std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
}
template <class T>
T atomic_fetch_add(T* p, T d) noexcept {
    return std::atomic_ref<T>(*p).fetch_add(d);
}
template <class T>
T atomic_fetch_sub(T* p, T d) noexcept {
    return std::atomic_ref<T>(*p).fetch_sub(d);
}
#else
// C++17: the builtins std::atomic_ref is made of (GCC and Clang).
template <class T>
T atomic_load(T* p) noexcept {
    alignas(T) unsigned char out[sizeof(T)];
    __atomic_load(p, reinterpret_cast<T*>(out), __ATOMIC_SEQ_CST);
    return *reinterpret_cast<T*>(out);
}
template <class T>
void atomic_store(T* p, T v) noexcept {
    __atomic_store(p, &v, __ATOMIC_SEQ_CST);
}
template <class T>
T atomic_exchange(T* p, T v) noexcept {
    alignas(T) unsigned char out[sizeof(T)];
    __atomic_exchange(p, &v, reinterpret_cast<T*>(out), __ATOMIC_SEQ_CST);
    return *reinterpret_cast<T*>(out);
}
template <class T>
bool atomic_compare_exchange(T* p, T& expected, T desired) noexcept {
    return __atomic_compare_exchange(p, &expected, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
template <class T>
T atomic_fetch_add(T* p, T d) noexcept {
    return __atomic_fetch_add(p, d, __ATOMIC_SEQ_CST);
}
template <class T>
T atomic_fetch_sub(T* p, T d) noexcept {
    return __atomic_fetch_sub(p, d, __ATOMIC_SEQ_CST);
}
#endif

}  // namespace detail

// ---- SharedArray<T> -------------------------------------------------------------

// A fixed-length array of T in a segment (Python's multiprocessing.Array).
// T is trivially copyable and aligned to at most 16 bytes: a typecode's
// type (element_type_v) or a plain struct. The handle's const-ness is not
// the elements': like std::span, a const handle gives mutable elements.
template <class T>
class SharedArray {
    static_assert(std::is_trivially_copyable_v<T>, "shm::SharedArray<T>: T must be trivially copyable");
    static_assert(!std::is_const_v<T> && !std::is_volatile_v<T>, "shm::SharedArray<T>: T must not be const or volatile");
    static_assert(alignof(T) <= 16, "shm::SharedArray<T>: T must be aligned to at most 16 bytes");

public:
    using value_type = T;
    using size_type = std::size_t;
    using reference = T&;
    using pointer = T*;
    using iterator = T*;

    // Create `count` zero elements (shm::already_exists if the name is taken,
    // shm::out_of_space, the segment unchanged, if they do not fit).
    static SharedArray create(Segment& seg, std::string_view name, std::size_t count, bool with_lock = true) {
        return make(seg, name, count, nullptr, with_lock, detail::NamedOp::construct);
    }
    // Create it holding a copy of values[0 .. n).
    static SharedArray create(Segment& seg, std::string_view name, const T* values, std::size_t n,
                              bool with_lock = true) {
        return make(seg, name, n, values, with_lock, detail::NamedOp::construct);
    }
    // Open it, creating it if absent. An existing one keeps its length and
    // lock (check size() and has_lock()); it must hold T, and be an array.
    static SharedArray open_or_create(Segment& seg, std::string_view name, std::size_t count, bool with_lock = true) {
        return make(seg, name, count, nullptr, with_lock, detail::NamedOp::find_or_construct);
    }
    static SharedArray open_or_create(Segment& seg, std::string_view name, const T* values, std::size_t n,
                                      bool with_lock = true) {
        return make(seg, name, n, values, with_lock, detail::NamedOp::find_or_construct);
    }
    // shm::not_found if absent; shm::type_mismatch if it holds another
    // element type or is a SharedScalar; shm::corrupted if it is damaged.
    static SharedArray open(Segment& seg, std::string_view name) {
        return SharedArray(detail::attach_shared_array(seg, name, detail::array_request<T>(detail::ArrayShape::array),
                                                       detail::NamedOp::find));
    }

    std::size_t size() const noexcept { return info_.count; }
    bool empty() const noexcept { return info_.count == 0; }
    T* data() const noexcept { return static_cast<T*>(info_.data); }
    T& operator[](std::size_t i) const noexcept { return data()[i]; }
    // std::out_of_range past the end.
    T& at(std::size_t i) const {
        if (i >= size()) detail::throw_out_of_range(info_, i);
        return data()[i];
    }
    T* begin() const noexcept { return data(); }
    T* end() const noexcept { return data() + size(); }
#if defined(__cpp_lib_span)
    std::span<T> span() const noexcept { return {data(), size()}; }
#endif

    // Whether it was made with a lock, and the lock: shm::error (ENOLCK)
    // for one made without.
    bool has_lock() const noexcept { return info_.lock != nullptr; }
    RecursiveMutex& get_lock() const {
        if (!info_.lock) detail::throw_no_lock(info_);
        return *info_.lock;
    }

    // Atomic read-modify-write of element i (integral T), without the lock:
    // atomic with respect to every other atomic operation on it, not to
    // plain writes made meanwhile under the lock. std::out_of_range past
    // the end. Returns the value before.
    template <class U = T, std::enable_if_t<detail::atomic_arithmetic_v<U>, int> = 0>
    T fetch_add(std::size_t i, T delta) const {
        return detail::atomic_fetch_add(&at(i), delta);
    }
    template <class U = T, std::enable_if_t<detail::atomic_arithmetic_v<U>, int> = 0>
    T fetch_sub(std::size_t i, T delta) const {
        return detail::atomic_fetch_sub(&at(i), delta);
    }

    const std::string& name() const noexcept { return info_.name; }
    // The type-erased view of the same array.
    const SharedArrayInfo& info() const noexcept { return info_; }

private:
    explicit SharedArray(SharedArrayInfo info) : info_(std::move(info)) {}
    static SharedArray make(Segment& seg, std::string_view name, std::size_t count, const T* values, bool with_lock,
                            detail::NamedOp op) {
        detail::ArrayRequest rq = detail::array_request<T>(detail::ArrayShape::array);
        rq.count = count;
        rq.with_lock = with_lock;
        rq.initial = values;
        rq.initial_bytes = values ? count * sizeof(T) : 0;
        return SharedArray(detail::attach_shared_array(seg, name, rq, op));
    }

    SharedArrayInfo info_;
};

// ---- SharedScalar<T> -------------------------------------------------------------

// One T in a segment (Python's multiprocessing.Value), with the same layout
// as a SharedArray of one element.
//
// load() and store() are one atomic access each (sequentially consistent)
// for T of 1, 2, 4 or 8 bytes, which covers every typecode's type: never
// torn, and they do not take the lock, so they never wait and never absorb
// a dead owner's report meant for whoever repairs under the lock. (Python's
// Value.value takes the lock for each access; a single aligned word needs
// none.) For a larger T they are plain copies: hold get_lock() around them
// when others may write at the same time. A read-modify-write that is not
// one of the atomic operations below (v = f(v)) needs the lock, as in
// Python: `with v.get_lock(): v.value += 1`.
template <class T>
class SharedScalar {
    static_assert(std::is_trivially_copyable_v<T>, "shm::SharedScalar<T>: T must be trivially copyable");
    static_assert(!std::is_const_v<T> && !std::is_volatile_v<T>, "shm::SharedScalar<T>: T must not be const or volatile");
    static_assert(alignof(T) <= 16, "shm::SharedScalar<T>: T must be aligned to at most 16 bytes");

public:
    using value_type = T;

    // Create it holding `initial` (shm::already_exists if the name is taken).
    static SharedScalar create(Segment& seg, std::string_view name, const T& initial = T(), bool with_lock = true) {
        return make(seg, name, initial, with_lock, detail::NamedOp::construct);
    }
    // Open it, creating it with `initial` if absent; an existing one keeps
    // its value and lock. It must hold T and be a scalar.
    static SharedScalar open_or_create(Segment& seg, std::string_view name, const T& initial = T(),
                                       bool with_lock = true) {
        return make(seg, name, initial, with_lock, detail::NamedOp::find_or_construct);
    }
    // shm::not_found if absent; shm::type_mismatch if it holds another type
    // or is a SharedArray; shm::corrupted if it is damaged.
    static SharedScalar open(Segment& seg, std::string_view name) {
        return SharedScalar(detail::attach_shared_array(
            seg, name, detail::array_request<T>(detail::ArrayShape::scalar), detail::NamedOp::find));
    }

    T load() const noexcept {
        if constexpr (detail::atomic_sized_v<T>) {
            return detail::atomic_load(data());
        } else {
            T v;
            std::memcpy(static_cast<void*>(&v), data(), sizeof(T));
            return v;
        }
    }
    void store(const T& v) const noexcept {
        if constexpr (detail::atomic_sized_v<T>)
            detail::atomic_store(data(), v);
        else
            std::memcpy(static_cast<void*>(data()), &v, sizeof(T));
    }
    // Atomic operations, without the lock (T of 1, 2, 4 or 8 bytes; the
    // arithmetic ones for integral T but bool). Each returns the value before.
    template <class U = T, std::enable_if_t<detail::atomic_sized_v<U>, int> = 0>
    T exchange(const T& v) const noexcept {
        return detail::atomic_exchange(data(), v);
    }
    // Stores `desired` if the value is `expected` (compared as bytes);
    // otherwise loads the value into `expected`.
    template <class U = T, std::enable_if_t<detail::atomic_sized_v<U>, int> = 0>
    bool compare_exchange(T& expected, const T& desired) const noexcept {
        return detail::atomic_compare_exchange(data(), expected, desired);
    }
    template <class U = T, std::enable_if_t<detail::atomic_arithmetic_v<U>, int> = 0>
    T fetch_add(T delta) const noexcept {
        return detail::atomic_fetch_add(data(), delta);
    }
    template <class U = T, std::enable_if_t<detail::atomic_arithmetic_v<U>, int> = 0>
    T fetch_sub(T delta) const noexcept {
        return detail::atomic_fetch_sub(data(), delta);
    }

    // The value in place, for plain access (under the lock).
    T* data() const noexcept { return static_cast<T*>(info_.data); }

    bool has_lock() const noexcept { return info_.lock != nullptr; }
    // shm::error (ENOLCK) for one made without a lock.
    RecursiveMutex& get_lock() const {
        if (!info_.lock) detail::throw_no_lock(info_);
        return *info_.lock;
    }

    const std::string& name() const noexcept { return info_.name; }
    const SharedArrayInfo& info() const noexcept { return info_; }

private:
    explicit SharedScalar(SharedArrayInfo info) : info_(std::move(info)) {}
    static SharedScalar make(Segment& seg, std::string_view name, const T& initial, bool with_lock,
                             detail::NamedOp op) {
        detail::ArrayRequest rq = detail::array_request<T>(detail::ArrayShape::scalar);
        rq.count = 1;
        rq.with_lock = with_lock;
        rq.initial = &initial;
        rq.initial_bytes = sizeof(T);
        return SharedScalar(detail::attach_shared_array(seg, name, rq, op));
    }

    SharedArrayInfo info_;
};

}  // namespace shm
