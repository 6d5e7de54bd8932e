// shm::admin: the shm directory listed and every file in it classified
// (list_directory, scan, lookup, fs_usage).
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cstring>

#include "admin/lease.hpp"
#include "admin/proc_scan.hpp"
#include "admin/util.hpp"
#include "platform/platform.hpp"
#include "shm/admin.hpp"
#include "shm/names.hpp"

namespace shm::admin {

using platform::sys;

namespace {

FileStat file_stat(const std::string& name, const struct stat& st) {
    FileStat f;
    f.name = name;
    f.dev = st.st_dev;
    f.ino = st.st_ino;
    f.uid = st.st_uid;
    f.gid = st.st_gid;
    f.mode = st.st_mode & 07777;
    f.size = static_cast<std::uint64_t>(st.st_size);
    f.allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
    f.mtime_ns = ns_of(st.st_mtim);
    return f;
}

std::vector<std::string> sorted_names(int dfd, const std::string& dir) {
    std::vector<std::string> names;
    Dir d(::fdopendir(::dup(dfd)));
    if (!d.d) platform::fail(errno, "cannot list " + dir);
    while (dirent* de = ::readdir(d.d)) {
        if (std::strcmp(de->d_name, ".") == 0 || std::strcmp(de->d_name, "..") == 0) continue;
        names.emplace_back(de->d_name);
    }
    std::sort(names.begin(), names.end());
    return names;
}

Listing list_at(int dfd, const std::string& dir, const Progress& progress) {
    Listing l;
    l.dir = dir;
    struct stat dst;
    if (::fstat(dfd, &dst) != 0) platform::fail(errno, "cannot stat " + dir);
    l.dev = dst.st_dev;
    const std::vector<std::string> names = sorted_names(dfd, dir);
    std::size_t done = 0;
    for (const std::string& n : names) {
        if (progress && (++done % 256) == 0) progress("listing the directory", done, names.size());
        struct stat st;
        if (::fstatat(dfd, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // removed meanwhile
        if (S_ISREG(st.st_mode))
            l.files.push_back(file_stat(n, st));
        else
            l.skipped.push_back(n);
    }
    return l;
}

Entry make_entry(const std::string& dir, const FileStat& f) {
    Entry e;
    e.name = f.name;
    e.path = dir + "/" + f.name;
    e.kind = kind_of_name(f.name);
    e.dev = f.dev;
    e.ino = f.ino;
    e.uid = f.uid;
    e.gid = f.gid;
    e.mode = f.mode;
    e.size = f.size;
    e.allocated = f.allocated;
    e.mtime_ns = f.mtime_ns;
    e.age_ns = std::max<std::int64_t>(0, now_ns() - e.mtime_ns);
    return e;
}

void classify_ok_segment(Entry& e, const SegmentInfo& si) {
    if (si.created_at_ns > 0) e.age_ns = std::max<std::int64_t>(0, now_ns() - si.created_at_ns);
    for (const AttachInfo& a : si.slots)
        if (a.alive) {
            User u;
            u.pid = a.pid;
            u.attached = true;
            e.users.push_back(u);
        }
    if (si.live > 0)
        e.state = State::in_use;
    else if (si.persistent)
        e.state = State::persistent;
    else {
        e.state = State::leaked;
        e.note = si.dead ? "every attached process died" : "nobody attached";
    }
}

// Classify a libshm file from its header. Returns false if it turned out not
// to be a segment (then it is treated as a foreign file).
bool classify_libshm(Entry& e) {
    SegmentInfo si = inspect_segment(e.path, false);
    switch (si.status) {
        case SegmentStatus::ok: classify_ok_segment(e, si); break;
        case SegmentStatus::uninitialised:
            e.state = si.being_created ? State::in_use : State::leaked;
            e.note = si.error.message;
            break;
        case SegmentStatus::dead:
            e.state = State::leaked;
            e.note = si.error.message;
            break;
        case SegmentStatus::not_a_segment:
            e.kind = FileKind::other;
            e.note = "named like a libshm segment, but " + si.error.message;
            return false;
        case SegmentStatus::unreadable:
            si.error.message += owner_text(e.uid, e.mode);
            e.state = State::unknown;
            e.note = si.error.message;
            break;
        case SegmentStatus::version_mismatch:
        case SegmentStatus::corrupt:
            e.state = State::unknown;
            e.note = si.error.message;
            break;
    }
    e.segment = std::move(si);
    return true;
}

void classify_foreign(Entry& e, const ProcessScan& ps, int dirfd) {
    if (e.dev != ps.dev) {
        e.state = State::unknown;
        e.note = "on another filesystem than the shm directory";
        return;
    }
    if (const auto* v = ps.users(e.ino))
        for (const FileUse& f : *v) {
            User u;
            u.pid = f.pid;
            u.mapped = f.mapped;
            u.open = f.open;
            e.users.push_back(u);
        }
    if (!e.users.empty()) {
        e.state = State::in_use;
        return;
    }
    Lease l;
    take_lease(l, dirfd, e.name, e.dev, e.ino);
    if (l.result == Lease::in_use) {
        e.state = State::in_use;
        e.note = "open or mapped by a process we may not inspect";
        return;
    }
    // No lease (not our file): judge from /proc alone.
    auto hidden = l.result == Lease::unused ? std::vector<const HiddenProcess*>{} : ps.could_use(e.uid, e.gid, e.mode);
    if (!hidden.empty()) {
        e.state = State::unknown;
        e.note = std::to_string(hidden.size()) + (hidden.size() == 1 ? " process" : " processes") +
                 " we may not inspect could use it (e.g. pid " + std::to_string(hidden[0]->pid) + " " +
                 hidden[0]->comm + ")";
        return;
    }
    e.state = State::leaked;
    if (e.note.empty()) e.note = "no process maps it or holds it open";
}

void fill_comms(Entry& e, const ProcessScan* ps) {
    for (User& u : e.users) {
        if (ps) u.comm = ps->comm_of(u.pid);
        if (u.comm.empty())
            if (auto p = process_info(u.pid)) u.comm = p->comm;
    }
}

struct Classified {
    bool processes_scanned = false;
    std::size_t uninspected = 0;
};

// Classify entries; scans /proc once if any foreign file needs it.
Classified classify_all(std::vector<Entry>& entries, int dirfd, dev_t dev, const Progress& progress) {
    std::vector<Entry*> foreign;
    std::size_t done = 0;
    for (Entry& e : entries) {
        if (progress && e.kind == FileKind::libshm) progress("reading segments", done, entries.size());
        ++done;
        if (e.kind != FileKind::libshm || !classify_libshm(e)) foreign.push_back(&e);
    }
    Classified c;
    ProcessScan ps;
    if (!foreign.empty()) {
        ps = ProcessScan::run(dev, nullptr, progress);
        c.processes_scanned = true;
        c.uninspected = ps.hidden.size();
        std::size_t n = 0;
        for (Entry* e : foreign) {
            if (progress && (n % 64) == 0) progress("checking files", n, foreign.size());
            ++n;
            classify_foreign(*e, ps, dirfd);
        }
    }
    for (Entry& e : entries) fill_comms(e, c.processes_scanned ? &ps : nullptr);
    return c;
}

}  // namespace

FsUsage fs_usage(const std::string& dir) {
    FsUsage u;
    struct statvfs sv;
    if (sys([&] { return ::statvfs(dir.c_str(), &sv); }) == 0) {
        u.size = std::uint64_t(sv.f_blocks) * sv.f_frsize;
        u.used = std::uint64_t(sv.f_blocks - sv.f_bfree) * sv.f_frsize;
        u.free = std::uint64_t(sv.f_bavail) * sv.f_frsize;
    }
    return u;
}

Listing list_directory(const Progress& progress) {
    const std::string dir = shm_directory().string();
    Fd dfd = open_directory(dir, "cannot open the shm directory ");
    return list_at(dfd.get(), dir, progress);
}

Scan scan(const Progress& progress) {
    Scan s;
    s.dir = shm_directory().string();
    Fd dfd = open_directory(s.dir, "cannot open the shm directory ");
    s.fs = fs_usage(s.dir);
    Listing l = list_at(dfd.get(), s.dir, progress);
    s.skipped = std::move(l.skipped);
    for (const FileStat& f : l.files) s.entries.push_back(make_entry(s.dir, f));
    Classified c = classify_all(s.entries, dfd.get(), static_cast<dev_t>(l.dev), progress);
    s.processes_scanned = c.processes_scanned;
    s.uninspected_processes = c.uninspected;
    return s;
}

std::optional<Entry> lookup(std::string_view name) {
    std::string dir = shm_directory().string();
    if (name.empty() || name.find('/') != std::string_view::npos || name == "." || name == "..") return std::nullopt;
    Fd dfd = open_directory(dir, "cannot open the shm directory ");
    struct stat dst;
    if (::fstat(dfd.get(), &dst) != 0) platform::fail(errno, "cannot stat " + dir);
    std::vector<std::string> tries;
    if (valid_segment_name(name)) tries.push_back(std::string(kFilePrefix) + std::string(name));
    tries.emplace_back(name);
    for (const std::string& n : tries) {
        struct stat st;
        if (::fstatat(dfd.get(), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) continue;
        std::vector<Entry> v{make_entry(dir, file_stat(n, st))};
        classify_all(v, dfd.get(), dst.st_dev, {});
        return std::move(v[0]);
    }
    return std::nullopt;
}

}  // namespace shm::admin
