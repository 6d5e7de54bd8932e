// shmctl df: how the shm filesystem is used, libshm and foreign, in use and
// leaked.
#include <map>

#include <fmt/format.h>

#include "commands.hpp"

namespace shmctl {

namespace {

struct Sum {
    std::size_t files = 0;
    std::uint64_t bytes = 0;
};

const char* const kOrder[] = {"libshm in use", "libshm leaked", "libshm persistent", "libshm unknown",
                              "foreign in use", "foreign leaked", "foreign unknown"};

// The grace period `shmctl gc --foreign` gives by default.
constexpr std::int64_t kGraceNs = std::chrono::nanoseconds(std::chrono::minutes(5)).count();

struct Usage {
    std::map<std::string, Sum> sums;  // by kOrder's keys
    std::uint64_t unlisted = 0;       // used, but by no file listed
    std::uint64_t old_foreign = 0;    // foreign, leaked and past the grace period
};

Usage usage_of(const admin::Scan& s) {
    Usage u;
    for (const char* k : kOrder) u.sums[k];
    std::uint64_t listed = 0;
    for (const admin::Entry& e : s.entries) {
        const bool lib = e.kind == admin::FileKind::libshm;
        Sum& sum = u.sums[std::string(lib ? "libshm " : "foreign ") + state_text(e.state)];
        ++sum.files;
        sum.bytes += e.allocated;
        listed += e.allocated;
        if (!lib && e.state == admin::State::leaked && e.age_ns >= kGraceNs) u.old_foreign += e.allocated;
    }
    u.unlisted = s.fs.used > listed ? s.fs.used - listed : 0;
    return u;
}

void df_json(const admin::Scan& s, Usage& u) {
    auto pair = [&](const char* k) { return json{{"files", u.sums[k].files}, {"bytes", u.sums[k].bytes}}; };
    print_json({{"schema_version", kSchemaVersion},
                {"dir", s.dir},
                {"filesystem", {{"size", s.fs.size}, {"used", s.fs.used}, {"free", s.fs.free}}},
                {"libshm",
                 {{"in_use", pair("libshm in use")},
                  {"leaked", pair("libshm leaked")},
                  {"persistent", pair("libshm persistent")},
                  {"unknown", pair("libshm unknown")}}},
                {"foreign",
                 {{"in_use", pair("foreign in use")},
                  {"leaked", pair("foreign leaked")},
                  {"unknown", pair("foreign unknown")}}},
                {"unlisted_bytes", u.unlisted},
                {"uninspected_processes", s.uninspected_processes}});
}

void df_table(const admin::Scan& s, Usage& u) {
    const double pct = s.fs.size ? 100.0 * static_cast<double>(s.fs.used) / static_cast<double>(s.fs.size) : 0;
    fmt::print("{}: {}, {} used ({:.0f}%), {} free\n\n", s.dir, bytes_text(s.fs.size), bytes_text(s.fs.used), pct,
               bytes_text(s.fs.free));
    Table t({"", "FILES", "SIZE"});
    t.right_align(1);
    t.right_align(2);
    for (const char* k : kOrder) t.add({k, std::to_string(u.sums[k].files), bytes_text(u.sums[k].bytes)});
    t.add({"elsewhere", "", bytes_text(u.unlisted)});
    t.print(stdout, true);
    fmt::print("\n(elsewhere: deleted files still mapped or open, subdirectories, and files outside {})\n", s.dir);
}

void df_hints(const admin::Scan& s, Usage& u) {
    const Sum& lib_leaked = u.sums["libshm leaked"];
    const Sum& foreign_leaked = u.sums["foreign leaked"];
    if (lib_leaked.files)
        fmt::print("`shmctl gc` frees {} ({} leaked libshm segments).\n", bytes_text(lib_leaked.bytes),
                   lib_leaked.files);
    if (foreign_leaked.files)
        fmt::print("`shmctl gc --foreign` also frees {} of {} in foreign files nobody uses "
                   "(those unused for over 5m; --min-age sets the grace period).\n",
                   bytes_text(u.old_foreign), bytes_text(foreign_leaked.bytes));
    if (std::size_t n = unknown_for_hidden(s)) fmt::print("{}.\n", hidden_note(s, n));
}

}  // namespace

int cmd_df(bool as_json) {
    ProgressLine progress;
    admin::Scan s = admin::scan(progress.callback());
    progress.finish();
    Usage u = usage_of(s);
    if (as_json) {
        df_json(s, u);
        return 0;
    }
    df_table(s, u);
    df_hints(s, u);
    return 0;
}

}  // namespace shmctl
