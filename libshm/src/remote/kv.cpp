// shm::remote::Dict, List and Event: one key-value bucket each (history 1).
// Read-modify-writes are compare-and-set loops on the key's revision.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <unordered_map>

#include "remote/internal.hpp"

namespace shm::remote {

using detail::KvEntry;
using detail::KvState;
using detail::kv_cas;
using detail::kv_cas_delete;
using detail::kv_get;

namespace {

constexpr int kMaxCasRounds = 100000;

[[noreturn]] void too_contended(const KvState& s) {
    throw shm::error(EAGAIN, "shm::remote: " + s.where + " changed under every one of " +
                                 std::to_string(kMaxCasRounds) + " compare-and-set attempts");
}

// The key clear() writes before it purges what came before it (encoded
// keys all begin with 'k'; a List's key is "items"): a watched copy drops
// every key older than it.
const std::string kClearedKey = "cleared";

}  // namespace

// ---- The local copy ------------------------------------------------------------
namespace detail {

struct Mirror {
    struct Entry {
        std::uint64_t rev = 0;
        bool present = false;  // false: deleted at rev
        std::string value;
    };
    std::mutex mu;
    std::condition_variable cv;
    std::unordered_map<std::string, Entry> entries;
    std::uint64_t cleared = 0;  // the revision of the last clear() seen
    std::uint64_t seen = 0;     // the highest revision the watch delivered
    std::size_t live = 0;       // entries present
    bool synced = false;        // the values there were at the start: all in
    bool ended = false;         // the watch failed or was stopped
    std::string why;
    kvWatcher* w = nullptr;
    std::thread th;
    std::atomic<bool> stopping{false};
    // This handle's pipelined sets not yet confirmed (Dict::set_async): the
    // value it set last, and how many of its sets of the key are out. Reads
    // answer from here first, so that the handle reads its own writes.
    struct Pending {
        std::string value;
        std::uint32_t out = 0;
    };
    std::unordered_map<std::string, Pending> pending;

    // Under mu.
    void expect(const std::string& key, std::string_view value) {
        Pending& p = pending[key];
        p.value.assign(value.data(), value.size());
        ++p.out;
    }
    // Under mu. One of the key's sets was stored at rev (value: that set's),
    // or (rev 0) was superseded by a later set of this handle and not sent again.
    void settled(const std::string& key, std::uint64_t rev, std::string_view value) {
        auto it = pending.find(key);
        if (it != pending.end() && --it->second.out == 0) pending.erase(it);
        if (rev) apply(key, rev, true, value);
    }

    // The thread is stopped by the flag, not by kvWatcher_Stop(): a stop
    // that lands while kvWatcher_Next() holds a message just taken off the
    // subscription makes the client drop that message without freeing it.
    // The watcher is stopped once nothing waits in it.
    ~Mirror() {
        stopping.store(true);
        if (th.joinable()) th.join();
        if (w) kvWatcher_Destroy(w);  // stops it, and frees what it still held
    }

    // Under mu. A revision not newer than the one held for the key (or
    // than the last clear) changes nothing: the watch and this handle's
    // own writes may bring the same change in either order.
    void apply(const std::string& key, std::uint64_t rev, bool present, std::string_view value) {
        if (key == kClearedKey) {
            if (!present || rev <= cleared) return;
            cleared = rev;
            for (auto it = entries.begin(); it != entries.end();) {
                if (it->second.rev < rev) {
                    if (it->second.present) --live;
                    it = entries.erase(it);
                } else {
                    ++it;
                }
            }
            return;
        }
        if (rev <= cleared) return;
        Entry& e = entries[key];
        if (e.rev >= rev) return;
        if (e.present) --live;
        e.rev = rev;
        e.present = present;
        if (present) {
            e.value.assign(value.data(), value.size());
            ++live;
        } else {
            e.value.clear();
        }
    }

