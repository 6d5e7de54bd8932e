// Every answer admin gives to "is this process alive?", in one place, so
// that it can follow the library's liveness layer as one piece. Private.
//
// The kernel's word is preferred to a pid's: a pid is reused after its
// process exits, an open file description's byte lock is not outlived by
// its holder.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "shm/segment.hpp"
#include "store/layout.hpp"

namespace shm::admin::liveness {

// Whether attach slot i of the segment open at fd is held: its holder's
// open file description keeps the slot's byte locked until that process
// dies. Throws std::system_error if the kernel cannot be asked.
bool slot_alive(int fd, const layout::Header* h, std::uint32_t i);

// Whether somebody holds the segment's meta lock (creating, attaching,
// reaping it) right now; false if the kernel cannot be asked.
bool meta_locked(int fd);

// Whether the process that started at `start_time` still runs as `pid`.
bool process_alive(pid_t pid, std::uint64_t start_time);

// Whether the thread `tid` that a lock word names as the lock's holder is
// alive: it must exist, and when the segment's attach table could be read
// (`attached`, its occupied slots with their liveness), it must be a thread
// of one of the segment's live attached processes; a reused tid of any
// other process does not count.
bool lock_owner_alive(pid_t tid, const std::vector<AttachInfo>* attached);

}  // namespace shm::admin::liveness
