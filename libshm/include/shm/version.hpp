// The library's version.
#pragma once

namespace shm {
// The library's version, e.g. "0.1.0".
const char* version() noexcept;
}  // namespace shm
