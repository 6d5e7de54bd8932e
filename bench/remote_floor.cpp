// The floor of the remote benchmarks (impl "nats_floor"): the bare NATS C
// client (libnats) on the same server, doing what a remote queue and dict
// must do at the least, with nothing of libshm in between.
//
//  - the queue: a JetStream work-queue stream (file storage, one replica on
//    the benchmark's single server) with a durable pull consumer and
//    explicit acknowledgement. put() is js_Publish(), which returns once the
//    server has stored the item (an acknowledged put); get() fetches up to
//    64 items at a time (natsSubscription_Fetch) and acknowledges each after
//    it is used (natsMsg_Ack). Batched, put_many() publishes asynchronously
//    (js_PublishAsync) and waits for every answer (js_PublishAsyncComplete).
//    Pipelined (remote.queue.1to1.64B.pipelined), put() is js_PublishAsync
//    (up to 256 unanswered, as libshm's), and every answer is awaited
//    before the producer leaves. The stream has no bound, so the floor does
//    no flow control (libshm's put_async() blocks while the queue is full).
//  - the dict: a key-value bucket (file storage, history 1), kvStore_Put()
//    and kvStore_Get() of 8-byte values.
// The cases and their checks are remote_harness.hpp's.
#include <nats/nats.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "harness.hpp"
#include "queue_harness.hpp"
#include "remote_harness.hpp"

namespace {

[[noreturn]] void fail(const std::string& what, natsStatus s) {
    std::string detail = natsStatus_GetText(s);
    if (const char* last = nats_GetLastError(nullptr); last != nullptr && *last != '\0')
        detail += std::string(" (") + last + ")";
    throw bench::Failure(what + ": " + detail);
}

void check(natsStatus s, const std::string& what) {
    if (s != NATS_OK) fail(what, s);
}

// One connection and its JetStream context.
class Conn {
public:
    explicit Conn(const std::string& url) {
        check(natsConnection_ConnectTo(&nc_, url.c_str()), "connect to " + url);
        jsOptions o;
        jsOptions_Init(&o);
        o.PublishAsync.MaxPending = 256;  // as libshm's pipelined puts
        check(natsConnection_JetStream(&js_, nc_, &o), "JetStream context");
    }
    ~Conn() {
        if (nc_ != nullptr) natsConnection_Flush(nc_);
        jsCtx_Destroy(js_);
        natsConnection_Destroy(nc_);
    }
    Conn(const Conn&) = delete;
    Conn& operator=(const Conn&) = delete;
    natsConnection* nc() const noexcept { return nc_; }
    jsCtx* js() const noexcept { return js_; }

private:
    natsConnection* nc_ = nullptr;
    jsCtx* js_ = nullptr;
};

constexpr const char* kDurable = "workers";
constexpr int kFetchBatch = 64;

class NatsChannel {
public:
    explicit NatsChannel(const qbench::ChannelConfig& cfg)
        : url_(rbench::server_url()),
          stream_(rbench::unique_name("Q" + cfg.tag)),
          subject_(stream_ + ".items"),
          pipelined_(cfg.pipelined) {
        rbench::in_child([&] {
            Conn c(url_);
            jsStreamConfig sc;
            jsStreamConfig_Init(&sc);
            const char* subjects[] = {subject_.c_str()};
            sc.Name = stream_.c_str();
            sc.Subjects = subjects;
            sc.SubjectsLen = 1;
            sc.Retention = js_WorkQueuePolicy;
            sc.Storage = js_FileStorage;
            sc.Replicas = 1;
            jsErrCode jerr = static_cast<jsErrCode>(0);
            jsStreamInfo* si = nullptr;
            check(js_AddStream(&si, c.js(), &sc, nullptr, &jerr), "add stream " + stream_);
            jsStreamInfo_Destroy(si);
            jsConsumerConfig cc;
            jsConsumerConfig_Init(&cc);
            cc.Durable = kDurable;
            cc.AckPolicy = js_AckExplicit;
            cc.AckWait = 30'000'000'000LL;
            jsConsumerInfo* ci = nullptr;
            check(js_AddConsumer(&ci, c.js(), stream_.c_str(), &cc, nullptr, &jerr), "add consumer");
            jsConsumerInfo_Destroy(ci);
        });
    }
    ~NatsChannel() {
        release();
        try {
            rbench::in_child([&] {
                Conn c(url_);
                jsErrCode jerr = static_cast<jsErrCode>(0);
                check(js_DeleteStream(c.js(), stream_.c_str(), nullptr, &jerr), "delete stream " + stream_);
            });
        } catch (const std::exception& e) {
            std::fprintf(stderr, "nats_floor: %s\n", e.what());
        }
    }
    NatsChannel(const NatsChannel&) = delete;
    NatsChannel& operator=(const NatsChannel&) = delete;

    void put(const char* item, std::size_t n) {
        if (pipelined_) {
            check(js_PublishAsync(conn().js(), subject_.c_str(), item, static_cast<int>(n), nullptr), "publish async");
            return;
        }
        jsPubAck* ack = nullptr;
        jsErrCode jerr = static_cast<jsErrCode>(0);
        check(js_Publish(&ack, conn().js(), subject_.c_str(), item, static_cast<int>(n), nullptr, &jerr), "publish");
        jsPubAck_Destroy(ack);
    }

