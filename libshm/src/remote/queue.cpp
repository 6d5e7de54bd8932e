// shm::remote::Queue: a JetStream stream with work-queue retention and
// DiscardNew at max_items, one durable pull consumer ("shm") with explicit
// acknowledgement that all consumers of the queue share.
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <thread>

#include "remote/internal.hpp"

namespace shm::remote {
namespace detail {

namespace {
constexpr const char* kConsumer = "shm";
// The servers count a message's headers in its size (the put's message id
// is one): the stream's limit is max_item_size plus this.
constexpr std::int64_t kHeaderRoom = 256;

// A pull request's answer and the items it brought, as the inbox's
// callback sees them.
struct Fetched {
    natsMsg* msg = nullptr;
    std::int64_t at_ms = 0;  // when it arrived: its lease runs from about then
};

// The consumer side of one Queue handle: an inbox of its own (an
// asynchronous subscription to "<inbox>.*"), where the pull requests,
// numbered, are answered. Only the request a get() waits on now is live:
// an item that arrives when no get waits (for a request given up on: the
// server did not end it in time) is given back at once (nak), so that it
// is delivered again to whoever asks, not held until its lease runs out.
struct Inbox {
    natsConnection* nc = nullptr;
    std::string prefix;  // "_INBOX.<id>."
    std::mutex mu;
    std::condition_variable cv;
    std::uint64_t seq = 0;   // the last request's number
    std::uint64_t live = 0;  // the request a get waits on (0: none)
    int batch = 0, count = 0;
    bool done = false;  // the live request ended: its status came, or its batch is full
    int status = 0;     // that status (408, 404, 409, 503), 0 for a full batch
    std::string desc;
    std::deque<Fetched> ready;  // items brought, not handed out yet
    bool closed = false;

    static void give_back(natsConnection* nc, natsMsg* m) {
        const char* r = natsMsg_GetReply(m);
        if (r && *r) natsConnection_PublishString(nc, r, "-NAK");
        natsMsg_Destroy(m);
    }

    static void on_msg(natsConnection*, natsSubscription*, natsMsg* m, void* closure) {
        Inbox& in = **static_cast<std::shared_ptr<Inbox>*>(closure);
        const char* subj = natsMsg_GetSubject(m);
        std::uint64_t req = 0;
        if (subj && std::strncmp(subj, in.prefix.c_str(), in.prefix.size()) == 0)
            req = std::strtoull(subj + in.prefix.size(), nullptr, 10);
        const char* code = nullptr;
        const bool status = natsMsg_GetDataLength(m) == 0 && natsMsgHeader_Get(m, "Status", &code) == NATS_OK && code;
        // A status names its request (it comes on the request's reply
        // subject); an item does not (it comes with its own subject), but
        // the servers send a request's items before the status that ends
        // it: an item that comes while a get waits is taken (it is this
        // handle's, and wanted), any other is given back.
        std::unique_lock<std::mutex> g(in.mu);
        if (in.closed || in.live == 0 || in.done || (status && req != in.live)) {
            g.unlock();
            if (status)
                natsMsg_Destroy(m);
            else
                give_back(in.nc, m);  // nobody waits for it: delivered again at once
            return;
        }
        if (status) {
            int c = std::atoi(code);
            if (c == 100) {  // an idle heartbeat
                natsMsg_Destroy(m);
                return;
            }
            const char* d = nullptr;
            natsMsgHeader_Get(m, "Description", &d);
            in.status = c;
            in.desc = d ? d : "";
            in.done = true;
            natsMsg_Destroy(m);
        } else {
            in.ready.push_back(Fetched{m, now_ms()});
            if (++in.count >= in.batch) in.done = true;
        }
        g.unlock();
        in.cv.notify_all();
    }
    static void on_complete(void* closure) { delete static_cast<std::shared_ptr<Inbox>*>(closure); }
};

// Items a get of one item asks for at once: the rest wait in the handle,
// their leases running, for its next gets.
constexpr int kPrefetch = 32;
constexpr int kMaxWindow = 256;
}  // namespace

struct LeaseState {
    std::shared_ptr<StoreState> store;  // keeps the connection alive
    natsMsg* msg = nullptr;
    std::atomic<bool> acked{false};
    ~LeaseState() {
        if (msg) natsMsg_Destroy(msg);
    }
};

struct QueueState {
    std::shared_ptr<StoreState> store;
    std::string name, stream, subject, where;
    std::uint32_t max_items = 0, max_item_size = 0, max_deliveries = 0;
    std::chrono::milliseconds lease{0};
    int replicas = 1;
    int prefetch = kPrefetch;  // items a get of one asks for (set_prefetch)
    // Without set_prefetch(), the fetch size adapts: it doubles (up to
    // kMaxWindow) while fetches come back full and the handle hands each
    // batch out fast against the lease, and falls back to kPrefetch when a
    // fetch brings less (the backlog is gone) or a batch took long.
    bool prefetch_set = false;
    int window = kPrefetch;
    std::int64_t last_fetch_ms = 0;
    // The consumer side, made by the first get.
    std::shared_ptr<Inbox> inbox;
    natsSubscription* sub = nullptr;
    std::string next_subject;  // where pull requests go
    std::string id_prefix;     // message ids: unique per handle
    std::uint64_t puts = 0;
    std::deque<std::shared_ptr<LeaseState>> taken;  // for task_done()
    // put_many(): a JetStream context of its own for pipelined puts, and
    // the items the servers refused (full), to be put again.
    jsCtx* async_js = nullptr;
    std::mutex refused_mu;
    std::vector<std::pair<std::string, std::string>> refused;  // (id, item)
    // put_async(): the room this handle may still spend before it asks the
    // servers again, and the items sent and not yet confirmed.
    // put_mu: the pipelined puts' state and settle(), so that a join() on
    // another thread (Python's proxies share a handle) may settle safely.
    std::mutex put_mu;
    std::int64_t room = 0;
    std::atomic<std::uint64_t> unflushed{0};
    ~QueueState() {
        if (async_js && unflushed > 0) {
            try {
                settle(store->timeout_ms());
            } catch (const std::exception& e) {
                std::fprintf(stderr, "libshm: %llu item(s) put on %s without waiting may not be stored: %s\n",
                             static_cast<unsigned long long>(unflushed.load()), where.c_str(), e.what());
            }
        }
        if (sub) {
            // Items fetched and not handed out are given back, to be
            // delivered again at once; the inbox is drained, so that what
            // the servers sent meanwhile is given back too.
            std::deque<Fetched> left;
            {
                std::lock_guard<std::mutex> g(inbox->mu);
                inbox->closed = true;
                left.swap(inbox->ready);
            }
            for (Fetched& f : left) Inbox::give_back(store->nc, f.msg);
            if (natsSubscription_DrainTimeout(sub, 2000) == NATS_OK)
                natsSubscription_WaitForDrainCompletion(sub, 3000);
            else
                natsSubscription_Unsubscribe(sub);
            natsSubscription_Destroy(sub);
        }
        if (async_js) jsCtx_Destroy(async_js);
    }

