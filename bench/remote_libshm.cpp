// libshm's remote objects (impl "libshm") in the remote benchmarks
// (remote_harness.hpp): shm::remote::Queue and shm::remote::Dict on the
// benchmark's nats-server, one replica.
//
//  - the queue: Queue::put() (returns once the server has stored the item),
//    get() of a Lease (a get fetches up to a batch of what is there), its
//    item used, then Lease::ack_nowait() (the acknowledgement sent, not
//    waited for: as the bare client's natsMsg_Ack); max_items 1024, as the
//    local queue cases' capacity.
//    Pipelined (remote.queue.1to1.64B.pipelined): Queue::put_async() (up to
//    256 items unanswered; blocks while the queue is full), and flush()
//    before the producer leaves.
//  - the dict: Dict::set() and Dict::get() of int values, on a Dict with a
//    local copy (ObjectOptions::local_copy): set() returns once the server
//    has stored the value, as without it; get() answers from the copy the
//    handle keeps, watched on the server (its own writes read back at once,
//    another's after about one network delay). Pipelined
//    (remote.dict.set.pipelined): Dict::set_async(), and flush() inside the
//    measured time, on a handle without a local copy (it reads nothing).
#include <shm/remote.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness.hpp"
#include "queue_harness.hpp"
#include "remote_harness.hpp"

namespace {

class RemoteChannel {
public:
    explicit RemoteChannel(const qbench::ChannelConfig& cfg)
        : url_(rbench::server_url()),
          name_(rbench::unique_name("q" + cfg.tag)),
          capacity_(cfg.capacity),
          pipelined_(cfg.pipelined) {
        // The parent never connects (a connection does not survive fork()).
        rbench::in_child([&] {
            shm::remote::Store s = shm::remote::connect(url_);
            shm::remote::QueueOptions o;
            o.max_items = capacity_;
            o.replicas = 1;
            shm::remote::Queue::create(s, name_, o);
        });
    }
    ~RemoteChannel() {
        leave();
        try {
            rbench::in_child([&] {
                shm::remote::Store s = shm::remote::connect(url_);
                s.remove(name_);
            });
        } catch (const std::exception& e) {
            std::fprintf(stderr, "libshm: %s\n", e.what());
        }
    }
    RemoteChannel(const RemoteChannel&) = delete;
    RemoteChannel& operator=(const RemoteChannel&) = delete;

    void put(const char* item, std::size_t n) {
        if (pipelined_)
            queue().put_async(std::string_view(item, n));
        else
            queue().put(std::string_view(item, n));
    }

    template <class Use>
    void get(Use&& use) {
        shm::remote::Lease l = queue().get();
        use(l.item().data(), l.item().size());
        l.ack_nowait();
    }

    void put_many(const std::vector<std::string>& items) { queue().put_many(items); }

    template <class Use>
    void get_many(std::size_t n, Use&& use) {
        // Blocks for the first (the harness bounds the wait), up to n.
        for (shm::remote::Lease& l : queue().get_many(n, std::chrono::seconds(5))) {
            use(l.item().data(), l.item().size());
            l.ack_nowait();
        }
    }

    void leave() {
        if (q_) q_->flush();
        q_.reset();
        store_.reset();
    }

    std::string note() const {
        return std::string(pipelined_ ? "Queue::put_async (pipelined, 256 unanswered; flush() at the end)"
                                      : "Queue::put") +
               " / get + Lease::ack_nowait, max_items " + std::to_string(capacity_) + ", 1 replica";
    }
    std::string batch_note() const {
        return "Queue::put_many (pipelined, returns once all are stored) / get_many + Lease::ack_nowait, max_items " +
               std::to_string(capacity_) + ", 1 replica";
    }

private:
    shm::remote::Queue& queue() {
        if (!q_) {
            store_.emplace(shm::remote::connect(url_));
            q_.emplace(shm::remote::Queue::open(*store_, name_));
        }
        return *q_;
    }

    std::string url_, name_;
    std::uint32_t capacity_;
    bool pipelined_;
    std::optional<shm::remote::Store> store_;  // per process, on first use
    std::optional<shm::remote::Queue> q_;
};

class RemoteDict {
public:
    // The pipelined writer keeps no local copy: it reads nothing, and a copy
    // would bring every one of its writes back to it.
    RemoteDict(const std::string& url, const std::string& name, bool pipelined)
        : store_(shm::remote::connect(url)),
          d_(shm::remote::Dict::open_or_create(store_, name, one_replica(!pipelined))),
          name_(name) {}
    ~RemoteDict() {
        try {
            store_.remove(name_);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "libshm: %s\n", e.what());
        }
    }
    RemoteDict(const RemoteDict&) = delete;
    RemoteDict& operator=(const RemoteDict&) = delete;

    void set(const std::string& key, std::int64_t v) { d_.set(key, shm::Value(v)); }
    void set_pipelined(const std::string& key, std::int64_t v) { d_.set_async(key, shm::Value(v)); }
    void flush() { d_.flush(); }
    static std::string pipelined_note() {
        return "Dict::set_async (pipelined, 256 unanswered; flush() at the end), no local copy, 1 replica";
    }
    std::int64_t get(const std::string& key) { return d_.get(key).as_int(); }

private:
    static shm::remote::ObjectOptions one_replica(bool local_copy) {
        shm::remote::ObjectOptions o;
        o.replicas = 1;
        o.local_copy = local_copy;
        return o;
    }
    shm::remote::Store store_;
    shm::remote::Dict d_;
    std::string name_;
};

}  // namespace

int main(int argc, char** argv) {
    return qbench::run_qcases(
        "libshm",
        rbench::remote_cases<RemoteChannel, RemoteDict>("libshm", [] {
            return "Dict::set (stored on the server) / Dict::get (from the watched local copy), 1 replica";
        }),
        argc, argv);
}
