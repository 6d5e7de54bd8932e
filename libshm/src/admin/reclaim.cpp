// shm::admin: reclaiming (gc, remove_segment).
//
// libshm segments are reaped through Segment::reap_dead(), which takes the
// segment's meta lock, so a process attaching meanwhile is never cut off.
// Foreign files are removed only when asked, past a grace period, and only
// after a re-check just before the unlink (recheck_and_unlink below).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <optional>

#include "admin/lease.hpp"
#include "admin/proc_scan.hpp"
#include "admin/util.hpp"
#include "platform/platform.hpp"
#include "shm/admin.hpp"
#include "shm/names.hpp"
#include "shm/segment.hpp"

namespace shm::admin {

namespace {

std::string permission_hint(const Entry& e, int err) {
    if (err != EACCES && err != EPERM) return {};
    return " (the file belongs to uid " + std::to_string(e.uid) + "; only its owner or root may do that)";
}

GcAction action_for(const Entry& e, GcAction::Outcome outcome) {
    GcAction a;
    a.outcome = outcome;
    a.name = e.name;
    a.kind = e.kind;
    a.uid = e.uid;
    return a;
}

void add(GcReport& r, GcAction a) {
    if (a.outcome == GcAction::reclaimed) {
        r.bytes_freed += a.bytes;
        ++r.files_reclaimed;
    }
    if (a.outcome == GcAction::failed) ++r.failures;
    r.dead_slots_cleared += a.dead_slots;
    r.actions.push_back(std::move(a));
}

// ---- libshm segments -------------------------------------------------------

// What reaping would do, without doing it.
std::optional<GcAction> preview_segment(const Entry& e) {
    const SegmentInfo& si = *e.segment;
    if (e.state == State::leaked) {
        GcAction a = action_for(e, GcAction::reclaimed);
        a.bytes = e.allocated;
        a.dead_slots = si.dead;
        a.reason = e.note;
        return a;
    }
    if (si.dead == 0) return std::nullopt;
    GcAction a = action_for(e, GcAction::cleared);
    a.dead_slots = si.dead;
    a.reason = si.persistent && si.live == 0 ? "persistent" : "in use";
    return a;
}

// Reap a leaked segment, or the dead attach slots of one in use.
std::optional<GcAction> reap_segment(const Entry& e) {
    const SegmentInfo& si = *e.segment;
    if (e.state != State::leaked && si.dead == 0) return std::nullopt;  // nothing to do
    GcAction a = action_for(e, GcAction::kept);
    try {
        ReapReport rr = Segment::reap_dead(si.name);
        a.dead_slots = rr.dead_slots_cleared;
        if (rr.unlinked) {
            a.outcome = GcAction::reclaimed;
            a.bytes = rr.bytes ? rr.bytes : e.allocated;
            a.reason = e.note;
        } else if (rr.dead_slots_cleared > 0) {
            a.outcome = GcAction::cleared;
            a.reason = rr.live_slots ? "in use" : "persistent";
        } else if (e.state == State::leaked) {
            a.reason = rr.live_slots ? "a process attached meanwhile" : "being created";
        } else {
            return std::nullopt;
        }
    } catch (const std::system_error& ex) {
        a.outcome = GcAction::failed;
        a.error = Error{std::string(ex.what()) + permission_hint(e, ex.code().value()), ex.code().value()};
    }
    return a;
}

void gc_segment(GcReport& r, const GcOptions& opt, const Entry& e) {
    if (e.state == State::unknown) {
        GcAction a = action_for(e, GcAction::skipped);
        a.reason = e.segment->error.message;
        add(r, std::move(a));
        return;
    }
    if (auto a = opt.dry_run ? preview_segment(e) : reap_segment(e)) add(r, std::move(*a));
}

// ---- foreign files ---------------------------------------------------------------

// Sort a foreign file: a removal candidate, left alone (counted), or skipped.
void sort_foreign(GcReport& r, const GcOptions& opt, const Entry& e, std::vector<const Entry*>& candidates) {
    const bool old_enough = e.age_ns >= opt.min_age.count();
    if (e.state == State::leaked) {
        if (opt.foreign && old_enough) {
            candidates.push_back(&e);
            return;
        }
        ++r.foreign_left;
        r.foreign_left_bytes += e.allocated;
    } else if (e.state == State::unknown && opt.foreign && old_enough) {
        GcAction a = action_for(e, GcAction::skipped);
        a.reason = e.note;
        add(r, std::move(a));
    }
}

// The re-check of one candidate: /proc read once more, for all candidates,
// when the first of them needs it (its lease could not be taken).
struct Recheck {
    const std::vector<const Entry*>& candidates;
    const Progress& progress;
    std::optional<ProcessScan> again;

