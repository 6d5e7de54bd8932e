// shmctl: see and reclaim what fills /dev/shm.
//
//   shmctl ls [--all]                 every libshm segment, and what looks leaked
//   shmctl stat NAME                  a segment's header, attach slots and objects
//   shmctl df                         how the shm filesystem is used
//   shmctl gc [--dry-run] [--foreign] [--min-age DURATION]
//   shmctl rm NAME... [--force]
//   shmctl status                     what the daemon (shmd) tracks and has reclaimed
//
// Built on the public admin API (shm/admin.hpp) only; works without the
// daemon, because the truth about every segment is in the segment itself and
// the truth about other files is in /proc. When a daemon answers, ls also
// marks the segments it tracks. Exit codes: 0 done, 1 something was refused
// or failed, 2 usage, 3 (status) no daemon is running.
#include <pwd.h>
#include <unistd.h>

#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <shm/admin.hpp>
#include <shm/shm.hpp>

using nlohmann::json;
namespace admin = shm::admin;

namespace {

constexpr int kSchemaVersion = 1;

// ---- formatting -------------------------------------------------------------

bool g_bytes = false;  // -b: exact byte counts

std::string human_bytes(std::uint64_t n) {
    if (g_bytes) return std::to_string(n);
    static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = static_cast<double>(n);
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    if (u == 0)
        std::snprintf(buf, sizeof buf, "%" PRIu64 " B", n);
    else
        std::snprintf(buf, sizeof buf, "%.1f %s", v, units[u]);
    return buf;
}

std::string human_age(std::int64_t ns) {
    std::int64_t s = ns / 1000000000;
    char buf[32];
    if (s < 120)
        std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
    else if (s < 120 * 60)
        std::snprintf(buf, sizeof buf, "%lldm", static_cast<long long>(s / 60));
    else if (s < 48 * 3600)
        std::snprintf(buf, sizeof buf, "%lldh", static_cast<long long>(s / 3600));
    else
        std::snprintf(buf, sizeof buf, "%lldd", static_cast<long long>(s / 86400));
    return buf;
}

std::string human_duration(std::chrono::nanoseconds d) {
    if (d.count() == 0) return "0s";
    return human_age(d.count());
}

std::string clock_time(std::int64_t ns) {
    if (ns <= 0) return "-";
    time_t t = static_cast<time_t>(ns / 1000000000);
    struct tm tm;
    localtime_r(&t, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    return buf;
}

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string user_name(std::uint32_t uid) {
    static std::map<std::uint32_t, std::string> cache;
    auto it = cache.find(uid);
    if (it != cache.end()) return it->second;
    struct passwd pw, *res = nullptr;
    char buf[4096];
    std::string name = std::to_string(uid);
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) == 0 && res) name = res->pw_name;
    cache[uid] = name;
    return name;
}

std::string mode_text(std::uint32_t mode) {
    char m[8];
    std::snprintf(m, sizeof m, "%04o", mode & 07777);
    return m;
}

// Names and command names may hold any byte; show control characters as '?'.
std::string printable(const std::string& s) {
    std::string o = s;
    for (char& c : o)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return o;
}

std::string state_text(admin::State s) {
    switch (s) {
        case admin::State::in_use: return "in use";
        case admin::State::leaked: return "leaked";
        case admin::State::persistent: return "persistent";
        case admin::State::unknown: return "unknown";
    }
    return "unknown";
}

std::string users_text(const admin::Entry& e, std::size_t max = 4) {
    std::string s;
    std::size_t n = 0;
    for (const admin::User& u : e.users) {
        if (n == max) {
            s += ", +" + std::to_string(e.users.size() - max) + " more";
            break;
        }
        if (!s.empty()) s += ", ";
        s += std::to_string(u.pid);
        if (!u.comm.empty()) s += " " + printable(u.comm);
        ++n;
    }
    return s;
}

