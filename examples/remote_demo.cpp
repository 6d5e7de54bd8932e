// A work queue, a counter and a lock across hosts (shm::remote), against a
// NATS JetStream server or cluster:
//
//   nats-server -js -sd /tmp/nats &
//   remote_demo nats://127.0.0.1:4222 produce 1000     # on one host
//   remote_demo nats://127.0.0.1:4222 consume          # on as many as you like
//
// Each consumer takes items until the queue has been empty for 2 seconds,
// counts them in a shared dict, and prints the fencing token of its last
// hold of a shared lock.
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include <shm/remote.hpp>

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s URL[,URL...] produce N | consume\n", argv[0]);
        return 2;
    }
    try {
        namespace remote = shm::remote;
        remote::Store store = remote::connect(argv[1]);
        auto q = remote::Queue::open_or_create(store, "demo/jobs");
        auto done = remote::Dict::open_or_create(store, "demo/done");
        std::string role = argv[2];
        if (role == "produce" && argc > 3) {
            std::vector<std::string> items;
            for (int i = 0, n = std::atoi(argv[3]); i < n; ++i) items.push_back("job " + std::to_string(i));
            q.put_many(items);
            std::printf("put %zu items on %s (replicas: %d)\n", items.size(), store.servers().c_str(), q.replicas());
        } else if (role == "consume") {
            auto lock = remote::Lock::open_or_create(store, "demo/lock");
            long mine = 0;
            std::uint64_t token = 0;
            while (auto lease = q.get_for(std::chrono::seconds(2))) {
                done.increment("total");
                {
                    // A critical section across hosts: the token goes with
                    // every write to a resource that checks it.
                    std::lock_guard<remote::Lock> g(lock);
                    token = lock.token();
                }
                lease->ack();
                ++mine;
            }
            std::printf("consumed %ld items (all consumers: %lld); last lock token %llu\n", mine,
                        static_cast<long long>(done.get("total", 0).as_int()), static_cast<unsigned long long>(token));
        } else {
            std::fprintf(stderr, "unknown role '%s'\n", role.c_str());
            return 2;
        }
    } catch (const shm::error& e) {
        std::fprintf(stderr, "remote_demo: %s\n", e.what());
        return 1;
    }
    return 0;
}
