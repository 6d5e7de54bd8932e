// The queue benchmarks: one method for every implementation.
//
// An implementation supplies a Channel: a one-way queue of byte items,
// created in the parent before the workers are forked, that any of them can
// put to and get from:
//
//     struct Channel {
//         Channel(const ChannelConfig&);               // parent, before fork;
//                                                      // throws Unavailable
//         void put(const char* item, std::size_t n);   // blocks while full
//         template <class Use>
//         void get(Use&& use);    // blocks while empty; use(const char*, size_t)
//         void leave();           // a worker is done with it
//         std::string note() const;   // how it is used, for the table
//     };
//
// and the driver here runs every case with it, in forked processes:
//
//  - queue.1to1.<size>: one producer puts items of exactly <size> bytes for
//    the measured time, one consumer gets them. queue.2to2.64B, 4to4, 8to8
//    and 1to4 (one producer, four consumers): as many of each on the same
//    channel (multi-producer, multi-consumer). Every 64-byte case also runs
//    as NAME.d256, with 256 items of capacity in place of 1024 (see
//    standard_cases()). queue.1to1.64B.batch32: one to one through a
//    Channel's put_many()/get_many(), 32 items a call. The rate is the
//    items put during the measured time over the span from the producers'
//    measured start to the moment the last consumer got its stop item
//    (so it covers draining what was still queued).
//  - queue.pingpong.64B: a client puts a request to one channel and gets the
//    reply from a second one, a server gets each request and puts it back;
//    both block in get. Every round trip is timed; the case reports the
//    median (.p50) and the 99th percentile (.p99) in microseconds.
//
// Every item starts with a header (producer, phase, sequence number) and
// ends with its sequence number again, and the consumers check them: per
// producer, each consumer sees sequence numbers in increasing order (exactly
// consecutive with one consumer), and in all the consumers get every item
// put, once (counts and sums of sequence numbers match). A producer in its
// measured time writes the header of every item; an item's other bytes come
// from a buffer filled once, as an application's data would.
//
// Output: the JSON lines of harness.hpp, plus two optional forms that
// bench/run.py understands:
//     {"bench", "impl", "value", "unit", "note": "how it was measured"}
//     {"bench", "impl", "skipped": "why this implementation has no figure"}
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "harness.hpp"

