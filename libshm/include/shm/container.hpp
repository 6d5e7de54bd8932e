// shm::Dict and shm::List — Manager().dict()/list() without the server.
//
// Both live in a Segment's heap. Every operation runs under the segment's
// robust heap lock as one journaled transaction: a process killed at any
// instruction inside any operation (allocator included) leaves the
// container and the segment as they were before the operation or as after
// it, never in between, and readers never see a torn value. The lock is the
// segment's (one per segment), so all containers of a segment share it.
//
// Values (shm::Value) are null, bool, int64, double, string, bytes, or a
// nested List/Dict. A Value read from a container is a process-local copy;
// a nested container comes back as a handle to the shared one, so changing
// it is seen by every process. Store a new nested container with
// Value::new_list() / Value::new_dict(); storing a handle stores a copy of
// that container (a container has exactly one place). pop() of a nested
// container returns a copy of it (Value::new_list/new_dict form).
//
// Handles (Dict, List, and the nested ones a Value holds) share the
// attachment of the Segment handle they were made from and keep it alive:
// they may outlive that Segment handle, which may also be moved meanwhile;
// the segment is detached when the last of them goes (segment.hpp).
//
// Limits: keys and string/bytes values up to the free heap space; item count
// up to what the heap holds (tables grow by doubling); one operation, such as
// extend() with 10,000 strings or update() from a 100,000-item mapping, up to
// the free heap too, committed atomically. A refused operation (out of space,
// wrong type, missing key, index out of range, an exception from fn) throws
// and changes nothing. clear() and the removal of a nested container are O(1)
// here; their memory is freed a little at a time by the following operations.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "shm/error.hpp"
#include "shm/object_kind.hpp"

namespace shm {

class Segment;
class Dict;
class List;

namespace detail {
struct SegmentState;  // a segment's attachment, shared by handles (segment.hpp)
struct NewContainer;  // the items of a new nested container (private)
struct ValueAccess;   // the library's own entry points into Value (private)
}  // namespace detail

// A missing key.
class key_error : public error {
public:
    explicit key_error(const std::string& what) : error(ENOENT, what) {}
};

// A list index out of range.
class index_error : public error {
public:
    explicit index_error(const std::string& what) : error(ERANGE, what) {}
};

// A Value asked for as a type it does not hold.
class value_type_error : public error {
public:
    explicit value_type_error(const std::string& what) : error(EINVAL, what) {}
};

// A handle to a container in a segment (what Dict and List hold). It keeps
// the segment's attachment alive.
struct ContainerRef {
    std::shared_ptr<detail::SegmentState> seg;
    std::uint64_t offset = 0;  // the container's header in the heap
};

class Value {
public:
    enum class Type : std::uint8_t { null = 0, boolean = 1, integer = 2, real = 3, string = 4, bytes = 5, list = 6, dict = 7 };

    Value() = default;
    Value(std::nullptr_t) {}
    Value(bool b) : type_(Type::boolean), i_(b) {}
    template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
    Value(T v) : type_(Type::integer), i_(static_cast<std::int64_t>(v)) {
        if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(std::int64_t))
            if (v > static_cast<T>(INT64_MAX)) throw value_type_error("shm::Value: unsigned value above INT64_MAX");
    }
    Value(double d) : type_(Type::real), d_(d) {}
    Value(float d) : type_(Type::real), d_(d) {}
    Value(const char* s) : type_(Type::string), s_(s) {}
    Value(std::string s) : type_(Type::string), s_(std::move(s)) {}
    Value(std::string_view s) : type_(Type::string), s_(s) {}
    Value(const Dict& d);
    Value(const List& l);

    static Value bytes(std::string_view b) {
        Value v;
        v.type_ = Type::bytes;
        v.s_ = std::string(b);
        return v;
    }
    // A new, shared nested container with these items, created when stored.
    static Value new_list(std::vector<Value> items = {});
    static Value new_dict(std::vector<std::pair<std::string, Value>> items = {});