    Lease make_lease(natsMsg* m);
    // The JetStream context of pipelined puts, made on first use.
    void ensure_async();
    // Wait up to wait_ms for the servers' answers to what is in flight;
    // what got none, or was refused (the queue full, a server lost), is
    // sent again under its id, waiting for each answer (the servers store
    // an id once). Every item sent is stored when it returns.
    void settle(std::int64_t wait_ms);
    // Read the stream's or the consumer's state, retrying what a server
    // lost or a leader being elected makes fail, for up to the request
    // time-out.
    template <class Call>
    void read_state(Call call, const std::string& what) const {
        Outage outage;
        int step = 0;
        for (;;) {
            jsErrCode jerr = static_cast<jsErrCode>(0);
            const std::int64_t started = detail::now_ms();
            natsStatus s = call(&jerr);
            if (s == NATS_OK) return;
            if (!transient(s, jerr)) fail(s, jerr, what);
            if (outage.since == 0) outage.since = started;
            outage.failed(s, jerr, *store, what);
            backoff(step, shm::detail::Deadline::never());
        }
    }
    jsStreamInfo* stream_info() const {
        jsStreamInfo* si = nullptr;
        jsOptions o = store->js_options();
        read_state([&](jsErrCode* jerr) { return js_GetStreamInfo(&si, store->js, stream.c_str(), &o, jerr); },
                   "reading the state of " + where);
        return si;
    }
    jsConsumerInfo* consumer_info() const {
        jsConsumerInfo* ci = nullptr;
        jsOptions o = store->js_options();
        read_state(
            [&](jsErrCode* jerr) { return js_GetConsumerInfo(&ci, store->js, stream.c_str(), kConsumer, &o, jerr); },
            "reading the consumer of " + where);
        return ci;
    }
    void subscribe() {
        if (sub) return;
        natsInbox* ib = nullptr;
        check(natsInbox_Create(&ib), "subscribing to " + where);
        auto in = std::make_shared<Inbox>();
        in->nc = store->nc;
        in->prefix = std::string(ib) + ".";
        natsInbox_Destroy(ib);
        next_subject = "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + kConsumer;
        auto* closure = new std::shared_ptr<Inbox>(in);
        natsSubscription* s = nullptr;
        natsStatus st = natsConnection_Subscribe(&s, store->nc, (in->prefix + "*").c_str(), Inbox::on_msg, closure);
        if (st == NATS_OK) st = natsSubscription_SetPendingLimits(s, -1, -1);
        if (st == NATS_OK) st = natsSubscription_SetOnCompleteCB(s, Inbox::on_complete, closure);
        if (st != NATS_OK) {
            if (s) {
                // The completion callback may not be set to free the
                // closure: a small leak on a rare failure beats a use
                // after free.
                natsSubscription_Unsubscribe(s);
                natsSubscription_Destroy(s);
            } else {
                delete closure;
            }
            fail(st, static_cast<jsErrCode>(0), "subscribing to " + where);
        }
        inbox = in;
        sub = s;
    }
};

Queue open_queue(Store& store, std::string_view name, const QueueOptions& opt, bool create, bool exclusive) {
    StoreState& st = *store.state();
    auto q = std::make_shared<QueueState>();
    q->store = store.state();
    q->name = std::string(name);
    q->stream = server_name(Kind::queue, name);
    q->subject = queue_subject(name);
    q->where = st.where(Kind::queue, name);
    if (opt.max_items < 1) throw shm::error(EINVAL, "shm::remote::Queue: max_items must be at least 1 (" + q->where + ")");
    if (opt.max_item_size < 1 || opt.max_item_size > (64u << 20))
        throw shm::error(EINVAL, "shm::remote::Queue: max_item_size must be 1 .. 64 MiB (" + q->where + ")");
    bool created = false;
    st.claim(Kind::queue, name, create, &created);
    if (exclusive && !created) throw shm::already_exists("shm::remote: " + q->where + " exists already");

    const std::string marker = layout_marker(Kind::queue);
    jsOptions o = st.js_options();
    jsErrCode jerr = static_cast<jsErrCode>(0);
    jsStreamInfo* si = nullptr;
    natsStatus s = js_GetStreamInfo(&si, st.js, q->stream.c_str(), &o, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        const char* subjects[] = {q->subject.c_str()};
        cfg.Name = q->stream.c_str();
        cfg.Description = marker.c_str();
        cfg.Subjects = subjects;
        cfg.SubjectsLen = 1;
        cfg.Retention = js_WorkQueuePolicy;
        cfg.MaxMsgs = opt.max_items;
        cfg.MaxMsgSize = static_cast<std::int32_t>(opt.max_item_size + kHeaderRoom);
        cfg.Discard = js_DiscardNew;
        cfg.Storage = js_FileStorage;
        cfg.Replicas = st.replicas_for(opt.replicas);
        cfg.Duplicates = 120LL * 1000 * 1000 * 1000;  // the window of put retries' ids: 2 minutes
        jerr = static_cast<jsErrCode>(0);
        s = js_AddStream(&si, st.js, &cfg, &o, &jerr);
        if (s != NATS_OK && jerr == JSStreamNameExistErr) {
            jerr = static_cast<jsErrCode>(0);
            s = js_GetStreamInfo(&si, st.js, q->stream.c_str(), &o, &jerr);
        }
        if (s != NATS_OK && created) kvStore_Purge(st.catalogue_bucket(), encode_key(name).c_str(), nullptr);
    }
    if (s != NATS_OK) fail(s, jerr, "opening " + q->where);
    std::string desc = si->Config && si->Config->Description ? si->Config->Description : "";
    if (desc != marker || si->Config->Retention != js_WorkQueuePolicy) {
        jsStreamInfo_Destroy(si);
        throw layout_mismatch("shm::remote: the stream " + q->stream + " of " + q->where +
                              " was not made by libshm as a queue (its description: '" + desc + "')");
    }
    q->max_items = static_cast<std::uint32_t>(si->Config->MaxMsgs);
    q->max_item_size = static_cast<std::uint32_t>(std::max<std::int64_t>(1, si->Config->MaxMsgSize - kHeaderRoom));
    q->replicas = static_cast<int>(si->Config->Replicas);
    jsStreamInfo_Destroy(si);

    // The consumer: made once, by whoever opens the queue first; an
    // existing one keeps its lease and max deliveries.
    jsConsumerInfo* ci = nullptr;
    jerr = static_cast<jsErrCode>(0);
    s = js_GetConsumerInfo(&ci, st.js, q->stream.c_str(), kConsumer, &o, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        jsConsumerConfig cc;
        jsConsumerConfig_Init(&cc);
        cc.Durable = kConsumer;
        cc.AckPolicy = js_AckExplicit;
        std::chrono::milliseconds lease = opt.lease.count() > 0 ? opt.lease : st.opt.ack_wait;
        cc.AckWait = static_cast<std::int64_t>(lease.count()) * 1000000;
        std::uint32_t maxdel = opt.max_deliveries > 0 ? opt.max_deliveries : st.opt.max_deliveries;
        cc.MaxDeliver = maxdel > 0 ? maxdel : -1;
        cc.MaxAckPending = -1;
        jerr = static_cast<jsErrCode>(0);
        s = js_AddConsumer(&ci, st.js, q->stream.c_str(), &cc, &o, &jerr);
        if (s != NATS_OK) {
            // Made meanwhile by another process: read it.
            jsErrCode jerr2 = static_cast<jsErrCode>(0);
            if (js_GetConsumerInfo(&ci, st.js, q->stream.c_str(), kConsumer, &o, &jerr2) == NATS_OK) s = NATS_OK;
        }
    }
    if (s != NATS_OK) fail(s, jerr, "opening the consumer of " + q->where);
    q->lease = std::chrono::milliseconds(ci->Config->AckWait / 1000000);
    q->max_deliveries = ci->Config->MaxDeliver > 0 ? static_cast<std::uint32_t>(ci->Config->MaxDeliver) : 0;
    jsConsumerInfo_Destroy(ci);

    std::random_device rd;
    char buf[64];
    snprintf(buf, sizeof buf, "%08x%08x-%d-", rd(), rd(), static_cast<int>(getpid()));
    q->id_prefix = buf;
    return Queue(q);
}

}  // namespace detail

using detail::fail;

// ---- Lease ---------------------------------------------------------------------
Lease::Lease() = default;
Lease::Lease(Lease&&) noexcept = default;
Lease& Lease::operator=(Lease&&) noexcept = default;
Lease::~Lease() = default;

namespace {
// Acknowledgements go to the item's reply subject on the servers: "+ACK"
// (waiting for the confirmation, or not), "-NAK", "+WPI" (in progress).
// An acknowledgement that waits for the consumer's leader to confirm it.
// While a leader is being elected the ack has no responder, and one sent to
// a leader that dies is never answered: both are retried (the servers
// confirm an ack they already applied too) until the request time-out, so
// an item once marked done is not delivered again after its lease.
bool ack_confirmed(detail::StoreState& st, natsMsg* m) {
    const auto d = shm::detail::Deadline::in(std::chrono::milliseconds(st.timeout_ms()));
    int step = 0;
    for (;;) {
        natsMsg* reply = nullptr;
        // One try waits at most 2 s: an ack sent to a dying leader is not
        // answered, and the next try reaches the new one.
        natsStatus s = natsConnection_RequestString(&reply, st.nc, natsMsg_GetReply(m), "+ACK",
                                                    detail::ms_left(d, 2000));
        if (reply) natsMsg_Destroy(reply);
        if (s == NATS_OK) return true;
        if (!detail::transient(s, static_cast<jsErrCode>(0)) || d.passed()) return false;
        detail::backoff(step, d);
    }
}
natsStatus send_ack(detail::StoreState& st, natsMsg* m, const char* what) {
    return natsConnection_PublishString(st.nc, natsMsg_GetReply(m), what);
}
}  // namespace

bool Lease::ack() {
    if (!s_ || acked_) return false;
    if (s_->acked.exchange(true)) {
        acked_ = true;
        return false;
    }
    acked_ = true;
    return ack_confirmed(*s_->store, s_->msg);
}

void Lease::ack_nowait() {
    if (!s_ || acked_) return;
    acked_ = true;
    if (s_->acked.exchange(true)) return;
    natsStatus s = send_ack(*s_->store, s_->msg, "+ACK");
    if (s != NATS_OK) fail(s, static_cast<jsErrCode>(0), "acknowledging an item");
}

void Lease::nak() {
    if (!s_ || acked_ || s_->acked.exchange(true)) return;
    acked_ = true;
    natsStatus s = send_ack(*s_->store, s_->msg, "-NAK");
    if (s != NATS_OK) fail(s, static_cast<jsErrCode>(0), "giving an item back");
}

void Lease::extend() {
    if (!s_ || acked_) return;
    natsStatus s = send_ack(*s_->store, s_->msg, "+WPI");
    if (s != NATS_OK) fail(s, static_cast<jsErrCode>(0), "extending a lease");
}

// ---- Queue ---------------------------------------------------------------------
Queue Queue::create(Store& store, std::string_view name, const QueueOptions& opt) {
    return detail::open_queue(store, name, opt, true, true);
}
Queue Queue::open_or_create(Store& store, std::string_view name, const QueueOptions& opt) {
    return detail::open_queue(store, name, opt, true, false);
}
Queue Queue::open(Store& store, std::string_view name) { return detail::open_queue(store, name, {}, false, false); }

namespace {
// One publish attempt: 1 stored, 0 full, -1 servers did not answer.
int publish(detail::QueueState& q, std::string_view item, const std::string& id, natsStatus* st, jsErrCode* jerr) {
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = id.c_str();
    po.MaxWait = q.store->timeout_ms();
    jsPubAck* pa = nullptr;
    *jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_Publish(&pa, q.store->js, q.subject.c_str(), item.data(), static_cast<int>(item.size()), &po, jerr);
    if (pa) jsPubAck_Destroy(pa);
    *st = s;
    if (s == NATS_OK) return 1;
    std::string text = detail::last_error_text(s);
    if (text.find("maximum messages") != std::string::npos || text.find("maximum bytes") != std::string::npos)
        return 0;
    if (text.find("message size") != std::string::npos || text.find("maximum payload") != std::string::npos ||
        s == NATS_MAX_PAYLOAD)
        throw shm::error(EMSGSIZE, "shm::remote: an item of " + std::to_string(item.size()) + " bytes is over the limit of " +
                                       q.where + ": " + text);
    if (detail::transient(s, *jerr) || s == NATS_NOT_FOUND) return -1;  // not found: a stream leader moving
    fail(s, *jerr, "putting an item on " + q.where);
}
}  // namespace

namespace {
std::string msg_text(const natsMsg* m) {
    const char* data = natsMsg_GetData(m);
    int len = natsMsg_GetDataLength(m);
    return data && len > 0 ? std::string(data, static_cast<std::size_t>(len)) : std::string();
}

std::string msg_id(natsMsg* m) {
    const char* v = nullptr;
    if (natsMsgHeader_Get(m, "Nats-Msg-Id", &v) == NATS_OK && v) return v;
    return "";
}

// Put under the message id `id` until d: a retry of the same id is stored once.
bool put_with_id(detail::QueueState& q, std::string_view item, const std::string& id, const shm::detail::Deadline& d) {
    detail::Outage outage;
    int step = 0;
    for (;;) {
        natsStatus s;
        jsErrCode jerr;
        int r = publish(q, item, id, &s, &jerr);
        if (r == 1) return true;
        if (r == 0) {
            outage.ok();
            if (d.passed()) return false;
        } else {
            outage.failed(s, jerr, *q.store, "putting an item on " + q.where);
        }
        detail::backoff(step, d);
    }
}

void check_size(const detail::QueueState& q, std::string_view item) {
    if (item.size() > q.max_item_size)
        throw shm::error(EMSGSIZE, "shm::remote: an item of " + std::to_string(item.size()) +
                                       " bytes is over max_item_size (" + std::to_string(q.max_item_size) + ") of " +
                                       q.where);
}

void on_async_error(jsCtx*, jsPubAckErr* pae, void* closure) {
    auto* q = static_cast<detail::QueueState*>(closure);
    if (!pae || !pae->Msg) return;
    std::lock_guard<std::mutex> g(q->refused_mu);
    q->refused.emplace_back(msg_id(pae->Msg), msg_text(pae->Msg));
}
}  // namespace

bool Queue::put_until(std::string_view item, const shm::detail::Deadline& d) {
    detail::QueueState& q = *s_;
    check_size(q, item);
    if (q.unflushed > 0) {  // this handle's order
        std::lock_guard<std::mutex> g(q.put_mu);
        q.settle(q.store->timeout_ms());
    }
    if (!put_with_id(q, item, q.id_prefix + std::to_string(++q.puts), d)) return false;
    --q.room;
    return true;
}

namespace detail {
void QueueState::ensure_async() {
    if (async_js) return;
    jsOptions o = store->js_options();
    o.PublishAsync.MaxPending = 256;
    o.PublishAsync.ErrHandler = on_async_error;
    o.PublishAsync.ErrHandlerClosure = this;
    o.PublishAsync.StallWait = std::min<std::int64_t>(store->timeout_ms(), 1000);
    detail::check(natsConnection_JetStream(&async_js, store->nc, &o), "putting items on " + where);
}

void QueueState::settle(std::int64_t wait_ms) {
    const auto never = shm::detail::Deadline::never();
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = wait_ms;
    // What got no answer (the library stops tracking it here) and what the
    // servers refused, in the order sent; on an exception, what is not
    // stored yet stays in `refused` for the next settle.
    std::vector<std::pair<std::string, std::string>> again;
    if (js_PublishAsyncComplete(async_js, &po) != NATS_OK) {
        natsMsgList pending{nullptr, 0};
        if (js_PublishAsyncGetPendingList(&pending, async_js) == NATS_OK) {
            for (int i = 0; i < pending.Count; ++i)
                again.emplace_back(msg_id(pending.Msgs[i]), msg_text(pending.Msgs[i]));
            natsMsgList_Destroy(&pending);
        }
    }
    {
        std::lock_guard<std::mutex> g(refused_mu);
        again.insert(again.end(), refused.begin(), refused.end());
        refused.clear();
    }
    for (std::size_t i = 0; i < again.size(); ++i) {
        try {
            put_with_id(*this, again[i].second, again[i].first, never);
        } catch (...) {
            // Keep what is not stored yet for the next settle.
            std::lock_guard<std::mutex> g(refused_mu);
            refused.insert(refused.begin(), again.begin() + static_cast<std::ptrdiff_t>(i), again.end());
            throw;
        }
    }
    unflushed = 0;
}
}  // namespace detail

std::size_t Queue::put_many(const std::vector<std::string>& items) {
    detail::QueueState& q = *s_;
    for (const std::string& item : items) check_size(q, item);
    std::lock_guard<std::mutex> g(q.put_mu);
    q.ensure_async();
    const auto never = shm::detail::Deadline::never();
    for (const std::string& item : items) {
        const std::string id = q.id_prefix + std::to_string(++q.puts);
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = id.c_str();
        po.MaxWait = q.store->timeout_ms();  // an answer that never comes is an error, then a retry
        natsStatus s = js_PublishAsync(q.async_js, q.subject.c_str(), item.data(), static_cast<int>(item.size()), &po);
        if (s != NATS_OK) {
            // Stalled (the answers stopped coming: a server lost) or not
            // sent: settle what is in flight, then send this one.
            q.settle(std::min<std::int64_t>(q.store->timeout_ms(), 2000));
            put_with_id(q, item, id, never);
        }
    }
    q.settle(q.store->timeout_ms());
    q.room -= static_cast<std::int64_t>(items.size());
    return items.size();
}

bool Queue::put_async_until(std::string_view item, const shm::detail::Deadline& d) {
    detail::QueueState& q = *s_;
    check_size(q, item);
    std::lock_guard<std::mutex> g(q.put_mu);
    q.ensure_async();
    if (q.room <= 0) {
        // Settled first, so that the servers' count holds everything this
        // handle sent: the room is then never overestimated by its own items.
        if (q.unflushed > 0) q.settle(q.store->timeout_ms());
        int step = 0;
        for (;;) {
            q.room = static_cast<std::int64_t>(q.max_items) - static_cast<std::int64_t>(unfinished());
            if (q.room > 0) break;
            if (d.passed()) return false;
            detail::backoff(step, d);
        }
    }
    const std::string id = q.id_prefix + std::to_string(++q.puts);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = id.c_str();
    po.MaxWait = q.store->timeout_ms();
    natsStatus s = js_PublishAsync(q.async_js, q.subject.c_str(), item.data(), static_cast<int>(item.size()), &po);
    if (s == NATS_OK) {
        ++q.unflushed;
    } else {
        // Stalled (no answers for a while: a server lost) or not sent.
        q.settle(std::min<std::int64_t>(q.store->timeout_ms(), 2000));
        put_with_id(q, item, id, shm::detail::Deadline::never());
    }
    --q.room;
    return true;
}

std::size_t Queue::flush() {
    detail::QueueState& q = *s_;
    std::lock_guard<std::mutex> g(q.put_mu);
    if (!q.async_js) return 0;
    const std::size_t n = q.unflushed;
    q.settle(q.store->timeout_ms());
    return n;
}

std::size_t Queue::unflushed() const noexcept { return s_->unflushed.load(); }

bool Queue::try_put(std::string_view item) {
    auto d = shm::detail::Deadline::in(std::chrono::seconds(0));
    return put_until(item, d);
}

void Queue::put_nowait(std::string_view item) {
    if (!try_put(item))
        throw shm::full("shm::remote: " + s_->where + " is full (" + std::to_string(s_->max_items) + " items)");
}

namespace detail {
Lease QueueState::make_lease(natsMsg* m) {
    QueueState& q = *this;
    auto ls = std::make_shared<detail::LeaseState>();
    ls->store = q.store;
    ls->msg = m;
    Lease l;
    const char* data = natsMsg_GetData(m);
    int len = natsMsg_GetDataLength(m);
    if (data && len > 0) l.item_.assign(data, static_cast<std::size_t>(len));
    jsMsgMetaData* meta = nullptr;
    if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
        l.deliveries_ = static_cast<std::uint32_t>(meta->NumDelivered);
        l.id_ = meta->Sequence.Stream;
        jsMsgMetaData_Destroy(meta);
    }
    l.s_ = ls;
    while (!q.taken.empty() && q.taken.front()->acked.load()) q.taken.pop_front();
    if (q.taken.size() >= q.max_items) q.taken.pop_front();  // its lease has run out long ago
    q.taken.push_back(ls);
    return l;
}
}  // namespace detail

