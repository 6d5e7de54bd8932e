// Words and units: the names of kinds, states and outcomes, file names,
// durations and byte counts (admin.hpp).
#include <string>

#include "admin/util.hpp"
#include "platform/platform.hpp"
#include "shm/admin.hpp"
#include "shm/names.hpp"

namespace shm::admin {

const char* to_string(FileKind k) noexcept {
    switch (k) {
        case FileKind::libshm: return "libshm";
        case FileKind::python: return "python";
        case FileKind::pytorch: return "pytorch";
        case FileKind::other: return "other";
    }
    return "other";
}

const char* to_string(State s) noexcept {
    switch (s) {
        case State::in_use: return "in_use";
        case State::leaked: return "leaked";
        case State::persistent: return "persistent";
        case State::unknown: return "unknown";
    }
    return "unknown";
}

const char* to_string(SegmentStatus s) noexcept {
    switch (s) {
        case SegmentStatus::ok: return "ok";
        case SegmentStatus::uninitialised: return "uninitialised";
        case SegmentStatus::dead: return "dead";
        case SegmentStatus::version_mismatch: return "version_mismatch";
        case SegmentStatus::not_a_segment: return "not_a_segment";
        case SegmentStatus::corrupt: return "corrupt";
        case SegmentStatus::unreadable: return "unreadable";
    }
    return "unreadable";
}

const char* to_string(GcAction::Outcome o) noexcept {
    switch (o) {
        case GcAction::reclaimed: return "reclaimed";
        case GcAction::cleared: return "cleared";
        case GcAction::kept: return "kept";
        case GcAction::skipped: return "skipped";
        case GcAction::failed: return "failed";
    }
    return "failed";
}

FileKind kind_of_name(std::string_view n) {
    auto starts = [&](std::string_view p) { return n.substr(0, p.size()) == p; };
    if (!segment_name_of(n).empty()) return FileKind::libshm;
    if (starts("psm_") || starts("sem.mp-")) return FileKind::python;
    if (starts("torch_")) return FileKind::pytorch;
    return FileKind::other;
}

std::string segment_name_of(std::string_view file_name) {
    std::string name = after_prefix(file_name);
    return valid_segment_name(name) ? name : std::string();
}

bool parse_duration(std::string_view t, std::chrono::nanoseconds& out) {
    using namespace std::chrono;
    if (t.empty()) return false;
    nanoseconds total{0};
    std::size_t p = 0;
    while (p < t.size()) {
        std::size_t q = p;
        while (q < t.size() && t[q] >= '0' && t[q] <= '9') ++q;
        if (q == p || q - p > 12) return false;
        long long n = std::stoll(std::string(t.substr(p, q - p)));
        std::size_t u = q;
        while (u < t.size() && t[u] >= 'a' && t[u] <= 'z') ++u;
        std::string_view unit = t.substr(q, u - q);
        if (unit.empty()) {
            if (p != 0 || u != t.size()) return false;  // a bare number only on its own: seconds
            unit = "s";
        }
        if (unit == "ms") total += milliseconds(n);
        else if (unit == "s") total += seconds(n);
        else if (unit == "m") total += minutes(n);
        else if (unit == "h") total += hours(n);
        else if (unit == "d") total += hours(24 * n);
        else return false;
        p = u;
    }
    out = total;
    return true;
}

std::string human_bytes(std::uint64_t n) { return platform::human_bytes(n); }

}  // namespace shm::admin
