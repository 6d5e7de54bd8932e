// Who maps or holds open which file, from one pass over /proc (proc_scan.cpp).
// Private: scan() and gc() use it to classify foreign files; the parsers are
// exposed here for tests.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "shm/admin.hpp"

namespace shm::admin {

// The fields of /proc/<pid>/stat that we use. The command name is the text
// between the first '(' and the last ')', so names with spaces and
// parentheses parse.
struct ProcStat {
    pid_t pid = 0;
    std::string comm;
    char state = '?';
    pid_t ppid = 0;
    std::uint64_t flags = 0;       // field 9 (PF_*)
    std::uint64_t start_time = 0;  // field 22, clock ticks since boot
};
bool parse_proc_stat(std::string_view text, ProcStat& out);

// One line of /proc/<pid>/maps.
struct MapsLine {
    unsigned dev_major = 0;
    unsigned dev_minor = 0;
    std::uint64_t inode = 0;
    std::string path;      // without the " (deleted)" suffix
    bool deleted = false;  // the kernel marked the file as unlinked
};
bool parse_maps_line(std::string_view line, MapsLine& out);

// Read a whole (proc) file relative to dirfd. Returns 0 or the errno.
int read_text_at(int dirfd, const char* name, std::string& out, std::size_t limit = 64u << 20);

// How one process uses one file.
struct FileUse {
    pid_t pid = 0;
    bool mapped = false;
    bool open = false;
};

// A process whose maps or fd table we were not allowed to read, with what
// /proc/<pid>/status (readable by anyone) says about what it could open.
struct HiddenProcess {
    pid_t pid = 0;
    std::string comm;
    std::vector<std::uint32_t> uids;  // real, effective, saved, filesystem
    std::vector<std::uint32_t> gids;  // the same, then the supplementary groups
    bool privileged = false;          // may bypass file permissions (CAP_DAC_*, CAP_FOWNER)
    int error = 0;                    // why we could not look (EACCES, EPERM)
};

// Who maps or holds open which file of one filesystem, from one pass over
// /proc. Processes that exit during the pass are skipped; kernel threads and
// zombies hold no files and are not counted.
struct ProcessScan {
    dev_t dev = 0;
    std::unordered_map<std::uint64_t, std::vector<FileUse>> uses;  // by inode, files on `dev` only
    struct Process {
        std::string comm;
        std::uint64_t start_time = 0;
    };
    std::unordered_map<pid_t, Process> processes;  // every process looked at
    std::vector<HiddenProcess> hidden;
    std::size_t inspected = 0;  // processes whose maps and fds were read

    // Scan every process for files on `dev`. When `only` is given, record
    // only those inodes (a re-check before unlinking). `proc` is the procfs
    // mount to read.
    static ProcessScan run(dev_t dev, const std::vector<std::uint64_t>* only = nullptr,
                           const Progress& progress = {}, const std::string& proc = "/proc");

    const std::vector<FileUse>* users(std::uint64_t inode) const;
    // Processes we could not inspect that could have opened a file with this
    // owner and mode (by their credentials and capabilities).
    std::vector<const HiddenProcess*> could_use(std::uint32_t uid, std::uint32_t gid, std::uint32_t mode) const;
    // The command name of pid if it is the process that started at
    // start_time (0: any), else "".
    std::string comm_of(pid_t pid, std::uint64_t start_time = 0) const;
};

}  // namespace shm::admin
