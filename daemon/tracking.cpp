// shmd: which live process uses which segment, reclaiming a segment when
// its last user dies, and the periodic sweep (server.hpp).
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>

#include <shm/error.hpp>
#include <shm/names.hpp>
#include <shm/segment.hpp>

#include "events.hpp"
#include "server.hpp"

namespace shmd {

namespace admin = shm::admin;
using admin::human_bytes;

namespace {

constexpr std::size_t kMaxProcs = 65536;
constexpr auto kLockTimeout = std::chrono::milliseconds(20);

}  // namespace

// ---- processes ------------------------------------------------------------------

Server::Proc* Server::adopt(pid_t pid, std::uint64_t start_time, int pidfd) {
    auto it = procs_.find(pid);
    if (it != procs_.end()) {
        if (start_time == 0 || it->second.start_time == start_time) {
            if (pidfd >= 0) ::close(pidfd);
            return &it->second;
        }
        // The pid now names another process: the one we watched is gone.
        process_exited(pid);
    }
    if (procs_.size() >= kMaxProcs) {
        if (pidfd >= 0) ::close(pidfd);
        log_->warn("watching {} processes already; not watching pid {}", procs_.size(), pid);
        return nullptr;
    }
    if (pidfd < 0) pidfd = pidfd_open(pid);
    if (pidfd < 0) return nullptr;  // gone
    // The pidfd pins the process it was opened for; while it has not exited
    // the pid is not reused, so the start time read now is that process's.
    std::optional<admin::ProcessInfo> info = admin::process_info(pid);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = tag(kPidfd, static_cast<std::uint64_t>(pid));
    if (!info || (start_time != 0 && info->start_time != start_time) || pidfd_exited(pidfd) ||
        ::epoll_ctl(epfd_, EPOLL_CTL_ADD, pidfd, &ev) != 0) {
        ::close(pidfd);
        return nullptr;
    }
    Proc& p = procs_[pid];
    p.pidfd = pidfd;
    p.pid = pid;
    p.start_time = info->start_time;
    p.comm = info->comm;
    return &p;
}

void Server::drop_proc(pid_t pid) {
    auto it = procs_.find(pid);
    if (it == procs_.end()) return;
    if (it->second.pidfd >= 0) {
        ::epoll_ctl(epfd_, EPOLL_CTL_DEL, it->second.pidfd, nullptr);
        ::close(it->second.pidfd);
    }
    for (const std::string& n : it->second.segments) {
        auto s = segs_.find(n);
        if (s != segs_.end()) s->second.users.erase(pid);
    }
    procs_.erase(it);
}

// pid no longer uses segment `name`; a process that uses nothing and has no
// connection is no longer watched.
void Server::release_user(pid_t pid, const std::string& name) {
    auto p = procs_.find(pid);
    if (p == procs_.end()) return;
    p->second.segments.erase(name);
    if (p->second.segments.empty() && p->second.conns == 0) drop_proc(pid);
}

// A pidfd is an event source, never the liveness answer: it wakes the
// daemon when a watched process exits (pidfd_exited() only drops stale
// events). Whether anyone still uses a segment is decided by look_at(),
// through Segment::reap_dead(): the library's one liveness module, the
// attach slots' kernel locks, as for shmctl gc.
void Server::process_exited(pid_t pid) {
    auto it = procs_.find(pid);
    if (it == procs_.end() || !pidfd_exited(it->second.pidfd)) return;  // a stale event
    std::vector<std::string> names(it->second.segments.begin(), it->second.segments.end());
    std::string who = "pid " + std::to_string(pid) + (it->second.comm.empty() ? "" : " (" + it->second.comm + ")");
    log_->debug("{} exited; it used {} segments", who, names.size());
    drop_proc(pid);
    std::string why = who + " exited";
    for (const std::string& n : names) look_at(n, why.c_str());
}

// ---- segments -------------------------------------------------------------------

void Server::forget(const std::string& name) {
    auto it = segs_.find(name);
    if (it == segs_.end()) return;
    const std::set<pid_t> users = std::move(it->second.users);
    segs_.erase(it);
    for (pid_t pid : users) release_user(pid, name);
}

bool Server::look_at(const std::string& name, const char* why) {
    // A process that is exiting releases its slot locks one by one: one
    // may still be held when we reap and gone when we read the header. A
    // dead slot seen in the header means: reap again (a few times at most;
    // the pidfd of anyone still exiting tells us the rest).
    for (int attempt = 0;; ++attempt) {
        shm::ReapReport r;
        try {
            r = shm::Segment::reap_dead(name, kLockTimeout);
        } catch (const shm::error& e) {
            log_->debug("segment '{}': {}", name, e.what());
            forget(name);
            return false;
        }
        if (r.busy) {
            recheck_[name] = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
            return false;
        }
        recheck_.erase(name);
        if (!r.exists) {
            forget(name);
            return false;
        }
        if (r.unlinked) {
            ++reclaims_;
            reclaimed_bytes_ += r.bytes;
            log_->info("reclaimed segment '{}' ({}): {}, no live process was attached", name, human_bytes(r.bytes),
                       why);
            forget(name);
            return true;
        }
        if (r.dead_slots_cleared)
            log_->debug("segment '{}': cleared {} dead slots ({})", name, r.dead_slots_cleared, why);
        admin::SegmentInfo info = admin::inspect_segment(shm::segment_path(name).string(), false);
        bool dead_seen = info.status == admin::SegmentStatus::ok &&
                         (info.dead > 0 || (info.live == 0 && !info.persistent));
        if (dead_seen && attempt < 3) continue;
        track(name, info, dead_seen);
        return false;
    }
}

void Server::track(const std::string& name, const admin::SegmentInfo& info, bool dead_seen) {
    auto now = std::chrono::steady_clock::now();
    if (info.status == admin::SegmentStatus::uninitialised) {
        // Being made, or left half-made by a creator that died: reap_dead()
        // reclaims it once it is abandoned and nobody is at work on it.
        recheck_[name] = now + admin::abandoned_after() + std::chrono::milliseconds(100);
        return;
    }
    if (info.status != admin::SegmentStatus::ok) return forget(name);
    Seg& s = segs_[name];
    s.bytes = info.total_size;
    s.uid = info.creator_uid;
    std::set<pid_t> users;
    for (const shm::AttachInfo& a : info.slots) {
        if (!a.alive) continue;
        if (Proc* p = adopt(a.pid, a.start_time)) {
            p->segments.insert(name);
            users.insert(a.pid);
        }
    }
    for (pid_t old : s.users)
        if (!users.count(old)) release_user(old, name);
    s.users = std::move(users);
    // Live slots whose processes we could not watch (gone by now, or in
    // another pid namespace): look again soon rather than lose track.
    if ((dead_seen || s.users.size() < info.live) && !recheck_.count(name))
        recheck_[name] = now + std::chrono::milliseconds(dead_seen ? 20 : 1000);
}

int Server::recheck_timeout_ms() const {
    if (recheck_.empty()) return -1;
    auto first = std::min_element(recheck_.begin(), recheck_.end(),
                                  [](const auto& a, const auto& b) { return a.second < b.second; })
                     ->second;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(first - std::chrono::steady_clock::now()).count();
    return ms <= 0 ? 0 : static_cast<int>(std::min<long long>(ms + 1, 60000));
}

void Server::recheck_due() {
    auto now = std::chrono::steady_clock::now();
    std::vector<std::string> due;
    for (auto& [n, t] : recheck_)
        if (t <= now) due.push_back(n);
    for (const std::string& n : due) {
        recheck_.erase(n);
        look_at(n, "looked at again");
    }
}

// ---- the sweep --------------------------------------------------------------------

void Server::sweep(bool initial) {
    auto t0 = std::chrono::steady_clock::now();
    last_sweep_ = t0;
    ++sweeps_;
    // The same reclamation shmctl gc does, over one reading of the directory
    // that then also tells us who uses every segment left.
    admin::GcOptions go;
    go.foreign = opt_.reclaim_foreign;
    go.min_age = opt_.foreign_min_age;
    admin::Scan scan;
    admin::GcReport rep;
    try {
        scan = admin::scan();
        rep = admin::gc(scan, go);
    } catch (const std::exception& e) {
        log_->error("sweep: {}", e.what());
        return;
    }
    for (const auto& a : rep.actions) {
        if (a.outcome == admin::GcAction::reclaimed) {
            ++reclaims_;
            reclaimed_bytes_ += a.bytes;
            log_->info("sweep reclaimed {} '{}' ({}): {}", a.kind == admin::FileKind::libshm ? "segment" : "file",
                       a.name, human_bytes(a.bytes), a.reason);
        } else if (a.outcome == admin::GcAction::failed) {
            log_->warn("sweep could not reclaim '{}': {}", a.name, a.error.message);
        }
    }
    track_all(scan, rep, initial);
    log_sweep(rep, initial, t0);
    // Reservations of creators that never attached expire.
    auto now = std::chrono::steady_clock::now();
    pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [&](const Pending& p) { return p.expires < now; }),
                   pending_.end());
}

