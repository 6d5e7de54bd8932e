// shm::Segment — a named, self-describing region of shared memory.
//
// A segment is the file "<shm dir>/libshm.<name>" (see names.hpp). It starts
// with a versioned header (magic, layout version, sizes, creator pid + start
// time + uid, creation time, flags, the attach table), followed by a heap
// from which named objects are placed.
//
// Lifetime: a Segment handle attaches the calling process: it takes a slot in
// the attach table and holds an open-file-description lock on it, which the
// kernel drops when the process dies. The segment lives while a live process
// is attached or while it is persistent; the last handle to detach unlinks it.
// Processes that die without detaching are cleared by reap_dead() (shmctl gc,
// shmd), and a name whose users all died can be created again at once.
//
// Handles: the attachment (mapping and slot) of a Segment handle is shared
// with every handle made from it — Dict, List, Queue, the nested containers
// and Values got from those, a Queue::Reservation — and each of them keeps
// it alive. It is given up when the last of them goes, in any order: they
// may outlive the Segment handle, and the Segment handle may be moved (a
// std::vector<Segment> growing, a return from a function) while they are in
// use. References and pointers into the segment (construct(), find(),
// allocate(), base()) point into this attachment's mapping: they are valid
// while some holder of the attachment lives, and not after.
//
// fork(): the child gets its own slot automatically (before fork() returns in
// the child); the parent's slot is never released by anything the child does.
//
// Thread safety: a Segment handle may be used from several threads; object
// construction, lookup and heap allocation are serialised by the segment's
// robust heap lock.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <tuple>
#include <typeinfo>
#include <utility>
#include <vector>

#include "shm/error.hpp"
#include "shm/hash.hpp"
#include "shm/names.hpp"
#include "shm/object_kind.hpp"

namespace shm {

// Layout version of the segment header written by this library. Segments of
// any other version are refused with shm::version_mismatch.
// Change a field's width, order or meaning: bump the layout version.
inline constexpr std::uint32_t kLayoutVersion = 3;

namespace detail {
// A segment's attachment in this process: mapping, descriptor and attach
// slot, shared by a Segment handle and the handles made from it (private).
struct SegmentState;
struct SegmentAccess;  // the library's own entry points (private)
// What a named-object operation may do when the name is taken or free.
enum class NamedOp { find, construct, find_or_construct };
// The raw heap of the segment mapped at `base` (a Segment's base() in this
// process), for shm::allocator (allocator.hpp): its copies live inside the
// segment, so they hold no Segment handle, only where the segment is. As
// Segment::allocate() and deallocate(); the caller keeps an attachment of
// the segment alive meanwhile. Both refuse (shm::error, EDEADLK) a call made
// while the calling thread holds the segment's heap lock: from a
// constructor run by construct() or a destructor run by destroy().
void* heap_allocate(void* base, std::size_t bytes, std::size_t align);
void heap_deallocate(void* base, void* p);
}  // namespace detail

struct SegmentOptions {
    mode_t mode = 0600;              // file mode at creation
    bool persistent = false;         // survive the last detach
    std::uint32_t max_attach = 128;  // attach table capacity (1..4096)
    // Bound on waiting for a racing creator to finish initialising. Queueing
    // behind others who attach to or detach from a ready segment does not
    // count: attaching to a ready segment never times out.
    std::chrono::milliseconds timeout{10000};
};

// One slot of the attach table, as seen by attachments().
struct AttachInfo {
    std::uint32_t slot = 0;
    std::int32_t pid = 0;
    std::uint64_t start_time = 0;  // /proc/<pid>/stat field 22, clock ticks
    std::uint32_t uid = 0;
    std::int64_t attached_at_ns = 0;  // CLOCK_REALTIME
    bool alive = false;              // the slot's kernel lock is held
    bool self = false;               // this handle's own slot
};

struct ObjectInfo {
    std::string name;
    ObjectKind kind = ObjectKind::raw;
    std::uint64_t offset = 0;  // from the segment's base
    std::uint64_t size = 0;
};

// Result of walking the heap and the object directory.
struct HeapReport {
    bool ok = true;
    std::vector<std::string> problems;  // empty when ok
    std::uint64_t heap_bytes = 0;
    std::uint64_t used_bytes = 0;  // including per-block overhead
    std::uint64_t free_bytes = 0;
    std::uint64_t used_blocks = 0;
    std::uint64_t free_blocks = 0;
    std::uint64_t largest_free = 0;
    std::uint64_t objects = 0;
    bool recovered = false;  // verify() found a dead heap-lock owner and rolled back
};

struct ReapReport {
    std::uint32_t dead_slots_cleared = 0;
    std::uint32_t live_slots = 0;
    bool unlinked = false;
    std::uint64_t bytes = 0;  // file size (what unlinking frees)
    bool exists = false;      // there was such a file
    bool busy = false;        // its lock stayed held past the time-out: nothing was done
};

class Segment {
public:
    // Create a new segment of `size` bytes in all (header and attach table
    // included). A name whose previous users all died is replaced; a name in
    // use (live attachers or persistent) throws shm::already_exists.
    static Segment create(std::string_view name, std::size_t size, const SegmentOptions& opt = {});
    // Open an existing segment; shm::not_found if there is none.
    static Segment open(std::string_view name, const SegmentOptions& opt = {});
    // Open the segment, creating it if needed. When many processes race,
    // exactly one creates; the others wait (bounded by opt.timeout) until it
    // is ready. An existing segment keeps its size; `size` is only used to
    // create. created() tells which happened.
    static Segment open_or_create(std::string_view name, std::size_t size,
                                  const SegmentOptions& opt = {});
    // Remove the name now. Attached processes keep their mapping; the memory
    // is freed when the last of them detaches. Returns false if there was no
    // such segment.
    static bool unlink(std::string_view name);
    // As unlink(), but only if no live process is attached, decided under the
    // segment's lock (so a process attaching meanwhile is never cut off).
    // Returns false if there was no such segment; if live processes are
    // attached it leaves the segment and puts their pids in *live_pids.
    static bool unlink_if_unused(std::string_view name, std::vector<std::int32_t>* live_pids);
    // Clear the attach slots of dead processes and unlink the segment if no
    // live process is attached and it is not persistent. Does not attach.
    static ReapReport reap_dead(std::string_view name);
    // As above, but give up (report.busy) if the segment's lock stays held
    // by others for longer than `lock_timeout` (for a daemon that must not hang).
    static ReapReport reap_dead(std::string_view name, std::chrono::milliseconds lock_timeout);

