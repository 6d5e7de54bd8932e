// Errors raised by libshm.
//
// Every failure of a public call is an exception derived from shm::error, a
// std::system_error that carries an errno where there is one and a message
// that names the segment and the object involved. Expected outcomes (timed
// out, already held) are reported by the try_/_for variants' return values
// instead.
#pragma once

#include <cerrno>
#include <string>
#include <system_error>

namespace shm {

class error : public std::system_error {
public:
    error(int errnum, const std::string& what)
        : std::system_error(errnum, std::generic_category(), what) {}
};

// A segment or object name breaks the naming rules (see names.hpp).
class name_error : public error {
public:
    explicit name_error(const std::string& what) : error(EINVAL, what) {}
};

// No segment or object of that name.
class not_found : public error {
public:
    explicit not_found(const std::string& what) : error(ENOENT, what) {}
};

// create() of a name that is in use by live processes or persistent.
class already_exists : public error {
public:
    explicit already_exists(const std::string& what) : error(EEXIST, what) {}
};

// The file exists but is not a libshm segment (wrong magic), or was left
// half-initialised by a creator that died and cannot be replaced by this call.
class not_a_segment : public error {
public:
    explicit not_a_segment(const std::string& what) : error(EINVAL, what) {}
};

// The segment was written by a libshm with another layout version; it is
// refused, never misread.
class version_mismatch : public error {
public:
    version_mismatch(const std::string& what, unsigned found, unsigned expected)
        : error(EPROTO, what), found_(found), expected_(expected) {}
    unsigned found() const noexcept { return found_; }
    unsigned expected() const noexcept { return expected_; }

private:
    unsigned found_;
    unsigned expected_;
};

// No room: the shm filesystem is full (at creation), or the segment's heap
// cannot hold an allocation. The message says how much was asked and how
// much is free.
class out_of_space : public error {
public:
    explicit out_of_space(const std::string& what) : error(ENOSPC, what) {}
};

// Every slot of the segment's attach table is held by a live process.
class attach_table_full : public error {
public:
    explicit attach_table_full(const std::string& what) : error(EMFILE, what) {}
};

// Misuse of a lock: unlocking a mutex the caller does not own, relocking a
// mutex the caller already holds.
class lock_error : public error {
public:
    lock_error(int errnum, const std::string& what) : error(errnum, what) {}
};

// find<T>() of an object that was constructed with another type.
class type_mismatch : public error {
public:
    explicit type_mismatch(const std::string& what) : error(EINVAL, what) {}
};

// Shared state failed a consistency check and cannot be repaired. Raised
// instead of returning garbage.
class corrupted : public error {
public:
    explicit corrupted(const std::string& what) : error(EUCLEAN, what) {}
};

// A Barrier was broken: a party died or timed out while others waited, or
// abort()/reset() was called. Like Python's BrokenBarrierError; reset()
// makes the barrier usable again.
class broken_barrier : public error {
public:
    explicit broken_barrier(const std::string& what) : error(EPIPE, what) {}
};

// Queue outcomes for the non-blocking forms (Python's queue.Full/Empty) and
// for a closed queue.
class full : public error {
public:
    explicit full(const std::string& what) : error(EAGAIN, what) {}
};
class empty : public error {
public:
    explicit empty(const std::string& what) : error(EAGAIN, what) {}
};
class closed : public error {
public:
    explicit closed(const std::string& what) : error(EPIPE, what) {}
};

// A bounded wait ran out (for example waiting for a racing creator to finish
// initialising a segment).
class timeout : public error {
public:
    explicit timeout(const std::string& what) : error(ETIMEDOUT, what) {}
};

}  // namespace shm