    // Why a file whose lease we could not take must stay ("" if it may go).
    std::string in_use_by_proc(const Entry& e, const struct stat& st) {
        if (!again) {
            std::vector<std::uint64_t> inodes;
            for (const Entry* c : candidates) inodes.push_back(c->ino);
            again = ProcessScan::run(static_cast<dev_t>(e.dev), &inodes, progress);
        }
        if (const auto* v = again->users(e.ino); v && !v->empty())
            return "in use again by pid " + std::to_string(v->front().pid);
        if (!again->could_use(st.st_uid, st.st_gid, st.st_mode & 07777).empty())
            return "a process we may not inspect could now use it";
        return {};
    }
};

// Why a candidate must stay after all ("" if it may go): gone, replaced,
// changed, or in use since the first look.
std::string changed_since(const Entry& e, int dirfd, const Lease& l, struct stat& st, Recheck& rc) {
    if (::fstatat(dirfd, e.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return "gone before the re-check";
    if (!S_ISREG(st.st_mode) || st.st_dev != e.dev || st.st_ino != e.ino) return "replaced by another file meanwhile";
    if (ns_of(st.st_mtim) != e.mtime_ns) return "modified meanwhile";
    if (l.result == Lease::in_use) return "in use again at the re-check";
    if (l.result == Lease::unused && !l.intact()) return "a process opened it during the re-check";
    if (l.result == Lease::unavailable) return rc.in_use_by_proc(e, st);
    return {};
}

// Look again, just before unlinking: a process may have opened or mapped a
// candidate since the first pass. Where we may take the file's lease, the
// check is exact: holding the lease, no process can start using the file
// unseen, and we unlink only if nobody has started opening it. Where we may
// not, /proc is read once more for all such candidates; a process that
// opens the file after that pass keeps its descriptor and mapping (only the
// name goes).
GcAction recheck_and_unlink(const Entry& e, int dirfd, Recheck& rc) {
    Lease l;
    take_lease(l, dirfd, e.name, e.dev, e.ino);
    struct stat st;
    std::string why = changed_since(e, dirfd, l, st, rc);
    if (!why.empty()) {
        GcAction a = action_for(e, GcAction::kept);
        a.reason = why;
        return a;
    }
    if (::unlinkat(dirfd, e.name.c_str(), 0) != 0) {
        const int err = errno;
        GcAction a = action_for(e, GcAction::failed);
        a.error = Error{"cannot remove " + e.path + ": " + errno_text(err) + permission_hint(e, err), err};
        return a;
    }
    GcAction a = action_for(e, GcAction::reclaimed);
    a.bytes = static_cast<std::uint64_t>(st.st_blocks) * 512;
    a.reason = e.note;
    return a;
}

void remove_foreign(GcReport& r, const GcOptions& opt, const std::string& dir,
                    const std::vector<const Entry*>& candidates) {
    if (opt.dry_run) {
        for (const Entry* e : candidates) {
            GcAction a = action_for(*e, GcAction::reclaimed);
            a.bytes = e->allocated;
            a.reason = e->note;
            add(r, std::move(a));
        }
        return;
    }
    Fd dfd = open_directory(dir, "cannot open the shm directory ");
    Recheck rc{candidates, opt.progress, std::nullopt};
    std::size_t done = 0;
    for (const Entry* e : candidates) {
        if (opt.progress && (done % 64) == 0) opt.progress("removing files", done, candidates.size());
        ++done;
        add(r, recheck_and_unlink(*e, dfd.get(), rc));
    }
}

}  // namespace

GcReport gc(const GcOptions& opt) { return gc(scan(opt.progress), opt); }

GcReport gc(const Scan& s, const GcOptions& opt) {
    GcReport r;
    r.dry_run = opt.dry_run;
    std::vector<const Entry*> candidates;
    for (const Entry& e : s.entries) {
        if (e.kind == FileKind::libshm)
            gc_segment(r, opt, e);
        else
            sort_foreign(r, opt, e, candidates);
    }
    if (!candidates.empty()) remove_foreign(r, opt, s.dir, candidates);
    return r;
}

// ---- rm ----------------------------------------------------------------------------

namespace {

RemoveResult::Outcome refuse(RemoveResult& r, RemoveResult::Outcome o, std::string message, int code = 0) {
    r.outcome = o;
    r.error = Error{std::move(message), code};
    return o;
}

std::string pid_list(const std::vector<pid_t>& pids) {
    std::string s;
    for (pid_t p : pids) s += (s.empty() ? "" : ", ") + std::to_string(p);
    return s;
}

// The segment a name given to rm means: a segment name, or the file name
// "libshm.<name>" (a segment named exactly as given wins).
std::string segment_meant(std::string_view given) {
    std::string seg(given);
    if (seg.substr(0, kFilePrefix.size()) == kFilePrefix) {
        struct stat st;
        bool exact = valid_segment_name(seg) && ::lstat(segment_path(seg).c_str(), &st) == 0;
        if (!exact) seg = after_prefix(seg);
    }
    return seg;
}

// What the file's header says, where it forbids removing it. False (result
// set) if it is not ours to remove.
bool check_segment(RemoveResult& r, const std::string& path, const std::string& owner, bool force) {
    const std::string& seg = r.segment;
    SegmentInfo si = inspect_segment(path, false);
    switch (si.status) {
        case SegmentStatus::unreadable:
            refuse(r, RemoveResult::failed,
                   "cannot remove segment '" + seg + "': the OS refuses to let us open it: " +
                       (si.error.code ? errno_text(si.error.code) : si.error.message) + owner,
                   si.error.code);
            return false;
        case SegmentStatus::not_a_segment:
            refuse(r, RemoveResult::not_libshm, path + " is " + si.error.message + "; left alone");
            return false;
        case SegmentStatus::version_mismatch:
        case SegmentStatus::corrupt:
            refuse(r, RemoveResult::failed, "segment '" + seg + "': " + si.error.message + "; left alone", EPROTO);
            return false;
        default: break;
    }
    for (const AttachInfo& a : si.slots)
        if (a.alive) r.live_pids.push_back(a.pid);
    if (r.live_pids.empty() || force) return true;
    refuse(r, RemoveResult::in_use,
           "segment '" + seg + "' is in use by " + std::to_string(r.live_pids.size()) +
               (r.live_pids.size() == 1 ? " process" : " processes") + " (pid " + pid_list(r.live_pids) +
               "); not removed (--force removes it anyway; they keep their mapping)");
    return false;
}

void unlink_segment(RemoveResult& r, const std::string& owner, bool force) {
    const std::string& seg = r.segment;
    try {
        std::vector<std::int32_t> live;
        if (!Segment::unlink_if_unused(seg, force ? nullptr : &live)) {
            refuse(r, RemoveResult::not_found, "no segment '" + seg + "' (removed meanwhile)");
        } else if (!live.empty()) {
            // Someone attached after the first look: refuse, as above.
            r.live_pids.assign(live.begin(), live.end());
            refuse(r, RemoveResult::in_use,
                   "segment '" + seg + "' is in use (pid " + pid_list(r.live_pids) +
                       "); not removed (--force removes it anyway; they keep their mapping)");
        } else {
            r.outcome = RemoveResult::removed;
        }
    } catch (const std::system_error& e) {
        const int err = e.code().value();
        refuse(r, RemoveResult::failed,
               std::string("cannot remove segment '") + seg + "': " + e.what() +
                   (err == EACCES || err == EPERM ? owner : ""),
               err);
    }
}

}  // namespace

RemoveResult remove_segment(std::string_view given, bool force) {
    RemoveResult r;
    r.name = std::string(given);
    r.segment = segment_meant(given);
    const std::string& seg = r.segment;
    if (!valid_segment_name(seg)) {
        refuse(r, RemoveResult::not_libshm, "'" + r.name + "' is not a libshm segment name");
        return r;
    }
    std::string path = segment_path(seg).string();
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) {
        const int err = errno;
        if (err == ENOENT)
            refuse(r, RemoveResult::not_found, "no segment '" + seg + "' (no " + path + ")", err);
        else
            refuse(r, RemoveResult::failed, "cannot stat " + path + ": " + errno_text(err), err);
        return r;
    }
    if (!S_ISREG(st.st_mode)) {
        refuse(r, RemoveResult::not_libshm, path + " is not a regular file, not a libshm segment; left alone");
        return r;
    }
    r.bytes = static_cast<std::uint64_t>(st.st_blocks) * 512;
    const std::string owner = owner_text(st.st_uid, st.st_mode);
    if (check_segment(r, path, owner, force)) unlink_segment(r, owner, force);
    return r;
}

}  // namespace shm::admin