    Segment(Segment&&) noexcept;
    Segment& operator=(Segment&&) noexcept;
    ~Segment();

    // Drop this handle's hold on its attachment. The slot is given up (and
    // the segment unlinked if this process was its last live user and it is
    // not persistent) when the last holder goes: this handle, or a Dict,
    // List or Queue made from it, which keep working until then. Pointers
    // into the segment become invalid with the last holder. Called by the
    // destructor; idempotent. A detached handle keeps its name(), path()
    // and created() (a moved-from one is empty); what needs the segment
    // throws shm::error (EBADF) on either.
    void detach() noexcept;
    bool attached() const noexcept;  // this handle holds a usable attachment
    // A share in this handle's attachment, for references into the segment
    // kept apart from any handle (the Python binding's locks keep one): it
    // holds the attachment as a Dict, List or Queue made from this segment
    // does, so the mapping stays, whatever happens to this handle, until
    // the last holder goes. shm::error (EBADF) if this handle holds none.
    std::shared_ptr<const void> share() const;

    const std::string& name() const noexcept;
    std::string path() const;
    bool created() const noexcept;  // this handle initialised the segment
    std::size_t size() const noexcept;
    void* base() const noexcept;
    std::size_t free_memory() const;  // bytes free in the heap
    std::size_t used_memory() const;  // bytes allocated in the heap, with overhead
    bool persistent() const noexcept;
    void set_persistent(bool on);
    std::vector<AttachInfo> attachments() const;
    ReapReport reap_dead();
    std::uint32_t max_attach() const noexcept;

    // ---- named objects -------------------------------------------------
    // The references returned are into this attachment's mapping: valid
    // while this handle, or any handle made from it, lives.
    // Construct a T in the heap under `name`; shm::already_exists if taken.
    template <class T, class... Args>
    T& construct(std::string_view name, Args&&... args);
    // The object of that name, or nullptr; shm::type_mismatch if it was
    // constructed as another type.
    template <class T>
    T* find(std::string_view name);
    // find(), or construct if absent, atomically with respect to all
    // processes: exactly one constructs.
    template <class T, class... Args>
    T& find_or_construct(std::string_view name, Args&&... args);
    // Destroy the object and free its memory; false if there was none.
    template <class T>
    bool destroy(std::string_view name);
    std::vector<ObjectInfo> objects() const;

