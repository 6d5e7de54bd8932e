// shmctl's text (format.hpp).
#include "format.hpp"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <map>

#include <fmt/chrono.h>
#include <fmt/format.h>

namespace shmctl {

bool g_bytes = false;
std::string g_socket;

std::string bytes_text(std::uint64_t n) { return g_bytes ? std::to_string(n) : admin::human_bytes(n); }

std::string human_age(std::int64_t ns) {
    const long long s = ns / 1000000000;
    if (s < 120) return fmt::format("{}s", s);
    if (s < 120 * 60) return fmt::format("{}m", s / 60);
    if (s < 48 * 3600) return fmt::format("{}h", s / 3600);
    return fmt::format("{}d", s / 86400);
}

std::string human_duration(std::chrono::nanoseconds d) {
    if (d.count() == 0) return "0s";
    return human_age(d.count());
}

std::string clock_time(std::int64_t ns) {
    if (ns <= 0) return "-";
    time_t t = static_cast<time_t>(ns / 1000000000);
    struct tm tm;
    localtime_r(&t, &tm);
    return fmt::format("{:%Y-%m-%d %H:%M:%S}", tm);
}

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string user_name(std::uint32_t uid) {
    static std::map<std::uint32_t, std::string> cache;
    auto it = cache.find(uid);
    if (it != cache.end()) return it->second;
    struct passwd pw, *res = nullptr;
    char buf[4096];
    std::string name = std::to_string(uid);
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &res) == 0 && res) name = res->pw_name;
    cache[uid] = name;
    return name;
}

std::string mode_text(std::uint32_t mode) { return fmt::format("{:04o}", mode & 07777); }

std::string printable(const std::string& s) {
    std::string o = s;
    for (char& c : o)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return o;
}

std::string state_text(admin::State s) {
    switch (s) {
        case admin::State::in_use: return "in use";
        case admin::State::leaked: return "leaked";
        case admin::State::persistent: return "persistent";
        case admin::State::unknown: return "unknown";
    }
    return "unknown";
}

std::string users_text(const admin::Entry& e, std::size_t max) {
    std::string s;
    std::size_t n = 0;
    for (const admin::User& u : e.users) {
        if (n == max) {
            s += fmt::format(", +{} more", e.users.size() - max);
            break;
        }
        if (!s.empty()) s += ", ";
        s += std::to_string(u.pid);
        if (!u.comm.empty()) s += " " + printable(u.comm);
        ++n;
    }
    return s;
}

std::string count_text(std::size_t n, const char* one, const char* many) {
    return fmt::format("{} {}", n, n == 1 ? one : many);
}

// ---- Table ------------------------------------------------------------------

std::string Table::line(const std::vector<std::string>& r, const std::vector<std::size_t>& w,
                        const std::string& indent) const {
    std::string s = indent;
    for (std::size_t i = 0; i < r.size(); ++i) {
        const bool last = i + 1 == r.size();
        const bool right = std::find(right_.begin(), right_.end(), i) != right_.end();
        const std::size_t pad = w[i] > r[i].size() ? w[i] - r[i].size() : 0;
        if (right) s.append(pad, ' ');
        s += r[i];
        if (!last) {
            if (!right) s.append(pad, ' ');
            s += "  ";
        }
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return s;
}

void Table::print(std::FILE* out, bool headings, const std::string& indent) const {
    std::vector<std::size_t> w(header_.size(), 0);
    auto measure = [&](const std::vector<std::string>& r) {
        for (std::size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
    };
    if (headings) measure(header_);
    for (auto& r : rows_) measure(r);
    if (headings) fmt::print(out, "{}\n", line(header_, w, indent));
    for (auto& r : rows_) fmt::print(out, "{}\n", line(r, w, indent));
}

void print_json(const json& j) {
    fmt::print("{}\n", j.dump(2, ' ', false, json::error_handler_t::replace));
    std::fflush(stdout);
}

// ---- progress ---------------------------------------------------------------

ProgressLine::ProgressLine() : start_(std::chrono::steady_clock::now()), tty_(::isatty(2) == 1) {}

admin::Progress ProgressLine::callback() {
    return [this](const char* stage, std::size_t done, std::size_t total) { update(stage, done, total); };
}

void ProgressLine::finish() {
    if (shown_ && tty_) fmt::print(stderr, "\r\033[K");
    shown_ = false;
}

void ProgressLine::update(const char* stage, std::size_t done, std::size_t total) {
    auto now = std::chrono::steady_clock::now();
    if (now - start_ < std::chrono::seconds(1)) return;
    if (shown_ && now - last_ < (tty_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(1000))) return;
    last_ = now;
    shown_ = true;
    std::string what = fmt::format("shmctl: {} {}", stage, done);
    if (total) what += fmt::format("/{}", total);
    if (tty_)
        fmt::print(stderr, "\r\033[K{}", what);
    else
        fmt::print(stderr, "{}\n", what);
    std::fflush(stderr);
}

}  // namespace shmctl