namespace {
// Hand out up to n of the items the handle holds already. One held for
// more than half its lease is given back instead (to be delivered again
// at once): its holder would likely not finish it in time.
void take_ready(detail::QueueState& q, std::size_t n, std::vector<Lease>& out) {
    std::deque<detail::Fetched> stale;
    {
        detail::Inbox& in = *q.inbox;
        std::lock_guard<std::mutex> g(in.mu);
        const std::int64_t now = detail::now_ms();
        while (out.size() < n && !in.ready.empty()) {
            detail::Fetched f = in.ready.front();
            in.ready.pop_front();
            if (now - f.at_ms > q.lease.count() / 2)
                stale.push_back(f);
            else
                out.push_back(q.make_lease(f.msg));
        }
    }
    for (detail::Fetched& f : stale) detail::Inbox::give_back(q.store->nc, f.msg);
}
}  // namespace

std::vector<Lease> Queue::get_many_until(std::size_t n, const shm::detail::Deadline& d) {
    std::vector<Lease> out;
    if (n == 0) return out;
    detail::QueueState& q = *s_;
    q.subscribe();
    take_ready(q, n, out);
    if (!out.empty()) return out;
    detail::Inbox& in = *q.inbox;
    const std::string what = "getting items from " + q.where;
    detail::Outage outage;
    int step = 0;
    // A pull request asks for a batch, without waiting ("no_wait"): the
    // server sends what there is, up to the batch, and ends the request
    // (408) once it has sent something and has no more; with nothing to
    // send it waits until the request expires. When other consumers'
    // requests already wait for more than there is, the server refuses
    // such a request (408 Requests Pending): then ask for one item, waiting.
    bool one = false;
    for (;;) {
        // The request expires on the server a little before the caller
        // stops waiting; the caller waits for the server's answer that
        // ends it (a grace past that, if the server is slow or gone).
        const std::int64_t slice = detail::ms_left(d, 5000);
        const std::int64_t expires = slice > 20 ? slice - std::min<std::int64_t>(10, slice / 10) : slice;
        // A get of one fetches up to the handle's prefetch; get_many fetches
        // what it asks for, no more (every lease it returns starts with the call).
        const bool adaptive = n == 1 && !one && !q.prefetch_set;
        const int batch = one                ? 1
                          : adaptive         ? q.window
                          : n == 1           ? q.prefetch
                                             : static_cast<int>(std::min<std::size_t>(n, 4096));
        const std::int64_t started = detail::now_ms();
        std::uint64_t req;
        {
            std::lock_guard<std::mutex> g(in.mu);
            req = ++in.seq;
            in.live = req;
            in.batch = batch;
            in.count = 0;
            in.done = false;
            in.status = 0;
            in.desc.clear();
        }
        char body[128];
        snprintf(body, sizeof body, "{\"batch\":%d,\"expires\":%lld%s}", batch,
                 static_cast<long long>(expires) * 1000000LL, one ? "" : ",\"no_wait\":true");
        const std::string reply = in.prefix + std::to_string(req);
        natsStatus ps = natsConnection_PublishRequestString(q.store->nc, q.next_subject.c_str(), reply.c_str(), body);
        bool done = false;
        int status = 0;
        std::string desc;
        {
            std::unique_lock<std::mutex> g(in.mu);
            if (ps == NATS_OK) {
                const std::int64_t grace = std::min<std::int64_t>(q.store->timeout_ms(), 2000);
                in.cv.wait_for(g, std::chrono::milliseconds(expires + grace), [&] { return in.done; });
            }
            done = in.done;
            status = in.status;
            desc = in.desc;
            in.live = 0;  // from now on, what comes for it is given back
            if (adaptive && in.count > 0) {
                // The previous batch was handed out in started - last_fetch_ms.
                const bool fast = q.last_fetch_ms > 0 && started - q.last_fetch_ms < q.lease.count() / 16;
                q.window = in.count >= batch && fast ? std::min(detail::kMaxWindow, q.window * 2)
                           : in.count >= batch       ? q.window
                                                     : detail::kPrefetch;
                q.last_fetch_ms = started;
            }
        }
        take_ready(q, n, out);
        if (!out.empty()) return out;
        if (ps != NATS_OK) {
            if (!detail::transient(ps)) fail(ps, static_cast<jsErrCode>(0), what);
            outage.failed(ps, static_cast<jsErrCode>(0), *q.store, what);
            if (d.passed()) return out;
            detail::backoff(step, d);
            continue;
        }
        if (done && (status == 408 || status == 404)) {
            // The request ran out (or was refused as pending): the servers answer.
            outage.ok();
            if (status == 408 && desc.find("Pending") != std::string::npos && !one) {
                one = true;
                continue;
            }
            if (d.passed()) return out;
            continue;
        }
        if (done && status == 409 && desc.find("Deleted") != std::string::npos)
            throw shm::not_found("shm::remote: " + what + ": the queue was removed (" + desc + ")");
        // No answer in time, or a server going away ("Server Shutdown"), a
        // leader changing ("Leadership Change"), no consumer leader yet
        // (503): try again, for up to the request time-out.
        outage.failed(done ? NATS_ERR : NATS_TIMEOUT, static_cast<jsErrCode>(0), *q.store,
                      what + (done ? " (" + std::to_string(status) + " " + desc + ")" : std::string()));
        if (d.passed()) return out;
        if (done) detail::backoff(step, d);
    }
}