    // ---- raw heap ------------------------------------------------------
    // `align` must be a power of two, at most 4096. Throws
    // shm::out_of_space naming the segment, the request and what is free.
    void* allocate(std::size_t bytes, std::size_t align = 16);
    void deallocate(void* p);
    // Walk the heap and the object directory; report any inconsistency.
    HeapReport verify() const;

    // Offsets are how pointers are stored in shared memory.
    std::uint64_t offset_of(const void* p) const;
    void* at_offset(std::uint64_t off) const;

private:
    friend struct detail::SegmentAccess;
    explicit Segment(std::shared_ptr<detail::SegmentState> state);
    // The attachment; shm::error (EBADF) if this handle holds none (moved
    // from, detached) or lost it (a fork child that could not take a slot).
    detail::SegmentState& attachment() const;

    using Init = void (*)(void* where, void* ctx);
    using Fini = void (*)(void* where);
    // Returns the object, or nullptr if `op` is find and there is none;
    // *constructed says whether this call constructed it. An object found
    // must have exactly `size` bytes, unless found_size is given (a block of
    // variable size): then it gets the size, which the caller checks.
    void* named_op(std::string_view name, std::uint64_t type_key, const char* type_name,
                   ObjectKind kind, std::size_t size, std::size_t align, Init init, void* ctx,
                   detail::NamedOp op, bool* constructed, std::size_t* found_size = nullptr);
    bool named_destroy(std::string_view name, std::uint64_t type_key, const char* type_name,
                       Fini fini);

    // construct() and find_or_construct(): `op` says which.
    template <class T, class... Args>
    T& construct_as(detail::NamedOp op, std::string_view name, Args&&... args);

    template <class T>
    static std::uint64_t type_key() noexcept;

    std::shared_ptr<detail::SegmentState> state_;  // null once detached or moved from
    std::string name_;
    std::string path_;
    bool created_ = false;
};

// ---- implementation of the templates -----------------------------------

template <class T>
std::uint64_t Segment::type_key() noexcept {
    // FNV-1a over the mangled name, then the size: stable across processes
    // and builds of the same type with the same compiler ABI.
    return detail::fnv1a_mix(detail::fnv1a(typeid(T).name()), sizeof(T));
}

template <class T, class... Args>
T& Segment::construct_as(detail::NamedOp op, std::string_view name, Args&&... args) {
    auto tup = std::forward_as_tuple(std::forward<Args>(args)...);
    using Tup = decltype(tup);
    Init init = [](void* where, void* ctx) {
        std::apply([where](auto&&... a) { ::new (where) T(std::forward<decltype(a)>(a)...); },
                   std::move(*static_cast<Tup*>(ctx)));
    };
    bool constructed = false;
    void* p = named_op(name, type_key<T>(), typeid(T).name(), object_kind_of<T>::value, sizeof(T),
                       alignof(T), init, &tup, op, &constructed);
    return *static_cast<T*>(p);
}

template <class T, class... Args>
T& Segment::construct(std::string_view name, Args&&... args) {
    return construct_as<T>(detail::NamedOp::construct, name, std::forward<Args>(args)...);
}

template <class T>
T* Segment::find(std::string_view name) {
    bool constructed = false;
    return static_cast<T*>(named_op(name, type_key<T>(), typeid(T).name(),
                                    object_kind_of<T>::value, sizeof(T), alignof(T), nullptr,
                                    nullptr, detail::NamedOp::find, &constructed));
}

template <class T, class... Args>
T& Segment::find_or_construct(std::string_view name, Args&&... args) {
    return construct_as<T>(detail::NamedOp::find_or_construct, name, std::forward<Args>(args)...);
}

template <class T>
bool Segment::destroy(std::string_view name) {
    Fini fini = nullptr;
    if constexpr (!std::is_trivially_destructible_v<T>) {
        fini = [](void* where) { static_cast<T*>(where)->~T(); };
    }
    return named_destroy(name, type_key<T>(), typeid(T).name(), fini);
}

}  // namespace shm
