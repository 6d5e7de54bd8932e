// shmd: the protocol's operations (daemon_protocol.hpp), quotas and replies
// (server.hpp).
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>

#include <shm/error.hpp>
#include <shm/names.hpp>
#include <shm/segment.hpp>

#include "server.hpp"

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

namespace shmd {

using nlohmann::json;
namespace proto = shm::proto;
namespace admin = shm::admin;
using admin::human_bytes;

namespace {

constexpr std::size_t kMaxSegmentsPerConn = 65536;
constexpr std::size_t kMaxPendingPerUser = 1024;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace

void Server::handle(Conn& c, const std::string& msg, bool& close_after) {
    auto decoded = proto::decode_request(msg);
    if (auto* e = std::get_if<proto::DecodeError>(&decoded)) {
        ++refused_;
        warn_once(c, std::string("sent a bad request (") + e->code + "): " + e->message);
        send_reply(c, proto::error_reply(e->code, e->message, e->has_id, e->id));
        close_after = e->fatal;
        return;
    }
    const proto::Request& r = std::get<proto::Request>(decoded);
    switch (r.op) {
        case proto::Op::hello: return on_hello(c, r);
        case proto::Op::attach:
        case proto::Op::detach: return on_attach_or_detach(c, r);
        case proto::Op::reserve: return on_reserve(c, r);
        case proto::Op::remove: return on_remove(c, r);
        case proto::Op::status: return send_reply(c, reply_status(r.has_id, r.id));
        case proto::Op::list: return send_reply(c, reply_list(r.segment, r.has_id, r.id));
    }
}

void Server::refuse(Conn& c, const proto::Request& r, const char* code, const std::string& message) {
    ++refused_;
    send_reply(c, proto::error_reply(code, message, r.has_id, r.id));
}

void Server::reply_ok(Conn& c, const proto::Request& r, json extra) {
    extra["v"] = proto::kVersion;
    extra["ok"] = true;
    if (r.has_id) extra["id"] = r.id;
    send_reply(c, dump(extra));
}

// ---- operations -------------------------------------------------------------

void Server::on_hello(Conn& c, const proto::Request& r) {
    if (c.hello) return refuse(c, r, proto::code::malformed, "hello was already said on this connection");
    std::error_code ec;
    std::string dir = std::filesystem::weakly_canonical(r.shm_dir, ec).string();
    if (ec) dir = r.shm_dir;
    if (dir != shm_dir_real_)
        return refuse(c, r, proto::code::wrong_dir, "this daemon serves " + shm_dir_real_ + ", not " + dir);
    // The kernel's pidfd for the peer (Linux 6.5+) names exactly the
    // process that connected; else open one by pid, which adopt() checks
    // against the start time the client claims.
    int pidfd = -1;
    socklen_t len = sizeof pidfd;
    if (::getsockopt(c.fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) pidfd = -1;
    Proc* p = adopt(c.pid, r.start_time, pidfd);
    if (!p) {
        warn_once(c, "said hello with a start time that is not its own");
        return refuse(c, r, proto::code::unauthorised,
                      "start time " + std::to_string(r.start_time) + " is not that of pid " + std::to_string(c.pid) +
                          " (the peer of this socket)");
    }
    ++p->conns;
    c.hello = true;
    reply_ok(c, r, {{"pid", c.pid}, {"uid", c.uid}, {"daemon_pid", ::getpid()}, {"version", SHM_VERSION_STRING}});
}

void Server::on_reserve(Conn& c, const proto::Request& r) {
    if (!c.hello) return refuse(c, r, proto::code::malformed, std::string(proto::to_string(r.op)) + " before hello");
    const char* code = nullptr;
    std::string why = check_quota(c.uid, r.bytes, code);
    if (!why.empty()) {
        log_->info("refused to let pid {} (uid {}) create segment '{}' ({}): {}", c.pid, c.uid, r.segment,
                   human_bytes(r.bytes), why);
        return refuse(c, r, code, why);
    }
    auto now = std::chrono::steady_clock::now();
    pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                  [&](const Pending& p) { return p.expires < now || p.name == r.segment; }),
                   pending_.end());
    // Creates not yet seen are bounded per user, so that nobody can grow
    // the daemon's memory by asking and never creating.
    std::size_t mine = 0;
    for (const Pending& p : pending_) mine += p.uid == c.uid;
    if (mine >= kMaxPendingPerUser)
        return refuse(c, r, proto::code::limit,
                      "uid " + std::to_string(c.uid) + " has " + std::to_string(mine) +
                          " creates asked for and not yet made; try again in a few seconds");
    pending_.push_back({c.uid, r.segment, r.bytes, now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(opt_.reservation_life)});
    // If the creator dies before it registers the segment, its exit makes
    // us look at the name.
    if (Proc* p = adopt(c.pid, 0)) p->segments.insert(r.segment);
    reply_ok(c, r);
}

void Server::on_attach_or_detach(Conn& c, const proto::Request& r) {
    if (!c.hello) return refuse(c, r, proto::code::malformed, std::string(proto::to_string(r.op)) + " before hello");
    const bool attach = r.op == proto::Op::attach;
    struct stat st;
    if (::lstat(shm::segment_path(r.segment).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        if (attach) return refuse(c, r, proto::code::not_found, "no segment '" + r.segment + "' in " + shm_dir_real_);
        c.attached.erase(r.segment);
        forget(r.segment);
        return reply_ok(c, r);
    }
    // Registering tells the daemon to look at a segment: only for segments
    // the caller could open itself.
    bool may = c.uid == 0 || st.st_uid == c.uid || (st.st_mode & 0006) == 0006 ||
               (st.st_gid == c.gid && (st.st_mode & 0060) == 0060);
    if (!may) {
        warn_once(c, "named segment '" + r.segment + "' of another user");
        return refuse(c, r, proto::code::unauthorised,
                      "segment '" + r.segment + "' belongs to uid " + std::to_string(st.st_uid) +
                          " and is not open to uid " + std::to_string(c.uid));
    }
    if (attach) {
        if (c.attached.size() >= kMaxSegmentsPerConn)
            return refuse(c, r, proto::code::limit, "too many segments registered on one connection");
        c.attached.insert(r.segment);
        pending_.erase(std::remove_if(pending_.begin(), pending_.end(),
                                      [&](const Pending& p) { return p.name == r.segment; }),
                       pending_.end());
        look_at(r.segment, "attach");
        auto s = segs_.find(r.segment);
        if (s != segs_.end()) s->second.registered = true;
    } else {
        c.attached.erase(r.segment);
        std::string why = "pid " + std::to_string(c.pid) + " detached";
        look_at(r.segment, why.c_str());
    }
    reply_ok(c, r);
}

void Server::on_remove(Conn& c, const proto::Request& r) {
    struct stat st;
    if (::lstat(shm::segment_path(r.segment).c_str(), &st) != 0)
        return refuse(c, r, proto::code::not_found, "no segment '" + r.segment + "' in " + shm_dir_real_);
    if (c.uid != 0 && st.st_uid != c.uid) {
        warn_once(c, "tried to remove segment '" + r.segment + "' of uid " + std::to_string(st.st_uid));
        return refuse(c, r, proto::code::unauthorised,
                      "segment '" + r.segment + "' belongs to uid " + std::to_string(st.st_uid) +
                          "; only its owner or root may remove it");
    }
    std::uint64_t bytes = static_cast<std::uint64_t>(st.st_blocks) * 512;
    try {
        std::vector<std::int32_t> live;
        bool removed = r.force ? shm::Segment::unlink(r.segment) : shm::Segment::unlink_if_unused(r.segment, &live);
        if (!r.force && !live.empty()) {
            std::string pids;
            for (auto p : live) pids += (pids.empty() ? "" : ", ") + std::to_string(p);
            return refuse(c, r, proto::code::in_use,
                          "segment '" + r.segment + "' is in use by pid " + pids + " (force removes it anyway)");
        }
        if (!removed) return refuse(c, r, proto::code::not_found, "no segment '" + r.segment + "'");
    } catch (const shm::error& e) {
        return refuse(c, r, proto::code::failed, e.what());
    }
    log_->info("removed segment '{}' ({}) at the request of pid {} (uid {})", r.segment, human_bytes(bytes), c.pid,
               c.uid);
    forget(r.segment);
    reply_ok(c, r, {{"bytes", bytes}});
}

// ---- quotas -----------------------------------------------------------------------

std::string Server::check_quota(uid_t uid, std::uint64_t bytes, const char*& code) {
    std::string why = check_user_quota(uid, bytes);
    code = proto::code::quota;
    if (why.empty()) {
        why = check_reserve(bytes);
        code = proto::code::reserve;
    }
    return why;
}

std::string Server::check_user_quota(uid_t uid, std::uint64_t bytes) {
    if (!opt_.user_quota || uid == 0) return {};
    std::uint64_t used = 0;
    try {
        for (const admin::FileStat& f : admin::list_directory().files)
            if (f.uid == uid) used += f.allocated;
    } catch (const shm::error&) {
        // An unreadable directory counts as empty, as for any other user.
    }
    for (const Pending& p : pending_)
        if (p.uid == uid) used += p.bytes;
    if (used + bytes <= opt_.user_quota) return {};
    return "it needs " + human_bytes(bytes) + ", and user " + std::to_string(uid) + " already uses " +
           human_bytes(used) + " of the per-user limit of " + human_bytes(opt_.user_quota) + " (shmd --user-quota)";
}

std::string Server::check_reserve(std::uint64_t bytes) {
    if (opt_.reserve_fraction <= 0 && opt_.reserve_bytes == 0) return {};
    const admin::FsUsage fs = admin::fs_usage(opt_.shm_dir);
    if (fs.size == 0) return {};  // the filesystem could not be asked
    const std::uint64_t keep = opt_.reserve_fraction > 0
                                   ? static_cast<std::uint64_t>(static_cast<double>(fs.size) * opt_.reserve_fraction)
                                   : opt_.reserve_bytes;
    std::uint64_t pending = 0;
    for (const Pending& p : pending_) pending += p.bytes;
    const std::uint64_t avail = fs.free > pending ? fs.free - pending : 0;
    if (bytes + keep <= avail) return {};
    std::string kept = opt_.reserve_fraction > 0 ? reserve_text() + " (" + human_bytes(keep) + ")" : human_bytes(keep);
    return "it needs " + human_bytes(bytes) + ", " + human_bytes(avail) + " of " + human_bytes(fs.size) +
           " are free in " + shm_dir_real_ + ", and " + kept + " is kept free (shmd --reserve)";
}

// "10%" for a fraction of the filesystem.
std::string Server::reserve_text() const { return fmt::format("{:g}%", opt_.reserve_fraction * 100); }

// ---- replies ----------------------------------------------------------------------

std::string Server::reply_status(bool has_id, std::uint64_t id) {
    json j;
    j["v"] = proto::kVersion;
    j["ok"] = true;
    if (has_id) j["id"] = id;
    j["version"] = SHM_VERSION_STRING;
    j["pid"] = ::getpid();
    j["socket"] = opt_.socket;
    j["shm_dir"] = shm_dir_real_;
    auto now = std::chrono::steady_clock::now();
    j["uptime_s"] = std::chrono::duration<double>(now - started_).count();
    std::set<pid_t> client_pids;
    for (auto& [fd, c] : conns_)
        if (c.hello) client_pids.insert(c.pid);
    j["connections"] = conns_.size();
    j["clients"] = client_pids.size();
    j["processes"] = procs_.size();
    j["segments"] = segs_.size();
    std::uint64_t bytes = 0;
    for (auto& [n, s] : segs_) bytes += s.bytes;
    j["bytes"] = bytes;
    j["reclaims"] = reclaims_;
    j["reclaimed_bytes"] = reclaimed_bytes_;
    j["sweeps"] = sweeps_;
    j["last_sweep_s_ago"] = std::chrono::duration<double>(now - last_sweep_).count();
    j["sweep_interval_s"] = std::chrono::duration<double>(opt_.sweep_interval).count();
    j["requests"] = requests_;
    j["refused"] = refused_;
    j["user_quota"] = opt_.user_quota;
    if (opt_.reserve_fraction > 0) j["reserve"] = reserve_text();
    else j["reserve"] = opt_.reserve_bytes;
    j["reclaim_foreign"] = opt_.reclaim_foreign;
    return dump(j);
}

std::string Server::reply_list(const std::string& after, bool has_id, std::uint64_t id) {
    json j;
    j["v"] = proto::kVersion;
    j["ok"] = true;
    if (has_id) j["id"] = id;
    json arr = json::array();
    auto it = after.empty() ? segs_.begin() : segs_.upper_bound(after);
    std::size_t n = 0;
    for (; it != segs_.end() && n < proto::kListPage; ++it, ++n) {
        json s;
        s["name"] = it->first;
        s["bytes"] = it->second.bytes;
        s["registered"] = it->second.registered;
        s["pids"] = json(std::vector<pid_t>(it->second.users.begin(), it->second.users.end()));
        arr.push_back(std::move(s));
    }
    j["segments"] = std::move(arr);
    j["more"] = it != segs_.end();
    return dump(j);
}

}  // namespace shmd
