// The connection to the servers, the catalogue of object names, the names
// of streams and buckets, the mapping of NATS failures to exceptions, and
// the key-value helpers the Dict, List, Lock and Event share.
#include <time.h>

#include <cstring>

#include "remote/internal.hpp"
#include "shm/names.hpp"

namespace shm::remote {
namespace detail {

namespace {
constexpr const char* kCatalogue = "SHM_CATALOGUE";

bool contains(const std::string& text, const char* what) { return text.find(what) != std::string::npos; }
}  // namespace

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::queue: return "queue";
        case Kind::dict: return "dict";
        case Kind::list: return "list";
        case Kind::lock: return "lock";
        case Kind::event: return "event";
    }
    return "object";
}

StoreState::~StoreState() {
    if (catalogue) kvStore_Destroy(catalogue);
    if (js) jsCtx_Destroy(js);
    if (nc) {
        natsConnection_Close(nc);
        natsConnection_Destroy(nc);
    }
}

std::string StoreState::where(Kind k, std::string_view name) const {
    return std::string(kind_name(k)) + " '" + std::string(name) + "' on " + servers;
}

jsOptions StoreState::js_options() const {
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = timeout_ms();
    return o;
}

std::string server_name(Kind k, std::string_view name) {
    static const char* prefix[] = {"SHMQ_", "SHMD_", "SHML_", "SHMK_", "SHME_"};
    std::string out = prefix[static_cast<int>(k)];
    static const char hex[] = "0123456789ABCDEF";
    for (char c : name) {
        auto u = static_cast<unsigned char>(c);
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-') {
            out.push_back(c);
        } else {
            out.push_back('_');
            out.push_back(hex[u >> 4]);
            out.push_back(hex[u & 15]);
        }
    }
    return out;
}

std::string queue_subject(std::string_view name) { return "shm.q." + server_name(Kind::queue, name).substr(5); }

std::string layout_marker(Kind k) { return std::string("libshm ") + kind_name(k) + " 1"; }

std::string last_error_text(natsStatus s) {
    natsStatus ls = NATS_OK;
    const char* t = nats_GetLastError(&ls);
    std::string text = t && *t ? t : "";
    if (text.empty()) text = natsStatus_GetText(s);
    return text;
}

bool transient(natsStatus s, jsErrCode jerr) {
    if (jerr == JSClusterNotAvailErr) return true;
    switch (s) {
        case NATS_TIMEOUT:
        case NATS_NO_RESPONDERS:
        case NATS_CONNECTION_CLOSED:
        case NATS_CONNECTION_DISCONNECTED:
        case NATS_NO_SERVER:
        case NATS_IO_ERROR:
        case NATS_STALE_CONNECTION:
        case NATS_SLOW_CONSUMER:
            return true;
        default:
            return false;
    }
}

void fail(natsStatus s, jsErrCode jerr, const std::string& what) {
    std::string text = last_error_text(s);
    std::string msg = "shm::remote: " + what + ": " + text;
    if (jerr == JSStreamReplicasNotSupportedErr || jerr == JSClusterNoPeersErr || jerr == JSInsufficientResourcesErr ||
        contains(text, "replicas > 1 not supported") || contains(text, "no suitable peers") ||
        contains(text, "insufficient resources"))
        throw not_enough_replicas(msg + " (the servers cannot hold that many replicas: give fewer, or start more "
                                        "servers in the cluster)");
    if (jerr == JSStreamNameExistErr || contains(text, "already in use with a different configuration"))
        throw layout_mismatch(msg + " (a stream of that name exists with another layout)");
    if (transient(s, jerr))
        throw unavailable(ETIMEDOUT, msg + " (the servers did not answer within the request time-out)");
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) throw shm::not_found(msg);
    throw shm::error(EIO, msg);
}

std::int64_t ms_left(const shm::detail::Deadline& d, std::int64_t cap) {
    if (d.infinite) return cap;
    timespec now;
    clock_gettime(d.clock, &now);
    std::int64_t ms = (static_cast<std::int64_t>(d.abs.tv_sec) - now.tv_sec) * 1000 +
                      (static_cast<std::int64_t>(d.abs.tv_nsec) - now.tv_nsec) / 1000000;
    if (ms < 1) ms = 1;
    return ms < cap ? ms : cap;
}

