// Small pieces the admin files share (util.hpp).
#include "admin/util.hpp"

#include <fcntl.h>

#include <cstdio>
#include <cstring>

#include "platform/platform.hpp"
#include "shm/error.hpp"
#include "shm/names.hpp"

namespace shm::admin {

std::string errno_text(int err) { return std::strerror(err); }

std::int64_t now_ns() { return platform::realtime_ns(); }

std::int64_t ns_of(const timespec& ts) { return std::int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec; }

bool valid_segment_name(std::string_view n) {
    try {
        validate_segment_name(n);
        return true;
    } catch (const name_error&) {
        return false;
    }
}

std::string after_prefix(std::string_view file) {
    if (file.substr(0, kFilePrefix.size()) != kFilePrefix) return {};
    return std::string(file.substr(kFilePrefix.size()));
}

std::string owner_text(std::uint32_t uid, std::uint32_t mode) {
    char m[8];
    std::snprintf(m, sizeof m, "%04o", static_cast<unsigned>(mode & 07777));
    return " (the file belongs to uid " + std::to_string(uid) + ", mode " + m + ")";
}

Fd open_directory(const std::string& dir, const char* what) {
    Fd fd(platform::sys([&] { return ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); }));
    if (!fd.valid()) platform::fail(errno, std::string(what) + dir);
    return fd;
}

}  // namespace shm::admin