// A table with left-aligned columns; the last column is not padded.
class Table {
public:
    explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
    void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
    void right_align(std::size_t col) { right_.push_back(col); }
    void print(std::FILE* out, bool headings, const std::string& indent = "") const {
        std::vector<std::size_t> w(header_.size(), 0);
        auto measure = [&](const std::vector<std::string>& r) {
            for (std::size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
        };
        if (headings) measure(header_);
        for (auto& r : rows_) measure(r);
        auto line = [&](const std::vector<std::string>& r) {
            std::string s = indent;
            for (std::size_t i = 0; i < r.size(); ++i) {
                bool last = i + 1 == r.size();
                bool right = std::find(right_.begin(), right_.end(), i) != right_.end();
                std::size_t pad = w[i] > r[i].size() ? w[i] - r[i].size() : 0;
                if (right) s.append(pad, ' ');
                s += r[i];
                if (!last) {
                    if (!right) s.append(pad, ' ');
                    s += "  ";
                }
            }
            while (!s.empty() && s.back() == ' ') s.pop_back();
            std::fprintf(out, "%s\n", s.c_str());
        };
        if (headings) line(header_);
        for (auto& r : rows_) line(r);
    }

private:
    std::vector<std::string> header_;
    std::vector<std::vector<std::string>> rows_;
    std::vector<std::size_t> right_;
};

void print_json(const json& j) {
    // Replace invalid UTF-8 (file and command names are bytes) instead of throwing.
    std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << std::endl;
}

// ---- progress ---------------------------------------------------------------

// Reports progress on stderr once a scan has taken more than a second: on a
// terminal as one line rewritten in place, otherwise one line per second.
class ProgressLine {
public:
    ProgressLine() : start_(std::chrono::steady_clock::now()), tty_(::isatty(2) == 1) {}
    ~ProgressLine() { finish(); }
    admin::Progress callback() {
        return [this](const char* stage, std::size_t done, std::size_t total) { update(stage, done, total); };
    }
    void finish() {
        if (shown_ && tty_) std::fprintf(stderr, "\r\033[K");
        shown_ = false;
    }

private:
    void update(const char* stage, std::size_t done, std::size_t total) {
        auto now = std::chrono::steady_clock::now();
        if (now - start_ < std::chrono::seconds(1)) return;
        if (shown_ && now - last_ < (tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(1000))) return;
        last_ = now;
        shown_ = true;
        std::string what = std::string("shmctl: ") + stage + " " + std::to_string(done);
        if (total) what += "/" + std::to_string(total);
        if (tty_)
            std::fprintf(stderr, "\r\033[K%s", what.c_str());
        else
            std::fprintf(stderr, "%s\n", what.c_str());
        std::fflush(stderr);
    }
    std::chrono::steady_clock::time_point start_, last_;
    bool tty_;
    bool shown_ = false;
};

// ---- JSON -------------------------------------------------------------------

json users_json(const admin::Entry& e) {
    json a = json::array();
    for (const admin::User& u : e.users)
        a.push_back({{"pid", u.pid}, {"comm", u.comm}, {"attached", u.attached}, {"mapped", u.mapped}, {"open", u.open}});
    return a;
}

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

json lock_json(const admin::LockState& l) {
    return {{"held", l.held},
            {"owner_pid", l.owner_pid},
            {"owner_alive", l.owner_alive},
            {"owner_died", l.owner_died},
            {"recoveries", l.recoveries},
            {"depth", l.depth}};
}

json object_json(const admin::ObjectState& o) {
    json st = json::object();
    if (o.lock) st = lock_json(*o.lock);
    if (o.value) st["value"] = *o.value;
    if (o.bound) st["bound"] = *o.bound;
    if (o.waiters) st["waiters"] = *o.waiters;
    if (o.is_set) st["is_set"] = *o.is_set;
    if (o.parties) st["parties"] = *o.parties;
    if (o.n_waiting) st["n_waiting"] = *o.n_waiting;
    if (o.generation) st["generation"] = *o.generation;
    if (o.broken) st["broken"] = *o.broken;
    if (o.length) st["length"] = *o.length;
    if (o.info.kind == shm::ObjectKind::queue && o.value) {
        st.erase("value");
        st["depth"] = *o.value;
    }
    if (o.capacity) st["capacity"] = *o.capacity;
    if (o.max_item_size) st["max_item_size"] = *o.max_item_size;
    if (o.max_bytes) st["max_bytes"] = *o.max_bytes;
    if (o.bytes_used) st["bytes_used"] = *o.bytes_used;
    if (o.closed) st["closed"] = *o.closed;
    if (o.repairs) st["repairs"] = *o.repairs;
    return {{"name", o.info.name},
            {"kind", shm::to_string(o.info.kind)},
            {"offset", o.info.offset},
            {"size", o.info.size},
            {"problem", o.error.message},
            {"state", st}};
}

// ---- ls ---------------------------------------------------------------------

// Foreign files whose state is unknown because of processes we may not inspect.
std::size_t unknown_for_hidden(const admin::Scan& s) {
    std::size_t n = 0;
    for (const admin::Entry& e : s.entries)
        if (e.kind != admin::FileKind::libshm && e.state == admin::State::unknown && !s.uninspected_processes == 0) ++n;
    return n;
}

std::string hidden_note(const admin::Scan& s, std::size_t files) {
    std::size_t p = s.uninspected_processes;
    return std::to_string(p) + (p == 1 ? " process" : " processes") + " could not be inspected by uid " +
           std::to_string(::geteuid()) + ", so " + std::to_string(files) + (files == 1 ? " file is" : " files are") +
           " unknown: run as root, or as the files' owner, to tell";
}

bool shown_by_default(const admin::Entry& e) {
    return e.kind == admin::FileKind::libshm || e.state == admin::State::leaked;
}

// ---- the daemon ---------------------------------------------------------------

std::string g_socket;  // --socket; empty: admin::daemon_socket()

bool same_dir(const std::string& a, const std::string& b) {
    std::error_code ec1, ec2;
    auto ca = std::filesystem::weakly_canonical(a, ec1), cb = std::filesystem::weakly_canonical(b, ec2);
    return (ec1 ? std::filesystem::path(a) : ca) == (ec2 ? std::filesystem::path(b) : cb);
}

// What the daemon tracks in `dir`, for ls: nullopt when no daemon answered
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
    if (!t.daemon.status.running) {
        // A daemon that is there but does not answer is worth a word; a
        // missing one is the normal case without shmd and says nothing.
        if (!admin::daemon_absent(t.daemon.status.error.code)) t.note = "shmd: " + t.daemon.status.error.message;
        return t;
    }
    if (!same_dir(t.daemon.status.shm_dir, dir)) {
        t.note = "the shmd at " + t.daemon.status.socket + " serves " + t.daemon.status.shm_dir + ", not " + dir +
                 ": no SHMD column";
        return t;
    }
    t.asked = true;
    for (const admin::TrackedSegment& ts : t.daemon.segments) t.names.insert(ts.name);
    return t;
}