    template <class Use>
    void get(Use&& use) {
        while (next_ >= list_.Count) {
            natsMsgList_Destroy(&list_);
            list_ = {};
            next_ = 0;
            if (sub_ == nullptr) {
                jsSubOptions so;
                jsSubOptions_Init(&so);
                so.Stream = stream_.c_str();
                so.Consumer = kDurable;
                jsErrCode jerr = static_cast<jsErrCode>(0);
                check(js_PullSubscribe(&sub_, conn().js(), subject_.c_str(), kDurable, nullptr, &so, &jerr),
                      "pull subscribe");
            }
            jsErrCode jerr = static_cast<jsErrCode>(0);
            natsStatus s = natsSubscription_Fetch(&list_, sub_, kFetchBatch, 5000, &jerr);
            if (s == NATS_TIMEOUT) continue;  // nothing yet: the harness bounds the wait
            check(s, "fetch");
        }
        natsMsg* m = list_.Msgs[next_];
        list_.Msgs[next_++] = nullptr;
        use(natsMsg_GetData(m), static_cast<std::size_t>(natsMsg_GetDataLength(m)));
        const natsStatus s = natsMsg_Ack(m, nullptr);
        natsMsg_Destroy(m);
        check(s, "ack");
    }

    // Published asynchronously, then every answer awaited.
    void put_many(const std::vector<std::string>& items) {
        for (const std::string& item : items)
            check(js_PublishAsync(conn().js(), subject_.c_str(), item.data(), static_cast<int>(item.size()), nullptr),
                  "publish async");
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 30000;
        check(js_PublishAsyncComplete(conn().js(), &po), "publish async complete");
    }

    // Blocks for the first (one fetch of up to 64), then what that fetch brought, up to n.
    template <class Use>
    void get_many(std::size_t n, Use&& use) {
        get(use);
        for (std::size_t i = 1; i < n && next_ < list_.Count; ++i) get(use);
    }

    void leave() {
        if (pipelined_ && conn_ != nullptr) {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MaxWait = 30000;
            check(js_PublishAsyncComplete(conn().js(), &po), "publish async complete");
        }
        release();
    }

    std::string note() const {
        return std::string(pipelined_ ? "js_PublishAsync (256 unanswered; all awaited at the end)"
                                      : "js_Publish (acknowledged)") +
               " / natsSubscription_Fetch of up to 64 + natsMsg_Ack each, work-queue stream, file storage";
    }
    std::string batch_note() const {
        return "js_PublishAsync x32 + js_PublishAsyncComplete / natsSubscription_Fetch of up to 64 + natsMsg_Ack "
               "each, work-queue stream, file storage";
    }

private:
    Conn& conn() {
        if (conn_ == nullptr) conn_ = new Conn(url_);
        return *conn_;
    }
    void release() {
        natsMsgList_Destroy(&list_);
        list_ = {};
        next_ = 0;
        if (sub_ != nullptr) natsSubscription_Destroy(sub_);
        sub_ = nullptr;
        delete conn_;  // flushes the acknowledgements
        conn_ = nullptr;
    }

    std::string url_, stream_, subject_;
    bool pipelined_;
    Conn* conn_ = nullptr;  // per process, opened on first use
    natsSubscription* sub_ = nullptr;
    natsMsgList list_ = {};
    int next_ = 0;
};

class NatsDict {
public:
    NatsDict(const std::string& url, const std::string& name, bool /*pipelined*/) : conn_(url) {
        kvConfig kc;
        kvConfig_Init(&kc);
        kc.Bucket = name.c_str();
        kc.History = 1;
        kc.StorageType = js_FileStorage;
        kc.Replicas = 1;
        check(js_CreateKeyValue(&kv_, conn_.js(), &kc), "create bucket " + name);
        name_ = name;
    }
    ~NatsDict() {
        if (async_) jsCtx_Destroy(async_);
        kvStore_Destroy(kv_);
        js_DeleteKeyValue(conn_.js(), name_.c_str());
    }
    NatsDict(const NatsDict&) = delete;
    NatsDict& operator=(const NatsDict&) = delete;

    void set(const std::string& key, std::int64_t v) {
        std::uint64_t rev = 0;
        check(kvStore_Put(&rev, kv_, key.c_str(), &v, sizeof v), "put " + key);
    }
    // A KV put is a message on "$KV.<bucket>.<key>": published without
    // waiting, 256 unanswered at most, as libshm's pipelined sets.
    void set_pipelined(const std::string& key, std::int64_t v) {
        if (!async_) {
            jsOptions o;
            jsOptions_Init(&o);
            o.PublishAsync.MaxPending = 256;
            check(natsConnection_JetStream(&async_, conn_.nc(), &o), "JetStream context");
        }
        const std::string subject = "$KV." + name_ + "." + key;
        check(js_PublishAsync(async_, subject.c_str(), &v, sizeof v, nullptr), "publish " + subject);
    }
    void flush() {
        if (!async_) return;
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 30000;
        check(js_PublishAsyncComplete(async_, &po), "wait for the pipelined puts");
    }
    static std::string pipelined_note() {
        return "js_PublishAsync on the key's subject (256 unanswered; all awaited at the end)";
    }
    std::int64_t get(const std::string& key) {
        kvEntry* e = nullptr;
        check(kvStore_Get(&e, kv_, key.c_str()), "get " + key);
        std::int64_t v = 0;
        const bool ok = kvEntry_ValueLen(e) == static_cast<int>(sizeof v);
        if (ok) std::memcpy(&v, kvEntry_Value(e), sizeof v);
        kvEntry_Destroy(e);
        if (!ok) throw bench::Failure(key + ": a value of another size");
        return v;
    }

private:
    Conn conn_;
    kvStore* kv_ = nullptr;
    jsCtx* async_ = nullptr;
    std::string name_;
};

}  // namespace

int main(int argc, char** argv) {
    return qbench::run_qcases("nats_floor",
                              rbench::remote_cases<NatsChannel, NatsDict>(
                                  "nats_floor", [] { return "kvStore_Put / kvStore_Get, file storage, history 1"; }),
                              argc, argv);
}
