// libshm: shared-memory IPC that survives killed processes.
// Include this for everything.
#pragma once

#include "shm/container.hpp"
#include "shm/error.hpp"
#include "shm/mutex.hpp"
#include "shm/names.hpp"
#include "shm/object_kind.hpp"
#include "shm/pool.hpp"
#include "shm/queue.hpp"
#include "shm/segment.hpp"
#include "shm/shared_array.hpp"
#include "shm/sync.hpp"
#include "shm/version.hpp"
#include "shm/work_queue.hpp"
