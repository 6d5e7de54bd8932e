// Read-only decoding of the synchronisation objects (inspect.hpp): a copy
// of the object's bytes read through the classes' own const accessors, and
// the robust mutex's lock word as glibc and the kernel keep it.
#include <linux/futex.h>
#include <pthread.h>

#include <type_traits>

#include "objects/inspect.hpp"
#include "shm/mutex.hpp"
#include "shm/sync.hpp"

namespace shm::inspect {

namespace {

// The pthread mutex is the first member of shm::Mutex and shm::RecursiveMutex.
static_assert(std::is_standard_layout_v<Mutex>);
static_assert(std::is_standard_layout_v<RecursiveMutex>);

// A copy of an object of type T, aligned for it. Each field the accessors
// read is one aligned word: a value may be a moment old, never torn.
template <class T>
struct Copy {
    alignas(T) unsigned char bytes[sizeof(T)];
    const T& get() const { return *reinterpret_cast<const T*>(bytes); }
};

template <class T>
std::string copy_of(const ReadAt& read, const Place& at, Copy<T>& c) {
    if (at.size != sizeof(T))
        return "size " + std::to_string(at.size) + " bytes, this libshm's " + to_string(at.kind) + " is " +
               std::to_string(sizeof(T)) + ": not interpreted";
    if (!read(at.offset, sizeof(T), c.bytes)) return "could not be read";
    return {};
}

template <class M>
LockWord lock_of(const M& m, bool recursive) {
    // glibc keeps the holder's tid in the futex word; the kernel sets
    // FUTEX_OWNER_DIED there (and clears the tid) when the holder dies
    // holding it: proof of death, no pid guess.
    const auto* pm = reinterpret_cast<const pthread_mutex_t*>(&m);
    const unsigned word = static_cast<unsigned>(pm->__data.__lock);
    LockWord l;
    l.owner_tid = static_cast<pid_t>(word & FUTEX_TID_MASK);
    l.owner_died = l.owner_tid == 0 && (word & FUTEX_OWNER_DIED) != 0;
    l.owner_pid = m.owner_pid();
    l.recoveries = m.recoveries();
    if (recursive && l.owner_tid != 0) l.depth = pm->__data.__count;
    return l;
}

template <class T, class Fill>
std::string decode(const ReadAt& read, const Place& at, Fill fill) {
    Copy<T> c;
    std::string problem = copy_of(read, at, c);
    if (problem.empty()) fill(c.get());
    return problem;
}

}  // namespace

LockWord lock_word(const void* bytes, bool recursive) noexcept {
    if (recursive) return lock_of(*static_cast<const RecursiveMutex*>(bytes), true);
    return lock_of(*static_cast<const Mutex*>(bytes), false);
}

bool is_sync_kind(ObjectKind kind) noexcept {
    switch (kind) {
        case ObjectKind::mutex:
        case ObjectKind::recursive_mutex:
        case ObjectKind::semaphore:
        case ObjectKind::bounded_semaphore:
        case ObjectKind::condition:
        case ObjectKind::event:
        case ObjectKind::barrier: return true;
        default: return false;
    }
}

std::string sync_state(const ReadAt& read, const Place& at, SyncState& s) {
    switch (at.kind) {
        case ObjectKind::mutex:
            return decode<Mutex>(read, at, [&](const Mutex& m) { s.lock = lock_of(m, false); });
        case ObjectKind::recursive_mutex:
            return decode<RecursiveMutex>(read, at, [&](const RecursiveMutex& m) { s.lock = lock_of(m, true); });
        case ObjectKind::semaphore:
            return decode<Semaphore>(read, at, [&](const Semaphore& m) {
                s.value = m.value();
                s.waiters = m.waiters();
            });
        case ObjectKind::bounded_semaphore:
            return decode<BoundedSemaphore>(read, at, [&](const BoundedSemaphore& m) {
                s.value = m.value();
                s.waiters = m.waiters();
                s.bound = m.bound();
            });
        case ObjectKind::condition:
            return decode<Condition>(read, at, [&](const Condition& m) { s.waiters = m.waiters(); });
        case ObjectKind::event:
            return decode<Event>(read, at, [&](const Event& m) {
                s.is_set = m.is_set();
                s.waiters = m.waiters();
            });
        case ObjectKind::barrier:
            return decode<Barrier>(read, at, [&](const Barrier& m) {
                s.parties = m.parties();
                s.n_waiting = m.n_waiting();
                s.generation = m.generation();
                s.broken = m.broken();
            });
        default: return std::string("not a synchronisation object");
    }
}

}  // namespace shm::inspect
