// Naming rules for segments and for the named objects inside them.
//
// A segment name is 1 to 200 characters from [A-Za-z0-9._-], does not start
// with '.' or '-', and contains no "..". The segment's file is
// "<shm dir>/libshm.<name>", so the name needs no escaping anywhere and can
// never leave the shm directory.
//
// An object name (inside a segment) is 1 to 63 characters from
// [A-Za-z0-9._:/-] and does not start with '/'. Objects are never files, so
// '/' and ':' are allowed for hierarchies such as "jobs/queue".
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace shm {

inline constexpr std::size_t kMaxSegmentName = 200;
inline constexpr std::size_t kMaxObjectName = 63;
inline constexpr std::string_view kFilePrefix = "libshm.";

// Throws shm::name_error explaining which rule the name breaks.
void validate_segment_name(std::string_view name);
void validate_object_name(std::string_view name);

// The shm directory: $SHM_DIR if set and not empty, else /dev/shm.
std::filesystem::path shm_directory();

// "<shm dir>/libshm.<name>" (the name is validated).
std::filesystem::path segment_path(std::string_view name);

}  // namespace shm
