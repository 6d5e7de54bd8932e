// libshm's Queue (impl "libshm") in the queue benchmarks (queue_harness.hpp).
//
// Each channel is a shm::Queue in a segment of its own in the shm directory
// ($SHM_DIR or /dev/shm), named after the process id and removed at the end.
// Items up to 4 KiB go through put() and get(std::string&), the calls an
// application makes, one item at a time: one copy in, one copy out into the
// consumer's buffer, reused from item to item (as Boost's receive() fills
// the caller's buffer). 1 MiB items use the zero-copy path: the producer
// reserve()s room, copies the item into it and commit()s; the consumer reads
// it in place with consume(). Each item is then copied once, by the producer.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <shm/shm.hpp>

#include "harness.hpp"
#include "queue_harness.hpp"

namespace {

using qbench::ChannelConfig;

class LibshmChannel {
public:
    explicit LibshmChannel(const ChannelConfig& cfg)
        : name_("bench." + std::to_string(getpid()) + ".queue." + cfg.tag),
          zero_copy_(cfg.item > qbench::k4KiB),
          seg_((bench::TempFiles::add(shm::segment_path(name_).string()),
                shm::Segment::create(name_, segment_bytes(cfg)))),
          q_(shm::Queue::create(seg_, "q", shm::QueueOptions{cfg.capacity, static_cast<std::uint32_t>(cfg.item), 0})) {}

    ~LibshmChannel() {
        // The name goes now; then q_ and seg_ (members, in that order) drop
        // their references to the mapping, which goes with the last.
        shm::Segment::unlink(name_);
        bench::TempFiles::remove(shm::segment_path(name_).string());
    }
    LibshmChannel(const LibshmChannel&) = delete;
    LibshmChannel& operator=(const LibshmChannel&) = delete;

    void put(const char* item, std::size_t n) {
        if (zero_copy_) {
            auto r = q_.reserve(n);
            std::memcpy(r.data(), item, n);
            r.commit(n);
        } else {
            q_.put(std::string_view(item, n));
        }
    }

    template <class Use>
    void get(Use&& use) {
        if (zero_copy_) {
            q_.consume(use);
        } else {
            q_.get(buf_);
            use(buf_.data(), buf_.size());
        }
    }

    // queue.1to1.64B.batch32: the calls an application makes to move items
    // in batches; get_many() fills a vector of strings kept across calls.
    void put_many(const std::vector<std::string>& items) { q_.put_many(items); }
    template <class Use>
    void get_many(std::size_t n, Use&& use) {
        q_.get_many(batch_, n, std::chrono::hours(1));
        for (const auto& s : batch_) use(s.data(), s.size());
    }
    std::string batch_note() const { return "put_many() / get_many() of 32 items into a reused vector"; }

    // Drops only the Segment handle's reference: q_ shares the mapping and
    // this worker's slot, which stay while q_ lives (until the worker exits).
    void leave() { seg_.detach(); }

    std::string note() const {
        return zero_copy_ ? "reserve()+commit() / consume(): copied once, read in place"
                          : "put() / get() into a reused buffer";
    }

private:
    static std::size_t segment_bytes(const ChannelConfig& cfg) {
        // A 16-byte slot and the item's bytes per item of capacity, one
        // more item after the byte ring, the control block and room to spare.
        return std::size_t(cfg.capacity) * (16 + cfg.item) + cfg.item + (std::size_t(2) << 20);
    }

    std::string name_;
    bool zero_copy_;
    shm::Segment seg_;
    shm::Queue q_;
    std::string buf_;  // the consumer's buffer
    std::vector<std::string> batch_;  // the consumer's batch, reused
};

}  // namespace

int main(int argc, char** argv) {
    return qbench::run_qcases("libshm", qbench::standard_cases<LibshmChannel>("libshm"), argc, argv);
}
