// The /proc scan (proc_scan.hpp), and process_info() (admin.hpp).
#include "admin/proc_scan.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <set>

#include "admin/util.hpp"
#include "platform/platform.hpp"

namespace shm::admin {

using platform::sys;

// ---- parsing ------------------------------------------------------------

bool parse_proc_stat(std::string_view t, ProcStat& out) {
    // "pid (comm) state ppid pgrp session tty tpgid flags ... starttime(22) ..."
    std::size_t open = t.find('(');
    std::size_t close = t.rfind(')');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open) return false;
    out = ProcStat{};
    out.pid = static_cast<pid_t>(std::strtol(std::string(t.substr(0, open)).c_str(), nullptr, 10));
    out.comm = std::string(t.substr(open + 1, close - open - 1));
    // Fields after the command name, split on single spaces; field 3 first.
    std::size_t p = close + 1;
    int field = 2;
    while (p < t.size() && field < 22) {
        while (p < t.size() && t[p] == ' ') ++p;
        std::size_t e = p;
        while (e < t.size() && t[e] != ' ' && t[e] != '\n') ++e;
        if (e == p) break;
        ++field;
        std::string_view f = t.substr(p, e - p);
        if (field == 3) out.state = f[0];
        else if (field == 4) out.ppid = static_cast<pid_t>(std::strtol(std::string(f).c_str(), nullptr, 10));
        else if (field == 9) out.flags = std::strtoull(std::string(f).c_str(), nullptr, 10);
        else if (field == 22) out.start_time = std::strtoull(std::string(f).c_str(), nullptr, 10);
        p = e;
    }
    return field == 22 && out.pid > 0;
}

bool parse_maps_line(std::string_view l, MapsLine& out) {
    // "start-end perms offset major:minor inode   path"
    out = MapsLine{};
    std::size_t p = 0;
    auto skip_field = [&] {
        while (p < l.size() && l[p] != ' ') ++p;
        while (p < l.size() && l[p] == ' ') ++p;
    };
    skip_field();  // address range
    skip_field();  // perms
    skip_field();  // offset
    if (p >= l.size()) return false;
    char* end = nullptr;
    std::string rest(l.substr(p, 64));  // dev and inode fit easily
    const char* s = rest.c_str();
    unsigned long maj = std::strtoul(s, &end, 16);
    if (end == s || *end != ':') return false;
    const char* m = end + 1;
    unsigned long min = std::strtoul(m, &end, 16);
    if (end == m || *end != ' ') return false;
    const char* i = end;
    while (*i == ' ') ++i;
    unsigned long long ino = std::strtoull(i, &end, 10);
    if (end == i) return false;
    out.dev_major = static_cast<unsigned>(maj);
    out.dev_minor = static_cast<unsigned>(min);
    out.inode = ino;
    p += static_cast<std::size_t>(end - s);
    while (p < l.size() && l[p] == ' ') ++p;
    std::string_view path = l.substr(p);
    while (!path.empty() && (path.back() == '\n' || path.back() == '\r')) path.remove_suffix(1);
    constexpr std::string_view kDeleted = " (deleted)";
    if (path.size() >= kDeleted.size() && path.substr(path.size() - kDeleted.size()) == kDeleted) {
        out.deleted = true;
        path.remove_suffix(kDeleted.size());
    }
    out.path = std::string(path);
    return true;
}

int read_text_at(int dirfd, const char* name, std::string& out, std::size_t limit) {
    out.clear();
    Fd fd(sys([&] { return ::openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOCTTY); }));
    if (!fd.valid()) return errno;
    char buf[65536];
    for (;;) {
        ssize_t n = sys([&] { return ::read(fd.get(), buf, sizeof buf); });
        if (n < 0) return errno;
        if (n == 0) return 0;
        out.append(buf, static_cast<std::size_t>(n));
        if (out.size() >= limit) return 0;
    }
}

std::optional<ProcessInfo> process_info(pid_t pid) {
    if (pid <= 0) return std::nullopt;
    std::string text;
    ProcStat st;
    const std::string path = "/proc/" + std::to_string(pid) + "/stat";
    if (read_text_at(AT_FDCWD, path.c_str(), text, 4096) != 0 || !parse_proc_stat(text, st)) return std::nullopt;
    // A zombie (or a dying task) has exited; it only waits to be reaped.
    if (st.state == 'Z' || st.state == 'X' || st.state == 'x') return std::nullopt;
    return ProcessInfo{st.pid, st.start_time, st.comm};
}

