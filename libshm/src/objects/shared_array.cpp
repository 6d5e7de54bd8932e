// SharedArray and SharedScalar (shm/shared_array.hpp): the element types,
// creating and opening the one shared layout (shared_array_layout.hpp), and
// the checks of a block found in a segment.
//
// Creation is one heap transaction of the segment (Segment::named_op): the
// block is allocated, filled (header, lock, zeroed elements, the
// initializer, magic last) and linked into the directory, and a process
// killed at any point of it leaves no trace: the next user of the heap
// rolls the transaction back. Everything that can refuse a creation (the
// element type, the count, the size, the initializer) is checked before the
// transaction starts, so a refusal changes nothing at all.
#include "objects/shared_array_layout.hpp"

#include <pthread.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <thread>

#include "platform/platform.hpp"
#include "shm/segment.hpp"
#include "store/lock_holder.hpp"
#include "store/segment_access.hpp"

namespace shm {

// ---- element types ----------------------------------------------------------------

namespace {

struct TypeRow {
    ElementType type;
    std::size_t size;
    const char* name;
};
constexpr TypeRow kTypes[] = {
    {ElementType::c_char, 1, "c_char"},       {ElementType::c_byte, 1, "c_byte"},
    {ElementType::c_ubyte, 1, "c_ubyte"},     {ElementType::c_short, 2, "c_short"},
    {ElementType::c_ushort, 2, "c_ushort"},   {ElementType::c_int, 4, "c_int"},
    {ElementType::c_uint, 4, "c_uint"},       {ElementType::c_long, 8, "c_long"},
    {ElementType::c_ulong, 8, "c_ulong"},     {ElementType::c_longlong, 8, "c_longlong"},
    {ElementType::c_ulonglong, 8, "c_ulonglong"}, {ElementType::c_float, 4, "c_float"},
    {ElementType::c_double, 8, "c_double"},   {ElementType::c_bool, 1, "c_bool"},
};

// Each typecode's C++ type has the size ctypes gives it on this platform.
static_assert(sizeof(char) == 1 && sizeof(short) == 2 && sizeof(int) == 4 && sizeof(long) == 8 &&
              sizeof(long long) == 8 && sizeof(float) == 4 && sizeof(double) == 8 && sizeof(bool) == 1,
              "the typecodes' sizes assume LP64 (64-bit Linux)");

const TypeRow* row_of(ElementType t) noexcept {
    for (const TypeRow& r : kTypes)
        if (r.type == t) return &r;
    return nullptr;
}

}  // namespace

std::optional<ElementType> from_typecode(char typecode) noexcept {
    for (const TypeRow& r : kTypes)
        if (static_cast<char>(r.type) == typecode) return r.type;
    return std::nullopt;
}

char typecode(ElementType t) noexcept { return row_of(t) ? static_cast<char>(t) : '\0'; }

std::size_t element_size(ElementType t) noexcept {
    const TypeRow* r = row_of(t);
    return r ? r->size : 0;
}

const char* to_string(ElementType t) noexcept {
    const TypeRow* r = row_of(t);
    return r ? r->name : "other";
}

namespace detail {

// ---- the layout's checks -------------------------------------------------------------

const char* header_problem(const SharedArrayHeader& h, std::uint64_t block_size) noexcept {
    if (block_size < sizeof(SharedArrayHeader)) return "its block is smaller than its header";
    if (h.magic != kSharedArrayMagic) return "bad magic";
    if ((h.flags & ~kKnownFlags) != 0 || h.reserved != 0) return "it has flags this libshm does not know";
    const auto type = static_cast<ElementType>(h.element_type);
    if (type == ElementType::other) {
        if (h.element_size == 0 || h.type_key == 0) return "its C++ element type has no size or no key";
    } else {
        const std::size_t size = element_size(type);
        if (size == 0) return "its element type is not one this libshm knows";
        if (h.element_size != size) return "its element size does not match its element type";
        if (h.type_key != 0) return "its element type has both a typecode and a C++ type key";
    }
    if ((h.flags & kScalar) && h.count != 1) return "it is a scalar of other than one element";
    const std::uint64_t data = data_offset(h.flags);
    if (block_size < data) return "its block is smaller than its header and lock";
    // Exactly: the directory records the size the creator asked for.
    const std::uint64_t room = block_size - data;
    if (h.count > room / h.element_size || h.count * h.element_size != room)
        return "its elements (count × element size) do not fill its block";
    return nullptr;
}

const char* lock_problem(const void* lock_bytes) noexcept {
    // The kind word of a fresh RecursiveMutex, so that it follows glibc
    // rather than a copy of its constants.
    static const int expected = [] {
        alignas(RecursiveMutex) unsigned char buf[sizeof(RecursiveMutex)];
        auto* m = ::new (buf) RecursiveMutex();
        const int kind = reinterpret_cast<const pthread_mutex_t*>(buf)->__data.__kind;
        m->~RecursiveMutex();
        return kind;
    }();
    if (static_cast<const pthread_mutex_t*>(lock_bytes)->__data.__kind != expected)
        return "its lock is not a libshm RecursiveMutex";
    return nullptr;
}

bool same_representation(ElementType a, ElementType b) noexcept {
    auto canonical = [](ElementType t) {
        if (t == ElementType::c_long) return ElementType::c_longlong;
        if (t == ElementType::c_ulong) return ElementType::c_ulonglong;
        return t;
    };
    return canonical(a) == canonical(b);
}

// ---- create and open -----------------------------------------------------------------

namespace {

const char* shape_name(bool scalar) { return scalar ? "shm::SharedScalar" : "shm::SharedArray"; }

std::string quoted(std::string_view name, const Segment& seg) {
    return "'" + std::string(name) + "' in segment '" + seg.name() + "'";
}

std::string type_text(ElementType t, std::uint64_t size, const char* cpp_name = nullptr) {
    if (t == ElementType::other)
        return std::string("a C++ type of ") + std::to_string(size) + " bytes" +
               (cpp_name && *cpp_name ? std::string(" (") + cpp_name + ")" : std::string());
    return std::string(to_string(t)) + " ('" + typecode(t) + "', " + std::to_string(size) + " bytes)";
}

struct CreateArgs {
    SharedArrayHeader header;
    const void* initial;
    std::size_t initial_bytes;
};

void init_block(void* where, void* ctx) {
    const auto* a = static_cast<const CreateArgs*>(ctx);
    char* base = static_cast<char*>(where);
    const std::uint64_t data = data_offset(a->header.flags);
    // Heap memory may hold what an earlier object left: zero all of it.
    std::memset(base, 0, data + a->header.count * a->header.element_size);
    auto* h = ::new (base) SharedArrayHeader(a->header);
    h->magic = 0;
    if (a->header.flags & kHasLock) ::new (base + kLockOffset) RecursiveMutex();
    if (a->initial_bytes) std::memcpy(base + data, a->initial, a->initial_bytes);
    // Last: seen by others only once the creating transaction commits.
    h->magic = kSharedArrayMagic;
}

// The header a creation asks for; throws (changing nothing) if it cannot be.
SharedArrayHeader header_for(const Segment& seg, std::string_view name, const ArrayRequest& rq) {
    const bool scalar = rq.shape == ArrayShape::scalar;
    const std::string what = std::string(shape_name(scalar)) + " " + quoted(name, seg);
    std::uint64_t esize;
    if (rq.type == ElementType::other) {
        if (rq.type_key == 0 || rq.element_size == 0)
            throw error(EINVAL, what + ": element type 'other' needs a C++ type: use shm::SharedArray<T>");
        if (rq.element_size > std::numeric_limits<std::uint32_t>::max())
            throw error(EINVAL, what + ": elements of " + std::to_string(rq.element_size) + " bytes are too large");
        esize = rq.element_size;
    } else {
        esize = element_size(rq.type);
        if (esize == 0)
            throw error(EINVAL, what + ": " + std::to_string(static_cast<unsigned>(rq.type)) +
                                    " is not an element type (a typecode such as 'i' or 'd')");
    }
    SharedArrayHeader h{};
    h.magic = kSharedArrayMagic;
    h.count = scalar ? 1 : rq.count;
    h.type_key = rq.type == ElementType::other ? rq.type_key : 0;
    h.element_size = static_cast<std::uint32_t>(esize);
    h.element_type = static_cast<std::uint8_t>(rq.type);
    h.flags = static_cast<std::uint8_t>((rq.with_lock ? kHasLock : 0) | (scalar ? kScalar : 0));
    const std::uint64_t data = data_offset(h.flags);
    const std::string elements = std::to_string(h.count) + " elements of " + type_text(rq.type, esize, rq.type_name);
    if (h.count > (std::numeric_limits<std::uint64_t>::max() - data) / esize)
        throw out_of_space("cannot create " + what + ": " + elements + " would take more than 2^64 bytes");
    const std::uint64_t bytes = data + h.count * esize;
    if (bytes > seg.size())
        throw out_of_space("cannot create " + what + ": " + elements + " take " + platform::human_bytes(bytes) +
                           ", more than the whole segment (" + platform::human_bytes(seg.size()) + ")");
    if (rq.initial_bytes > h.count * esize || (rq.initial_bytes && !rq.initial))
        throw error(EINVAL, what + ": an initializer of " + std::to_string(rq.initial_bytes) +
                                " bytes does not fit its " + std::to_string(h.count * esize) + " bytes of elements");
    return h;
}

// The embedded lock of a block found in the segment: is the holder its
// word names believable? (store/lock_holder.hpp) A word that names a thread
// of no attached process, and stays so for a moment, would make the first
// locker wait forever. The word is only looked at, never locked here: an
// acquisition that found its holder dead would take the report meant for
// whoever repairs under the lock. (A holder that has just died may be gone
// from /proc a moment before the kernel marks its lock: then the word
// changes within the moment.)
void check_lock_holder(const std::shared_ptr<SegmentState>& st, const RecursiveMutex& m, const std::string& what) {
    const auto* pm = reinterpret_cast<const pthread_mutex_t*>(&m);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
    pid_t tid = 0;
    while (store::lock_holder(st->fd, st->hdr(), pm, &tid) == store::LockHolder::unknown) {
        if (std::chrono::steady_clock::now() >= deadline)
            throw corrupted(what + " is corrupt: its lock names thread " + std::to_string(tid) +
                            ", of no process attached to the segment, and stays held");
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

}  // namespace

SharedArrayInfo attach_shared_array(Segment& seg, std::string_view name, const ArrayRequest& rq, NamedOp op) {
    std::shared_ptr<SegmentState> st = SegmentAccess::share(seg);  // EBADF first, for a detached handle
    const bool want_scalar = rq.shape == ArrayShape::scalar;
    CreateArgs args{};
    std::size_t bytes = sizeof(SharedArrayHeader);
    if (op != NamedOp::find) {
        args.header = header_for(seg, name, rq);
        args.initial = rq.initial;
        args.initial_bytes = rq.initial_bytes;
        bytes = static_cast<std::size_t>(data_offset(args.header.flags) + args.header.count * args.header.element_size);
    }
    bool constructed = false;
    std::size_t found = bytes;
    void* p = SegmentAccess::named_block<SharedArrayHeader>(
        seg, name, shape_name(want_scalar), want_scalar ? ObjectKind::shared_scalar : ObjectKind::shared_array, bytes,
        16, init_block, &args, op, &constructed, &found);
    if (!p) throw not_found(std::string(shape_name(want_scalar)) + " " + quoted(name, seg) + " does not exist");
    char* base = static_cast<char*>(p);
    SharedArrayHeader h = args.header;
    if (!constructed) {
        // A block of the segment: every field is checked before it is used,
        // and only the checked copy is used.
        const std::string what = "object " + quoted(name, seg);
        if (found < sizeof h) throw corrupted(what + " is corrupt: its block is smaller than its header");
        std::memcpy(&h, base, sizeof h);
        if (const char* why = header_problem(h, found)) throw corrupted(what + " is corrupt: " + why);
        if (h.flags & kHasLock) {
            if (const char* why = lock_problem(base + kLockOffset)) throw corrupted(what + " is corrupt: " + why);
            check_lock_holder(st, *reinterpret_cast<RecursiveMutex*>(base + kLockOffset), what);
        }
        const bool is_scalar = (h.flags & kScalar) != 0;
        if (rq.shape != ArrayShape::any && is_scalar != want_scalar)
            throw type_mismatch(what + " is a " + shape_name(is_scalar) + ", not a " + shape_name(want_scalar));
        const auto type = static_cast<ElementType>(h.element_type);
        if (rq.check_type) {
            const bool same = rq.type == ElementType::other
                                  ? type == ElementType::other && h.type_key == rq.type_key &&
                                        h.element_size == rq.element_size
                                  : same_representation(type, rq.type);
            if (!same)
                throw type_mismatch(what + " holds " + type_text(type, h.element_size) + ", not " +
                                    type_text(rq.type, rq.type == ElementType::other ? rq.element_size
                                                                                      : element_size(rq.type),
                                              rq.type_name));
        }
    }
    SharedArrayInfo info;
    info.name = std::string(name);
    info.type = static_cast<ElementType>(h.element_type);
    info.element_size = h.element_size;
    info.count = static_cast<std::size_t>(h.count);
    info.scalar = (h.flags & kScalar) != 0;
    info.data = base + data_offset(h.flags);
    info.lock = (h.flags & kHasLock) ? reinterpret_cast<RecursiveMutex*>(base + kLockOffset) : nullptr;
    info.attachment = std::move(st);
    return info;
}

void throw_no_lock(const SharedArrayInfo& info) {
    throw error(ENOLCK, std::string(shape_name(info.scalar)) + " '" + info.name +
                            "' was created without a lock (lock=False): it has no get_lock()");
}

void throw_out_of_range(const SharedArrayInfo& info, std::size_t i) {
    throw std::out_of_range(std::string(shape_name(info.scalar)) + " '" + info.name + "': index " +
                            std::to_string(i) + " is out of range (size " + std::to_string(info.count) + ")");
}

}  // namespace detail

// ---- the type-erased functions ----------------------------------------------------------

namespace {
detail::ArrayRequest erased(detail::ArrayShape shape, ElementType type, std::size_t count, bool with_lock,
                            const void* initial, std::size_t initial_bytes) {
    detail::ArrayRequest rq;
    rq.type = type;
    rq.element_size = element_size(type);
    rq.shape = shape;
    rq.check_type = true;
    rq.count = count;
    rq.with_lock = with_lock;
    rq.initial = initial;
    rq.initial_bytes = initial_bytes;
    return rq;
}
}  // namespace

SharedArrayInfo create_shared_array(Segment& seg, std::string_view name, ElementType type, std::size_t count,
                                    bool with_lock, const void* initial, std::size_t initial_bytes) {
    return detail::attach_shared_array(
        seg, name, erased(detail::ArrayShape::array, type, count, with_lock, initial, initial_bytes),
        detail::NamedOp::construct);
}

SharedArrayInfo open_or_create_shared_array(Segment& seg, std::string_view name, ElementType type, std::size_t count,
                                            bool with_lock, const void* initial, std::size_t initial_bytes) {
    return detail::attach_shared_array(
        seg, name, erased(detail::ArrayShape::array, type, count, with_lock, initial, initial_bytes),
        detail::NamedOp::find_or_construct);
}

SharedArrayInfo create_shared_scalar(Segment& seg, std::string_view name, ElementType type, bool with_lock,
                                     const void* initial, std::size_t initial_bytes) {
    return detail::attach_shared_array(
        seg, name, erased(detail::ArrayShape::scalar, type, 1, with_lock, initial, initial_bytes),
        detail::NamedOp::construct);
}

SharedArrayInfo open_or_create_shared_scalar(Segment& seg, std::string_view name, ElementType type, bool with_lock,
                                             const void* initial, std::size_t initial_bytes) {
    return detail::attach_shared_array(
        seg, name, erased(detail::ArrayShape::scalar, type, 1, with_lock, initial, initial_bytes),
        detail::NamedOp::find_or_construct);
}

SharedArrayInfo open_shared_array(Segment& seg, std::string_view name) {
    return detail::attach_shared_array(seg, name, detail::ArrayRequest{}, detail::NamedOp::find);
}

bool destroy_shared_array(Segment& seg, std::string_view name) {
    std::optional<SharedArrayInfo> info;
    try {
        info = open_shared_array(seg, name);
    } catch (const not_found&) {
        return false;
    }
    // A lock someone holds would stay on its holder's robust list, which
    // the kernel walks (and writes to) when the holder dies: freeing its
    // memory under it would let that write land in whatever is placed there
    // next.
    if (info->lock) {
        const auto* pm = reinterpret_cast<const pthread_mutex_t*>(info->lock);
        const unsigned word = __atomic_load_n(reinterpret_cast<const unsigned*>(&pm->__data.__lock), __ATOMIC_ACQUIRE);
        if ((word & 0x3fffffffu) != 0)  // FUTEX_TID_MASK: held
            throw error(EBUSY, std::string(detail::shape_name(info->scalar)) + " " + detail::quoted(name, seg) +
                                   " cannot be destroyed: its lock is held (by pid " +
                                   std::to_string(info->lock->owner_pid()) + ")");
    }
    // The lock needs no destructor: glibc's only marks a mutex destroyed.
    return detail::SegmentAccess::named_destroy<detail::SharedArrayHeader>(seg, name, detail::shape_name(info->scalar),
                                                                            nullptr);
}

}  // namespace shm
