#include "shm/names.hpp"

#include <cstdlib>

#include "shm/error.hpp"
#include "shm/object_kind.hpp"
#include "shm/version.hpp"

namespace shm {

namespace {
bool plain_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

std::string quoted(std::string_view s) {
    std::string out = "'";
    for (char c : s) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
            static const char* hex = "0123456789abcdef";
            out += "\\x";
            out += hex[(c >> 4) & 15];
            out += hex[c & 15];
        } else {
            out += c;
        }
    }
    return out + "'";
}
}  // namespace

void validate_segment_name(std::string_view name) {
    auto bad = [&](const std::string& why) {
        throw name_error("invalid segment name " + quoted(name) + ": " + why +
                         " (segment names are 1-" + std::to_string(kMaxSegmentName) +
                         " characters from A-Z a-z 0-9 . _ -, not starting with '.' or '-')");
    };
    if (name.empty()) bad("empty");
    if (name.size() > kMaxSegmentName)
        bad("too long (" + std::to_string(name.size()) + " characters)");
    if (name.front() == '.' || name.front() == '-') bad("starts with '" + std::string(1, name.front()) + "'");
    if (name.find("..") != std::string_view::npos) bad("contains \"..\"");
    for (char c : name)
        if (!plain_char(c)) {
            if (c == '/') bad("contains '/'");
            bad("contains a character outside the allowed set");
        }
}

void validate_object_name(std::string_view name) {
    auto bad = [&](const std::string& why) {
        throw name_error("invalid object name " + quoted(name) + ": " + why + " (object names are 1-" +
                         std::to_string(kMaxObjectName) +
                         " characters from A-Z a-z 0-9 . _ - : /, not starting with '/')");
    };
    if (name.empty()) bad("empty");
    if (name.size() > kMaxObjectName) bad("too long (" + std::to_string(name.size()) + " characters)");
    if (name.front() == '/') bad("starts with '/'");
    for (char c : name)
        if (!plain_char(c) && c != ':' && c != '/') bad("contains a character outside the allowed set");
}

std::filesystem::path shm_directory() {
    const char* d = std::getenv("SHM_DIR");
    if (d && *d) return std::filesystem::path(d);
    return "/dev/shm";
}

std::filesystem::path segment_path(std::string_view name) {
    validate_segment_name(name);
    return shm_directory() / (std::string(kFilePrefix) + std::string(name));
}

const char* to_string(ObjectKind k) noexcept {
    switch (k) {
        case ObjectKind::raw: return "raw";
        case ObjectKind::mutex: return "mutex";
        case ObjectKind::recursive_mutex: return "recursive_mutex";
        case ObjectKind::semaphore: return "semaphore";
        case ObjectKind::bounded_semaphore: return "bounded_semaphore";
        case ObjectKind::condition: return "condition";
        case ObjectKind::event: return "event";
        case ObjectKind::barrier: return "barrier";
        case ObjectKind::dict: return "dict";
        case ObjectKind::list: return "list";
        case ObjectKind::queue: return "queue";
        case ObjectKind::shared_array: return "shared_array";
        case ObjectKind::shared_scalar: return "shared_scalar";
        case ObjectKind::work_queue: return "work_queue";
    }
    return "unknown";
}

const char* version() noexcept { return SHM_VERSION_STRING; }

}  // namespace shm
