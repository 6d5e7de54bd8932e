// libshm's Queue (impl "libshm") in the queue benchmarks (queue_harness.hpp).
//
// Each channel is a shm::Queue in a segment of its own in the shm directory
// ($SHM_DIR or /dev/shm), named after the process id and removed at the end.
// Items up to 4 KiB go through put() and get(), the calls an application
// makes (get() returns a std::string: one copy in, one copy out). 1 MiB
// items use the zero-copy path: the producer reserve()s a slot, copies the
// item into it and commit()s; the consumer reads it in place with consume().
// Each item is then copied once, by the producer.
#include <unistd.h>

#include <cstdint>
#include <string>
#include <string_view>

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
          q_(shm::Queue::create(seg_, "q", shm::QueueOptions{cfg.capacity, static_cast<std::uint32_t>(cfg.item)})) {}

    ~LibshmChannel() {
        shm::Segment::unlink(name_);  // the detach follows
        bench::TempFiles::remove(shm::segment_path(name_).string());
    }
    LibshmChannel(const LibshmChannel&) = delete;
    LibshmChannel& operator=(const LibshmChannel&) = delete;

    void put(const char* item, std::size_t n) {
        if (zero_copy_) {
            auto r = q_.reserve();
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
            const std::string s = q_.get();
            use(s.data(), s.size());
        }
    }

    void leave() { seg_.detach(); }

    std::string note() const {
        return zero_copy_ ? "reserve()+commit() / consume(): copied once, read in place" : "put() / get()";
    }

private:
    static std::size_t segment_bytes(const ChannelConfig& cfg) {
        const std::size_t stride = (64 + cfg.item + 63) / 64 * 64;  // slot header + item, as Queue lays it out
        return std::size_t(cfg.capacity) * stride + (std::size_t(2) << 20);
    }

    std::string name_;
    bool zero_copy_;
    shm::Segment seg_;
    shm::Queue q_;
};

}  // namespace

int main(int argc, char** argv) {
    return qbench::run_qcases("libshm", qbench::standard_cases<LibshmChannel>("libshm"), argc, argv);
}
