// Whether anybody at all has a file open or mapped, asked of the kernel
// (lease.cpp). Private.
//
// A write lease (F_SETLEASE) is granted only when no other open file
// description of the file exists, and a mapping keeps its file description
// alive after the descriptor is closed. So a granted lease proves that no
// process, in any pid namespace and of any user, uses the file, and while we
// hold it, anyone who opens the file makes the kernel mark our lease as
// breaking (and waits for us), which F_GETLEASE shows. Taking the lease needs
// the file's owner or CAP_LEASE; without it the answer comes from /proc.
#pragma once

#include <cstdint>
#include <string>

#include "admin/util.hpp"

namespace shm::admin {

struct Lease {
    enum Result { unused, in_use, unavailable };
    Result result = unavailable;
    int err = 0;
    Fd fd;

    // Still ours alone: nobody has started opening the file since.
    bool intact() const;
};

// Open `name` in dirfd and try for a write lease; the file must still be the
// inode (dev, ino) we listed. The lease is held as long as the result lives.
void take_lease(Lease& l, int dirfd, const std::string& name, std::uint64_t dev, std::uint64_t ino);

}  // namespace shm::admin
