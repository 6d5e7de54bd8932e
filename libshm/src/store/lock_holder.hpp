// Whom a robust mutex in a segment names as its holder, judged against the
// segment's attach table: the one reading of a lock word that the segment
// (its heap lock, when it is attached) and the objects (an embedded lock,
// when it is opened) trust before they wait on it. Private.
//
// A file may carry a lock word that names a thread which holds nothing
// (anyone who can write the file can write one): the first locker would
// wait forever, because the kernel marks a lock abandoned only when the
// thread it names dies holding it. A holder is believable when it is a
// thread of this process or of a live process attached to the segment;
// for any other the caller gives the lock a moment to be released and
// refuses the file otherwise.
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include "store/layout.hpp"

namespace shm::store {

enum class LockHolder {
    free,          // nobody holds it
    owner_died,    // its holder died holding it: the next locker recovers it
    this_thread,   // the calling thread
    this_process,  // another thread of the calling process
    attached,      // a thread of a live process attached to the segment
    unknown,       // a thread of no attached process, or none at all
};

// Reads the lock word once (acquire) and the attach table of `h` (whose
// file is `fd`); *tid gets the thread the word names (0 if none).
LockHolder lock_holder(int fd, layout::Header* h, const pthread_mutex_t* m, pid_t* tid = nullptr);

}  // namespace shm::store
