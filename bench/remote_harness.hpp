// The remote benchmarks (remote.*): a queue and a dict on a NATS JetStream
// server, one method for every implementation.
//
// The server is a real nats-server whose URL is in SHM_NATS_URL (bench/run.py
// starts one for the remote cases, tests/nats_server.py for the smoke tests);
// without it every case is reported as skipped.
//
// The cases:
//  - remote.queue.1to1.64B: the queue_harness.hpp throughput method (one
//    producer, one consumer, checked sequence numbers and totals) on a
//    Channel that lives on the server;
//  - remote.queue.1to1.64B.batch32: the same, 32 items per put_many() and
//    up to 32 per get_many();
//  - remote.queue.1to1.64B.pipelined: the first case with puts that do not
//    wait for the server's answer (up to 256 unanswered), all of them
//    confirmed before the producer leaves;
//  - remote.queue.pingpong.64B: its ping-pong (.p50 and .p99, microseconds);
//  - remote.dict.get / remote.dict.set: one process cycling through the keys
//    "k0".."k999" (harness.hpp's working set), ops/s. get checks every value
//    read; after set, every key holds the last value written to it;
//  - remote.dict.set.pipelined: as set, with sets that do not wait for the
//    server's answer; the last ones are confirmed inside the measured time.
//
// A program supplies a Channel (the queue_harness.hpp interface) and a Dict:
//     struct Dict {
//         Dict(const std::string& url, const std::string& name, bool pipelined);  // in the worker
//         void set(const std::string& key, std::int64_t v);
//         void set_pipelined(const std::string& key, std::int64_t v);  // may be set()
//         void flush();  // every set_pipelined() stored
//         std::int64_t get(const std::string& key);
//         std::string pipelined_note();
//     };
// The parent process never opens a connection (the client library's threads
// do not survive fork()): whatever must exist on the server before the
// workers start is created in a child (in_child()), and each worker
// connects on first use.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "harness.hpp"
#include "queue_harness.hpp"

namespace rbench {

// The server's URL (SHM_NATS_URL); Unavailable when there is none.
inline std::string server_url() {
    const char* u = std::getenv("SHM_NATS_URL");
    if (u == nullptr || *u == '\0')
        throw qbench::Unavailable("no NATS server: SHM_NATS_URL is not set (./dev bench starts one)");
    return u;
}

// Names on the server unique to this run of the program.
inline std::string unique_name(const std::string& what) {
    return "BENCH_" + what + "_" + std::to_string(getpid());
}

// Run fn in a child process and wait for it; throws Failure if it fails.
inline void in_child(const std::function<void()>& fn) {
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid < 0) throw bench::Failure(std::string("fork: ") + std::strerror(errno));
    if (pid == 0) {
        int rc = 0;
        try {
            fn();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s\n", e.what());
            rc = 1;
        }
        std::fflush(nullptr);
        _exit(rc);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) throw bench::Failure("set-up on the server failed");
}

enum class DictOp { get, set, set_pipelined };