    void run() {
        while (!stopping.load()) {
            kvEntry* e = nullptr;
            // Short waits: the destructor waits for the thread to see the flag.
            natsStatus st = kvWatcher_Next(&e, w, 100);
            if (st == NATS_TIMEOUT) continue;
            std::lock_guard<std::mutex> g(mu);
            if (st != NATS_OK) {
                ended = true;
                why = last_error_text(st);
                cv.notify_all();
                return;
            }
            if (!e) {
                synced = true;
            } else {
                const void* data = kvEntry_Value(e);
                int len = kvEntry_ValueLen(e);
                std::string_view value = data && len > 0 ? std::string_view(static_cast<const char*>(data),
                                                                            static_cast<std::size_t>(len))
                                                         : std::string_view();
                std::uint64_t rev = kvEntry_Revision(e);
                apply(kvEntry_Key(e), rev, kvEntry_Operation(e) == kvOp_Put, value);
                if (rev > seen) seen = rev;
                kvEntry_Destroy(e);
            }
            cv.notify_all();
        }
    }
};

}  // namespace detail

namespace {

using detail::Mirror;

// Start s's local copy: watch the whole bucket, and wait until the values
// there were at the start are in.
void start_mirror(KvState& s) {
    auto m = std::make_shared<Mirror>();
    kvWatchOptions wo;
    kvWatchOptions_Init(&wo);
    wo.Timeout = s.store->timeout_ms();
    natsStatus st = kvStore_WatchAll(&m->w, s.kv, &wo);
    if (st != NATS_OK) detail::fail(st, static_cast<jsErrCode>(0), "watching " + s.where + " for a local copy");
    m->th = std::thread([mp = m.get()] { mp->run(); });
    std::unique_lock<std::mutex> lk(m->mu);
    m->cv.wait_for(lk, std::chrono::milliseconds(s.store->timeout_ms()), [&] { return m->synced || m->ended; });
    if (!m->synced) {
        std::string why = m->ended ? ": " + m->why : "";
        lk.unlock();
        throw unavailable(ETIMEDOUT, "shm::remote: the local copy of " + s.where + " did not load within the " +
                                         std::to_string(s.store->timeout_ms()) + " ms request time-out" + why);
    }
    lk.unlock();
    s.mirror = std::move(m);
}

// The copy, if s has one whose watch is still running.
Mirror* live_mirror(const KvState& s) {
    Mirror* m = s.mirror.get();
    return m && !m->ended ? m : nullptr;
}

// The key's entry: from the local copy if there is one, else from the servers.
KvEntry read_entry(KvState& s, const std::string& key) {
    if (Mirror* m = s.mirror.get()) {
        std::lock_guard<std::mutex> g(m->mu);
        if (!m->ended) {
            KvEntry out;
            auto p = m->pending.find(key);
            if (p != m->pending.end()) {
                out.found = true;
                out.value = p->second.value;  // revision 0: not known yet
                return out;
            }
            auto it = m->entries.find(key);
            if (it != m->entries.end() && it->second.present) {
                out.found = true;
                out.value = it->second.value;
                out.revision = it->second.rev;
            }
            return out;
        }
    }
    return kv_get(s, key);
}

// A change this handle made (value null: a delete), into its copy.
void note_write(KvState& s, const std::string& key, std::uint64_t rev, const std::string* value) {
    Mirror* m = s.mirror.get();
    if (!m || rev == 0) return;
    std::lock_guard<std::mutex> g(m->mu);
    m->apply(key, rev, value != nullptr, value ? std::string_view(*value) : std::string_view());
}

// Wait until s's copy holds every change the servers have stored now.
void sync_mirror(KvState& s) {
    Mirror* m = s.mirror.get();
    if (!m) return;
    jsStreamInfo* si = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    jsOptions o = s.store->js_options();
    const std::string stream = "KV_" + s.bucket;
    natsStatus st = js_GetStreamInfo(&si, s.store->js, stream.c_str(), &o, &jerr);
    if (st != NATS_OK) detail::fail(st, jerr, "syncing the local copy of " + s.where);
    const std::uint64_t last = si->State.LastSeq;
    jsStreamInfo_Destroy(si);
    std::unique_lock<std::mutex> lk(m->mu);
    if (!m->cv.wait_for(lk, std::chrono::milliseconds(s.store->timeout_ms()),
                        [&] { return m->seen >= last || m->ended; }))
        throw unavailable(ETIMEDOUT, "shm::remote: the local copy of " + s.where + " did not reach revision " +
                                         std::to_string(last) + " within the " +
                                         std::to_string(s.store->timeout_ms()) + " ms request time-out");
}

// Read, compute, write back if unchanged; again if changed. fn gets the
// current value (nullopt if absent) and returns the new one (nullopt:
// delete). Returns what fn returned the last time. The first round reads
// the local copy, if there is one; a round after a conflict, the servers.
std::optional<std::string> cas_loop(KvState& s, const std::string& key,
                                    const std::function<std::optional<std::string>(const std::optional<std::string>&)>& fn) {
    for (int round = 0; round < kMaxCasRounds; ++round) {
        KvEntry e = round == 0 ? read_entry(s, key) : kv_get(s, key);
        std::optional<std::string> cur;
        if (e.found) cur = std::move(e.value);
        std::optional<std::string> next = fn(cur);
        std::uint64_t rev = 0;
        if (next) {
            if (kv_cas(s, key, *next, e.found ? e.revision : 0, &rev)) {
                note_write(s, key, rev, &*next);
                return next;
            }
        } else {
            if (!e.found) {
                // Absent in the copy may be stale: ask the servers once.
                if (round == 0 && live_mirror(s)) continue;
                return next;
            }
            if (kv_cas_delete(s, key, e.revision, &rev)) {
                note_write(s, key, rev, nullptr);
                return next;
            }
        }
    }
    too_contended(s);
}

std::vector<std::pair<std::string, std::string>> scan(KvState& s) {
    std::vector<std::pair<std::string, std::string>> out;
    if (Mirror* m = s.mirror.get()) {
        // One instant of the copy, in the servers' order (by revision).
        std::lock_guard<std::mutex> g(m->mu);
        if (!m->ended) {
            std::vector<std::pair<std::uint64_t, const std::pair<const std::string, Mirror::Entry>*>> live;
            live.reserve(m->live);
            for (const auto& kv : m->entries)
                if (kv.second.present) live.emplace_back(kv.second.rev, &kv);
            std::sort(live.begin(), live.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
            out.reserve(live.size());
            for (const auto& r : live) out.emplace_back(r.second->first, r.second->second.value);
            return out;
        }
    }
    kvWatchOptions wo;
    kvWatchOptions_Init(&wo);
    wo.IgnoreDeletes = true;
    wo.Timeout = s.store->timeout_ms();
    kvWatcher* w = nullptr;
    natsStatus st = kvStore_WatchAll(&w, s.kv, &wo);
    if (st != NATS_OK) detail::fail(st, static_cast<jsErrCode>(0), "listing " + s.where);
    std::unique_ptr<kvWatcher, void (*)(kvWatcher*)> guard(w, kvWatcher_Destroy);
    for (;;) {
        kvEntry* e = nullptr;
        st = kvWatcher_Next(&e, w, s.store->timeout_ms());
        if (st != NATS_OK) detail::fail(st, static_cast<jsErrCode>(0), "listing " + s.where);
        if (!e) break;  // the values there were at the start: all seen
        if (kvEntry_Operation(e) == kvOp_Put && kvEntry_Key(e) != kClearedKey) {
            const void* data = kvEntry_Value(e);
            int len = kvEntry_ValueLen(e);
            out.emplace_back(kvEntry_Key(e),
                             data && len > 0 ? std::string(static_cast<const char*>(data), static_cast<std::size_t>(len))
                                             : std::string());
        }
        kvEntry_Destroy(e);
    }
    kvWatcher_Stop(w);
    return out;
}

// A marker first, then everything before it purged: a watched copy (this
// handle's or another's) drops every key older than the marker, and a key
// set after the marker stays.
void purge_all(KvState& s) {
    const std::string one = "1";
    std::uint64_t rev = 0;
    natsStatus st = kvStore_PutString(&rev, s.kv, kClearedKey.c_str(), one.c_str());
    if (st != NATS_OK) detail::fail(st, static_cast<jsErrCode>(0), "clearing " + s.where);
    jsOptions o = s.store->js_options();
    o.Stream.Purge.Sequence = rev;  // up to, not including, the marker
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const std::string stream = "KV_" + s.bucket;
    st = js_PurgeStream(s.store->js, stream.c_str(), &o, &jerr);
    if (st != NATS_OK) detail::fail(st, jerr, "clearing " + s.where);
    note_write(s, kClearedKey, rev, &one);
}

std::string show_key(std::string_view key) {
    std::string out = "'";
    for (char c : key) {
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
            char buf[8];
            snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(c));
            out += buf;
        } else {
            out.push_back(c);
        }
    }
    return out + "'";
}

}  // namespace