bool is_tracked(const Tracking& t, const admin::Entry& e) {
    return e.kind == admin::FileKind::libshm && e.segment && t.names.count(e.segment->name) > 0;
}

int cmd_ls(bool all, bool as_json, bool noheadings) {
    ProgressLine progress;
    admin::Scan s = admin::scan(progress.callback());
    progress.finish();
    Tracking tracking = daemon_tracking(s.dir);
    std::vector<const admin::Entry*> shown;
    for (const admin::Entry& e : s.entries)
        if (all || shown_by_default(e)) shown.push_back(&e);
    std::size_t hidden = s.entries.size() - shown.size();
    if (as_json) {
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
                    {"hidden", hidden},
                    {"uninspected_processes", s.uninspected_processes},
                    {"daemon", daemon}});
        return 0;
    }
    std::vector<std::string> header = {"NAME", "SIZE", "OWNER", "AGE", "KIND", "STATE", "USERS"};
    if (tracking.asked) header.insert(header.end() - 1, "SHMD");
    Table t(header);
    t.right_align(1);
    for (auto* e : shown) {
        std::string users = users_text(*e);
        if (users.empty()) users = e->state == admin::State::in_use ? "-" : "- (" + e->note + ")";
        if (e->state == admin::State::unknown && !e->users.empty()) users += " (" + e->note + ")";
        std::vector<std::string> row = {printable(e->name), human_bytes(e->allocated), user_name(e->uid),
                                        human_age(e->age_ns), admin::to_string(e->kind), state_text(e->state), users};
        if (tracking.asked) row.insert(row.end() - 1, is_tracked(tracking, *e) ? "tracked" : "-");
        t.add(std::move(row));
    }
    if (!shown.empty()) t.print(stdout, !noheadings);
    if (!noheadings) {
        if (!tracking.note.empty()) std::fprintf(stderr, "(%s)\n", tracking.note.c_str());
        if (shown.empty())
            std::fprintf(stderr, "(%s in %s)\n",
                         all ? "no files" : "no libshm segments and nothing leaked", s.dir.c_str());
        if (hidden)
            std::fprintf(stderr, "(%zu more %s in use or unknown not shown; --all shows every file)\n", hidden,
                         hidden == 1 ? "file" : "files");
        if (std::size_t n = unknown_for_hidden(s))
            std::fprintf(stderr, "(%s)\n", hidden_note(s, n).c_str());
    }
    return 0;
}

// ---- stat -------------------------------------------------------------------

std::string lock_text(const admin::LockState& l) {
    std::string s;
    if (l.held) {
        s = "held by pid " + std::to_string(l.owner_pid);
        if (l.owner_died)
            s += ", which died: the next locker recovers it";
        else
            s += l.owner_alive ? " (alive)" : "";
        if (l.depth > 1) s += ", depth " + std::to_string(l.depth);
    } else if (l.owner_died) {
        s = "free; its owner (pid " + std::to_string(l.owner_pid) + ") died holding it: the next locker recovers it";
    } else {
        s = "free";
    }
    s += "; " + std::to_string(l.recoveries) + (l.recoveries == 1 ? " recovery" : " recoveries");
    return s;
}