    Type type() const noexcept { return type_; }
    const char* type_name() const noexcept;
    bool is_null() const noexcept { return type_ == Type::null; }

    // Conversions; the wrong type throws shm::value_type_error naming both.
    // as<double>() accepts an integer; as<int>() etc. check the range.
    template <class T>
    T as() const;

    bool as_bool() const;
    std::int64_t as_int() const;
    double as_double() const;
    const std::string& as_string() const;  // string
    const std::string& as_bytes() const;   // bytes
    Dict as_dict() const;
    List as_list() const;

    // Equality as Python compares: by value; int and double compare
    // numerically; nested containers by identity.
    bool operator==(const Value& o) const;
    bool operator!=(const Value& o) const { return !(*this == o); }

    std::string repr() const;  // Python-like text, for messages and printing

    // A new nested container: one made by new_list()/new_dict(), or a copy
    // that pop() returned, not stored anywhere. Its items are
    // new_list_items() or new_dict_items() (shm::value_type_error for any
    // other value). A list or dict that is not new is a handle to a stored
    // container: as_list()/as_dict().
    bool is_new_container() const noexcept { return pending_ != nullptr; }
    const std::vector<Value>& new_list_items() const;
    const std::vector<std::pair<std::string, Value>>& new_dict_items() const;
    // The stored container a list or dict handle refers to.
    const ContainerRef& ref() const noexcept { return ref_; }

private:
    friend struct detail::ValueAccess;
    [[noreturn]] void wrong(const char* wanted) const;

    Type type_ = Type::null;
    std::int64_t i_ = 0;
    double d_ = 0;
    std::string s_;
    ContainerRef ref_;
    std::shared_ptr<const detail::NewContainer> pending_;
};

namespace detail {
// The named objects that root a Dict or a List in a segment's directory:
// the offset of the container's header, 0 until it is first opened.
struct DictRoot {
    std::atomic<std::uint64_t> header{0};
};
struct ListRoot {
    std::atomic<std::uint64_t> header{0};
};
}  // namespace detail

template <> struct object_kind_of<detail::DictRoot> { static constexpr ObjectKind value = ObjectKind::dict; };
template <> struct object_kind_of<detail::ListRoot> { static constexpr ObjectKind value = ObjectKind::list; };

class Dict {
public:
    // The dict named `name` in seg, created empty if absent.
    static Dict open_or_create(Segment& seg, std::string_view name);
    // shm::not_found if there is no dict of that name.
    static Dict open(Segment& seg, std::string_view name);

    Value get(std::string_view key) const;  // shm::key_error if missing
    Value at(std::string_view key) const { return get(key); }
    Value get(std::string_view key, const Value& dflt) const;
    template <class T>
    T get(std::string_view key) const { return get(key).as<T>(); }
    std::optional<Value> find(std::string_view key) const;

    void set(std::string_view key, const Value& v);
    bool erase(std::string_view key);      // false if missing
    Value pop(std::string_view key);       // shm::key_error if missing
    Value pop(std::string_view key, const Value& dflt);
    bool contains(std::string_view key) const;
    std::size_t size() const;
    bool empty() const { return size() == 0; }
    void clear();
    // Snapshots, each taken under the lock.
    std::vector<std::string> keys() const;
    std::vector<Value> values() const;
    std::vector<std::pair<std::string, Value>> items() const;
    void update(const std::vector<std::pair<std::string, Value>>& items);
    void update(const Dict& other);
    Value setdefault(std::string_view key, const Value& dflt);
    // Atomic read-modify-write: fn gets the current value (null if missing)
    // and its result is stored, all under the lock. fn must not use other
    // containers or objects of the same segment (that would self-deadlock:
    // shm::lock_error).
    Value update(std::string_view key, const std::function<Value(const Value&)>& fn);
    // d[key] += n, atomically; a missing key counts from 0. Returns the new
    // value. Integer increments need an int value (overflow is an error);
    // a double increment turns an int into a double.
    std::int64_t increment(std::string_view key) { return increment_int(key, 1); }
    template <class N, std::enable_if_t<std::is_integral_v<N> && !std::is_same_v<N, bool>, int> = 0>
    std::int64_t increment(std::string_view key, N n) {
        return increment_int(key, static_cast<std::int64_t>(n));
    }
    double increment(std::string_view key, double n);