// ---- Pipelined sets (Dict::set_async) -----------------------------------------
namespace detail {

// A JetStream context of its own (its answers come to on_set_answer), the
// numbering of this handle's pipelined sets, and what is not confirmed.
struct KvAsync {
    static constexpr int kWindow = 256;  // sets sent and not answered, at most
    jsCtx* js = nullptr;
    std::mutex mu;  // set_async() and flush(): a handle may be shared by threads (Python)
    std::string subject_prefix;  // "$KV.<bucket>."
    std::string id_prefix;       // message ids: unique per handle
    std::uint64_t sets = 0;
    // The number of the last pipelined set of each key not yet confirmed:
    // an earlier one that got no answer is not sent again. (Its own lock:
    // the answers' handler prunes it while set_async() may wait, holding mu,
    // for room among the answers.)
    std::mutex last_mu;
    std::unordered_map<std::string, std::uint64_t> last;
    std::atomic<std::uint64_t> unflushed{0};
    struct Unsent {
        std::uint64_t n = 0;
        std::string key, value;
    };
    std::mutex refused_mu;
    std::vector<Unsent> refused;  // answered with an error, to be sent again

    ~KvAsync() {
        if (js) jsCtx_Destroy(js);
    }
    std::string id(std::uint64_t n) const { return id_prefix + std::to_string(n); }
    // The set a message of this handle carries.
    Unsent unsent(natsMsg* m) const {
        Unsent u;
        const char* id = nullptr;
        if (natsMsgHeader_Get(m, "Nats-Msg-Id", &id) == NATS_OK && id &&
            std::string_view(id).substr(0, id_prefix.size()) == id_prefix)
            u.n = std::strtoull(id + id_prefix.size(), nullptr, 10);
        const std::string_view subject = natsMsg_GetSubject(m);
        u.key = std::string(subject.substr(std::min(subject.size(), subject_prefix.size())));
        const char* data = natsMsg_GetData(m);
        const int len = natsMsg_GetDataLength(m);
        if (data && len > 0) u.value.assign(data, static_cast<std::size_t>(len));
        return u;
    }
};

namespace {
// The servers' answer to one pipelined set (on the client's thread).
void on_set_answer(jsCtx*, natsMsg* m, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
    auto* s = static_cast<KvState*>(closure);
    KvAsync& a = *s->async;
    if (pa) {
        const KvAsync::Unsent u = a.unsent(m);
        {
            std::lock_guard<std::mutex> g(a.last_mu);
            auto it = a.last.find(u.key);
            if (it != a.last.end() && it->second == u.n) a.last.erase(it);
        }
        if (Mirror* mr = s->mirror.get()) {
            std::lock_guard<std::mutex> g(mr->mu);
            mr->settled(u.key, pa->Sequence, u.value);
            mr->cv.notify_all();
        }
    } else if (pae) {
        KvAsync::Unsent u = a.unsent(m);
        std::lock_guard<std::mutex> g(a.refused_mu);
        a.refused.push_back(std::move(u));
    }
    natsMsg_Destroy(m);
}

// Store one set under its message id (a retry of the same id is stored
// once), retrying what a lost server or an election makes fail, for up to
// the request time-out. Returns its revision.
std::uint64_t set_with_id(KvState& s, const std::string& key, std::string_view value, const std::string& id) {
    KvAsync& a = *s.async;
    const std::string subject = a.subject_prefix + key;
    Outage outage;
    int step = 0;
    for (;;) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = id.c_str();
        po.MaxWait = s.store->timeout_ms();
        jsPubAck* pa = nullptr;
        jsErrCode jerr = static_cast<jsErrCode>(0);
        natsStatus st = js_Publish(&pa, s.store->js, subject.c_str(), value.data(), static_cast<int>(value.size()), &po,
                                   &jerr);
        if (st == NATS_OK) {
            const std::uint64_t rev = pa->Sequence;
            jsPubAck_Destroy(pa);
            return rev;
        }
        if (!transient(st, jerr)) fail(st, jerr, "writing " + s.where);
        outage.failed(st, jerr, *s.store, "writing " + s.where);
        backoff(step, shm::detail::Deadline::never());
    }
}

// Wait for the answers to what is in flight; send again, waiting for each
// answer, what got none or an error, in the order sent, unless a later set
// of the same key followed it. Under a.mu. On an exception, what is not
// stored yet stays for the next settle.
void settle(KvState& s) {
    KvAsync& a = *s.async;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = s.store->timeout_ms();
    std::vector<KvAsync::Unsent> again;
    if (js_PublishAsyncComplete(a.js, &po) != NATS_OK) {
        natsMsgList pending{nullptr, 0};
        if (js_PublishAsyncGetPendingList(&pending, a.js) == NATS_OK) {
            for (int i = 0; i < pending.Count; ++i) again.push_back(a.unsent(pending.Msgs[i]));
            natsMsgList_Destroy(&pending);
        }
    }
    {
        std::lock_guard<std::mutex> g(a.refused_mu);
        for (auto& u : a.refused) again.push_back(std::move(u));
        a.refused.clear();
    }
    std::sort(again.begin(), again.end(), [](const auto& x, const auto& y) { return x.n < y.n; });
    Mirror* m = s.mirror.get();
    for (std::size_t i = 0; i < again.size(); ++i) {
        const KvAsync::Unsent& u = again[i];
        std::uint64_t rev = 0;
        bool latest;
        {
            std::lock_guard<std::mutex> g(a.last_mu);
            auto it = a.last.find(u.key);
            latest = it != a.last.end() && it->second == u.n;
        }
        if (latest) {
            try {
                rev = set_with_id(s, u.key, u.value, a.id(u.n));
            } catch (...) {
                std::lock_guard<std::mutex> g(a.refused_mu);
                a.refused.insert(a.refused.begin(), std::make_move_iterator(again.begin() + static_cast<std::ptrdiff_t>(i)),
                                 std::make_move_iterator(again.end()));
                throw;
            }
        }
        if (m) {
            std::lock_guard<std::mutex> g(m->mu);
            m->settled(u.key, rev, u.value);
            m->cv.notify_all();
        }
    }
    {
        std::lock_guard<std::mutex> g(a.last_mu);
        a.last.clear();
    }
    a.unflushed = 0;
}

}  // namespace

