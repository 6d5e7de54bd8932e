// shm::remote::Lock: a key ("hold") in a bucket whose entries expire after
// the lease. Taken by creating the key (or by compare-and-set over the
// "free" value an unlock leaves); renewed by a thread of the holding
// handle, which rewrites it by compare-and-set every lease/3; released by
// writing "free" over the holder's revision. The fencing token is the
// revision of the acquiring write: the bucket's sequence, which only grows.
#include <unistd.h>

#include <condition_variable>
#include <thread>

#include "remote/internal.hpp"

namespace shm::remote {
namespace detail {

struct LockState {
    std::shared_ptr<KvState> kv;
    std::chrono::milliseconds lease{0};
    std::string holder_value;  // "held <host> <pid>"

    std::mutex m;
    std::condition_variable cv;
    bool holding = false;      // this handle took it and has not unlocked
    bool lost = false;         // a renewal found it taken or expired
    bool stop = false;
    std::uint64_t token = 0;   // revision of the acquiring write
    std::uint64_t revision = 0;  // of the last write (acquire or renewal)
    std::thread renewer;

    ~LockState() {
        try {
            release();
        } catch (...) {
        }
    }

    void renew_loop() {
        std::unique_lock<std::mutex> g(m);
        auto period = lease / 3;
        while (!stop) {
            if (cv.wait_for(g, period, [&] { return stop; })) break;
            std::uint64_t last = revision;
            g.unlock();
            std::uint64_t rev = 0;
            bool ok = false, answered = true;
            try {
                ok = kv_cas(*kv, "hold", holder_value, last, &rev);
            } catch (const shm::error&) {
                answered = false;  // try again sooner; the lease may still be ours
            }
            g.lock();
            if (stop) break;
            if (ok) {
                revision = rev;
                period = lease / 3;
            } else if (answered) {
                lost = true;  // expired, and maybe taken: renewing is over
                break;
            } else {
                period = lease / 10;
            }
        }
    }

    void release() {
        std::unique_lock<std::mutex> g(m);
        if (!holding) return;
        stop = true;
        cv.notify_all();
        g.unlock();
        if (renewer.joinable()) renewer.join();
        g.lock();
        std::uint64_t last = revision;
        bool was_lost = lost;
        holding = false;
        token = 0;
        revision = 0;
        lost = false;
        g.unlock();
        // Over our own revision only: if the lease ran out and another
        // process holds it now, this changes nothing.
        if (!was_lost) kv_cas(*kv, "hold", "free", last, nullptr);
    }
};

}  // namespace detail

namespace {
std::shared_ptr<detail::LockState> open_lock(Store& store, std::string_view name, const LockOptions& opt, bool create) {
    auto ls = std::make_shared<detail::LockState>();
    std::chrono::milliseconds lease = opt.lease.count() > 0 ? opt.lease : store.options().lock_lease;
    if (lease < std::chrono::milliseconds(300))
        throw shm::error(EINVAL, "shm::remote::Lock: a lease must be at least 300 ms, not " +
                                     std::to_string(lease.count()) + " ms ('" + std::string(name) + "')");
    ls->kv = detail::open_bucket(store, detail::Kind::lock, name, create, opt.replicas, lease.count());
    // An existing lock keeps its lease (the bucket's max age).
    ls->lease = ls->kv->ttl_ms > 0 ? std::chrono::milliseconds(ls->kv->ttl_ms) : lease;
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    ls->holder_value = std::string("held ") + host + " " + std::to_string(getpid());
    return ls;
}
}  // namespace

Lock Lock::open_or_create(Store& store, std::string_view name, const LockOptions& opt) {
    return Lock(open_lock(store, name, opt, true));
}
Lock Lock::open(Store& store, std::string_view name) { return Lock(open_lock(store, name, {}, false)); }

Lock::Lock(std::shared_ptr<detail::LockState> s) : s_(std::move(s)) {}
Lock::Lock(Lock&&) noexcept = default;
Lock& Lock::operator=(Lock&& o) noexcept {
    if (this != &o) {
        if (s_) {
            try {
                s_->release();
            } catch (...) {
            }
        }
        s_ = std::move(o.s_);
    }
    return *this;
}
Lock::~Lock() = default;  // the state's destructor releases a hold

bool Lock::try_lock() {
    detail::LockState& ls = *s_;
    {
        std::lock_guard<std::mutex> g(ls.m);
        if (ls.holding && !ls.lost)
            throw shm::lock_error(EDEADLK, "shm::remote: " + ls.kv->where + " is held by this handle already");
    }
    if (ls.holding) ls.release();  // a lost hold: forget it first
    detail::KvEntry e = detail::kv_get(*ls.kv, "hold");
    if (e.found && e.value != "free") return false;
    std::uint64_t rev = 0;
    if (!detail::kv_cas(*ls.kv, "hold", ls.holder_value, e.found ? e.revision : 0, &rev)) return false;
    std::lock_guard<std::mutex> g(ls.m);
    ls.holding = true;
    ls.lost = false;
    ls.stop = false;
    ls.token = rev;
    ls.revision = rev;
    ls.renewer = std::thread([&ls] { ls.renew_loop(); });
    return true;
}

bool Lock::try_lock_until(const shm::detail::Deadline& d) {
    // The lock's key expires without a word to watchers: poll, from 10 ms
    // up to a tenth of the lease.
    std::int64_t wait = 10;
    const std::int64_t cap = std::max<std::int64_t>(10, s_->lease.count() / 10);
    for (;;) {
        if (try_lock()) return true;
        if (d.passed()) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(detail::ms_left(d, wait)));
        wait = std::min(cap, wait * 2);
    }
}

void Lock::unlock() {
    {
        std::lock_guard<std::mutex> g(s_->m);
        if (!s_->holding)
            throw shm::lock_error(EPERM, "shm::remote: unlock of " + s_->kv->where + ", which this handle does not hold");
    }
    s_->release();
}

std::uint64_t Lock::token() const noexcept {
    std::lock_guard<std::mutex> g(s_->m);
    return s_->holding ? s_->token : 0;
}

bool Lock::held() const noexcept {
    std::lock_guard<std::mutex> g(s_->m);
    return s_->holding && !s_->lost;
}

std::chrono::milliseconds Lock::lease() const noexcept { return s_->lease; }
const std::string& Lock::name() const noexcept { return s_->kv->name; }

}  // namespace shm::remote