std::optional<Lease> Queue::get_until(const shm::detail::Deadline& d) {
    std::vector<Lease> one = get_many_until(1, d);
    if (one.empty()) return std::nullopt;
    return std::move(one.front());
}

Lease Queue::get() {
    auto l = get_until(shm::detail::Deadline::never());
    return std::move(*l);
}

std::optional<Lease> Queue::try_get() {
    // A pull request that waits on the server for at most ~200 ms (one
    // that does not wait at all cannot be told from a lost answer by this
    // client), expiring there before the client stops waiting.
    return get_until(shm::detail::Deadline::in(std::chrono::milliseconds(std::min<std::int64_t>(200, s_->store->timeout_ms()))));
}

Lease Queue::get_nowait() {
    auto l = try_get();
    if (!l) throw shm::empty("shm::remote: " + s_->where + " is empty");
    return std::move(*l);
}

bool Queue::task_done() {
    detail::QueueState& q = *s_;
    while (!q.taken.empty() && q.taken.front()->acked.load()) q.taken.pop_front();
    if (q.taken.empty())
        throw shm::error(EINVAL, "shm::remote: task_done() on " + q.where +
                                     " with no item got through this handle left to mark done");
    std::shared_ptr<detail::LeaseState> ls = q.taken.front();
    q.taken.pop_front();
    if (ls->acked.exchange(true)) return false;
    return ack_confirmed(*q.store, ls->msg);
}

