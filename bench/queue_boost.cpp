// Boost.Interprocess message_queue (impl "boost_message_queue") in the queue
// benchmarks (queue_harness.hpp).
//
// Each channel is a message_queue of the same capacity as libshm's queue,
// created in the parent; the workers share its mapping through fork(). Its
// name is removed at once, so nothing is left behind even if the run is
// killed. send() copies an item in, receive() copies it out into the
// consumer's buffer.
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include <boost/interprocess/ipc/message_queue.hpp>

#include "harness.hpp"
#include "queue_harness.hpp"

namespace bip = boost::interprocess;

namespace {

using qbench::ChannelConfig;

class BoostChannel {
public:
    explicit BoostChannel(const ChannelConfig& cfg)
        : name_("bench." + std::to_string(getpid()) + ".bmq." + cfg.tag),
          buf_(cfg.item),
          q_((bench::TempFiles::add("/dev/shm/" + name_), make(name_, cfg))) {
        bip::message_queue::remove(name_.c_str());  // the workers inherit the mapping
        bench::TempFiles::remove("/dev/shm/" + name_);
    }
    BoostChannel(const BoostChannel&) = delete;
    BoostChannel& operator=(const BoostChannel&) = delete;

    void put(const char* item, std::size_t n) { q_.send(item, n, 0); }

    template <class Use>
    void get(Use&& use) {
        bip::message_queue::size_type got = 0;
        unsigned priority = 0;
        q_.receive(buf_.data(), buf_.size(), got, priority);
        use(buf_.data(), static_cast<std::size_t>(got));
    }

    void leave() {}
    std::string note() const { return "send() / receive()"; }

private:
    static bip::message_queue make(const std::string& name, const ChannelConfig& cfg) {
        bip::message_queue::remove(name.c_str());
        return bip::message_queue(bip::create_only, name.c_str(), cfg.capacity, cfg.item);
    }

    std::string name_;
    std::vector<char> buf_;
    bip::message_queue q_;
};

}  // namespace

int main(int argc, char** argv) {
    return qbench::run_qcases("boost_message_queue", qbench::standard_cases<BoostChannel>("boost_message_queue"),
                              argc, argv);
}
