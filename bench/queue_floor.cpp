// The floors of the queue benchmarks (queue_harness.hpp): what no queue
// between two processes can beat on this machine.
//
//  - futex_floor (queue.pingpong.64B): a one-item mailbox in shared memory
//    guarded by one futex word: put stores the item, marks it full and wakes;
//    get sleeps on the word until it is full (no spinning), reads the item,
//    marks it empty and wakes. Two of them make the bare futex ping-pong, the
//    floor for a round trip with a blocking get on both sides.
//  - spsc_floor (queue.1to1.*, and queue.pingpong.64B with two of them,
//    spinning on both sides: the round trip with nobody asleep): a bare single-producer/single-consumer ring
//    in shared memory whose slots carry their own sequence words, busy
//    polling on both sides (with a sched_yield() every 256 polls, so that it
//    still moves when both processes share a CPU), no crash safety, no
//    waking. The producer copies each item into its slot, the consumer reads
//    it in place. It cannot be shared by two producers or two consumers, so
//    it has no queue.2to2 figure.
//  - memcpy (queue.1to1.1MiB): one process copying 1 MiB items into a ring
//    of 8 MiB (the queues' ring for that case), the bandwidth of the single
//    copy a zero-copy queue still makes.
#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "harness.hpp"
#include "queue_harness.hpp"

namespace {

using qbench::ChannelConfig;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// An anonymous shared mapping of n bytes, made before the workers fork.
class Mapping {
public:
    explicit Mapping(std::size_t n) : n_(n) {
        p_ = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (p_ == MAP_FAILED) throw bench::Failure(std::string("mmap: ") + std::strerror(errno));
        std::memset(p_, 0, n);  // fault it in before measuring
    }
    ~Mapping() { ::munmap(p_, n_); }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    char* data() const noexcept { return static_cast<char*>(p_); }

private:
    void* p_;
    std::size_t n_;
};

// ---- futex_floor ---------------------------------------------------------------

class FutexMailbox {
public:
    explicit FutexMailbox(const ChannelConfig& cfg) : item_(cfg.item), m_(64 + cfg.item) {
        new (m_.data()) std::atomic<std::uint32_t>(0);
    }
    void put(const char* item, std::size_t n) {
        auto& w = word();
        while (w.load(std::memory_order_acquire) == kFull) futex(FUTEX_WAIT, kFull);
        std::memcpy(m_.data() + 64, item, n);
        w.store(kFull, std::memory_order_release);
        futex(FUTEX_WAKE, 1);
    }
    template <class Use>
    void get(Use&& use) {
        auto& w = word();
        while (w.load(std::memory_order_acquire) == kEmpty) futex(FUTEX_WAIT, kEmpty);
        use(m_.data() + 64, item_);
        w.store(kEmpty, std::memory_order_release);
        futex(FUTEX_WAKE, 1);
    }
    void leave() {}
    std::string note() const { return "a futex word and a one-item mailbox each way, no spinning"; }

private:
    static constexpr std::uint32_t kEmpty = 0, kFull = 1;
    std::atomic<std::uint32_t>& word() { return *reinterpret_cast<std::atomic<std::uint32_t>*>(m_.data()); }
    void futex(int op, std::uint32_t v) {
        static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
        ::syscall(SYS_futex, m_.data(), op, v, nullptr, nullptr, 0);
    }
    std::size_t item_;
    Mapping m_;
};

// ---- spsc_floor -----------------------------------------------------------------

class SpscRing {
public:
    // Each slot is a 64-byte line holding its sequence word, then the item.
    // Slot pos % capacity is free for position pos when its word is pos, and
    // full when it is pos + 1. Producer and consumer keep their positions to
    // themselves, so they share no index, only the slots.
    explicit SpscRing(const ChannelConfig& cfg)
        : cap_(cfg.capacity), item_(cfg.item), stride_(64 + (cfg.item + 63) / 64 * 64), m_(cap_ * stride_) {
        for (std::uint64_t i = 0; i < cap_; ++i) new (m_.data() + i * stride_) std::atomic<std::uint64_t>(i);
    }
    void put(const char* item, std::size_t n) {
        auto& w = word(tail_);
        for (unsigned polls = 1; w.load(std::memory_order_acquire) != tail_; ++polls) pause(polls);
        std::memcpy(m_.data() + (tail_ % cap_) * stride_ + 64, item, n);
        w.store(tail_ + 1, std::memory_order_release);
        ++tail_;
    }
    template <class Use>
    void get(Use&& use) {
        auto& w = word(head_);
        for (unsigned polls = 1; w.load(std::memory_order_acquire) != head_ + 1; ++polls) pause(polls);
        use(m_.data() + (head_ % cap_) * stride_ + 64, item_);
        w.store(head_ + cap_, std::memory_order_release);
        ++head_;
    }
    void leave() {}
    std::string note() const {
        return "busy-polled ring (sched_yield() every 256 polls), copied in by the producer, read in place";
    }

private:
    // Busy polling never sleeps; a yield now and then only lets the other
    // side run when both share a CPU (it returns at once otherwise).
    static void pause(unsigned polls) {
        if (polls % 256 == 0)
            sched_yield();
        else
            cpu_relax();
    }
    std::atomic<std::uint64_t>& word(std::uint64_t pos) {
        return *reinterpret_cast<std::atomic<std::uint64_t>*>(m_.data() + (pos % cap_) * stride_);
    }
    std::uint64_t cap_, item_, stride_;
    Mapping m_;
    std::uint64_t tail_ = 0;  // the producer's next position
    std::uint64_t head_ = 0;  // the consumer's next position
};

// ---- memcpy ---------------------------------------------------------------------

double memcpy_gbps(const bench::Options& opt) {
    const std::size_t item = qbench::k1MiB, ring = qbench::capacity_for(item);
    qbench::SharedBox<qbench::Shared> sh;
    qbench::run_procs(opt, 1, *sh, [&](qbench::Proc& p) {
        qbench::ItemBuffer src(item);
        std::vector<char> dst(ring * item, 1);
        std::uint64_t i = 0;
        auto copy = [&] {
            char* d = dst.data() + (i++ % ring) * item;
            std::memcpy(d, src.stamp(0, qbench::kMeasured, i), item);
            asm volatile("" : : "r"(d) : "memory");  // the copy is used
        };
        p.start();
        const std::int64_t warm_end = qbench::now_ns() + static_cast<std::int64_t>(opt.warmup * 1e9);
        while (qbench::now_ns() < warm_end) copy();
        const std::uint64_t first = i;
        const std::int64_t t0 = qbench::now_ns(), end = t0 + static_cast<std::int64_t>(opt.seconds * 1e9);
        std::int64_t t1 = t0;
        while (t1 < end) {
            copy();
            t1 = qbench::now_ns();
        }
        p.slot().put_measured = i - first;
        p.slot().t0 = t0;
        p.slot().t1 = t1;
    });
    const auto& s = sh->slot[0];
    return static_cast<double>(s.put_measured * item) / (static_cast<double>(s.t1 - s.t0));  // bytes/ns = GB/s
}

qbench::ChannelConfig config(std::size_t item, const std::string& tag) {
    ChannelConfig c;
    c.item = item;
    c.capacity = qbench::capacity_for(item);
    c.tag = tag;
    return c;
}

}  // namespace