std::string object_text(const admin::ObjectState& o) {
    if (o.error) return o.error.message;
    if (o.lock) return lock_text(*o.lock);
    std::string s;
    auto add = [&](const std::string& part) { s += (s.empty() ? "" : ", ") + part; };
    if (o.info.kind == shm::ObjectKind::queue && o.value && o.capacity) {
        add(std::to_string(*o.value) + " of " + std::to_string(*o.capacity) + " items");
        if (o.max_item_size) add("items up to " + human_bytes(*o.max_item_size));
        if (o.max_bytes) add(human_bytes(o.bytes_used.value_or(0)) + " of " + human_bytes(*o.max_bytes) + " in use");
        if (o.closed && *o.closed) add("closed");
        if (o.repairs && *o.repairs) add(std::to_string(*o.repairs) + (*o.repairs == 1 ? " repair" : " repairs"));
        return s;
    }
    if (o.value) add("value " + std::to_string(*o.value));
    if (o.bound) add("bound " + std::to_string(*o.bound));
    if (o.is_set) add(*o.is_set ? "set" : "clear");
    if (o.parties)
        add(std::to_string(o.n_waiting.value_or(0)) + " of " + std::to_string(*o.parties) + " parties waiting");
    if (o.generation) add("generation " + std::to_string(*o.generation));
    if (o.broken && *o.broken) add("broken");
    if (o.waiters) add("~" + std::to_string(*o.waiters) + " waiters");
    if (o.length)
        add(std::to_string(*o.length) + (o.info.kind == shm::ObjectKind::dict ? " keys" : " items"));
    return s.empty() ? "-" : s;
}

json segment_json(const admin::SegmentInfo& s, const admin::Entry& e) {
    json slots = json::array();
    for (const shm::AttachInfo& a : s.slots) {
        std::string comm;
        for (const admin::User& u : e.users)
            if (u.pid == a.pid) comm = u.comm;
        slots.push_back({{"slot", a.slot},
                         {"pid", a.pid},
                         {"uid", a.uid},
                         {"start_time", a.start_time},
                         {"attached_at", a.attached_at_ns / 1000000000},
                         {"alive", a.alive},
                         {"comm", a.alive ? comm : ""}});
    }
    json objects = json::array();
    for (const admin::ObjectState& o : s.objects) objects.push_back(object_json(o));
    json j = segment_summary_json(s);
    j.update({{"path", s.path},
              {"total_size", s.total_size},
              {"heap_size", s.heap_size},
              {"heap_used", s.heap_used},
              {"heap_free", s.heap_size - s.heap_used},
              {"max_attach", s.max_attach},
              {"creator",
               {{"pid", s.creator_pid},
                {"uid", s.creator_uid},
                {"start_time", s.creator_start_time},
                {"alive", s.creator_alive}}},
              {"created_at", s.created_at_ns / 1000000000},
              {"attachments", slots},
              {"objects_read", s.objects_read},
              {"directory_busy", s.directory_busy},
              {"directory_note", s.directory_note},
              {"objects", objects}});
    return j;
}

void print_file_lines(const admin::Entry& e) {
    std::printf("file:      %s\n", printable(e.path).c_str());
    std::printf("kind:      %s\n", admin::to_string(e.kind));
    std::printf("size:      %s allocated (%s bytes long)\n", human_bytes(e.allocated).c_str(),
                std::to_string(e.size).c_str());
    std::printf("owner:     %s (uid %u), mode %s\n", user_name(e.uid).c_str(), e.uid, mode_text(e.mode).c_str());
    std::printf("modified:  %s (%s ago)\n", clock_time(e.mtime_ns).c_str(),
                human_age(now_ns() - e.mtime_ns).c_str());
    std::string st = state_text(e.state);
    if (!e.note.empty()) st += " (" + e.note + ")";
    std::printf("state:     %s\n", st.c_str());
}