void Server::track_all(const admin::Scan& scan, const admin::GcReport& rep, bool initial) {
    // What gc did to each libshm file, by file name.
    std::map<std::string, admin::GcAction::Outcome> done;
    for (const admin::GcAction& a : rep.actions)
        if (a.kind == admin::FileKind::libshm) done[a.name] = a.outcome;
    std::map<std::string, const admin::Entry*> seen;  // by segment name
    for (const admin::Entry& e : scan.entries) {
        std::string name = admin::segment_name_of(e.name);
        if (e.kind == admin::FileKind::libshm && e.segment && !name.empty()) seen[name] = &e;
    }
    std::vector<std::string> gone;
    for (auto& [n, s] : segs_)
        if (!seen.count(n)) gone.push_back(n);
    for (const std::string& n : gone) forget(n);
    // Watch every live process of every segment, including those whose
    // clients never registered (started before us, or forked children).
    // The scan read each segment once: what gc left alone or only cleared
    // of dead slots is tracked from that reading; what gc found changed
    // under it is looked at again.
    for (const auto& [name, e] : seen) {
        auto d = done.find(e->name);
        if (d == done.end() || d->second == admin::GcAction::cleared)
            track(name, *e->segment, false);
        else if (d->second == admin::GcAction::reclaimed)
            forget(name);
        else
            look_at(name, initial ? "found at start" : "sweep");
    }
}

void Server::log_sweep(const admin::GcReport& rep, bool initial, std::chrono::steady_clock::time_point t0) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
    log_->log(initial || rep.files_reclaimed ? spdlog::level::info : spdlog::level::debug,
              "{}: {} reclaimed ({}), {} segments and {} processes tracked, {} ms",
              initial ? "state rebuilt" : "sweep", rep.files_reclaimed, human_bytes(rep.bytes_freed), segs_.size(),
              procs_.size(), ms);
}

}  // namespace shmd
