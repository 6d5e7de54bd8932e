// shmctl's commands (one file each) and what several of them share.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "format.hpp"

namespace shmctl {

inline constexpr int kExitNoDaemon = 3;  // status: no daemon is running

int cmd_ls(bool all, bool as_json, bool noheadings);                                      // ls.cpp
int cmd_stat(const std::string& name, bool as_json);                                      // stat.cpp
int cmd_df(bool as_json);                                                                 // df.cpp
int cmd_gc(bool dry_run, bool foreign, std::chrono::nanoseconds min_age, bool as_json);  // gc.cpp
int cmd_rm(const std::vector<std::string>& names, bool force);                            // gc.cpp
int cmd_status(bool as_json);                                                             // status.cpp

// ---- shared by ls, stat and df (report.cpp) ---------------------------------

json entry_json(const admin::Entry& e);
json segment_summary_json(const admin::SegmentInfo& s);
// Foreign files whose state is unknown because of processes we may not inspect.
std::size_t unknown_for_hidden(const admin::Scan& s);
std::string hidden_note(const admin::Scan& s, std::size_t files);

}  // namespace shmctl
