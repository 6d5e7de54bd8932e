// shm::remote::Dict, List and Event: one key-value bucket each (history 1).
// Read-modify-writes are compare-and-set loops on the key's revision.
#include <cmath>
#include <thread>

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

// Read, compute, write back if unchanged; again if changed. fn gets the
// current value (nullopt if absent) and returns the new one (nullopt:
// delete). Returns what fn returned the last time.
std::optional<std::string> cas_loop(KvState& s, const std::string& key,
                                    const std::function<std::optional<std::string>(const std::optional<std::string>&)>& fn) {
    for (int round = 0; round < kMaxCasRounds; ++round) {
        KvEntry e = kv_get(s, key);
        std::optional<std::string> cur;
        if (e.found) cur = std::move(e.value);
        std::optional<std::string> next = fn(cur);
        if (next) {
            if (kv_cas(s, key, *next, e.found ? e.revision : 0, nullptr)) return next;
        } else {
            if (!e.found) return next;
            if (kv_cas_delete(s, key, e.revision)) return next;
        }
    }
    too_contended(s);
}

std::vector<std::pair<std::string, std::string>> scan(KvState& s) {
    std::vector<std::pair<std::string, std::string>> out;
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
        if (kvEntry_Operation(e) == kvOp_Put) {
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

void purge_all(KvState& s) {
    jsOptions o = s.store->js_options();
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const std::string stream = "KV_" + s.bucket;
    natsStatus st = js_PurgeStream(s.store->js, stream.c_str(), &o, &jerr);
    if (st != NATS_OK) detail::fail(st, jerr, "clearing " + s.where);
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

// ---- Dict ----------------------------------------------------------------------
Dict Dict::open_or_create(Store& store, std::string_view name, const ObjectOptions& opt) {
    return Dict(detail::open_bucket(store, detail::Kind::dict, name, true, opt.replicas, 0));
}
Dict Dict::open(Store& store, std::string_view name) {
    return Dict(detail::open_bucket(store, detail::Kind::dict, name, false, 0, 0));
}
const std::string& Dict::name() const noexcept { return s_->name; }

std::optional<Value> Dict::find(std::string_view key) const {
    KvEntry e = kv_get(*s_, encode_key(key));
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

bool Dict::contains(std::string_view key) const { return kv_get(*s_, encode_key(key)).found; }

void Dict::set(std::string_view key, const Value& v) {
    std::string bytes = encode_value(v);
    std::uint64_t rev = 0;
    natsStatus st = kvStore_Put(&rev, s_->kv, encode_key(key).c_str(), bytes.data(), static_cast<int>(bytes.size()));
    if (st != NATS_OK) {
        std::string text = detail::last_error_text(st);
        if (text.find("message size") != std::string::npos || st == NATS_MAX_PAYLOAD)
            throw shm::error(EMSGSIZE, "shm::remote: a value of " + std::to_string(bytes.size()) + " bytes for " +
                                           s_->where + " is over the servers' limit: " + text);
        detail::fail(st, static_cast<jsErrCode>(0), "writing " + s_->where);
    }
}

bool Dict::erase(std::string_view key) {
    const std::string k = encode_key(key);
    for (int round = 0; round < kMaxCasRounds; ++round) {
        KvEntry e = kv_get(*s_, k);
        if (!e.found) return false;
        if (kv_cas_delete(*s_, k, e.revision)) return true;
    }
    too_contended(*s_);
}

Value Dict::pop(std::string_view key) {
    const std::string k = encode_key(key);
    for (int round = 0; round < kMaxCasRounds; ++round) {
        KvEntry e = kv_get(*s_, k);
        if (!e.found) throw key_error("shm::remote: no key " + show_key(key) + " in " + s_->where);
        Value v = decode_value(e.value);
        if (kv_cas_delete(*s_, k, e.revision)) return v;
    }
    too_contended(*s_);
}

Value Dict::pop(std::string_view key, const Value& dflt) {
    try {
        return pop(key);
    } catch (const key_error&) {
        return dflt;
    }
}

std::vector<std::pair<std::string, Value>> Dict::items() const {
    std::vector<std::pair<std::string, Value>> out;
    for (auto& kv : scan(*s_)) out.emplace_back(decode_key(kv.first), decode_value(kv.second));
    return out;
}

std::vector<std::string> Dict::keys() const {
    std::vector<std::string> out;
    for (auto& kv : scan(*s_)) out.push_back(decode_key(kv.first));
    return out;
}

std::vector<Value> Dict::values() const {
    std::vector<Value> out;
    for (auto& kv : scan(*s_)) out.push_back(decode_value(kv.second));
    return out;
}

std::size_t Dict::size() const { return scan(*s_).size(); }

void Dict::clear() { purge_all(*s_); }

void Dict::update(const std::vector<std::pair<std::string, Value>>& items) {
    for (const auto& kv : items) set(kv.first, kv.second);
}

Value Dict::setdefault(std::string_view key, const Value& dflt) {
    const std::string k = encode_key(key);
    const std::string bytes = encode_value(dflt);
    for (int round = 0; round < kMaxCasRounds; ++round) {
        KvEntry e = kv_get(*s_, k);
        if (e.found) return decode_value(e.value);
        if (kv_cas(*s_, k, bytes, 0, nullptr)) return dflt;
    }
    too_contended(*s_);
}

Value Dict::update(std::string_view key, const std::function<Value(const Value&)>& fn) {
    Value result;
    cas_loop(*s_, encode_key(key), [&](const std::optional<std::string>& cur) -> std::optional<std::string> {
        Value v = cur ? decode_value(*cur) : Value();
        result = fn(v);
        return encode_value(result);
    });
    return result;
}

std::int64_t Dict::increment_int(std::string_view key, std::int64_t n) {
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
    KvEntry e = kv_get(s, kItems);
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
    return List(detail::open_bucket(store, detail::Kind::list, name, true, opt.replicas, 0));
}
List List::open(Store& store, std::string_view name) {
    return List(detail::open_bucket(store, detail::Kind::list, name, false, 0, 0));
}
const std::string& List::name() const noexcept { return s_->name; }

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