void settle_locked(KvState& s) { settle(s); }

// This handle's pipelined sets, stored before any other operation of it.
void settled(KvState& s) {
    if (!s.async || s.async->unflushed.load() == 0) return;  // (a List has none)
    std::lock_guard<std::mutex> g(s.async->mu);
    settle(s);
}

// The state of a Dict handle's pipelined sets, made with the handle (so
// that threads sharing it never see it change); its JetStream context is
// made by the first set_async().
std::shared_ptr<KvAsync> make_async(const KvState& s) {
    auto a = std::make_shared<KvAsync>();
    a->subject_prefix = "$KV." + s.bucket + ".";
    std::random_device rd;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%08x%08x-%d-", rd(), rd(), static_cast<int>(getpid()));
    a->id_prefix = buf;
    return a;
}

// Under a.mu.
void ensure_js(KvState& s) {
    KvAsync& a = *s.async;
    if (a.js) return;
    jsOptions o = s.store->js_options();
    o.PublishAsync.MaxPending = KvAsync::kWindow;
    o.PublishAsync.AckHandler = on_set_answer;
    o.PublishAsync.AckHandlerClosure = &s;
    o.PublishAsync.StallWait = std::min<std::int64_t>(s.store->timeout_ms(), 1000);
    check(natsConnection_JetStream(&a.js, s.store->nc, &o), "writing " + s.where);
}