int cmd_stat(const std::string& name, bool as_json) {
    std::optional<admin::Entry> found = admin::lookup(name);
    if (!found) {
        std::fprintf(stderr, "shmctl stat: no segment or file '%s' in %s\n", printable(name).c_str(),
                     shm::shm_directory().c_str());
        return 1;
    }
    admin::Entry& e = *found;
    std::optional<admin::SegmentInfo> seg;
    if (e.kind == admin::FileKind::libshm) seg = admin::inspect_segment(e.path, true);
    bool ok = !seg || seg->status == admin::SegmentStatus::ok || seg->status == admin::SegmentStatus::uninitialised ||
              seg->status == admin::SegmentStatus::dead;
    if (as_json) {
        json j = {{"schema_version", kSchemaVersion}, {"file", entry_json(e)}};
        j["segment"] = seg ? segment_json(*seg, e) : json(nullptr);
        print_json(j);
        return ok ? 0 : 1;
    }
    if (!seg) {
        print_file_lines(e);
        std::printf("users:     %s\n", e.users.empty() ? "-" : users_text(e, 64).c_str());
        for (const admin::User& u : e.users)
            std::printf("  pid %d %s: %s%s%s\n", u.pid, printable(u.comm).c_str(), u.mapped ? "mapped" : "",
                        u.mapped && u.open ? ", " : "", u.open ? "open" : "");
        return 0;
    }
    const admin::SegmentInfo& s = *seg;
    std::printf("segment:   %s\n", printable(s.name).c_str());
    print_file_lines(e);
    if (s.status != admin::SegmentStatus::ok) {
        std::printf("error:     %s\n", s.error.message.c_str());
        if (!ok) {
            std::fprintf(stderr, "shmctl stat: %s: %s\n", printable(e.name).c_str(), s.error.message.c_str());
            return 1;
        }
        return 0;
    }
    std::printf("layout:    version %u\n", s.layout_version);
    std::printf("heap:      %s: %s used, %s free\n", human_bytes(s.heap_size).c_str(),
                human_bytes(s.heap_used).c_str(), human_bytes(s.heap_size - s.heap_used).c_str());
    std::printf("created:   %s (%s ago) by pid %d (%s), %s (uid %u)\n", clock_time(s.created_at_ns).c_str(),
                human_age(now_ns() - s.created_at_ns).c_str(), s.creator_pid,
                s.creator_alive ? "alive" : "exited", user_name(s.creator_uid).c_str(), s.creator_uid);
    std::printf("flags:     %s\n", s.persistent ? "persistent" : "-");
    std::printf("attach:    %zu of %u slots occupied: %u alive, %u dead\n", s.slots.size(), s.max_attach, s.live,
                s.dead);
    if (!s.slots.empty()) {
        Table t({"SLOT", "PID", "USER", "ATTACHED", "ALIVE", "COMMAND"});
        for (const shm::AttachInfo& a : s.slots) {
            std::string comm;
            for (const admin::User& u : e.users)
                if (u.pid == a.pid && a.alive) comm = printable(u.comm);
            t.add({std::to_string(a.slot), std::to_string(a.pid), user_name(a.uid), clock_time(a.attached_at_ns),
                   a.alive ? "yes" : "no (dead)", comm.empty() ? "-" : comm});
        }
        t.print(stdout, true, "  ");
    }
    if (s.directory_busy) {
        std::printf("objects:   ? (%s)\n", s.directory_note.c_str());
    } else {
        std::printf("objects:   %zu\n", s.objects.size());
        if (!s.objects.empty()) {
            Table t({"NAME", "KIND", "SIZE", "STATE"});
            t.right_align(2);
            for (const admin::ObjectState& o : s.objects)
                t.add({o.info.name, shm::to_string(o.info.kind), human_bytes(o.info.size), object_text(o)});
            t.print(stdout, true, "  ");
        }
    }
    return 0;
}

// ---- df ---------------------------------------------------------------------

int cmd_df(bool as_json) {
    ProgressLine progress;
    admin::Scan s = admin::scan(progress.callback());
    progress.finish();
    struct Sum {
        std::size_t files = 0;
        std::uint64_t bytes = 0;
    };
    std::map<std::string, Sum> sums;
    const char* order[] = {"libshm in use", "libshm leaked", "libshm persistent", "libshm unknown",
                           "foreign in use", "foreign leaked", "foreign unknown"};
    for (const char* k : order) sums[k];
    std::uint64_t listed = 0, old_foreign = 0;
    const auto grace = std::chrono::nanoseconds(std::chrono::minutes(5)).count();
    for (const admin::Entry& e : s.entries) {
        bool lib = e.kind == admin::FileKind::libshm;
        std::string key = std::string(lib ? "libshm " : "foreign ") + state_text(e.state);
        Sum& sum = sums[key];
        ++sum.files;
        sum.bytes += e.allocated;
        listed += e.allocated;
        if (!lib && e.state == admin::State::leaked && e.age_ns >= grace) old_foreign += e.allocated;
    }
    std::uint64_t unlisted = s.fs.used > listed ? s.fs.used - listed : 0;
    if (as_json) {
        auto pair = [&](const char* k) { return json{{"files", sums[k].files}, {"bytes", sums[k].bytes}}; };
        print_json({{"schema_version", kSchemaVersion},
                    {"dir", s.dir},
                    {"filesystem", {{"size", s.fs.size}, {"used", s.fs.used}, {"free", s.fs.free}}},
                    {"libshm",
                     {{"in_use", pair("libshm in use")},
                      {"leaked", pair("libshm leaked")},
                      {"persistent", pair("libshm persistent")},
                      {"unknown", pair("libshm unknown")}}},
                    {"foreign",
                     {{"in_use", pair("foreign in use")},
                      {"leaked", pair("foreign leaked")},
                      {"unknown", pair("foreign unknown")}}},
                    {"unlisted_bytes", unlisted},
                    {"uninspected_processes", s.uninspected_processes}});
        return 0;
    }
    double pct = s.fs.size ? 100.0 * static_cast<double>(s.fs.used) / static_cast<double>(s.fs.size) : 0;
    std::printf("%s: %s, %s used (%.0f%%), %s free\n\n", s.dir.c_str(), human_bytes(s.fs.size).c_str(),
                human_bytes(s.fs.used).c_str(), pct, human_bytes(s.fs.free).c_str());
    Table t({"", "FILES", "SIZE"});
    t.right_align(1);
    t.right_align(2);
    for (const char* k : order) t.add({k, std::to_string(sums[k].files), human_bytes(sums[k].bytes)});
    t.add({"elsewhere", "", human_bytes(unlisted)});
    t.print(stdout, true);
    std::printf("\n(elsewhere: deleted files still mapped or open, subdirectories, and files outside %s)\n",
                s.dir.c_str());
    const Sum& lib_leaked = sums["libshm leaked"];
    const Sum& foreign_leaked = sums["foreign leaked"];
    if (lib_leaked.files)
        std::printf("`shmctl gc` frees %s (%zu leaked libshm segments).\n", human_bytes(lib_leaked.bytes).c_str(),
                    lib_leaked.files);
    if (foreign_leaked.files)
        std::printf("`shmctl gc --foreign` also frees %s of %s in foreign files nobody uses "
                    "(those unused for over 5m; --min-age sets the grace period).\n",
                    human_bytes(old_foreign).c_str(), human_bytes(foreign_leaked.bytes).c_str());
    if (std::size_t n = unknown_for_hidden(s)) std::printf("%s.\n", hidden_note(s, n).c_str());
    return 0;
}

