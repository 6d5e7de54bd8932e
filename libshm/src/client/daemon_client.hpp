// The library's side of shmd: registration of attached segments and the
// quota check before a create. Private.
//
// SHM_DAEMON=auto (default): use the daemon when it is reachable at the
// first attach; with no daemon the process pays for one failed connect and
// never tries again. SHM_DAEMON=required: no daemon is an error.
// SHM_DAEMON=off: never connect. The socket is $SHM_DAEMON_SOCKET, else
// $XDG_RUNTIME_DIR/shmd.sock for a non-root user when it exists, else
// /run/shmd/shmd.sock.
//
// Once connected, a watcher thread notices the daemon going away (restart)
// and reconnects, reporting every segment this process still has attached.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace shm::daemon_client {

// Before creating segment `name` of `bytes` bytes: ask the daemon whether the
// quotas allow it. Throws shm::out_of_space naming the limit if not, and
// shm::error if SHM_DAEMON=required and there is no daemon.
void before_create(const std::string& name, std::uint64_t bytes);
// This process took a slot of `name` / gave one up.
void attached(const std::string& name);
void detached(const std::string& name) noexcept;

// Whether this process is connected to a daemon now (for tests and tools).
bool connected();

std::string socket_path();

// One request on a fresh connection: send `request` (JSON text), return the
// reply text. Throws shm::error (errno ENOENT / ECONNREFUSED when no daemon
// listens at `socket`, ETIMEDOUT after `timeout`).
std::string call(const std::string& socket, const std::string& request, std::chrono::milliseconds timeout);

}  // namespace shm::daemon_client
