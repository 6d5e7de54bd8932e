// shmctl's text: sizes, ages, names, tables, progress and JSON output.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <shm/admin.hpp>

namespace shmctl {

namespace admin = shm::admin;
using nlohmann::json;

inline constexpr int kSchemaVersion = 1;  // of every --json output

extern bool g_bytes;         // -b: exact byte counts
extern std::string g_socket;  // --socket; empty: admin::daemon_socket()

// A byte count: admin::human_bytes(), or the exact number with -b.
std::string bytes_text(std::uint64_t n);
std::string human_age(std::int64_t ns);  // "42s", "5m", "3h", "2d"
std::string human_duration(std::chrono::nanoseconds d);
std::string clock_time(std::int64_t ns);  // local "YYYY-MM-DD HH:MM:SS", "-" for none
std::int64_t now_ns();
std::string user_name(std::uint32_t uid);
std::string mode_text(std::uint32_t mode);  // "0644"
// Names and command names may hold any byte; control characters become '?'.
std::string printable(const std::string& s);
std::string state_text(admin::State s);
std::string users_text(const admin::Entry& e, std::size_t max = 4);
// "1 file", "2 files": the count and the word, singular for one.
std::string count_text(std::size_t n, const char* one, const char* many);

// A table with left-aligned columns (or right-aligned ones, by index),
// padded to the widest cell in bytes; the last column is not padded.
class Table {
public:
    explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
    void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
    void right_align(std::size_t col) { right_.push_back(col); }
    void print(std::FILE* out, bool headings, const std::string& indent = "") const;

private:
    std::string line(const std::vector<std::string>& r, const std::vector<std::size_t>& w,
                     const std::string& indent) const;

    std::vector<std::string> header_;
    std::vector<std::vector<std::string>> rows_;
    std::vector<std::size_t> right_;
};

// Invalid UTF-8 (file and command names are bytes) is replaced, not thrown.
void print_json(const json& j);

// Reports progress on stderr once a scan has taken more than a second: on a
// terminal as one line rewritten in place, otherwise one line per second.
class ProgressLine {
public:
    ProgressLine();
    ~ProgressLine() { finish(); }
    admin::Progress callback();
    void finish();

private:
    void update(const char* stage, std::size_t done, std::size_t total);
    std::chrono::steady_clock::time_point start_, last_;
    bool tty_;
    bool shown_ = false;
};

}  // namespace shmctl
