// shmctl ls: libshm segments and what looks leaked, marked when the daemon
// tracks them.
#include <cstdlib>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "commands.hpp"

namespace shmctl {

namespace {

bool shown_by_default(const admin::Entry& e) {
    return e.kind == admin::FileKind::libshm || e.state == admin::State::leaked;
}

bool same_dir(const std::string& a, const std::string& b) {
    std::error_code ec1, ec2;
    auto ca = std::filesystem::weakly_canonical(a, ec1), cb = std::filesystem::weakly_canonical(b, ec2);
    return (ec1 ? std::filesystem::path(a) : ca) == (ec2 ? std::filesystem::path(b) : cb);
}

// What the daemon tracks in `dir`: `asked` is false when no daemon answered
// or it serves another directory (then `note` says so). SHM_DAEMON=off
// means: do not ask. With no daemon this costs one failed connect.
struct Tracking {
    bool asked = false;
    admin::DaemonTracked daemon;
    std::set<std::string> names;  // segment names
    std::string note;
};

Tracking daemon_tracking(const std::string& dir) {
    Tracking t;
    const char* mode = std::getenv("SHM_DAEMON");
    if (mode && std::string(mode) == "off" && g_socket.empty()) return t;
    t.daemon = admin::daemon_tracked(g_socket, std::chrono::seconds(1));
    const admin::DaemonStatus& st = t.daemon.status;
    if (!st.running) {
        // A daemon that is there but does not answer is worth a word; a
        // missing one is the normal case without shmd and says nothing.
        if (!admin::daemon_absent(st.error.code)) t.note = "shmd: " + st.error.message;
        return t;
    }
    if (!same_dir(st.shm_dir, dir)) {
        t.note = fmt::format("the shmd at {} serves {}, not {}: no SHMD column", st.socket, st.shm_dir, dir);
        return t;
    }
    t.asked = true;
    for (const admin::TrackedSegment& ts : t.daemon.segments) t.names.insert(ts.name);
    return t;
}

bool is_tracked(const Tracking& t, const admin::Entry& e) {
    return e.kind == admin::FileKind::libshm && e.segment && t.names.count(e.segment->name) > 0;
}

void ls_json(const admin::Scan& s, const Tracking& tracking, const std::vector<const admin::Entry*>& shown, bool all) {
    json files = json::array();
    for (auto* e : shown) {
        json f = entry_json(*e);
        f["tracked"] = tracking.asked ? json(is_tracked(tracking, *e)) : json(nullptr);
        files.push_back(std::move(f));
    }
    json daemon = nullptr;
    if (tracking.daemon.status.running)
        daemon = {{"socket", tracking.daemon.status.socket},
                  {"shm_dir", tracking.daemon.status.shm_dir},
                  {"segments", tracking.daemon.segments.size()}};
    print_json({{"schema_version", kSchemaVersion},
                {"dir", s.dir},
                {"all", all},
                {"files", files},
                {"hidden", s.entries.size() - shown.size()},
                {"uninspected_processes", s.uninspected_processes},
                {"daemon", daemon}});
}

void ls_table(const Tracking& tracking, const std::vector<const admin::Entry*>& shown, bool noheadings) {
    std::vector<std::string> header = {"NAME", "SIZE", "OWNER", "AGE", "KIND", "STATE", "USERS"};
    if (tracking.asked) header.insert(header.end() - 1, "SHMD");
    Table t(header);
    t.right_align(1);
    for (auto* e : shown) {
        std::string users = users_text(*e);
        if (users.empty()) users = e->state == admin::State::in_use ? "-" : "- (" + e->note + ")";
        if (e->state == admin::State::unknown && !e->users.empty()) users += " (" + e->note + ")";
        std::vector<std::string> row = {printable(e->name), bytes_text(e->allocated), user_name(e->uid),
                                        human_age(e->age_ns), admin::to_string(e->kind), state_text(e->state), users};
        if (tracking.asked) row.insert(row.end() - 1, is_tracked(tracking, *e) ? "tracked" : "-");
        t.add(std::move(row));
    }
    if (!shown.empty()) t.print(stdout, !noheadings);
}

void ls_notes(const admin::Scan& s, const Tracking& tracking, std::size_t shown, bool all) {
    if (!tracking.note.empty()) fmt::print(stderr, "({})\n", tracking.note);
    if (shown == 0)
        fmt::print(stderr, "({} in {})\n", all ? "no files" : "no libshm segments and nothing leaked", s.dir);
    if (std::size_t hidden = s.entries.size() - shown)
        fmt::print(stderr, "({} more {} in use or unknown not shown; --all shows every file)\n", hidden,
                   hidden == 1 ? "file" : "files");
    if (std::size_t n = unknown_for_hidden(s)) fmt::print(stderr, "({})\n", hidden_note(s, n));
}

}  // namespace

int cmd_ls(bool all, bool as_json, bool noheadings) {
    ProgressLine progress;
    admin::Scan s = admin::scan(progress.callback());
    progress.finish();
    Tracking tracking = daemon_tracking(s.dir);
    std::vector<const admin::Entry*> shown;
    for (const admin::Entry& e : s.entries)
        if (all || shown_by_default(e)) shown.push_back(&e);
    if (as_json) {
        ls_json(s, tracking, shown, all);
        return 0;
    }
    ls_table(tracking, shown, noheadings);
    if (!noheadings) ls_notes(s, tracking, shown.size(), all);
    return 0;
}

}  // namespace shmctl
