// shm::admin: the daemon's status, asked over its socket (daemon_status,
// daemon_tracked), in the protocol shared with the library's client
// (client/daemon_protocol.hpp).
#include <algorithm>
#include <cstring>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "client/daemon_client.hpp"
#include "client/daemon_protocol.hpp"
#include "shm/admin.hpp"
#include "shm/error.hpp"

namespace shm::admin {

std::string daemon_socket() { return daemon_client::socket_path(); }

bool daemon_absent(int err) noexcept {
    return err == ENOENT || err == ECONNREFUSED || err == ENOTDIR || err == ENOTSOCK || err == EPROTOTYPE;
}

namespace {

// One request; the reply as a JSON object with "ok": true, or nullopt with
// st.error set.
std::optional<nlohmann::json> daemon_request(DaemonStatus& st, const std::string& request,
                                             std::chrono::milliseconds timeout) {
    using nlohmann::json;
    std::string text;
    try {
        text = daemon_client::call(st.socket, request, timeout);
    } catch (const shm::error& e) {
        const int err = e.code().value();
        st.error = Error{daemon_absent(err) ? "no daemon listens at " + st.socket + " (" + std::strerror(err) + ")"
                                            : std::string(e.what()),
                         err};
        return std::nullopt;
    }
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("ok") || !j["ok"].is_boolean()) {
        st.error = Error{"the daemon at " + st.socket + " sent a reply that is not the shmd protocol", EPROTO};
        return std::nullopt;
    }
    if (!j["ok"].get<bool>()) {
        auto m = j.find("message");
        st.error = Error{"the daemon at " + st.socket + " refused the request: " +
                             (m != j.end() && m->is_string() ? m->get<std::string>() : std::string("no reason given")),
                         EPROTO};
        return std::nullopt;
    }
    return j;
}

template <class T>
T field(const nlohmann::json& j, const char* key, T fallback = T()) {
    auto it = j.find(key);
    if (it == j.end()) return fallback;
    if constexpr (std::is_same_v<T, std::string>) {
        if (it->is_string()) return it->get<std::string>();
        if (it->is_number()) return it->dump();
        return fallback;
    } else if constexpr (std::is_same_v<T, bool>) {
        return it->is_boolean() ? it->get<bool>() : fallback;
    } else {
        return it->is_number() ? it->get<T>() : fallback;
    }
}

}  // namespace

DaemonStatus daemon_status(const std::string& socket, std::chrono::milliseconds timeout) {
    DaemonStatus st;
    st.socket = socket.empty() ? daemon_socket() : socket;
    auto j = daemon_request(st, R"({"v":1,"op":"status"})", timeout);
    if (!j) return st;
    st.running = true;
    st.version = field<std::string>(*j, "version");
    st.pid = field<pid_t>(*j, "pid");
    st.shm_dir = field<std::string>(*j, "shm_dir");
    st.uptime_s = field<double>(*j, "uptime_s");
    st.connections = field<std::uint64_t>(*j, "connections");
    st.clients = field<std::uint64_t>(*j, "clients");
    st.processes = field<std::uint64_t>(*j, "processes");
    st.segments = field<std::uint64_t>(*j, "segments");
    st.bytes = field<std::uint64_t>(*j, "bytes");
    st.reclaims = field<std::uint64_t>(*j, "reclaims");
    st.reclaimed_bytes = field<std::uint64_t>(*j, "reclaimed_bytes");
    st.sweeps = field<std::uint64_t>(*j, "sweeps");
    st.last_sweep_s_ago = field<double>(*j, "last_sweep_s_ago");
    st.sweep_interval_s = field<double>(*j, "sweep_interval_s");
    st.requests = field<std::uint64_t>(*j, "requests");
    st.refused = field<std::uint64_t>(*j, "refused");
    st.user_quota = field<std::uint64_t>(*j, "user_quota");
    st.reserve = field<std::string>(*j, "reserve", "0");
    st.reclaim_foreign = field<bool>(*j, "reclaim_foreign");
    for (const char* k : {"v", "ok", "id"}) j->erase(k);
    st.reply_json = j->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return st;
}

DaemonTracked daemon_tracked(const std::string& socket, std::chrono::milliseconds timeout) {
    DaemonTracked t;
    t.status = daemon_status(socket, timeout);
    if (!t.status.running) return t;
    std::string after;
    // Bounded: a daemon that kept saying "more" without moving on would
    // otherwise keep us here.
    for (int page = 0; page < 1 << 16; ++page) {
        nlohmann::json req = {{"v", proto::kVersion}, {"op", "list"}};
        if (!after.empty()) req["after"] = after;
        auto j = daemon_request(t.status, req.dump(), timeout);
        if (!j) {
            t.status.running = false;
            t.segments.clear();
            return t;
        }
        auto segs = j->find("segments");
        if (segs == j->end() || !segs->is_array()) break;
        std::string last;
        for (const nlohmann::json& s : *segs) {
            if (!s.is_object()) continue;
            TrackedSegment ts;
            ts.name = field<std::string>(s, "name");
            if (ts.name.empty()) continue;
            ts.bytes = field<std::uint64_t>(s, "bytes");
            ts.registered = field<bool>(s, "registered");
            auto p = s.find("pids");
            if (p != s.end() && p->is_array())
                for (const nlohmann::json& pid : *p)
                    if (pid.is_number_integer()) ts.pids.push_back(pid.get<pid_t>());
            last = ts.name;
            t.segments.push_back(std::move(ts));
        }
        if (!field<bool>(*j, "more") || last.empty() || last <= after) break;
        after = last;
    }
    std::sort(t.segments.begin(), t.segments.end(),
              [](const TrackedSegment& a, const TrackedSegment& b) { return a.name < b.name; });
    return t;
}

}  // namespace shm::admin
