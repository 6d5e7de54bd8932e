// What ls, stat and df say alike (commands.hpp).
#include <unistd.h>

#include <fmt/format.h>

#include "commands.hpp"

namespace shmctl {

namespace {

json users_json(const admin::Entry& e) {
    json a = json::array();
    for (const admin::User& u : e.users)
        a.push_back({{"pid", u.pid}, {"comm", u.comm}, {"attached", u.attached}, {"mapped", u.mapped}, {"open", u.open}});
    return a;
}

}  // namespace

json segment_summary_json(const admin::SegmentInfo& s) {
    return {{"name", s.name},
            {"status", admin::to_string(s.status)},
            {"error", s.error.message},
            {"layout_version", s.layout_version},
            {"persistent", s.persistent},
            {"live_attachers", s.live},
            {"dead_attachers", s.dead}};
}

json entry_json(const admin::Entry& e) {
    return {{"name", e.name},
            {"path", e.path},
            {"kind", admin::to_string(e.kind)},
            {"state", admin::to_string(e.state)},
            {"note", e.note},
            {"size", e.size},
            {"allocated", e.allocated},
            {"uid", e.uid},
            {"owner", user_name(e.uid)},
            {"mode", mode_text(e.mode)},
            {"mtime", e.mtime_ns / 1000000000},
            {"age_seconds", e.age_ns / 1000000000},
            {"users", users_json(e)},
            {"segment", e.segment ? segment_summary_json(*e.segment) : json(nullptr)}};
}

std::size_t unknown_for_hidden(const admin::Scan& s) {
    if (s.uninspected_processes == 0) return 0;
    std::size_t n = 0;
    for (const admin::Entry& e : s.entries)
        if (e.kind != admin::FileKind::libshm && e.state == admin::State::unknown) ++n;
    return n;
}

std::string hidden_note(const admin::Scan& s, std::size_t files) {
    return fmt::format("{} could not be inspected by uid {}, so {} unknown: run as root, or as the files' owner, to tell",
                       count_text(s.uninspected_processes, "process", "processes"), ::geteuid(),
                       count_text(files, "file is", "files are"));
}

}  // namespace shmctl
