// shmd: tracks which live processes use which libshm segment and reclaims a
// segment the moment its last user dies. See README.md ("shmd").
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <shm/admin.hpp>
#include <shm/error.hpp>
#include <shm/names.hpp>

#include "server.hpp"

namespace {

std::string default_socket() {
    if (::geteuid() == 0) return "/run/shmd/shmd.sock";
    if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) return std::string(x) + "/shmd.sock";
    return {};
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"shmd: reclaims libshm segments the moment their last user dies, enforces /dev/shm quotas"};
    app.set_config("--config", "/etc/shmd.conf",
                   "read options from this file (key = value lines, the long option names without dashes); "
                   "a missing /etc/shmd.conf is fine");
    std::string socket, shm_dir, sweep = "30s", reserve, quota, foreign_age = "5m", level = "info";
    bool foreign = false, no_notify = false;
    std::size_t max_clients = 4096;
    app.add_option("--socket", socket,
                   "listen here (default: $SHM_DAEMON_SOCKET, else /run/shmd/shmd.sock as root, "
                   "$XDG_RUNTIME_DIR/shmd.sock for a user)");
    app.add_option("--shm-dir", shm_dir, "the segments' directory (default: $SHM_DIR, else /dev/shm)");
    app.add_option("--sweep-interval", sweep,
                   "how often to do what `shmctl gc` does, as a safety net (e.g. 30s, 5m; 0 = never)")
        ->capture_default_str();
    app.add_option("--reserve", reserve,
                   "keep this much of the shm filesystem free: refuse creates that would eat into it "
                   "(e.g. 10%, 512M)");
    app.add_option("--user-quota", quota, "bytes each user (except root) may hold in the shm directory (e.g. 2G)");
    app.add_flag("--reclaim-foreign", foreign,
                 "the sweep also removes files libshm did not create (Python, PyTorch, ...) that no live "
                 "process maps or holds open");
    app.add_option("--foreign-min-age", foreign_age, "only foreign files older than this (e.g. 5m, 1h)")
        ->capture_default_str();
    app.add_option("--max-clients", max_clients, "connections served at once")->capture_default_str();
    app.add_option("--log-level", level, "trace, debug, info, warn or error")
        ->capture_default_str()
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
    app.add_flag("--no-notify", no_notify, "do not talk to systemd even if NOTIFY_SOCKET is set");
    app.footer(
        "Signals: SIGTERM or SIGINT stops it (READY=1, STOPPING=1 and WATCHDOG=1 go to systemd's NOTIFY_SOCKET),\n"
        "SIGHUP sweeps at once. Libraries find it through SHM_DAEMON_SOCKET or the default socket;\n"
        "SHM_DAEMON=auto|required|off in a program's environment decides whether it must use one.\n"
        "Exit status: 0 stopped by a signal, 1 could not start (e.g. another shmd listens), 2 bad options.");
    CLI11_PARSE(app, argc, argv);

    auto log = spdlog::stderr_logger_mt("shmd");
    // journald stamps each line itself; a terminal gets the time.
    log->set_pattern(std::getenv("JOURNAL_STREAM") ? "%l: %v" : "%Y-%m-%d %H:%M:%S.%e shmd[%P] %l: %v");
    log->set_level(spdlog::level::from_str(level));
    log->flush_on(spdlog::level::trace);

    shmd::Options o;
    o.socket = !socket.empty() ? socket : (std::getenv("SHM_DAEMON_SOCKET") ? std::getenv("SHM_DAEMON_SOCKET") : "");
    if (o.socket.empty()) o.socket = default_socket();
    if (o.socket.empty()) {
        std::cerr << "shmd: no socket: not root and XDG_RUNTIME_DIR is unset; use --socket PATH\n";
        return 2;
    }
    if (!shm_dir.empty()) ::setenv("SHM_DIR", shm_dir.c_str(), 1);  // the library reads it
    o.shm_dir = shm::shm_directory().string();
    if (!shm::admin::parse_duration(sweep, o.sweep_interval)) {
        std::cerr << "shmd: --sweep-interval: '" << sweep << "' is not a duration (e.g. 30s, 5m)\n";
        return 2;
    }
    if (!shm::admin::parse_duration(foreign_age, o.foreign_min_age)) {
        std::cerr << "shmd: --foreign-min-age: '" << foreign_age << "' is not a duration (e.g. 5m, 1h)\n";
        return 2;
    }
    if (!reserve.empty() && !shmd::parse_reserve(reserve, o.reserve_fraction, o.reserve_bytes)) {
        std::cerr << "shmd: --reserve: '" << reserve << "' is neither a percentage below 100% nor a size (512M, 2G)\n";
        return 2;
    }
    if (!quota.empty() && !shmd::parse_size(quota, o.user_quota)) {
        std::cerr << "shmd: --user-quota: '" << quota << "' is not a size (e.g. 512M, 2G)\n";
        return 2;
    }
    o.reclaim_foreign = foreign;
    o.max_clients = max_clients;
    o.notify = !no_notify;
    std::error_code ec;
    if (!std::filesystem::is_directory(o.shm_dir, ec)) {
        std::cerr << "shmd: " << o.shm_dir << " is not a directory\n";
        return 2;
    }
    try {
        shmd::Server server(o, log);
        return server.run();
    } catch (const std::exception& e) {
        log->critical("{}", e.what());
        return 1;
    }
}
