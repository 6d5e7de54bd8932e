// shmctl gc and rm: reclaim what dead processes left, remove segments by
// name.
#include <unistd.h>

#include <fmt/format.h>

#include <shm/names.hpp>

#include "commands.hpp"

namespace shmctl {

namespace {

// What gc says of one action: a row of `done`, or a line on stderr.
struct GcLines {
    Table done{{"", "", "", ""}};
    std::size_t others_skipped = 0;  // other users' foreign files we may not inspect
};

void gc_json(const admin::GcReport& r, bool dry_run, bool foreign, std::chrono::nanoseconds min_age) {
    json actions = json::array();
    for (const admin::GcAction& a : r.actions)
        actions.push_back({{"name", a.name},
                           {"kind", admin::to_string(a.kind)},
                           {"outcome", admin::to_string(a.outcome)},
                           {"bytes", a.bytes},
                           {"dead_slots", a.dead_slots},
                           {"reason", a.outcome == admin::GcAction::failed ? a.error.message : a.reason}});
    print_json({{"schema_version", kSchemaVersion},
                {"dir", shm::shm_directory().string()},
                {"dry_run", dry_run},
                {"foreign", foreign},
                {"min_age_seconds", std::chrono::duration_cast<std::chrono::seconds>(min_age).count()},
                {"actions", actions},
                {"files_reclaimed", r.files_reclaimed},
                {"bytes_freed", r.bytes_freed},
                {"dead_slots_cleared", r.dead_slots_cleared},
                {"failures", r.failures},
                {"foreign_left", {{"files", r.foreign_left}, {"bytes", r.foreign_left_bytes}}}});
}

std::string slots_text(std::uint32_t n) { return count_text(n, "slot", "slots"); }

void gc_line(GcLines& out, const admin::GcAction& a, bool dry_run) {
    std::string detail = admin::to_string(a.kind);
    if (!a.reason.empty()) detail += ": " + a.reason;
    if (a.dead_slots) detail += " (" + count_text(a.dead_slots, "dead attach slot", "dead attach slots") + ")";
    switch (a.outcome) {
        case admin::GcAction::reclaimed:
            out.done.add({dry_run ? "would reclaim" : "reclaimed", printable(a.name), bytes_text(a.bytes), detail});
            break;
        case admin::GcAction::cleared:
            out.done.add({dry_run ? "would clear" : "cleared", printable(a.name), slots_text(a.dead_slots),
                          "dead attach slots; kept: " + a.reason});
            break;
        case admin::GcAction::kept: out.done.add({"kept", printable(a.name), "", a.reason}); break;
        case admin::GcAction::skipped:
            // Other users' files we may not even read are theirs to clean;
            // only count them, unless they are libshm segments.
            if (::geteuid() != 0 && a.kind != admin::FileKind::libshm && a.uid != ::geteuid()) {
                ++out.others_skipped;
                break;
            }
            fmt::print(stderr, "skipped {}: {}\n", printable(a.name), a.reason);
            break;
        case admin::GcAction::failed: fmt::print(stderr, "failed  {}: {}\n", printable(a.name), a.error.message); break;
    }
}

std::string gc_summary(const admin::GcReport& r, bool dry_run) {
    std::string summary = dry_run ? "gc --dry-run: would reclaim " : "gc: reclaimed ";
    summary += count_text(r.files_reclaimed, "file", "files") + ", " + bytes_text(r.bytes_freed) +
               (dry_run ? "" : " freed");
    if (r.dead_slots_cleared)
        summary += std::string("; ") + (dry_run ? "would clear " : "cleared ") +
                   count_text(r.dead_slots_cleared, "dead attach slot", "dead attach slots");
    if (r.failures) summary += fmt::format("; {} failed", r.failures);
    if (dry_run) summary += "; nothing was changed";
    return summary;
}

void gc_left_alone(const admin::GcReport& r, const GcLines& out, bool foreign, std::chrono::nanoseconds min_age) {
    if (out.others_skipped)
        fmt::print(stderr, "({} of other users that uid {} may not inspect {} left alone)\n",
                   count_text(out.others_skipped, "file", "files"), ::geteuid(),
                   out.others_skipped == 1 ? "was" : "were");
    if (r.foreign_left)
        fmt::print("{} foreign {} ({}) nobody uses {} left alone: {}\n", r.foreign_left,
                   r.foreign_left == 1 ? "file" : "files", bytes_text(r.foreign_left_bytes),
                   r.foreign_left == 1 ? "was" : "were",
                   foreign ? "younger than --min-age " + human_duration(min_age)
                           : "`shmctl gc --foreign` removes those unused for over 5m");
}

}  // namespace

int cmd_gc(bool dry_run, bool foreign, std::chrono::nanoseconds min_age, bool as_json) {
    ProgressLine progress;
    admin::GcOptions opt;
    opt.dry_run = dry_run;
    opt.foreign = foreign;
    opt.min_age = min_age;
    opt.progress = progress.callback();
    admin::GcReport r = admin::gc(opt);
    progress.finish();
    if (as_json) {
        gc_json(r, dry_run, foreign, min_age);
        return r.failures ? 1 : 0;
    }
    GcLines out;
    out.done.right_align(2);
    for (const admin::GcAction& a : r.actions) gc_line(out, a, dry_run);
    out.done.print(stdout, false);
    fmt::print("{}\n", gc_summary(r, dry_run));
    gc_left_alone(r, out, foreign, min_age);
    return r.failures ? 1 : 0;
}

int cmd_rm(const std::vector<std::string>& names, bool force) {
    int rc = 0;
    for (const std::string& n : names) {
        admin::RemoveResult r = admin::remove_segment(n, force);
        if (r.outcome == admin::RemoveResult::removed) {
            fmt::print("removed segment '{}' ({})\n", r.segment, bytes_text(r.bytes));
        } else {
            fmt::print(stderr, "shmctl rm: {}\n", r.error.message);
            rc = 1;
        }
    }
    return rc;
}

}  // namespace shmctl