    // Walk this container (and nested ones) and the heap.
    std::vector<std::string> verify() const;
    const ContainerRef& ref() const noexcept { return ref_; }
    explicit Dict(ContainerRef r) : ref_(std::move(r)) {}

private:
    std::int64_t increment_int(std::string_view key, std::int64_t n);
    ContainerRef ref_;
};

class List {
public:
    static List open_or_create(Segment& seg, std::string_view name);
    static List open(Segment& seg, std::string_view name);

    void append(const Value& v);
    void extend(const std::vector<Value>& vs);
    void insert(std::int64_t index, const Value& v);  // Python semantics: clamps
    Value get(std::int64_t index) const;               // negative from the end; shm::index_error
    Value at(std::int64_t index) const { return get(index); }
    template <class T>
    T get(std::int64_t index) const { return get(index).as<T>(); }
    void set(std::int64_t index, const Value& v);
    Value pop(std::int64_t index = -1);
    void remove(const Value& v);  // first equal item; shm::error (ENOENT) if none
    std::size_t index(const Value& v) const;  // shm::error (ENOENT) if none
    std::size_t count(const Value& v) const;
    std::size_t size() const;
    bool empty() const { return size() == 0; }
    void clear();
    std::vector<Value> snapshot() const;  // the whole list, under the lock
    // Python's l[start:stop] (negative indexes from the end, clamped).
    std::vector<Value> slice(std::int64_t start, std::int64_t stop) const;
    // Atomically replace the item at index with fn(item); returns it.
    Value update(std::int64_t index, const std::function<Value(const Value&)>& fn);
    // Replace every item with `items`, in one step: a crash or a refusal
    // (out of space) leaves the old list, whole.
    void assign(const std::vector<Value>& items);
    // As assign(), but only while the list's items are still `expected`
    // (compared as == does: a nested container by identity), typically a
    // snapshot() the new items were computed from: a compare-and-set of the
    // whole list. False, changing nothing, if it changed in between.
    bool assign_if(const std::vector<Value>& expected, const std::vector<Value>& items);

    std::vector<std::string> verify() const;
    const ContainerRef& ref() const noexcept { return ref_; }
    explicit List(ContainerRef r) : ref_(std::move(r)) {}

private:
    ContainerRef ref_;
};

// ---- Value conversions ---------------------------------------------------

template <class T>
T Value::as() const {
    if constexpr (std::is_same_v<T, Value>) {
        return *this;
    } else if constexpr (std::is_same_v<T, bool>) {
        return as_bool();
    } else if constexpr (std::is_integral_v<T>) {
        std::int64_t v = as_int();
        if constexpr (std::is_unsigned_v<T>) {
            if (v < 0 || static_cast<std::uint64_t>(v) > static_cast<std::uint64_t>(std::numeric_limits<T>::max()))
                throw value_type_error("shm::Value: " + repr() + " does not fit the requested unsigned type");
        } else {
            if (v < static_cast<std::int64_t>(std::numeric_limits<T>::min()) ||
                v > static_cast<std::int64_t>(std::numeric_limits<T>::max()))
                throw value_type_error("shm::Value: " + repr() + " does not fit the requested integer type");
        }
        return static_cast<T>(v);
    } else if constexpr (std::is_floating_point_v<T>) {
        return static_cast<T>(as_double());
    } else if constexpr (std::is_same_v<T, std::string>) {
        return type_ == Type::bytes ? as_bytes() : as_string();
    } else if constexpr (std::is_same_v<T, Dict>) {
        return as_dict();
    } else if constexpr (std::is_same_v<T, List>) {
        return as_list();
    } else {
        static_assert(sizeof(T) == 0, "shm::Value::as<T>: unsupported type");
    }
}

}  // namespace shm