// ---- gc ---------------------------------------------------------------------

int cmd_gc(bool dry_run, bool foreign, std::chrono::nanoseconds min_age, bool as_json) {
    ProgressLine progress;
    admin::GcOptions opt;
    opt.dry_run = dry_run;
    opt.foreign = foreign;
    opt.min_age = min_age;
    opt.progress = progress.callback();
    admin::GcReport r = admin::gc(opt);
    progress.finish();
    if (as_json) {
        json actions = json::array();
        for (const admin::GcAction& a : r.actions)
            actions.push_back({{"name", a.name},
                               {"kind", admin::to_string(a.kind)},
                               {"outcome", admin::to_string(a.outcome)},
                               {"bytes", a.bytes},
                               {"dead_slots", a.dead_slots},
                               {"reason", a.outcome == admin::GcAction::failed ? a.error.message : a.reason}});
        print_json({{"schema_version", kSchemaVersion},
                    {"dir", shm::shm_directory().string()},
                    {"dry_run", dry_run},
                    {"foreign", foreign},
                    {"min_age_seconds", std::chrono::duration_cast<std::chrono::seconds>(min_age).count()},
                    {"actions", actions},
                    {"files_reclaimed", r.files_reclaimed},
                    {"bytes_freed", r.bytes_freed},
                    {"dead_slots_cleared", r.dead_slots_cleared},
                    {"failures", r.failures},
                    {"foreign_left", {{"files", r.foreign_left}, {"bytes", r.foreign_left_bytes}}}});
        return r.failures ? 1 : 0;
    }
    const uid_t me = ::geteuid();
    std::size_t others_skipped = 0;
    Table done({"", "", "", ""});
    done.right_align(2);
    for (const admin::GcAction& a : r.actions) {
        std::string detail = admin::to_string(a.kind);
        if (!a.reason.empty()) detail += ": " + a.reason;
        if (a.dead_slots)
            detail += " (" + std::to_string(a.dead_slots) + " dead attach slot" + (a.dead_slots == 1 ? "" : "s") + ")";
        switch (a.outcome) {
            case admin::GcAction::reclaimed:
                done.add({dry_run ? "would reclaim" : "reclaimed", printable(a.name), human_bytes(a.bytes), detail});
                break;
            case admin::GcAction::cleared:
                done.add({dry_run ? "would clear" : "cleared", printable(a.name),
                          std::to_string(a.dead_slots) + " slot" + (a.dead_slots == 1 ? "" : "s"),
                          "dead attach slots; kept: " + a.reason});
                break;
            case admin::GcAction::kept: done.add({"kept", printable(a.name), "", a.reason}); break;
            case admin::GcAction::skipped: {
                // Other users' files we may not even read are theirs to clean;
                // only count them, unless they are libshm segments.
                if (me != 0 && a.kind != admin::FileKind::libshm && a.uid != me) {
                    ++others_skipped;
                    break;
                }
                std::fprintf(stderr, "skipped %s: %s\n", printable(a.name).c_str(), a.reason.c_str());
                break;
            }
            case admin::GcAction::failed:
                std::fprintf(stderr, "failed  %s: %s\n", printable(a.name).c_str(), a.error.message.c_str());
                break;
        }
    }
    done.print(stdout, false);
    std::string summary = dry_run ? "gc --dry-run: would reclaim " : "gc: reclaimed ";
    summary += std::to_string(r.files_reclaimed) + (r.files_reclaimed == 1 ? " file, " : " files, ") +
               human_bytes(r.bytes_freed) + (dry_run ? "" : " freed");
    if (r.dead_slots_cleared)
        summary += std::string("; ") + (dry_run ? "would clear " : "cleared ") + std::to_string(r.dead_slots_cleared) +
                   " dead attach slot" + (r.dead_slots_cleared == 1 ? "" : "s");
    if (r.failures) summary += "; " + std::to_string(r.failures) + " failed";
    if (dry_run) summary += "; nothing was changed";
    std::printf("%s\n", summary.c_str());
    if (others_skipped)
        std::fprintf(stderr, "(%zu %s of other users that uid %u may not inspect %s left alone)\n", others_skipped,
                     others_skipped == 1 ? "file" : "files", static_cast<unsigned>(me),
                     others_skipped == 1 ? "was" : "were");
    if (r.foreign_left)
        std::printf("%zu foreign %s (%s) nobody uses %s left alone: %s\n", r.foreign_left,
                    r.foreign_left == 1 ? "file" : "files", human_bytes(r.foreign_left_bytes).c_str(),
                    r.foreign_left == 1 ? "was" : "were",
                    foreign ? ("younger than --min-age " + human_duration(min_age)).c_str()
                            : "`shmctl gc --foreign` removes those unused for over 5m");
    return r.failures ? 1 : 0;
}