namespace {

constexpr std::uint64_t kPfKthread = 0x00200000;  // PF_KTHREAD in /proc/<pid>/stat flags

bool vanished(int err) { return err == ENOENT || err == ESRCH; }

bool is_digits(const char* s) {
    if (!*s) return false;
    for (; *s; ++s)
        if (*s < '0' || *s > '9') return false;
    return true;
}

// The numbers after a "Key:" of /proc/<pid>/status.
void numbers(std::string_view rest, std::vector<std::uint32_t>& into) {
    std::string s(rest);
    const char* c = s.c_str();
    for (;;) {
        char* end = nullptr;
        unsigned long v = std::strtoul(c, &end, 10);
        if (end == c) break;
        into.push_back(static_cast<std::uint32_t>(v));
        c = end;
    }
}

// Uid:/Gid:/Groups:/CapEff: of /proc/<pid>/status.
void parse_status(const std::string& text, HiddenProcess& h) {
    std::size_t p = 0;
    while (p < text.size()) {
        std::size_t e = text.find('\n', p);
        if (e == std::string::npos) e = text.size();
        std::string_view line(text.data() + p, e - p);
        if (line.substr(0, 4) == "Uid:") numbers(line.substr(4), h.uids);
        else if (line.substr(0, 4) == "Gid:") numbers(line.substr(4), h.gids);
        else if (line.substr(0, 7) == "Groups:") numbers(line.substr(7), h.gids);
        else if (line.substr(0, 7) == "CapEff:") {
            std::uint64_t caps = std::strtoull(std::string(line.substr(7)).c_str(), nullptr, 16);
            // CAP_DAC_OVERRIDE (1), CAP_DAC_READ_SEARCH (2), CAP_FOWNER (3).
            h.privileged = (caps & 0xE) != 0;
        }
        p = e + 1;
    }
}

void add_use(ProcessScan& s, std::uint64_t ino, pid_t pid, bool mapped) {
    auto& v = s.uses[ino];
    if (v.empty() || v.back().pid != pid) v.push_back(FileUse{pid, false, false});
    (mapped ? v.back().mapped : v.back().open) = true;
}

// Which files a scan records: those on one device, perhaps only some inodes.
struct Wanted {
    dev_t dev;
    unsigned dev_major, dev_minor;
    std::set<std::uint64_t> only;
    bool all;

