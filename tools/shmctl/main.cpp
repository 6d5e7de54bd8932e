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
//
// One file per command (ls.cpp, stat.cpp, df.cpp, gc.cpp for gc and rm,
// status.cpp); text and tables in format.cpp.
#include <cstdlib>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <shm/shm.hpp>

#include "commands.hpp"

namespace {

using namespace shmctl;

// What the command line asked for.
struct Args {
    std::string dir;
    bool as_json = false;
    bool all = false, noheadings = false;            // ls
    std::string stat_name;                           // stat
    bool dry_run = false, foreign = false;           // gc
    std::string min_age_text = "5m";                 // gc
    std::vector<std::string> rm_names;               // rm
    bool force = false;                              // rm
    CLI::App *ls = nullptr, *stat = nullptr, *df = nullptr, *gc = nullptr, *rm = nullptr, *status = nullptr;
};

std::string version_text() {
    return fmt::format("shmctl {} (libshm {}, segment layout version {})", shm::version(), shm::version(),
                       shm::kLayoutVersion);
}

void add_global_options(CLI::App& app, Args& a) {
    app.set_version_flag("-V,--version", version_text());
    app.require_subcommand(1);
    app.fallthrough();
    app.add_option("--dir", a.dir, "the shm directory (default: $SHM_DIR, else /dev/shm)");
    app.add_flag("-b,--bytes", g_bytes, "sizes in bytes instead of human units");
    app.add_option("--socket", g_socket,
                   "the daemon's socket, for status and ls (default: $SHM_DAEMON_SOCKET, else "
                   "$XDG_RUNTIME_DIR/shmd.sock when it exists and you are not root, else /run/shmd/shmd.sock)");
}

void add_json_flag(CLI::App* c, Args& a) {
    c->add_flag("--json", a.as_json, "machine-readable output (schema: shmctl(1), docs/shmctl.md)");
}

void add_gc(CLI::App& app, Args& a) {
    a.gc = app.add_subcommand("gc", "reclaim libshm segments of dead processes (--foreign: other unused files)");
    a.gc->add_flag("-n,--dry-run", a.dry_run, "show what would be reclaimed; change nothing");
    a.gc->add_flag("--foreign", a.foreign,
                   "also remove files libshm did not create that no live process maps or holds open");
    a.gc->add_option("--min-age", a.min_age_text,
                     "with --foreign: leave files modified more recently than this (e.g. 30s, 5m, 2h, 0)")
        ->capture_default_str()
        ->check([](const std::string& v) -> std::string {
            std::chrono::nanoseconds d;
            return admin::parse_duration(v, d) ? "" : "not a duration (use e.g. 30s, 5m, 2h, 1d or 0)";
        });
    add_json_flag(a.gc, a);
}

void add_commands(CLI::App& app, Args& a) {
    a.ls = app.add_subcommand(
        "ls", "list libshm segments and leaked files (--all: every file); marks those the daemon tracks");
    a.ls->add_flag("-a,--all", a.all, "show every file, not only libshm segments and leaked files");
    a.ls->add_flag("--noheadings", a.noheadings, "no header line (for scripts)");
    add_json_flag(a.ls, a);

    a.stat = app.add_subcommand("stat", "show a segment's header, attach slots and objects with their state");
    a.stat->add_option("NAME", a.stat_name, "segment name (or any file name in the shm directory)")->required();
    add_json_flag(a.stat, a);

    a.df = app.add_subcommand("df", "how the shm filesystem is used: libshm and foreign, in use and leaked");
    add_json_flag(a.df, a);

    add_gc(app, a);

    a.rm = app.add_subcommand("rm", "remove libshm segments by name; refuses ones in use unless --force");
    a.rm->add_option("NAME", a.rm_names, "segment names")->required();
    a.rm->add_flag("-f,--force", a.force, "remove even when live processes are attached (they keep their mapping)");

    a.status = app.add_subcommand(
        "status", "what the daemon (shmd) tracks and has reclaimed; exit status 3 if it is not running");
    add_json_flag(a.status, a);
}

int run(const Args& a) {
    std::chrono::nanoseconds min_age{};
    admin::parse_duration(a.min_age_text, min_age);
    if (a.ls->parsed()) return cmd_ls(a.all, a.as_json, a.noheadings);
    if (a.stat->parsed()) return cmd_stat(a.stat_name, a.as_json);
    if (a.df->parsed()) return cmd_df(a.as_json);
    if (a.gc->parsed()) return cmd_gc(a.dry_run, a.foreign, min_age, a.as_json);
    if (a.rm->parsed()) return cmd_rm(a.rm_names, a.force);
    if (a.status->parsed()) return cmd_status(a.as_json);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"shmctl: see and reclaim what fills the shm directory (/dev/shm).\n"
                 "Exit status: 0 done, 1 something was refused or failed, 2 usage error,\n"
                 "3 (status) shmd is not running.",
                 "shmctl"};
    Args args;
    add_global_options(app, args);
    add_commands(app, args);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    }
    if (!args.dir.empty()) ::setenv("SHM_DIR", args.dir.c_str(), 1);
    try {
        return run(args);
    } catch (const std::exception& e) {
        fmt::print(stderr, "shmctl: {}\n", e.what());
        return 1;
    }
}
