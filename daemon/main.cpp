// shmd: tracks which live processes use which libshm segment and reclaims a
// segment the moment its last user dies. See docs/shmd.md and shmd(8).
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

// A size as CLI11 reads one: "512M", "2G", "64MiB", "1048576" (k, m, g,
// t, p with or without "b" or "ib", all in powers of 1024). false if
// malformed.
bool parse_size(std::string text, std::uint64_t& bytes) {
    if (text.find('-') != std::string::npos) return false;  // strtoull would wrap "-1" around
    try {
        if (!CLI::AsSizeValue(false)(text).empty()) return false;  // now the byte count, in digits
    } catch (const CLI::ValidationError&) {
        return false;
    }
    return CLI::detail::lexical_cast(text, bytes);
}

// "10%" or "0.5%" (below 100%) → fraction; otherwise a size → bytes.
bool parse_reserve(const std::string& text, double& fraction, std::uint64_t& bytes) {
    if (!text.empty() && text.back() == '%') {
        try {
            std::size_t used = 0;
            double p = std::stod(text.substr(0, text.size() - 1), &used);
            if (used != text.size() - 1 || !(p >= 0 && p < 100)) return false;
            fraction = p / 100;
            bytes = 0;
            return true;
        } catch (...) {
            return false;
        }
    }
    fraction = 0;
    return parse_size(text, bytes);
}

std::string default_socket() {
    if (::geteuid() == 0) return "/run/shmd/shmd.sock";
    if (const char* x = std::getenv("XDG_RUNTIME_DIR"); x && *x) return std::string(x) + "/shmd.sock";
    return {};
}

// The options as given on the command line or in the config file.
struct Args {
    std::string socket, shm_dir, sweep = "30s", reserve, quota, foreign_age = "5m", level = "info",
        reservation_life = "10s";
    bool foreign = false, no_notify = false;
    std::size_t max_clients = 4096;
};

void add_options(CLI::App& app, Args& a) {
    app.set_config("--config", "/etc/shmd.conf",
                   "read options from this file (key = value lines, the long option names without dashes); "
                   "a missing /etc/shmd.conf is fine");
    app.add_option("--socket", a.socket,
                   "listen here (default: $SHM_DAEMON_SOCKET, else /run/shmd/shmd.sock as root, "
                   "$XDG_RUNTIME_DIR/shmd.sock for a user)");
    app.add_option("--shm-dir", a.shm_dir, "the segments' directory (default: $SHM_DIR, else /dev/shm)");
    app.add_option("--sweep-interval", a.sweep,
                   "how often to do what `shmctl gc` does, as a safety net (e.g. 30s, 5m; 0 = never)")
        ->capture_default_str();
    app.add_option("--reserve", a.reserve,
                   "keep this much of the shm filesystem free: refuse creates that would eat into it "
                   "(e.g. 10%, 512M)");
    app.add_option("--reservation-life", a.reservation_life,
                   "how long room asked for before a create counts against the reserve and quotas if the "
                   "create never comes (e.g. 10s); at most 1024 such reservations per user at once")
        ->capture_default_str();
    app.add_option("--user-quota", a.quota, "bytes each user (except root) may hold in the shm directory (e.g. 2G)");
    app.add_flag("--reclaim-foreign", a.foreign,
                 "the sweep also removes files libshm did not create (Python, PyTorch, ...) that no live "
                 "process maps or holds open");
    app.add_option("--foreign-min-age", a.foreign_age, "only foreign files older than this (e.g. 5m, 1h)")
        ->capture_default_str();
    app.add_option("--max-clients", a.max_clients, "connections served at once")->capture_default_str();
    app.add_option("--log-level", a.level, "trace, debug, info, warn or error")
        ->capture_default_str()
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
    app.add_flag("--no-notify", a.no_notify, "do not talk to systemd even if NOTIFY_SOCKET is set");
    app.footer(
        "Signals: SIGTERM or SIGINT stops it (READY=1, STOPPING=1 and WATCHDOG=1 go to systemd's NOTIFY_SOCKET),\n"
        "SIGHUP sweeps at once. Libraries find it through SHM_DAEMON_SOCKET or the default socket;\n"
        "SHM_DAEMON=auto|required|off in a program's environment decides whether it must use one.\n"
        "Exit status: 0 stopped by a signal, 1 could not start (e.g. another shmd listens), 2 bad options.");
}

// The server's options from what was given: "" or what is wrong.
std::string to_options(const Args& a, shmd::Options& o) {
    const char* env_socket = std::getenv("SHM_DAEMON_SOCKET");
    o.socket = !a.socket.empty() ? a.socket : (env_socket ? env_socket : "");
    if (o.socket.empty()) o.socket = default_socket();
    if (o.socket.empty()) return "no socket: not root and XDG_RUNTIME_DIR is unset; use --socket PATH";
    if (!a.shm_dir.empty()) ::setenv("SHM_DIR", a.shm_dir.c_str(), 1);  // the library reads it
    o.shm_dir = shm::shm_directory().string();
    if (!shm::admin::parse_duration(a.sweep, o.sweep_interval))
        return "--sweep-interval: '" + a.sweep + "' is not a duration (e.g. 30s, 5m)";
    if (!shm::admin::parse_duration(a.reservation_life, o.reservation_life) || o.reservation_life.count() <= 0)
        return "--reservation-life: '" + a.reservation_life + "' is not a positive duration (e.g. 10s)";
    if (!shm::admin::parse_duration(a.foreign_age, o.foreign_min_age))
        return "--foreign-min-age: '" + a.foreign_age + "' is not a duration (e.g. 5m, 1h)";
    if (!a.reserve.empty() && !parse_reserve(a.reserve, o.reserve_fraction, o.reserve_bytes))
        return "--reserve: '" + a.reserve + "' is neither a percentage below 100% nor a size (512M, 2G)";
    if (!a.quota.empty() && !parse_size(a.quota, o.user_quota))
        return "--user-quota: '" + a.quota + "' is not a size (e.g. 512M, 2G)";
    o.reclaim_foreign = a.foreign;
    o.max_clients = a.max_clients;
    o.notify = !a.no_notify;
    std::error_code ec;
    if (!std::filesystem::is_directory(o.shm_dir, ec)) return o.shm_dir + " is not a directory";
    return {};
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"shmd: reclaims libshm segments the moment their last user dies, enforces /dev/shm quotas"};
    Args args;
    add_options(app, args);
    CLI11_PARSE(app, argc, argv);

    auto log = spdlog::stderr_logger_mt("shmd");
    // journald stamps each line itself; a terminal gets the time.
    log->set_pattern(std::getenv("JOURNAL_STREAM") ? "%l: %v" : "%Y-%m-%d %H:%M:%S.%e shmd[%P] %l: %v");
    log->set_level(spdlog::level::from_str(args.level));
    log->flush_on(spdlog::level::trace);

    shmd::Options o;
    if (std::string wrong = to_options(args, o); !wrong.empty()) {
        std::cerr << "shmd: " << wrong << "\n";
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
