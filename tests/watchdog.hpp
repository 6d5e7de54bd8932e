// A watchdog for a test process that hangs: after SHM_TEST_WATCHDOG seconds
// (420 by default, before CTest's 600 s timeout; 0: none) it writes to
// stderr the stack of every thread of the test process and of each of its
// descendants (gdb), and the state of every segment the test process maps
// (shmctl stat). It does not end the test: CTest's timeout does that, and
// the output it keeps for a failed test then says where each process was.
//
// The watchdog is a process of its own, started before the test makes any
// thread or segment, and not the test's child (it is forked from a child
// that exits at once): a test that reaps every child, or counts them, does
// not meet it. It watches the test process through a pidfd and leaves as
// soon as that process ends.
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace test::watchdog {

inline std::string read_text(const std::string& path) {
    std::ifstream f(path);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// The parent pid in /proc/<pid>/stat (after the command's closing paren).
inline pid_t parent_of(pid_t pid) {
    const std::string s = read_text("/proc/" + std::to_string(pid) + "/stat");
    const auto p = s.rfind(')');
    if (p == std::string::npos || p + 4 >= s.size()) return -1;
    return static_cast<pid_t>(std::atoi(s.c_str() + p + 4));
}

// root and every process below it.
inline std::vector<pid_t> tree(pid_t root) {
    std::vector<pid_t> all;
    if (DIR* d = ::opendir("/proc")) {
        while (dirent* e = ::readdir(d))
            if (e->d_name[0] >= '1' && e->d_name[0] <= '9') all.push_back(std::atoi(e->d_name));
        ::closedir(d);
    }
    std::vector<pid_t> out{root};
    std::set<pid_t> in{root};
    for (bool grew = true; grew;) {
        grew = false;
        for (pid_t p : all)
            if (!in.count(p) && in.count(parent_of(p))) {
                in.insert(p);
                out.push_back(p);
                grew = true;
            }
    }
    return out;
}

// Run argv with its output on our stderr, killed after `limit` seconds.
inline void run(std::vector<std::string> argv, int limit) {
    argv.insert(argv.begin(), {"timeout", "-s", "KILL", std::to_string(limit)});
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, 2, 1);
    std::vector<char*> a;
    for (std::string& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    pid_t pid;
    if (::posix_spawnp(&pid, a[0], &fa, nullptr, a.data(), environ) == 0) {
        int st;
        while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
    } else {
        std::fprintf(stderr, "watchdog: could not run %s\n", argv[4].c_str());
    }
    posix_spawn_file_actions_destroy(&fa);
}

inline void dump(pid_t pid, long seconds) {
    std::fprintf(stderr, "\n==== watchdog: test process %d still runs after %ld s: its processes and segments\n",
                 pid, seconds);
    for (pid_t p : tree(pid)) {
        const std::string dir = "/proc/" + std::to_string(p);
        std::string cmd = read_text(dir + "/cmdline");
        for (char& ch : cmd)
            if (ch == '\0') ch = ' ';
        const std::string stat = read_text(dir + "/stat");
        const auto paren = stat.rfind(')');
        const char state = paren != std::string::npos && paren + 2 < stat.size() ? stat[paren + 2] : '?';
        std::fprintf(stderr, "\n==== pid %d (parent %d, state %c, in %s): %s\n", p, parent_of(p), state,
                     read_text(dir + "/wchan").c_str(), cmd.c_str());
        std::fflush(stderr);
        run({"gdb", "-batch", "-nx", "-q", "-p", std::to_string(p), "-ex", "thread apply all bt 40"}, 120);
    }
#ifdef SHM_WATCHDOG_SHMCTL
    // The segments it maps: /proc/<pid>/maps names each file (dir/libshm.NAME).
    std::set<std::string> files;
    std::istringstream maps(read_text("/proc/" + std::to_string(pid) + "/maps"));
    for (std::string line; std::getline(maps, line);) {
        const auto at = line.find("/libshm.");
        const auto slash = line.find('/');
        if (at != std::string::npos && slash != std::string::npos && line.find(" (deleted)") == std::string::npos)
            files.insert(line.substr(slash));
    }
    for (const std::string& f : files) {
        const auto cut = f.rfind('/');
        std::fprintf(stderr, "\n==== segment %s\n", f.c_str());
        std::fflush(stderr);
        run({"env", "SHM_DIR=" + f.substr(0, cut), SHM_WATCHDOG_SHMCTL, "stat", f.substr(cut + 1 + 7)}, 60);
    }
#endif
    std::fprintf(stderr, "\n==== watchdog: end\n");
    std::fflush(stderr);
}

// Start the watchdog of this process (see the top of this file).
inline void start() {
    long seconds = 420;
    if (const char* e = std::getenv("SHM_TEST_WATCHDOG")) seconds = std::atol(e);
    if (seconds <= 0) return;
    const pid_t self = ::getpid();
    const pid_t child = ::fork();
    if (child < 0) return;
    if (child == 0) {
        const int pfd = static_cast<int>(::syscall(SYS_pidfd_open, self, 0));
        if (pfd < 0 || ::fork() != 0) ::_exit(0);
        ::setsid();  // out of the test's process group: signals to the group are not ours
        ::signal(SIGPIPE, SIG_IGN);
        pollfd p{pfd, POLLIN, 0};
        int r;
        while ((r = ::poll(&p, 1, static_cast<int>(seconds * 1000))) < 0 && errno == EINTR) {
        }
        if (r == 0) dump(self, seconds);
        ::_exit(0);
    }
    int st;
    while (::waitpid(child, &st, 0) < 0 && errno == EINTR) {
    }
}

}  // namespace test::watchdog