kvStore* StoreState::catalogue_bucket() {
    std::lock_guard<std::mutex> g(catalogue_mu);
    if (catalogue) return catalogue;
    kvStore* kv = nullptr;
    natsStatus s = js_KeyValue(&kv, js, kCatalogue);
    if (s == NATS_NOT_FOUND) {
        kvConfig cfg;
        kvConfig_Init(&cfg);
        cfg.Bucket = kCatalogue;
        cfg.Description = "libshm catalogue 1";
        cfg.History = 1;
        cfg.Replicas = replicas;
        cfg.StorageType = js_FileStorage;
        s = js_CreateKeyValue(&kv, js, &cfg);
        if (s != NATS_OK && contains(last_error_text(s), "already in use")) s = js_KeyValue(&kv, js, kCatalogue);
    }
    if (s != NATS_OK) fail(s, static_cast<jsErrCode>(0), "opening the catalogue of objects on " + servers);
    catalogue = kv;
    return kv;
}

void StoreState::claim(Kind k, std::string_view name, bool create, bool* created) {
    shm::validate_object_name(name);
    kvStore* cat = catalogue_bucket();
    const std::string key = encode_key(name);
    if (created) *created = false;
    for (int attempt = 0; attempt < 100; ++attempt) {
        kvEntry* e = nullptr;
        natsStatus s = kvStore_Get(&e, cat, key.c_str());
        if (s == NATS_OK) {
            std::string kind(kvEntry_ValueString(e) ? kvEntry_ValueString(e) : "");
            kvEntry_Destroy(e);
            if (kind != kind_name(k))
                throw layout_mismatch("shm::remote: '" + std::string(name) + "' on " + servers + " is a " + kind +
                                      ", not a " + kind_name(k));
            return;
        }
        if (s != NATS_NOT_FOUND) fail(s, static_cast<jsErrCode>(0), "looking up " + where(k, name));
        if (!create) throw shm::not_found("shm::remote: no " + where(k, name));
        std::uint64_t rev = 0;
        s = kvStore_CreateString(&rev, cat, key.c_str(), kind_name(k));
        if (s == NATS_OK) {
            if (created) *created = true;
            return;
        }
        if (!contains(last_error_text(s), "wrong last sequence"))
            fail(s, static_cast<jsErrCode>(0), "recording " + where(k, name));
        // Another process recorded it first: read what it recorded.
    }
    throw shm::error(EAGAIN, "shm::remote: the name of " + where(k, name) + " keeps changing");
}

KvState::~KvState() {
    if (async) close_async(*this);  // its answers go into the copy: first
    mirror.reset();  // its watch thread stops before the bucket's handle goes
    if (kv) kvStore_Destroy(kv);
}

std::shared_ptr<KvState> open_bucket(Store& store, Kind k, std::string_view name, bool create, int replicas,
                                     std::int64_t ttl_ms) {
    StoreState& st = *store.state();
    auto ks = std::make_shared<KvState>();
    ks->store = store.state();
    ks->kind = k;
    ks->name = std::string(name);
    ks->bucket = server_name(k, name);
    ks->where = st.where(k, name);
    bool created = false;
    st.claim(k, name, create, &created);
    natsStatus s = js_KeyValue(&ks->kv, st.js, ks->bucket.c_str());
    if (s == NATS_NOT_FOUND) {
        // Recorded but not made yet (its creator is making it now, or died
        // before it did): make it.
        kvConfig cfg;
        kvConfig_Init(&cfg);
        const std::string marker = layout_marker(k);
        cfg.Bucket = ks->bucket.c_str();
        cfg.Description = marker.c_str();
        cfg.History = 1;
        cfg.TTL = ttl_ms * 1000000;  // nanoseconds, as the stream's max age
        cfg.Replicas = st.replicas_for(replicas);
        cfg.StorageType = js_FileStorage;
        s = js_CreateKeyValue(&ks->kv, st.js, &cfg);
        if (s != NATS_OK && contains(last_error_text(s), "already in use")) {
            s = js_KeyValue(&ks->kv, st.js, ks->bucket.c_str());
        }
        if (s != NATS_OK && created) {
            // Nothing was made: forget the name again, so that the same
            // call with other options (fewer replicas) can succeed.
            kvStore_Purge(st.catalogue_bucket(), encode_key(name).c_str(), nullptr);
        }
    }
    if (s != NATS_OK) fail(s, static_cast<jsErrCode>(0), "opening " + ks->where);
    // Check that the bucket is ours, of this kind, and read its TTL.
    jsStreamInfo* si = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    jsOptions o = st.js_options();
    const std::string stream = "KV_" + ks->bucket;
    s = js_GetStreamInfo(&si, st.js, stream.c_str(), &o, &jerr);
    if (s != NATS_OK) fail(s, jerr, "reading the layout of " + ks->where);
    std::string desc = si->Config && si->Config->Description ? si->Config->Description : "";
    ks->ttl_ms = si->Config ? si->Config->MaxAge / 1000000 : 0;
    jsStreamInfo_Destroy(si);
    if (desc != layout_marker(k))
        throw layout_mismatch("shm::remote: the bucket " + ks->bucket + " of " + ks->where +
                              " was not made by libshm as a " + kind_name(k) + " (its description: '" + desc + "')");
    return ks;
}