// ---- rm ---------------------------------------------------------------------

int cmd_rm(const std::vector<std::string>& names, bool force) {
    int rc = 0;
    for (const std::string& n : names) {
        admin::RemoveResult r = admin::remove_segment(n, force);
        if (r.outcome == admin::RemoveResult::removed) {
            std::printf("removed segment '%s' (%s)\n", r.segment.c_str(), human_bytes(r.bytes).c_str());
        } else {
            std::fprintf(stderr, "shmctl rm: %s\n", r.error.message.c_str());
            rc = 1;
        }
    }
    return rc;
}

// ---- status -------------------------------------------------------------------

constexpr int kExitNoDaemon = 3;

std::string seconds_text(double s) {
    if (!(s >= 0)) return "?";
    if (s < 10) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.1fs", s);
        return buf;
    }
    return human_age(static_cast<std::int64_t>(s * 1e9));
}

int cmd_status(bool as_json) {
    admin::DaemonStatus st = admin::daemon_status(g_socket);
    bool absent = !st.running && admin::daemon_absent(st.error.code);
    if (as_json) {
        json j;
        if (st.running) {
            j = json::parse(st.reply_json, nullptr, false);
            if (!j.is_object()) j = json::object();
        }
        j["schema_version"] = kSchemaVersion;
        j["running"] = st.running;
        j["socket"] = st.socket;
        if (!st.running) j["error"] = st.error.message;
        print_json(j);
        return st.running ? 0 : absent ? kExitNoDaemon : 1;
    }
    if (!st.running) {
        if (absent)
            std::fprintf(stderr, "shmd is not running: %s\n", st.error.message.c_str());
        else
            std::fprintf(stderr, "shmctl status: %s\n", st.error.message.c_str());
        return absent ? kExitNoDaemon : 1;
    }
    std::printf("shmd %s, pid %d, listening on %s\n", st.version.c_str(), static_cast<int>(st.pid),
                st.socket.c_str());
    std::printf("serves:     %s\n", st.shm_dir.c_str());
    std::printf("uptime:     %s\n", seconds_text(st.uptime_s).c_str());
    std::printf("clients:    %" PRIu64 " %s, %" PRIu64 " %s open (this one included)\n", st.clients,
                st.clients == 1 ? "process" : "processes", st.connections,
                st.connections == 1 ? "connection" : "connections");
    std::printf("tracked:    %" PRIu64 " %s, %s, used by %" PRIu64 " live %s\n", st.segments,
                st.segments == 1 ? "segment" : "segments", human_bytes(st.bytes).c_str(), st.processes,
                st.processes == 1 ? "process" : "processes");
    std::printf("reclaimed:  %" PRIu64 " %s, %s so far\n", st.reclaims, st.reclaims == 1 ? "file" : "files",
                human_bytes(st.reclaimed_bytes).c_str());
    std::string every = st.sweep_interval_s > 0 ? "every " + seconds_text(st.sweep_interval_s) : "no periodic sweep";
    if (st.sweeps)
        std::printf("sweeps:     %" PRIu64 ", the last %s ago (%s)\n", st.sweeps,
                    seconds_text(st.last_sweep_s_ago).c_str(), every.c_str());
    else
        std::printf("sweeps:     none yet (%s)\n", every.c_str());
    std::string reserve = st.reserve.empty() || st.reserve == "0"
                              ? "none"
                              : (st.reserve.back() == '%' ? st.reserve : human_bytes(std::strtoull(st.reserve.c_str(), nullptr, 10)));
    std::printf("quotas:     per user %s; kept free %s\n",
                st.user_quota ? human_bytes(st.user_quota).c_str() : "none", reserve.c_str());
    std::printf("foreign:    %s\n", st.reclaim_foreign ? "reclaimed by the sweep (--reclaim-foreign)"
                                                         : "left alone (no --reclaim-foreign)");
    std::printf("requests:   %" PRIu64 " (%" PRIu64 " refused)\n", st.requests, st.refused);
    return 0;
}