int main(int argc, char** argv) {
    using qbench::Options;
    std::vector<qbench::QCase> cases;
    for (std::size_t item : {qbench::k64B, qbench::k4KiB, qbench::k1MiB}) {
        const std::string name = item == qbench::k64B    ? "queue.1to1.64B"
                                 : item == qbench::k4KiB ? "queue.1to1.4KiB"
                                                         : "queue.1to1.1MiB";
        cases.push_back({name, [=](const Options& o) {
                             SpscRing ring(config(item, "spsc"));
                             qbench::emit_throughput(name, "spsc_floor", qbench::throughput(o, ring, item, 1, 1), item,
                                                     ring.note());
                             if (item == qbench::k1MiB)
                                 qbench::emit(name, "memcpy", memcpy_gbps(o), "GB/s",
                                              "one process, 1 MiB copies into an 8 MiB ring");
                         }});
        if (item != qbench::k64B) continue;
        // The same ring at the shallow depth, and as the floor of the
        // batched case (one item at a time: a ring has nothing to batch).
        cases.push_back({"queue.1to1.64B.d256", [](const Options& o) {
                             ChannelConfig c = config(qbench::k64B, "spsc256");
                             c.capacity = qbench::kShallow;
                             SpscRing ring(c);
                             qbench::emit_throughput("queue.1to1.64B.d256", "spsc_floor",
                                                     qbench::throughput(o, ring, qbench::k64B, 1, 1), qbench::k64B,
                                                     ring.note());
                         }});
        cases.push_back({"queue.1to1.64B.batch32", [](const Options& o) {
                             SpscRing ring(config(qbench::k64B, "spscb"));
                             qbench::emit_throughput("queue.1to1.64B.batch32", "spsc_floor",
                                                     qbench::throughput(o, ring, qbench::k64B, 1, 1), qbench::k64B,
                                                     ring.note() + "; items one at a time");
                         }});
        cases.push_back({"queue.2to2.64B", [](const Options&) {
                             qbench::emit_skipped("queue.2to2.64B", "spsc_floor",
                                                  "single producer, single consumer by design: no 2-to-2 figure");
                         }});
    }
    cases.push_back({"queue.pingpong.64B", [](const Options& o) {
                         FutexMailbox req(config(qbench::k64B, "req")), rep(config(qbench::k64B, "rep"));
                         qbench::emit_latency("queue.pingpong.64B", "futex_floor",
                                              qbench::pingpong(o, req, rep, qbench::k64B), req.note());
                         // The round trip with nobody blocking: what two
                         // spinning processes hand over at best, and the tail
                         // the machine itself gives a spinner.
                         SpscRing sreq(config(qbench::k64B, "spscreq")), srep(config(qbench::k64B, "spscrep"));
                         qbench::emit_latency("queue.pingpong.64B", "spsc_floor",
                                              qbench::pingpong(o, sreq, srep, qbench::k64B), sreq.note());
                     }});
    return qbench::run_qcases("floor", cases, argc, argv);
}