namespace qbench {

using bench::Failure;
using bench::now_ns;
using bench::Options;

inline constexpr std::size_t k64B = 64;
inline constexpr std::size_t k4KiB = 4096;
inline constexpr std::size_t k1MiB = std::size_t(1) << 20;

// The queue capacity (items) every implementation gets for an item size,
// where it can be set: 64 KiB of 64 B items (a pipe's default buffer), 1 MiB
// of 4 KiB items, 8 MiB of 1 MiB items.
inline std::uint32_t capacity_for(std::size_t item) {
    if (item <= k64B) return 1024;
    if (item <= k4KiB) return 256;
    return 8;
}

// This system cannot run the implementation for a case (a missing facility
// or a limit): reported as "skipped" with the reason, not as a failure.
class Unavailable : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct ChannelConfig {
    std::size_t item = k64B;     // every item has exactly this size
    std::uint32_t capacity = 0;  // items
    int users = 2;               // processes that will use the channel
    std::string tag;             // unique within the program run, for names
    bool pipelined = false;      // remote cases: puts that do not wait for the server's answer
};

// ---- items ------------------------------------------------------------------

enum Phase : std::uint32_t { kWarmup = 0, kMeasured = 1, kStop = 2 };

struct Header {
    std::uint32_t producer;
    std::uint32_t phase;
    std::uint64_t seq;
};
static_assert(sizeof(Header) == 16);
inline constexpr std::size_t kMinItem = sizeof(Header) + sizeof(std::uint64_t);

// A producer's item buffer: filled once, then only the header and the
// trailing sequence number change.
class ItemBuffer {
public:
    explicit ItemBuffer(std::size_t n) : b_(n) {
        for (std::size_t i = 0; i < n; ++i) b_[i] = static_cast<char>('a' + i % 26);
    }
    const char* stamp(std::uint32_t producer, std::uint32_t phase, std::uint64_t seq) {
        Header h{producer, phase, seq};
        std::memcpy(b_.data(), &h, sizeof h);
        std::memcpy(b_.data() + b_.size() - sizeof seq, &seq, sizeof seq);
        return b_.data();
    }
    std::size_t size() const noexcept { return b_.size(); }

private:
    std::vector<char> b_;
};

// Reads an item's header and checks its trailer; throws on a torn item.
inline Header read_item(const char* p, std::size_t n, std::size_t expected) {
    if (n != expected)
        throw Failure("item of " + std::to_string(n) + " bytes, expected " + std::to_string(expected));
    Header h;
    std::memcpy(&h, p, sizeof h);
    std::uint64_t tail;
    std::memcpy(&tail, p + n - sizeof tail, sizeof tail);
    if (tail != h.seq) throw Failure("torn item: header and trailer differ");
    return h;
}

// ---- processes ----------------------------------------------------------------

inline constexpr int kMaxWorkers = 16;
inline constexpr int kMaxProducers = 8;

// What the parent and the workers of one measurement share (an anonymous
// MAP_SHARED mapping).
struct Shared {
    std::atomic<int> ready{0};
    std::atomic<int> go{0};
    std::atomic<int> producers_done{0};
    struct Slot {
        // producers
        std::int64_t t0 = 0;            // measured start, steady_clock ns
        std::uint64_t put_total = 0;    // items put, warm-up included
        std::uint64_t put_measured = 0;
        // consumers
        std::int64_t t1 = 0;            // when the stop item arrived
        std::uint64_t got_measured = 0;
        std::uint64_t got[kMaxProducers] = {};      // items per producer
        std::uint64_t seq_sum[kMaxProducers] = {};  // their sequence numbers, summed
        // pingpong client
        double p50_us = 0, p99_us = 0;
        std::uint64_t samples = 0;
    } slot[kMaxWorkers];
};

class Proc {
public:
    Proc(Shared& s, int index) : s_(s), index_(index) {}
    int index() const noexcept { return index_; }
    Shared& shared() noexcept { return s_; }
    Shared::Slot& slot() noexcept { return s_.slot[index_]; }
    // Say this worker is set up, and wait for every other one.
    void start() {
        s_.ready.fetch_add(1, std::memory_order_release);
        while (s_.go.load(std::memory_order_acquire) == 0) std::this_thread::yield();
    }

private:
    Shared& s_;
    int index_;
};

// Fork `procs` workers running body(proc), wait for them (bounded) and reap
// them all. Throws Failure if one fails, crashes or overruns.
inline void run_procs(const Options& opt, int procs, Shared& sh, const std::function<void(Proc&)>& body) {
    if (procs < 1 || procs > kMaxWorkers) throw Failure("bad process count");
    std::fflush(nullptr);
    std::vector<pid_t> pids;
    const pid_t parent = getpid();
    for (int w = 0; w < procs; ++w) {
        pid_t pid = fork();
        if (pid < 0) {
            for (pid_t p : pids) kill(p, SIGKILL);
            for (pid_t p : pids) waitpid(p, nullptr, 0);
            throw Failure(std::string("fork: ") + std::strerror(errno));
        }
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != parent) _exit(1);
            int rc = 0;
            try {
                Proc p(sh, w);
                body(p);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "worker %d: %s\n", w, e.what());
                rc = 1;
            } catch (...) {
                std::fprintf(stderr, "worker %d: unknown exception\n", w);
                rc = 1;
            }
            std::fflush(nullptr);
            _exit(rc);
        }
        pids.push_back(pid);
    }

    std::string failure;
    std::vector<bool> reaped(pids.size(), false);
    std::size_t left = pids.size();
    auto poll = [&] {
        for (std::size_t k = 0; k < pids.size(); ++k) {
            int status = 0;
            if (reaped[k] || waitpid(pids[k], &status, WNOHANG) != pids[k]) continue;
            reaped[k] = true;
            --left;
            if (failure.empty() && WIFSIGNALED(status))
                failure = "worker " + std::to_string(k) + " killed by signal " + std::to_string(WTERMSIG(status));
            else if (failure.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                failure = "worker " + std::to_string(k) + " failed";
            else if (failure.empty() && sh.go.load(std::memory_order_relaxed) == 0)
                failure = "worker " + std::to_string(k) + " exited before it was ready";
        }
    };
    auto deadline = bench::Clock::now() + std::chrono::seconds(30);
    while (sh.ready.load(std::memory_order_acquire) < procs && failure.empty()) {
        poll();
        if (failure.empty() && bench::Clock::now() > deadline) failure = "workers not ready after 30 s";
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (failure.empty()) sh.go.store(1, std::memory_order_release);
    // Producers stop on time; consumers on the stop items; a run that is
    // still going well past that has hung and is ended here.
    deadline = bench::Clock::now() + std::chrono::duration_cast<bench::Clock::duration>(
                                         std::chrono::duration<double>(opt.warmup + opt.seconds + 30.0));
    while (true) {
        poll();
        if (left == 0) break;
        if (!failure.empty() || bench::Clock::now() > deadline) {
            if (failure.empty()) failure = "workers did not finish in time";
            for (std::size_t k = 0; k < pids.size(); ++k)
                if (!reaped[k]) kill(pids[k], SIGKILL);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (!failure.empty()) throw Failure(failure);
}

// An anonymous shared mapping holding one T, for the parent and its forks.
template <class T>
class SharedBox {
public:
    SharedBox() {
        void* m = mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) throw Failure(std::string("mmap: ") + std::strerror(errno));
        p_ = new (m) T();
    }
    ~SharedBox() {
        p_->~T();
        munmap(p_, sizeof(T));
    }
    SharedBox(const SharedBox&) = delete;
    SharedBox& operator=(const SharedBox&) = delete;
    T& operator*() noexcept { return *p_; }
    T* operator->() noexcept { return p_; }

private:
    T* p_;
};

// ---- throughput ------------------------------------------------------------------

struct Throughput {
    double items_per_s = 0;
    std::uint64_t items = 0;  // measured
};

// Items a producer puts between clock reads: about 64 KiB of them.
inline std::uint64_t batch_for(std::size_t item) {
    return std::clamp<std::uint64_t>(65536 / item, 1, 32);
}

// A Channel that can also move items in batches, with the calls an
// application would make for that:
//     void put_many(const std::vector<std::string>& items);  // all of them, in order
//     template <class Use> void get_many(std::size_t n, Use&& use);
//                             // blocks for the first; up to n, use() on each
template <class Channel, class = void>
struct HasBatches : std::false_type {};
template <class Channel>
struct HasBatches<Channel, std::void_t<decltype(std::declval<Channel&>().put_many(
                               std::declval<const std::vector<std::string>&>()))>> : std::true_type {};

// Writes an item's header and trailing sequence number into p[0, n).
inline void stamp_into(char* p, std::size_t n, std::uint32_t producer, std::uint32_t phase, std::uint64_t seq) {
    Header h{producer, phase, seq};
    std::memcpy(p, &h, sizeof h);
    std::memcpy(p + n - sizeof seq, &seq, sizeof seq);
}

// Items per put_many()/get_many() call in a batched case (0: one at a time).
template <class Channel>
Throughput throughput(const Options& opt, Channel& ch, std::size_t item, int producers, int consumers,
                      std::size_t api_batch = 0) {
    if (producers < 1 || producers > kMaxProducers || consumers < 1 || producers + consumers > kMaxWorkers)
        throw Failure("bad producer/consumer counts");
    // Batched, a consumer could take two stop items in one call: one consumer only.
    if (api_batch > 1 && (!HasBatches<Channel>::value || consumers != 1))
        throw Failure("batched throughput needs put_many/get_many and one consumer");
    SharedBox<Shared> sh;
    run_procs(opt, producers + consumers, *sh, [&](Proc& p) {
        auto& me = p.slot();
        if (p.index() < producers) {
            const auto id = static_cast<std::uint32_t>(p.index());
            ItemBuffer buf(item);
            const std::uint64_t batch = api_batch > 1 ? api_batch : batch_for(item);
            std::uint64_t seq = 0;
            // Batched: the items of one call, each stamped in place (as an
            // application fills its buffers), then handed over at once.
            std::vector<std::string> items;
            if (api_batch > 1) items.assign(api_batch, std::string(buf.stamp(id, kWarmup, 0), item));
            auto put_batch = [&](std::uint32_t phase) {
                if constexpr (HasBatches<Channel>::value) {
                    if (api_batch > 1) {
                        for (auto& s : items) stamp_into(s.data(), item, id, phase, seq++);
                        ch.put_many(items);
                        return;
                    }
                }
                for (std::uint64_t b = 0; b < batch; ++b, ++seq) ch.put(buf.stamp(id, phase, seq), item);
            };
            p.start();
            const std::int64_t warm_end = now_ns() + static_cast<std::int64_t>(opt.warmup * 1e9);
            while (now_ns() < warm_end) put_batch(kWarmup);
            const std::uint64_t first = seq;
            const std::int64_t t0 = now_ns();
            const std::int64_t end = t0 + static_cast<std::int64_t>(opt.seconds * 1e9);
            // At least one batch, however late this process runs: a smoke
            // run's window is shorter than a time slice on a busy machine.
            do
                put_batch(kMeasured);
            while (now_ns() < end);
            me.t0 = t0;
            me.put_total = seq;
            me.put_measured = seq - first;
            // The last producer to finish tells every consumer to stop: its
            // stop items come after every other item put.
            if (p.shared().producers_done.fetch_add(1, std::memory_order_acq_rel) + 1 == producers)
                for (int c = 0; c < consumers; ++c) ch.put(buf.stamp(id, kStop, 0), item);
            ch.leave();
        } else {
            std::uint64_t next[kMaxProducers] = {};  // expected (1 consumer) or lowest possible sequence
            bool stop = false;
            p.start();
            auto on_item = [&](const char* d, std::size_t n) {
                const Header h = read_item(d, n, item);
                if (stop) throw Failure("an item after the stop item");
                if (h.phase == kStop) {
                    stop = true;
                    return;
                }
                if (h.producer >= static_cast<std::uint32_t>(producers) || h.phase > kMeasured)
                    throw Failure("bad item header");
                if (consumers == 1 ? h.seq != next[h.producer] : h.seq < next[h.producer])
                    throw Failure("producer " + std::to_string(h.producer) + ": got item " + std::to_string(h.seq) +
                                  (consumers == 1 ? ", expected " : ", after ") + std::to_string(next[h.producer]));
                next[h.producer] = h.seq + 1;
                ++me.got[h.producer];
                me.seq_sum[h.producer] += h.seq;
                me.got_measured += h.phase == kMeasured;
            };
            while (!stop) {
                if constexpr (HasBatches<Channel>::value) {
                    if (api_batch > 1) {
                        ch.get_many(api_batch, on_item);
                        continue;
                    }
                }
                ch.get(on_item);
            }
            me.t1 = now_ns();
            ch.leave();
        }
    });

    std::int64_t t0 = std::numeric_limits<std::int64_t>::max(), t1 = 0;
    std::uint64_t measured = 0, got_measured = 0;
    for (int w = 0; w < producers; ++w) {
        const auto& s = sh->slot[w];
        t0 = std::min(t0, s.t0);
        measured += s.put_measured;
        std::uint64_t got = 0, sum = 0;
        for (int c = producers; c < producers + consumers; ++c) {
            got += sh->slot[c].got[w];
            sum += sh->slot[c].seq_sum[w];
        }
        bench::expect(got == s.put_total, "consumers got " + std::to_string(got) + " items of producer " +
                                              std::to_string(w) + ", which put " + std::to_string(s.put_total));
        bench::expect(sum == s.put_total * (s.put_total - 1) / 2,
                      "producer " + std::to_string(w) + ": every item got exactly once");
    }
    for (int c = producers; c < producers + consumers; ++c) {
        t1 = std::max(t1, sh->slot[c].t1);
        got_measured += sh->slot[c].got_measured;
    }
    bench::expect(got_measured == measured, "measured items got == put");
    if (t1 <= t0 || measured == 0) throw Failure("no item measured");
    return {static_cast<double>(measured) / (static_cast<double>(t1 - t0) / 1e9), measured};
}

// ---- round trips ------------------------------------------------------------------

struct Latency {
    double p50_us = 0, p99_us = 0;
    std::uint64_t samples = 0;
};

// Round trips timed at most (the run stops early there).
inline constexpr std::uint64_t kMaxSamples = 4'000'000;

template <class Channel>
Latency pingpong(const Options& opt, Channel& request, Channel& reply, std::size_t item) {
    SharedBox<Shared> sh;
    run_procs(opt, 2, *sh, [&](Proc& p) {
        if (p.index() == 1) {
            // The server: echo every request until the stop item.
            std::vector<char> buf(item);
            bool stop = false;
            p.start();
            while (!stop) {
                request.get([&](const char* d, std::size_t n) {
                    const Header h = read_item(d, n, item);
                    stop = h.phase == kStop;
                    std::memcpy(buf.data(), d, n);
                });
                if (!stop) reply.put(buf.data(), item);
            }
            request.leave();
            reply.leave();
            return;
        }
        ItemBuffer buf(item);
        std::vector<std::uint32_t> ns(kMaxSamples);  // touched now, not while timing
        std::uint64_t seq = 0, n = 0;
        auto round_trip = [&](std::uint32_t phase) {
            request.put(buf.stamp(0, phase, seq), item);
            reply.get([&](const char* d, std::size_t len) {
                const Header h = read_item(d, len, item);
                if (h.seq != seq || h.phase != phase) throw Failure("reply to another request");
            });
            ++seq;
        };
        p.start();
        const std::int64_t warm_end = now_ns() + static_cast<std::int64_t>(opt.warmup * 1e9);
        while (now_ns() < warm_end) round_trip(kWarmup);
        const std::int64_t end = now_ns() + static_cast<std::int64_t>(opt.seconds * 1e9);
        // At least one round trip, however late this process runs.
        for (std::int64_t t = now_ns(); n == 0 || (t < end && n < kMaxSamples); ++n) {
            round_trip(kMeasured);
            const std::int64_t t2 = now_ns();
            ns[n] = static_cast<std::uint32_t>(std::min<std::int64_t>(t2 - t, std::numeric_limits<std::uint32_t>::max()));
            t = t2;
        }
        request.put(buf.stamp(0, kStop, seq), item);
        request.leave();
        reply.leave();
        if (n == 0) throw Failure("no round trip measured");
        auto pct = [&](double q) {
            auto k = static_cast<std::size_t>(q * static_cast<double>(n - 1));
            std::nth_element(ns.begin(), ns.begin() + static_cast<std::ptrdiff_t>(k), ns.begin() + static_cast<std::ptrdiff_t>(n));
            return ns[k] / 1e3;
        };
        auto& me = p.slot();
        me.p50_us = pct(0.50);
        me.p99_us = pct(0.99);
        me.samples = n;
    });
    const auto& s = sh->slot[0];
    return {s.p50_us, s.p99_us, s.samples};
}

// ---- cases and output ----------------------------------------------------------------

inline std::string number(double v) {
    char b[64];
    std::snprintf(b, sizeof b, v >= 100 ? "%.1f" : "%.4g", v);
    return b;
}

// JSON string contents: notes are plain text, but keep the line valid.
inline std::string json_escape(std::string_view s) {
    std::string o;
    for (char c : s) {
        if (c == '"' || c == '\\') o += '\\';
        if (static_cast<unsigned char>(c) < 0x20) c = ' ';
        o += c;
    }
    return o;
}

inline void emit(std::string_view bench, std::string_view impl, double value, std::string_view unit,
                 std::string_view note = {}) {
    std::string line = "{\"bench\": \"" + std::string(bench) + "\", \"impl\": \"" + std::string(impl) +
                       "\", \"value\": " + number(value) + ", \"unit\": \"" + std::string(unit) + "\"";
    if (!note.empty()) line += ", \"note\": \"" + json_escape(note) + "\"";
    line += "}\n";
    std::fputs(line.c_str(), stdout);
    std::fflush(stdout);
}

inline void emit_skipped(std::string_view bench, std::string_view impl, std::string_view why) {
    std::printf("{\"bench\": \"%s\", \"impl\": \"%s\", \"skipped\": \"%s\"}\n", std::string(bench).c_str(),
                std::string(impl).c_str(), json_escape(why).c_str());
    std::fflush(stdout);
}

// Reports a throughput case: items/s for 64 B items, GB/s (10^9 bytes) above.
inline void emit_throughput(std::string_view bench, std::string_view impl, const Throughput& t, std::size_t item,
                            std::string_view note = {}) {
    if (item <= k64B)
        emit(bench, impl, t.items_per_s, "items/s", note);
    else
        emit(bench, impl, t.items_per_s * static_cast<double>(item) / 1e9, "GB/s", note);
}

inline void emit_latency(std::string_view bench, std::string_view impl, const Latency& l, std::string_view note = {}) {
    emit(std::string(bench) + ".p50", impl, l.p50_us, "us", note);
    emit(std::string(bench) + ".p99", impl, l.p99_us, "us", note);
}

// A case runs and prints its own lines (one or more, or a "skipped" line).
struct QCase {
    std::string name;
    std::function<void(const Options&)> run;
    std::vector<std::string> outputs = {};  // the bench names it prints; empty: {name}
};

inline int run_qcases(std::string_view impl, const std::vector<QCase>& cases, int argc, char** argv) {
    Options opt;
    try {
        opt = bench::parse_options(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 2;
    }
    {
        std::vector<std::string> names;
        for (const auto& c : cases) names.push_back(c.name);
        opt.resolve(names);
    }
    int rc = 0;
    for (const auto& c : cases) {
        if (!opt.selected(c.name)) continue;
        if (opt.list) {
            std::printf("%s\n", c.name.c_str());
            continue;
        }
        try {
            c.run(opt);
        } catch (const Unavailable& u) {
            for (const auto& out : c.outputs.empty() ? std::vector<std::string>{c.name} : c.outputs)
                emit_skipped(out, impl, u.what());
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%.*s %s: FAILED: %s\n", static_cast<int>(impl.size()), impl.data(), c.name.c_str(),
                         e.what());
            rc = 1;
        }
    }
    return rc;
}

// The shallow depth of the .d256 cases: the queues of 256 slots an outside
// measurement used, next to the 1024 of capacity_for(64 B).
inline constexpr std::uint32_t kShallow = 256;

// The 64-byte throughput cases: (name, producers, consumers). Every one also
// runs as NAME.d256, at the shallow depth, where the depth can be set.
// queue.1to4 is the Pool's shape (one producer feeding four workers);
// 1to1 .. 8to8 are the scale family (queue.8to8.64B is left out of a default
// `./dev bench`, see bench/run.py: sixteen processes on a small machine).
struct Shape {
    const char* name;
    int producers, consumers;
};
inline const std::vector<Shape>& shapes_64B() {
    static const std::vector<Shape> v{{"queue.1to1.64B", 1, 1}, {"queue.2to2.64B", 2, 2}, {"queue.4to4.64B", 4, 4},
                                      {"queue.8to8.64B", 8, 8}, {"queue.1to4.64B", 1, 4}};
    return v;
}

// Items per put_many()/get_many() in queue.1to1.64B.batch32.
inline constexpr std::size_t kApiBatch = 32;

// The standard cases for one Channel type. depth: whether the Channel takes
// its capacity from ChannelConfig (no .d256 cases otherwise).
template <class Channel>
std::vector<QCase> standard_cases(const std::string& impl, bool depth = true) {
    auto cfg = [](std::size_t item, std::uint32_t capacity, int users, const std::string& tag) {
        ChannelConfig c;
        c.item = item;
        c.capacity = capacity;
        c.users = users;
        c.tag = tag;
        return c;
    };
    std::vector<QCase> cases;
    int tag = 0;
    for (const Shape& s : shapes_64B()) {
        for (std::uint32_t cap : {capacity_for(k64B), kShallow}) {
            if (cap == kShallow && !depth) continue;
            const std::string name = cap == kShallow ? std::string(s.name) + ".d256" : std::string(s.name);
            const std::string t = "s" + std::to_string(tag++);
            const int np = s.producers, nc = s.consumers;
            cases.push_back({name, [=](const Options& o) {
                                 Channel ch(cfg(k64B, cap, np + nc, t));
                                 emit_throughput(name, impl, throughput(o, ch, k64B, np, nc), k64B, ch.note());
                             }});
        }
    }
    cases.push_back({"queue.1to1.64B.batch32", [=](const Options& o) {
                         if constexpr (HasBatches<Channel>::value) {
                             Channel ch(cfg(k64B, capacity_for(k64B), 2, "batch"));
                             emit_throughput("queue.1to1.64B.batch32", impl,
                                             throughput(o, ch, k64B, 1, 1, kApiBatch), k64B, ch.batch_note());
                         } else {
                             (void)o;
                             throw Unavailable("no call that puts or gets several items at once");
                         }
                     }});
    cases.push_back({"queue.pingpong.64B",
                     [=](const Options& o) {
                         Channel req(cfg(k64B, capacity_for(k64B), 2, "req")), rep(cfg(k64B, capacity_for(k64B), 2, "rep"));
                         emit_latency("queue.pingpong.64B", impl, pingpong(o, req, rep, k64B), req.note());
                     },
                     {"queue.pingpong.64B.p50", "queue.pingpong.64B.p99"}});
    for (std::size_t item : {k4KiB, k1MiB}) {
        const std::string name = item == k4KiB ? "queue.1to1.4KiB" : "queue.1to1.1MiB";
        cases.push_back({name, [=](const Options& o) {
                             Channel ch(cfg(item, capacity_for(item), 2, item == k4KiB ? "c" : "d"));
                             emit_throughput(name, impl, throughput(o, ch, item, 1, 1), item, ch.note());
                         }});
    }
    return cases;
}

}  // namespace qbench