std::string version_text() {
    return std::string("shmctl ") + shm::version() + " (libshm " + shm::version() + ", segment layout version " +
           std::to_string(shm::kLayoutVersion) + ")";
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"shmctl: see and reclaim what fills the shm directory (/dev/shm).\n"
                 "Exit status: 0 done, 1 something was refused or failed, 2 usage error,\n"
                 "3 (status) shmd is not running.",
                 "shmctl"};
    app.set_version_flag("-V,--version", version_text());
    app.require_subcommand(1);
    app.fallthrough();
    std::string dir;
    app.add_option("--dir", dir, "the shm directory (default: $SHM_DIR, else /dev/shm)");
    app.add_flag("-b,--bytes", g_bytes, "sizes in bytes instead of human units");
    app.add_option("--socket", g_socket,
                   "the daemon's socket, for status and ls (default: $SHM_DAEMON_SOCKET, else "
                   "$XDG_RUNTIME_DIR/shmd.sock when it exists and you are not root, else /run/shmd/shmd.sock)");

    bool as_json = false;
    auto json_flag = [&](CLI::App* c) {
        c->add_flag("--json", as_json, "machine-readable output (schema in README, \"shmctl\")");
    };

    bool all = false, noheadings = false;
    CLI::App* ls = app.add_subcommand(
        "ls", "list libshm segments and leaked files (--all: every file); marks those the daemon tracks");
    ls->add_flag("-a,--all", all, "show every file, not only libshm segments and leaked files");
    ls->add_flag("--noheadings", noheadings, "no header line (for scripts)");
    json_flag(ls);

    std::string stat_name;
    CLI::App* st = app.add_subcommand("stat", "show a segment's header, attach slots and objects with their state");
    st->add_option("NAME", stat_name, "segment name (or any file name in the shm directory)")->required();
    json_flag(st);

    CLI::App* df = app.add_subcommand("df", "how the shm filesystem is used: libshm and foreign, in use and leaked");
    json_flag(df);

    bool dry_run = false, foreign = false;
    std::string min_age_text = "5m";
    std::chrono::nanoseconds min_age{};
    CLI::App* gc = app.add_subcommand("gc", "reclaim libshm segments of dead processes (--foreign: other unused files)");
    gc->add_flag("-n,--dry-run", dry_run, "show what would be reclaimed; change nothing");
    gc->add_flag("--foreign", foreign,
                 "also remove files libshm did not create that no live process maps or holds open");
    gc->add_option("--min-age", min_age_text,
                   "with --foreign: leave files modified more recently than this (e.g. 30s, 5m, 2h, 0)")
        ->capture_default_str()
        ->check([&](const std::string& v) -> std::string {
            std::chrono::nanoseconds d;
            return admin::parse_duration(v, d) ? "" : "not a duration (use e.g. 30s, 5m, 2h, 1d or 0)";
        });
    json_flag(gc);

    std::vector<std::string> rm_names;
    bool force = false;
    CLI::App* rm = app.add_subcommand("rm", "remove libshm segments by name; refuses ones in use unless --force");
    rm->add_option("NAME", rm_names, "segment names")->required();
    rm->add_flag("-f,--force", force, "remove even when live processes are attached (they keep their mapping)");

    CLI::App* status = app.add_subcommand(
        "status", "what the daemon (shmd) tracks and has reclaimed; exit status 3 if it is not running");
    json_flag(status);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    }
    if (!dir.empty()) ::setenv("SHM_DIR", dir.c_str(), 1);
    admin::parse_duration(min_age_text, min_age);

    try {
        if (ls->parsed()) return cmd_ls(all, as_json, noheadings);
        if (st->parsed()) return cmd_stat(stat_name, as_json);
        if (df->parsed()) return cmd_df(as_json);
        if (gc->parsed()) return cmd_gc(dry_run, foreign, min_age, as_json);
        if (rm->parsed()) return cmd_rm(rm_names, force);
        if (status->parsed()) return cmd_status(as_json);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "shmctl: %s\n", e.what());
        return 1;
    }
    return 2;
}