bool Queue::join_until(const shm::detail::Deadline& d) {
    if (s_->unflushed > 0) {  // this handle's puts count
        std::lock_guard<std::mutex> g(s_->put_mu);
        s_->settle(s_->store->timeout_ms());
    }
    int step = 0;
    for (;;) {
        if (unfinished() == 0) return true;
        if (d.passed()) return false;
        detail::backoff(step, d);
    }
}

std::size_t Queue::qsize() const {
    jsConsumerInfo* ci = s_->consumer_info();
    std::size_t n = ci->NumPending;
    jsConsumerInfo_Destroy(ci);
    return n;
}

std::size_t Queue::leased() const {
    jsConsumerInfo* ci = s_->consumer_info();
    std::size_t n = static_cast<std::size_t>(ci->NumAckPending);
    jsConsumerInfo_Destroy(ci);
    return n;
}

std::size_t Queue::unfinished() const {
    jsStreamInfo* si = s_->stream_info();
    std::size_t n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    return n;
}

bool Queue::full() const { return unfinished() >= s_->max_items; }
std::uint32_t Queue::max_items() const noexcept { return s_->max_items; }
std::uint32_t Queue::max_item_size() const noexcept { return s_->max_item_size; }
std::uint32_t Queue::max_deliveries() const noexcept { return s_->max_deliveries; }
void Queue::set_prefetch(std::uint32_t n) noexcept {
    s_->prefetch = static_cast<int>(std::clamp<std::uint32_t>(n, 1, 4096));
    s_->prefetch_set = true;
}
std::uint32_t Queue::prefetch() const noexcept { return static_cast<std::uint32_t>(s_->prefetch); }
std::chrono::milliseconds Queue::lease() const noexcept { return s_->lease; }
int Queue::replicas() const noexcept { return s_->replicas; }
const std::string& Queue::name() const noexcept { return s_->name; }

void Queue::purge() {
    jsOptions o = s_->store->js_options();
    jsErrCode jerr = static_cast<jsErrCode>(0);
    natsStatus s = js_PurgeStream(s_->store->js, s_->stream.c_str(), &o, &jerr);
    if (s != NATS_OK) fail(s, jerr, "purging " + s_->where);
}

}  // namespace shm::remote