    Wanted(dev_t d, const std::vector<std::uint64_t>* inodes)
        : dev(d), dev_major(major(d)), dev_minor(minor(d)), all(inodes == nullptr) {
        if (inodes) only.insert(inodes->begin(), inodes->end());
    }
    bool inode(std::uint64_t ino) const { return all || only.count(ino) != 0; }
};

std::vector<std::string> list_pids(int procfd, const std::string& proc) {
    std::vector<std::string> pids;
    Dir d(::fdopendir(::dup(procfd)));
    if (!d.d) platform::fail(errno, "cannot list " + proc);
    while (dirent* de = ::readdir(d.d))
        if (is_digits(de->d_name)) pids.emplace_back(de->d_name);
    return pids;
}

// Files of one process mapped on the wanted device. 0 or the errno.
int read_maps(int pfd, pid_t pid, const Wanted& want, ProcessScan& s, std::string& text) {
    if (int err = read_text_at(pfd, "maps", text)) return err;
    std::size_t p = 0;
    MapsLine ml;
    while (p < text.size()) {
        std::size_t e = text.find('\n', p);
        if (e == std::string::npos) e = text.size();
        std::string_view line(text.data() + p, e - p);
        p = e + 1;
        if (parse_maps_line(line, ml) && ml.inode != 0 && ml.dev_major == want.dev_major &&
            ml.dev_minor == want.dev_minor && want.inode(ml.inode))
            add_use(s, ml.inode, pid, true);
    }
    return 0;
}

// Files of one process open on the wanted device. 0 or the errno.
int read_fds(int pfd, pid_t pid, const Wanted& want, ProcessScan& s) {
    int fdd = sys([&] { return ::openat(pfd, "fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
    if (fdd < 0) return errno;
    Dir d(::fdopendir(fdd));
    if (!d.d) {
        int err = errno;
        ::close(fdd);
        return err;
    }
    while (dirent* de = ::readdir(d.d)) {
        if (de->d_name[0] == '.') continue;
        struct stat fst;
        // Follows the magic link to the open file itself (no open, no path
        // lookup): works for deleted files too.
        if (::fstatat(::dirfd(d.d), de->d_name, &fst, 0) != 0) continue;  // closed meanwhile
        if (S_ISREG(fst.st_mode) && fst.st_dev == want.dev && want.inode(fst.st_ino)) add_use(s, fst.st_ino, pid, false);
    }
    return 0;
}

// A process we may not look into: what it could open, from its status.
// False if it exited meanwhile.
bool add_hidden(int pfd, const ProcStat& st, int why, ProcessScan& s, std::string& text) {
    HiddenProcess h;
    h.pid = st.pid;
    h.comm = st.comm;
    h.error = why;
    int err = read_text_at(pfd, "status", text);
    if (vanished(err)) return false;
    if (err == 0)
        parse_status(text, h);
    else
        h.privileged = true;  // cannot tell what it may open: assume anything
    s.hidden.push_back(std::move(h));
    return true;
}

// One process of the scan, through its /proc directory.
void scan_process(int procfd, const std::string& name, const Wanted& want, ProcessScan& s, std::string& text) {
    pid_t pid = static_cast<pid_t>(std::strtol(name.c_str(), nullptr, 10));
    // The directory fd pins this process: if it exits (and its pid is
    // reused) reads through it fail with ESRCH instead of reading another.
    Fd pfd(sys([&] { return ::openat(procfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); }));
    if (!pfd.valid()) return;  // gone
    ProcStat st;
    if (read_text_at(pfd.get(), "stat", text) != 0 || !parse_proc_stat(text, st)) return;
    if (st.state == 'Z' || st.state == 'X' || (st.flags & kPfKthread)) return;
    s.processes[pid] = ProcessScan::Process{st.comm, st.start_time};
    if (pid == ::getpid()) return;
    int err = read_maps(pfd.get(), pid, want, s, text);
    if (err == 0) err = read_fds(pfd.get(), pid, want, s);
    if (vanished(err)) {
        s.processes.erase(pid);
    } else if (err == 0) {
        ++s.inspected;
    } else if (!add_hidden(pfd.get(), st, err, s, text)) {
        s.processes.erase(pid);
    }
}

}  // namespace

ProcessScan ProcessScan::run(dev_t dev, const std::vector<std::uint64_t>* only, const Progress& progress,
                             const std::string& proc) {
    ProcessScan s;
    s.dev = dev;
    const Wanted want(dev, only);
    Fd procfd(sys([&] { return ::open(proc.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); }));
    if (!procfd.valid()) platform::fail(errno, "cannot read " + proc);
    const std::vector<std::string> pids = list_pids(procfd.get(), proc);
    std::string text;
    std::size_t done = 0;
    for (const std::string& name : pids) {
        if (progress) progress("reading /proc", done, pids.size());
        ++done;
        scan_process(procfd.get(), name, want, s, text);
    }
    if (progress) progress("reading /proc", pids.size(), pids.size());
    return s;
}

const std::vector<FileUse>* ProcessScan::users(std::uint64_t inode) const {
    auto it = uses.find(inode);
    return it == uses.end() ? nullptr : &it->second;
}

std::vector<const HiddenProcess*> ProcessScan::could_use(std::uint32_t uid, std::uint32_t gid,
                                                         std::uint32_t mode) const {
    // A process could have the file open or mapped if it could open it: with
    // a capability that bypasses permissions, as its owner (who may also
    // chmod it), or through the group or other permission bits. (A
    // descriptor passed over a Unix socket escapes this; such a file is
    // still held by its sender or seen in the receiver when we may look.)
    std::vector<const HiddenProcess*> out;
    for (const HiddenProcess& h : hidden) {
        bool can = h.privileged || (mode & 0006) != 0;
        if (!can) can = std::find(h.uids.begin(), h.uids.end(), uid) != h.uids.end();
        if (!can && (mode & 0060)) can = std::find(h.gids.begin(), h.gids.end(), gid) != h.gids.end();
        if (can) out.push_back(&h);
    }
    return out;
}

std::string ProcessScan::comm_of(pid_t pid, std::uint64_t start_time) const {
    auto it = processes.find(pid);
    if (it == processes.end()) return {};
    if (start_time != 0 && it->second.start_time != start_time) return {};
    return it->second.comm;
}

}  // namespace shm::admin
