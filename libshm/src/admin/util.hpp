// Small pieces the admin files share. Private.
#pragma once

#include <dirent.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "platform/fd.hpp"

namespace shm::admin {

using platform::Fd;

// An open directory stream, closed when it goes.
struct Dir {
    DIR* d = nullptr;
    explicit Dir(DIR* p = nullptr) : d(p) {}
    Dir(const Dir&) = delete;
    Dir& operator=(const Dir&) = delete;
    ~Dir() {
        if (d) ::closedir(d);
    }
};

std::string errno_text(int err);
std::int64_t now_ns();
std::int64_t ns_of(const timespec& ts);

bool valid_segment_name(std::string_view name);
// What follows "libshm." in a file name (not validated), or "".
std::string after_prefix(std::string_view file_name);

// " (the file belongs to uid U, mode 0MMM)", for messages about a file we
// may not touch.
std::string owner_text(std::uint32_t uid, std::uint32_t mode);

// Open the directory `dir` (O_DIRECTORY); throws shm::error if it cannot be.
Fd open_directory(const std::string& dir, const char* what);

}  // namespace shm::admin