KvEntry kv_get(KvState& ks, const std::string& kv_key) {
    KvEntry out;
    kvEntry* e = nullptr;
    natsStatus s = kvStore_Get(&e, ks.kv, kv_key.c_str());
    if (s == NATS_NOT_FOUND) return out;
    if (s != NATS_OK) fail(s, static_cast<jsErrCode>(0), "reading " + ks.where);
    out.found = true;
    const void* data = kvEntry_Value(e);
    int len = kvEntry_ValueLen(e);
    if (data && len > 0) out.value.assign(static_cast<const char*>(data), static_cast<std::size_t>(len));
    out.revision = kvEntry_Revision(e);
    kvEntry_Destroy(e);
    return out;
}

bool kv_cas(KvState& ks, const std::string& kv_key, std::string_view value, std::uint64_t last, std::uint64_t* rev) {
    std::uint64_t r = 0;
    natsStatus s = last == 0 ? kvStore_Create(&r, ks.kv, kv_key.c_str(), value.data(), static_cast<int>(value.size()))
                             : kvStore_Update(&r, ks.kv, kv_key.c_str(), value.data(), static_cast<int>(value.size()),
                                              last);
    if (s == NATS_OK) {
        if (rev) *rev = r;
        return true;
    }
    std::string text = last_error_text(s);
    if (contains(text, "wrong last sequence") || contains(text, "key exists")) return false;
    if (contains(text, "maximum message size") || contains(text, "message size exceeds"))
        throw shm::error(EMSGSIZE, "shm::remote: a value of " + std::to_string(value.size()) + " bytes for " +
                                       ks.where + " is over the servers' limit: " + text);
    fail(s, static_cast<jsErrCode>(0), "writing " + ks.where);
}

bool kv_cas_delete(KvState& ks, const std::string& kv_key, std::uint64_t last, std::uint64_t* rev) {
    // A KV delete is a marker message on the key's subject; published with
    // an expected last subject sequence, it is conditional.
    const std::string subject = "$KV." + ks.bucket + "." + kv_key;
    natsMsg* m = nullptr;
    check(natsMsg_Create(&m, subject.c_str(), nullptr, nullptr, 0), "deleting from " + ks.where);
    natsMsgHeader_Set(m, "KV-Operation", "DEL");
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.ExpectLastSubjectSeq = last;
    po.MaxWait = ks.store->timeout_ms();
    jsPubAck* pa = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_PublishMsg(&pa, ks.store->js, m, &po, &jerr);
    natsMsg_Destroy(m);
    if (s == NATS_OK && rev && pa) *rev = pa->Sequence;
    if (pa) jsPubAck_Destroy(pa);
    if (s == NATS_OK) return true;
    if (jerr == JSStreamWrongLastSequenceErr || contains(last_error_text(s), "wrong last sequence")) return false;
    fail(s, jerr, "deleting from " + ks.where);
}

}  // namespace detail

// ---- Store ---------------------------------------------------------------------

const std::string& Store::servers() const noexcept { return s_->servers; }
int Store::replicas() const noexcept { return s_->replicas; }
const StoreOptions& Store::options() const noexcept { return s_->opt; }

std::vector<std::string> Store::known_servers() const {
    char** list = nullptr;
    int count = 0;
    std::vector<std::string> out;
    if (natsConnection_GetServers(s_->nc, &list, &count) != NATS_OK) return out;
    for (int i = 0; i < count; ++i) {
        out.emplace_back(list[i]);
        free(list[i]);
    }
    free(list);
    return out;
}

std::optional<std::string> Store::kind(std::string_view name) {
    shm::validate_object_name(name);
    kvEntry* e = nullptr;
    natsStatus s = kvStore_Get(&e, s_->catalogue_bucket(), encode_key(name).c_str());
    if (s == NATS_NOT_FOUND) return std::nullopt;
    if (s != NATS_OK) detail::fail(s, static_cast<jsErrCode>(0), "looking up '" + std::string(name) + "' on " + s_->servers);
    std::string k = kvEntry_ValueString(e) ? kvEntry_ValueString(e) : "";
    kvEntry_Destroy(e);
    return k;
}