void close_async(KvState& s) noexcept {
    try {
        settled(s);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "libshm: %llu value(s) set on %s without waiting may not be stored: %s\n",
                     static_cast<unsigned long long>(s.async->unflushed.load()), s.where.c_str(), e.what());
    }
    s.async.reset();
}

}  // namespace detail

using detail::settled;

// ---- Dict ----------------------------------------------------------------------
namespace {
std::shared_ptr<KvState> with_copy(std::shared_ptr<KvState> s, const ObjectOptions& opt) {
    if (opt.local_copy) start_mirror(*s);
    return s;
}
std::shared_ptr<KvState> for_dict(std::shared_ptr<KvState> s) {
    s->async = detail::make_async(*s);
    return s;
}
}  // namespace

Dict Dict::open_or_create(Store& store, std::string_view name, const ObjectOptions& opt) {
    return Dict(for_dict(with_copy(detail::open_bucket(store, detail::Kind::dict, name, true, opt.replicas, 0), opt)));
}
Dict Dict::open(Store& store, std::string_view name) { return open(store, name, ObjectOptions{}); }
Dict Dict::open(Store& store, std::string_view name, const ObjectOptions& opt) {
    return Dict(for_dict(with_copy(detail::open_bucket(store, detail::Kind::dict, name, false, 0, 0), opt)));
}
const std::string& Dict::name() const noexcept { return s_->name; }
void Dict::sync() const {
    settled(*s_);
    sync_mirror(*s_);
}
bool Dict::has_local_copy() const noexcept { return s_->mirror != nullptr; }

namespace {
// A read of this handle's own pipelined sets: from the local copy (which
// holds them) if there is one, else from the servers once they are stored.
KvEntry read_own(KvState& s, const std::string& key) {
    if (!live_mirror(s)) settled(s);
    return read_entry(s, key);
}
}  // namespace

std::optional<Value> Dict::find(std::string_view key) const {
    KvEntry e = read_own(*s_, encode_key(key));
    if (!e.found) return std::nullopt;
    return decode_value(e.value);
}

Value Dict::get(std::string_view key) const {
    auto v = find(key);
    if (!v) throw key_error("shm::remote: no key " + show_key(key) + " in " + s_->where);
    return *v;
}

Value Dict::get(std::string_view key, const Value& dflt) const {
    auto v = find(key);
    return v ? *v : dflt;
}

bool Dict::contains(std::string_view key) const { return read_own(*s_, encode_key(key)).found; }

void Dict::set(std::string_view key, const Value& v) {
    settled(*s_);
    std::string bytes = encode_value(v);
    std::uint64_t rev = 0;
    const std::string k = encode_key(key);
    natsStatus st = kvStore_Put(&rev, s_->kv, k.c_str(), bytes.data(), static_cast<int>(bytes.size()));
    if (st == NATS_OK) note_write(*s_, k, rev, &bytes);
    if (st != NATS_OK) {
        std::string text = detail::last_error_text(st);
        if (text.find("message size") != std::string::npos || st == NATS_MAX_PAYLOAD)
            throw shm::error(EMSGSIZE, "shm::remote: a value of " + std::to_string(bytes.size()) + " bytes for " +
                                           s_->where + " is over the servers' limit: " + text);
        detail::fail(st, static_cast<jsErrCode>(0), "writing " + s_->where);
    }
}