template <class Dict>
bench::CaseResult dict_case(const bench::Options& opt, DictOp op) {
    const bool set = op != DictOp::get;
    const std::string url = server_url();
    const std::string name = unique_name("kv");
    const auto keys = bench::make_keys();
    return bench::run_workers(opt, 1, [&](bench::Worker& w) {
        Dict d(url, name, op == DictOp::set_pipelined);
        for (std::uint64_t k = 0; k < bench::kKeys; ++k) d.set(keys[k], static_cast<std::int64_t>(k));
        std::uint64_t done = 0;
        if (op == DictOp::set) {
            w.run([&](std::uint64_t i) {
                d.set(keys[i % bench::kKeys], static_cast<std::int64_t>(i));
                done = i + 1;
            });
        } else if (op == DictOp::set_pipelined) {
            w.run(
                [&](std::uint64_t i) {
                    d.set_pipelined(keys[i % bench::kKeys], static_cast<std::int64_t>(i));
                    done = i + 1;
                },
                std::numeric_limits<std::uint64_t>::max(), [&] { d.flush(); });
        }
        if (set) {
            // Every key holds the last value written to it.
            for (std::uint64_t k = 0; k < bench::kKeys && k < done; ++k) {
                const std::uint64_t last = k + (done - 1 - k) / bench::kKeys * bench::kKeys;
                bench::expect(d.get(keys[k]) == static_cast<std::int64_t>(last),
                              keys[k] + " holds the last value set");
            }
        } else {
            w.run([&](std::uint64_t i) {
                const std::int64_t v = d.get(keys[i % bench::kKeys]);
                if (v != static_cast<std::int64_t>(i % bench::kKeys))
                    throw bench::Failure(keys[i % bench::kKeys] + " read back as " + std::to_string(v));
            });
        }
    });
}

// The remote cases for one implementation.
template <class Channel, class Dict>
std::vector<qbench::QCase> remote_cases(const std::string& impl, const std::function<std::string()>& note_dict) {
    auto cfg = [](const std::string& tag, bool pipelined = false) {
        qbench::ChannelConfig c;
        c.item = qbench::k64B;
        c.capacity = qbench::capacity_for(qbench::k64B);
        c.users = 2;
        c.tag = tag;
        c.pipelined = pipelined;
        return c;
    };
    std::vector<qbench::QCase> cases;
    cases.push_back({"remote.queue.1to1.64B", [=](const bench::Options& o) {
                         server_url();
                         Channel ch(cfg("a"));
                         qbench::emit_throughput("remote.queue.1to1.64B", impl,
                                                 qbench::throughput(o, ch, qbench::k64B, 1, 1), qbench::k64B,
                                                 ch.note());
                     }});
    cases.push_back({"remote.queue.1to1.64B.batch32", [=](const bench::Options& o) {
                         if constexpr (qbench::HasBatches<Channel>::value) {
                             server_url();
                             Channel ch(cfg("b"));
                             qbench::emit_throughput("remote.queue.1to1.64B.batch32", impl,
                                                     qbench::throughput(o, ch, qbench::k64B, 1, 1, qbench::kApiBatch),
                                                     qbench::k64B, ch.batch_note());
                         } else {
                             (void)o;
                             throw qbench::Unavailable("no call that puts or gets several items at once");
                         }
                     }});
    cases.push_back({"remote.queue.1to1.64B.pipelined", [=](const bench::Options& o) {
                         server_url();
                         Channel ch(cfg("p", true));
                         qbench::emit_throughput("remote.queue.1to1.64B.pipelined", impl,
                                                 qbench::throughput(o, ch, qbench::k64B, 1, 1), qbench::k64B,
                                                 ch.note());
                     }});
    cases.push_back({"remote.queue.pingpong.64B",
                     [=](const bench::Options& o) {
                         server_url();
                         Channel req(cfg("req")), rep(cfg("rep"));
                         qbench::emit_latency("remote.queue.pingpong.64B", impl,
                                              qbench::pingpong(o, req, rep, qbench::k64B), req.note());
                     },
                     {"remote.queue.pingpong.64B.p50", "remote.queue.pingpong.64B.p99"}});
    for (DictOp op : {DictOp::get, DictOp::set, DictOp::set_pipelined}) {
        const std::string name = op == DictOp::get ? "remote.dict.get"
                                 : op == DictOp::set ? "remote.dict.set"
                                                     : "remote.dict.set.pipelined";
        cases.push_back({name, [=](const bench::Options& o) {
                             auto r = dict_case<Dict>(o, op);
                             qbench::emit(name, impl, r.rate, "ops/s",
                                          op == DictOp::set_pipelined ? Dict::pipelined_note() : note_dict());
                         }});
    }
    return cases;
}

}  // namespace rbench