bool Store::remove(std::string_view name) {
    auto k = kind(name);
    if (!k) return false;
    using detail::Kind;
    Kind kinds[] = {Kind::queue, Kind::dict, Kind::list, Kind::lock, Kind::event};
    for (Kind kd : kinds) {
        if (*k != detail::kind_name(kd)) continue;
        std::string stream = detail::server_name(kd, name);
        if (kd != Kind::queue) stream = "KV_" + stream;
        jsOptions o = s_->js_options();
        jsErrCode jerr = static_cast<jsErrCode>(0);
        natsStatus s = js_DeleteStream(s_->js, stream.c_str(), &o, &jerr);
        if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != JSStreamNotFoundErr)
            detail::fail(s, jerr, "removing " + s_->where(kd, name));
    }
    natsStatus s = kvStore_Purge(s_->catalogue_bucket(), encode_key(name).c_str(), nullptr);
    if (s != NATS_OK) detail::fail(s, static_cast<jsErrCode>(0), "removing '" + std::string(name) + "' from the catalogue on " + s_->servers);
    return true;
}

Store connect(std::string_view servers, const StoreOptions& opt) {
    auto st = std::make_shared<detail::StoreState>();
    st->servers = std::string(servers);
    st->opt = opt;
    if (opt.replicas < 0 || opt.replicas > 5)
        throw shm::error(EINVAL, "shm::remote::connect: replicas must be 0 (automatic) or 1 to 5, not " +
                                     std::to_string(opt.replicas));
    if (servers.empty()) throw shm::error(EINVAL, "shm::remote::connect: no server URL given");
    natsOptions* no = nullptr;
    auto where = "connecting to " + st->servers;
    detail::check(natsOptions_Create(&no), where);
    std::unique_ptr<natsOptions, void (*)(natsOptions*)> no_guard(no, natsOptions_Destroy);
    // The list, split at commas.
    std::vector<std::string> urls;
    std::size_t start = 0;
    while (start <= st->servers.size()) {
        std::size_t comma = st->servers.find(',', start);
        if (comma == std::string::npos) comma = st->servers.size();
        std::string u = st->servers.substr(start, comma - start);
        while (!u.empty() && u.front() == ' ') u.erase(u.begin());
        while (!u.empty() && u.back() == ' ') u.pop_back();
        if (!u.empty()) urls.push_back(u);
        start = comma + 1;
    }
    std::vector<const char*> ptrs;
    for (auto& u : urls) ptrs.push_back(u.c_str());
    natsStatus s = natsOptions_SetServers(no, ptrs.data(), static_cast<int>(ptrs.size()));
    if (s != NATS_OK)
        throw shm::error(EINVAL, "shm::remote::connect: bad server list '" + st->servers + "': " +
                                     detail::last_error_text(s));
    natsOptions_SetTimeout(no, st->timeout_ms());
    natsOptions_SetAllowReconnect(no, true);
    natsOptions_SetMaxReconnect(no, -1);  // calls are bounded by their own time-outs
    natsOptions_SetReconnectWait(no, 100);
    // A server that stops answering is left for another within a few
    // seconds (2 pings unanswered).
    natsOptions_SetPingInterval(no, 2000);
    natsOptions_SetMaxPingsOut(no, 2);
    if (!opt.client_name.empty()) natsOptions_SetName(no, opt.client_name.c_str());
    s = natsConnection_Connect(&st->nc, no);
    if (s != NATS_OK)
        throw unavailable(EHOSTUNREACH, "shm::remote::connect: cannot reach " + st->servers + ": " +
                                            detail::last_error_text(s));
    jsOptions jo = st->js_options();
    detail::check(natsConnection_JetStream(&st->js, st->nc, &jo), where);
    // JetStream must be enabled, and answer.
    jsAccountInfo* ai = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    s = js_GetAccountInfo(&ai, st->js, &jo, &jerr);
    if (ai) jsAccountInfo_Destroy(ai);
    if (s != NATS_OK) {
        std::string text = detail::last_error_text(s);
        if (s == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr || jerr == JSNotEnabledForAccountErr)
            throw unavailable(ENOTSUP, "shm::remote::connect: " + st->servers +
                                           " has no JetStream (start nats-server with -js): " + text);
        throw unavailable(ETIMEDOUT, "shm::remote::connect: JetStream on " + st->servers + " did not answer: " + text);
    }
    if (opt.replicas > 0) {
        st->replicas = opt.replicas;
    } else {
        Store probe(st);
        st->replicas = probe.known_servers().size() >= 3 ? 3 : 1;
    }
    return Store(st);
}

}  // namespace shm::remote