void Dict::set_async(std::string_view key, const Value& v) {
    KvState& s = *s_;
    std::string bytes = encode_value(v);
    const std::string k = encode_key(key);
    // Near the message limit (the message id and the subject count too):
    // as set(), which says exactly what the servers refuse.
    const std::int64_t limit = natsConnection_GetMaxPayload(s.store->nc);
    if (static_cast<std::int64_t>(bytes.size() + k.size()) + 1024 > limit) return set(key, v);
    detail::KvAsync& a = *s.async;
    std::lock_guard<std::mutex> g(a.mu);
    detail::ensure_js(s);
    const std::uint64_t n = ++a.sets;
    const std::string id = a.id(n);
    {
        std::lock_guard<std::mutex> lg(a.last_mu);
        a.last[k] = n;
    }
    if (Mirror* m = s.mirror.get()) {
        std::lock_guard<std::mutex> mg(m->mu);
        m->expect(k, bytes);
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = id.c_str();
    po.MaxWait = s.store->timeout_ms();  // an answer that never comes is an error, then a retry
    const std::string subject = a.subject_prefix + k;
    ++a.unflushed;
    natsStatus st = js_PublishAsync(a.js, subject.c_str(), bytes.data(), static_cast<int>(bytes.size()), &po);
    if (st != NATS_OK) {
        // Stalled (no answers for a while: a server lost) or not sent:
        // settle what is in flight and this one.
        {
            std::lock_guard<std::mutex> rg(a.refused_mu);
            a.refused.push_back(detail::KvAsync::Unsent{n, k, bytes});
        }
        detail::settle_locked(s);
    }
}

std::size_t Dict::flush() {
    KvState& s = *s_;
    std::lock_guard<std::mutex> g(s.async->mu);
    if (!s.async->js) return 0;
    const std::size_t n = s.async->unflushed;
    detail::settle_locked(s);
    return n;
}

std::size_t Dict::unflushed() const noexcept { return s_->async ? s_->async->unflushed.load() : 0; }

bool Dict::erase(std::string_view key) {
    settled(*s_);
    const std::string k = encode_key(key);
    for (int round = 0; round < kMaxCasRounds; ++round) {
        KvEntry e = round == 0 ? read_entry(*s_, k) : kv_get(*s_, k);
        if (!e.found) {
            if (round == 0 && live_mirror(*s_)) continue;  // the copy may be behind: ask the servers
            return false;
        }
        std::uint64_t rev = 0;
        if (kv_cas_delete(*s_, k, e.revision, &rev)) {
            note_write(*s_, k, rev, nullptr);
            return true;
        }
    }
    too_contended(*s_);
}

Value Dict::pop(std::string_view key) {
    settled(*s_);
    const std::string k = encode_key(key);
    for (int round = 0; round < kMaxCasRounds; ++round) {
        KvEntry e = round == 0 ? read_entry(*s_, k) : kv_get(*s_, k);
        if (!e.found) {
            if (round == 0 && live_mirror(*s_)) continue;  // the copy may be behind: ask the servers
            throw key_error("shm::remote: no key " + show_key(key) + " in " + s_->where);
        }
        Value v = decode_value(e.value);
        std::uint64_t rev = 0;
        if (kv_cas_delete(*s_, k, e.revision, &rev)) {
            note_write(*s_, k, rev, nullptr);
            return v;
        }
    }
    too_contended(*s_);
}

Value Dict::pop(std::string_view key, const Value& dflt) {
    settled(*s_);
    try {
        return pop(key);
    } catch (const key_error&) {
        return dflt;
    }
}

std::vector<std::pair<std::string, Value>> Dict::items() const {
    settled(*s_);
    std::vector<std::pair<std::string, Value>> out;
    for (auto& kv : scan(*s_)) out.emplace_back(decode_key(kv.first), decode_value(kv.second));
    return out;
}

std::vector<std::string> Dict::keys() const {
    settled(*s_);
    std::vector<std::string> out;
    for (auto& kv : scan(*s_)) out.push_back(decode_key(kv.first));
    return out;
}

std::vector<Value> Dict::values() const {
    settled(*s_);
    std::vector<Value> out;
    for (auto& kv : scan(*s_)) out.push_back(decode_value(kv.second));
    return out;
}

std::size_t Dict::size() const {
    settled(*s_);
    if (Mirror* m = s_->mirror.get()) {
        std::lock_guard<std::mutex> g(m->mu);
        if (!m->ended) return m->live;
    }
    return scan(*s_).size();
}

void Dict::clear() {
    settled(*s_);
    purge_all(*s_);
}

void Dict::update(const std::vector<std::pair<std::string, Value>>& items) {
    settled(*s_);
    for (const auto& kv : items) set(kv.first, kv.second);
}

Value Dict::setdefault(std::string_view key, const Value& dflt) {
    settled(*s_);
    const std::string k = encode_key(key);
    const std::string bytes = encode_value(dflt);
    for (int round = 0; round < kMaxCasRounds; ++round) {
        KvEntry e = round == 0 ? read_entry(*s_, k) : kv_get(*s_, k);
        if (e.found) return decode_value(e.value);
        std::uint64_t rev = 0;
        if (kv_cas(*s_, k, bytes, 0, &rev)) {
            note_write(*s_, k, rev, &bytes);
            return dflt;
        }
    }
    too_contended(*s_);
}

Value Dict::update(std::string_view key, const std::function<Value(const Value&)>& fn) {
    settled(*s_);
    Value result;
    cas_loop(*s_, encode_key(key), [&](const std::optional<std::string>& cur) -> std::optional<std::string> {
        Value v = cur ? decode_value(*cur) : Value();
        result = fn(v);
        return encode_value(result);
    });
    return result;
}

std::int64_t Dict::increment_int(std::string_view key, std::int64_t n) {
    settled(*s_);
    std::int64_t result = 0;
    cas_loop(*s_, encode_key(key), [&](const std::optional<std::string>& cur) -> std::optional<std::string> {
        std::int64_t v = 0;
        if (cur) {
            Value old = decode_value(*cur);
            if (old.type() != Value::Type::integer)
                throw value_type_error("shm::remote: increment of key " + show_key(key) + " in " + s_->where +
                                       ": the value is " + old.type_name() + ", not int");
            v = old.as_int();
        }
        if (__builtin_add_overflow(v, n, &result))
            throw shm::error(EOVERFLOW, "shm::remote: increment of key " + show_key(key) + " in " + s_->where +
                                            " overflows int64");
        return encode_value(Value(result));
    });
    return result;
}

double Dict::increment(std::string_view key, double n) {
    settled(*s_);
    double result = 0;
    cas_loop(*s_, encode_key(key), [&](const std::optional<std::string>& cur) -> std::optional<std::string> {
        double v = 0;
        if (cur) {
            Value old = decode_value(*cur);
            if (old.type() != Value::Type::integer && old.type() != Value::Type::real)
                throw value_type_error("shm::remote: increment of key " + show_key(key) + " in " + s_->where +
                                       ": the value is " + old.type_name() + ", not a number");
            v = old.as_double();
        }
        result = v + n;
        return encode_value(Value(result));
    });
    return result;
}

// ---- List ----------------------------------------------------------------------
namespace {
const std::string kItems = "items";

std::vector<Value> decode_list(const std::optional<std::string>& bytes) {
    if (!bytes) return {};
    Value v = decode_value(*bytes);
    if (v.type() != Value::Type::list || !v.is_new_container())
        throw shm::corrupted("shm::remote: a list's value is not a list");
    return v.new_list_items();
}

std::string encode_list(const std::vector<Value>& items) { return encode_value(Value::new_list(items)); }

// Python's index rules: negative from the end; out of range is an error.
std::size_t place(std::int64_t index, std::size_t size, const KvState& s) {
    std::int64_t i = index < 0 ? index + static_cast<std::int64_t>(size) : index;
    if (i < 0 || i >= static_cast<std::int64_t>(size))
        throw index_error("shm::remote: index " + std::to_string(index) + " out of range for " + s.where + " of " +
                          std::to_string(size) + " items");
    return static_cast<std::size_t>(i);
}

// Change the list as fn says, atomically (compare-and-set on its key).
void mutate(KvState& s, const std::function<void(std::vector<Value>&)>& fn) {
    cas_loop(s, kItems, [&](const std::optional<std::string>& cur) -> std::optional<std::string> {
        std::vector<Value> items = decode_list(cur);
        fn(items);
        return encode_list(items);
    });
}

std::vector<Value> read_list(KvState& s) {
    KvEntry e = read_entry(s, kItems);
    return e.found ? decode_list(e.value) : std::vector<Value>{};
}

std::int64_t clamp_index(std::int64_t index, std::size_t size) {
    std::int64_t n = static_cast<std::int64_t>(size);
    if (index < 0) index += n;
    if (index < 0) index = 0;
    if (index > n) index = n;
    return index;
}
}  // namespace

List List::open_or_create(Store& store, std::string_view name, const ObjectOptions& opt) {
    return List(with_copy(detail::open_bucket(store, detail::Kind::list, name, true, opt.replicas, 0), opt));
}
List List::open(Store& store, std::string_view name) { return open(store, name, ObjectOptions{}); }
List List::open(Store& store, std::string_view name, const ObjectOptions& opt) {
    return List(with_copy(detail::open_bucket(store, detail::Kind::list, name, false, 0, 0), opt));
}
const std::string& List::name() const noexcept { return s_->name; }
void List::sync() const { sync_mirror(*s_); }
bool List::has_local_copy() const noexcept { return s_->mirror != nullptr; }

void List::append(const Value& v) {
    mutate(*s_, [&](std::vector<Value>& items) { items.push_back(v); });
}
void List::extend(const std::vector<Value>& vs) {
    mutate(*s_, [&](std::vector<Value>& items) { items.insert(items.end(), vs.begin(), vs.end()); });
}
void List::insert(std::int64_t index, const Value& v) {
    mutate(*s_, [&](std::vector<Value>& items) { items.insert(items.begin() + clamp_index(index, items.size()), v); });
}
Value List::get(std::int64_t index) const {
    std::vector<Value> items = read_list(*s_);
    return items[place(index, items.size(), *s_)];
}
void List::set(std::int64_t index, const Value& v) {
    mutate(*s_, [&](std::vector<Value>& items) { items[place(index, items.size(), *s_)] = v; });
}
Value List::pop(std::int64_t index) {
    Value out;
    mutate(*s_, [&](std::vector<Value>& items) {
        if (items.empty()) throw index_error("shm::remote: pop from the empty " + s_->where);
        std::size_t i = place(index, items.size(), *s_);
        out = items[i];
        items.erase(items.begin() + static_cast<std::ptrdiff_t>(i));
    });
    return out;
}
void List::remove(const Value& v) {
    mutate(*s_, [&](std::vector<Value>& items) {
        for (auto it = items.begin(); it != items.end(); ++it)
            if (*it == v) {
                items.erase(it);
                return;
            }
        throw shm::error(ENOENT, "shm::remote: " + v.repr() + " is not in " + s_->where);
    });
}
std::size_t List::index(const Value& v) const {
    std::vector<Value> items = read_list(*s_);
    for (std::size_t i = 0; i < items.size(); ++i)
        if (items[i] == v) return i;
    throw shm::error(ENOENT, "shm::remote: " + v.repr() + " is not in " + s_->where);
}
std::size_t List::count(const Value& v) const {
    std::size_t n = 0;
    for (const Value& x : read_list(*s_)) n += x == v;
    return n;
}
std::size_t List::size() const { return read_list(*s_).size(); }
void List::clear() {
    mutate(*s_, [](std::vector<Value>& items) { items.clear(); });
}
std::vector<Value> List::snapshot() const { return read_list(*s_); }
std::vector<Value> List::slice(std::int64_t start, std::int64_t stop) const {
    std::vector<Value> items = read_list(*s_);
    std::int64_t a = clamp_index(start, items.size()), b = clamp_index(stop, items.size());
    if (b <= a) return {};
    return std::vector<Value>(items.begin() + a, items.begin() + b);
}
Value List::update(std::int64_t index, const std::function<Value(const Value&)>& fn) {
    Value out;
    mutate(*s_, [&](std::vector<Value>& items) {
        std::size_t i = place(index, items.size(), *s_);
        out = fn(items[i]);
        items[i] = out;
    });
    return out;
}
void List::assign(const std::vector<Value>& items) {
    mutate(*s_, [&](std::vector<Value>& cur) { cur = items; });
}
bool List::assign_if(const std::vector<Value>& expected, const std::vector<Value>& items) {
    bool done = false;
    mutate(*s_, [&](std::vector<Value>& cur) {
        done = cur.size() == expected.size();
        for (std::size_t i = 0; done && i < cur.size(); ++i) done = cur[i] == expected[i];
        if (done) cur = items;
    });
    return done;
}

// ---- Event ---------------------------------------------------------------------
namespace {
const std::string kFlag = "flag";
}

Event Event::open_or_create(Store& store, std::string_view name, const ObjectOptions& opt) {
    return Event(detail::open_bucket(store, detail::Kind::event, name, true, opt.replicas, 0));
}
Event Event::open(Store& store, std::string_view name) {
    return Event(detail::open_bucket(store, detail::Kind::event, name, false, 0, 0));
}
const std::string& Event::name() const noexcept { return s_->name; }

void Event::set() {
    std::uint64_t rev = 0;
    natsStatus st = kvStore_PutString(&rev, s_->kv, kFlag.c_str(), "1");
    if (st != NATS_OK) detail::fail(st, static_cast<jsErrCode>(0), "setting " + s_->where);
}

void Event::clear() {
    std::uint64_t rev = 0;
    natsStatus st = kvStore_PutString(&rev, s_->kv, kFlag.c_str(), "0");
    if (st != NATS_OK) detail::fail(st, static_cast<jsErrCode>(0), "clearing " + s_->where);
}

bool Event::is_set() const {
    KvEntry e = kv_get(*s_, kFlag);
    return e.found && e.value == "1";
}

bool Event::wait_until(const shm::detail::Deadline& d) {
    // Watch the flag: every write to it comes to the watcher, so a set()
    // followed at once by clear() still wakes it.
    kvWatcher* w = nullptr;
    natsStatus st = kvStore_Watch(&w, s_->kv, kFlag.c_str(), nullptr);
    if (st != NATS_OK) detail::fail(st, static_cast<jsErrCode>(0), "waiting on " + s_->where);
    std::unique_ptr<kvWatcher, void (*)(kvWatcher*)> guard(w, kvWatcher_Destroy);
    for (;;) {
        kvEntry* e = nullptr;
        // Wake at least every second to ask the servers directly, so that
        // a wait on servers that have gone fails instead of hanging.
        st = kvWatcher_Next(&e, w, detail::ms_left(d, 1000));
        if (st == NATS_OK && e) {
            bool set = kvEntry_Operation(e) == kvOp_Put && kvEntry_ValueLen(e) == 1 &&
                       static_cast<const char*>(kvEntry_Value(e))[0] == '1';
            kvEntry_Destroy(e);
            if (set) {
                kvWatcher_Stop(w);
                return true;
            }
            continue;
        }
        if (st != NATS_OK && st != NATS_TIMEOUT) detail::fail(st, static_cast<jsErrCode>(0), "waiting on " + s_->where);
        if (is_set()) {
            kvWatcher_Stop(w);
            return true;
        }
        if (d.passed()) {
            kvWatcher_Stop(w);
            return false;
        }
    }
}

}  // namespace shm::remote
