// shmctl status: what the daemon (shmd) tracks and has reclaimed.
#include <cstdlib>

#include <fmt/format.h>

#include "commands.hpp"

namespace shmctl {

namespace {

std::string seconds_text(double s) {
    if (!(s >= 0)) return "?";
    if (s < 10) return fmt::format("{:.1f}s", s);
    return human_age(static_cast<std::int64_t>(s * 1e9));
}

int status_json(const admin::DaemonStatus& st, bool absent) {
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

// The reserve as the daemon reports it: "10%", a byte count, or "0".
std::string reserve_text(const std::string& reserve) {
    if (reserve.empty() || reserve == "0") return "none";
    if (reserve.back() == '%') return reserve;
    return bytes_text(std::strtoull(reserve.c_str(), nullptr, 10));
}

void print_status(const admin::DaemonStatus& st) {
    fmt::print("shmd {}, pid {}, listening on {}\n", st.version, st.pid, st.socket);
    fmt::print("serves:     {}\n", st.shm_dir);
    fmt::print("uptime:     {}\n", seconds_text(st.uptime_s));
    fmt::print("clients:    {}, {} open (this one included)\n", count_text(st.clients, "process", "processes"),
               count_text(st.connections, "connection", "connections"));
    fmt::print("tracked:    {}, {}, used by {} live {}\n", count_text(st.segments, "segment", "segments"),
               bytes_text(st.bytes), st.processes, st.processes == 1 ? "process" : "processes");
    fmt::print("reclaimed:  {}, {} so far\n", count_text(st.reclaims, "file", "files"), bytes_text(st.reclaimed_bytes));
    std::string every = st.sweep_interval_s > 0 ? "every " + seconds_text(st.sweep_interval_s) : "no periodic sweep";
    if (st.sweeps)
        fmt::print("sweeps:     {}, the last {} ago ({})\n", st.sweeps, seconds_text(st.last_sweep_s_ago), every);
    else
        fmt::print("sweeps:     none yet ({})\n", every);
    fmt::print("quotas:     per user {}; kept free {}\n", st.user_quota ? bytes_text(st.user_quota) : "none",
               reserve_text(st.reserve));
    fmt::print("foreign:    {}\n", st.reclaim_foreign ? "reclaimed by the sweep (--reclaim-foreign)"
                                                       : "left alone (no --reclaim-foreign)");
    fmt::print("requests:   {} ({} refused)\n", st.requests, st.refused);
}

}  // namespace

int cmd_status(bool as_json) {
    admin::DaemonStatus st = admin::daemon_status(g_socket);
    const bool absent = !st.running && admin::daemon_absent(st.error.code);
    if (as_json) return status_json(st, absent);
    if (!st.running) {
        if (absent)
            fmt::print(stderr, "shmd is not running: {}\n", st.error.message);
        else
            fmt::print(stderr, "shmctl status: {}\n", st.error.message);
        return absent ? kExitNoDaemon : 1;
    }
    print_status(st);
    return 0;
}

}  // namespace shmctl
