// What the remote objects share: the connection (StoreState), the names of
// their streams and buckets on the servers, and the mapping of the NATS
// client's failures to libshm's exceptions.
#pragma once

#include <nats/nats.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "shm/remote.hpp"

namespace shm::remote {
namespace detail {

// The kinds of objects, as the catalogue records them.
enum class Kind { queue, dict, list, lock, event };
const char* kind_name(Kind k);

struct StoreState {
    natsConnection* nc = nullptr;
    jsCtx* js = nullptr;
    kvStore* catalogue = nullptr;  // name -> kind, opened on first use
    std::mutex catalogue_mu;
    std::string servers;
    StoreOptions opt;
    int replicas = 1;
    ~StoreState();

    std::int64_t timeout_ms() const { return opt.request_timeout.count() > 0 ? opt.request_timeout.count() : 1; }
    // "queue 'jobs' on nats://..." for messages.
    std::string where(Kind k, std::string_view name) const;
    // jsOptions with the request time-out.
    jsOptions js_options() const;
    kvStore* catalogue_bucket();
    // Record `name` as an object of kind k (atomically: the first kind
    // recorded wins). layout_mismatch if it is another kind; `created`
    // says whether this call recorded it. not_found if absent and !create.
    void claim(Kind k, std::string_view name, bool create, bool* created);
    int replicas_for(int asked) const { return asked > 0 ? asked : replicas; }
};

// The name of the object's stream (queue) or bucket (the others) on the
// servers: a prefix per kind, then the object name with every character
// outside [A-Za-z0-9-] written as _XX (hex).
std::string server_name(Kind k, std::string_view name);
// The subject a queue's items are published on.
std::string queue_subject(std::string_view name);
// The marker in a stream's or bucket's description that says it is ours.
std::string layout_marker(Kind k);

// True for the failures that say the servers did not answer (or are being
// re-elected): the request may be retried.
bool transient(natsStatus s, jsErrCode jerr = static_cast<jsErrCode>(0));
// The text of the last NATS error of this thread.
std::string last_error_text(natsStatus s);
// Throws the libshm exception for a failed NATS call: unavailable,
// not_enough_replicas, layout_mismatch, or shm::error. `what` says what
// was being done, with the object and the servers.
[[noreturn]] void fail(natsStatus s, jsErrCode jerr, const std::string& what);
inline void check(natsStatus s, const std::string& what) {
    if (s != NATS_OK) fail(s, static_cast<jsErrCode>(0), what);
}

// A watched copy of a bucket (ObjectOptions::local_copy), in kv.cpp.
struct Mirror;
// A Dict's pipelined sets (Dict::set_async), in kv.cpp.
struct KvAsync;

// A KV bucket of one of our objects: its handle and names.
struct KvState {
    std::shared_ptr<StoreState> store;
    kvStore* kv = nullptr;
    Kind kind;
    std::string name;    // the object's
    std::string bucket;  // on the servers
    std::string where;   // for messages
    std::int64_t ttl_ms = 0;
    std::shared_ptr<Mirror> mirror;  // null without a local copy
    std::shared_ptr<KvAsync> async;  // made by the first set_async()
    ~KvState();
};
// Settle a handle's pipelined sets as it goes: what cannot be stored is
// reported on stderr (a destructor cannot throw).
void close_async(KvState& s) noexcept;
// Open (creating it if absent and `create`) the bucket of object `name`.
std::shared_ptr<KvState> open_bucket(Store& store, Kind k, std::string_view name, bool create, int replicas,
                                     std::int64_t ttl_ms);

// One entry of a bucket: found, its value and revision.
struct KvEntry {
    bool found = false;
    std::string value;
    std::uint64_t revision = 0;
};
KvEntry kv_get(KvState& s, const std::string& kv_key);
// Put only if the key's last revision is `last` (0: only if absent).
// False if someone changed it meanwhile; *rev gets the new revision.
bool kv_cas(KvState& s, const std::string& kv_key, std::string_view value, std::uint64_t last, std::uint64_t* rev);
// Delete only if the key's last revision is `last`; false if it changed.
// *rev (if given) gets the revision of the delete.
bool kv_cas_delete(KvState& s, const std::string& kv_key, std::uint64_t last, std::uint64_t* rev = nullptr);

// Milliseconds left until d (capped at cap), at least 1.
std::int64_t ms_left(const shm::detail::Deadline& d, std::int64_t cap);

inline std::int64_t now_ms() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return static_cast<std::int64_t>(t.tv_sec) * 1000 + t.tv_nsec / 1000000;
}

// Waits between retries: grows from 5 ms to 200 ms, never past d.
inline void backoff(int& step, const shm::detail::Deadline& d) {
    std::int64_t ms = std::min<std::int64_t>(200, 5LL << std::min(step, 6));
    ++step;
    std::this_thread::sleep_for(std::chrono::milliseconds(ms_left(d, ms)));
}

// Tracks how long the servers have not answered, across the retries of
// one call: past the request time-out, the call fails (unavailable).
struct Outage {
    std::int64_t since = 0;
    void ok() { since = 0; }
    void failed(natsStatus s, jsErrCode jerr, const StoreState& st, const std::string& what) {
        if (since == 0) since = now_ms();
        if (now_ms() - since < st.timeout_ms()) return;
        if (!transient(s, jerr)) s = NATS_TIMEOUT;  // a transient refusal: say so
        fail(s, jerr, what);
    }
};

}  // namespace detail
}  // namespace shm::remote
