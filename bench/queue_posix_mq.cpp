// POSIX message queues (impl "posix_mq") in the queue benchmarks
// (queue_harness.hpp), where the system has them.
//
// Each channel is an mq_open()ed queue created in the parent, whose
// descriptor the workers inherit; its name is removed at once, so nothing is
// left behind. It gets the queue's capacity if the system's limits allow,
// else the largest number of messages they allow (without privilege,
// /proc/sys/fs/mqueue/msg_max, 10 by default, and the message size at most
// msgsize_max, 8 KiB by default, within RLIMIT_MSGQUEUE bytes per user).
// When even one message of the case's size is refused, or the kernel has no
// message queues, the case is reported as skipped with the reason.
#include <fcntl.h>
#include <mqueue.h>
#include <sys/resource.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "harness.hpp"
#include "queue_harness.hpp"
#include "queue_kernel.hpp"

namespace {

using qbench::ChannelConfig;

std::string limits() {
    rlimit r{};
    ::getrlimit(RLIMIT_MSGQUEUE, &r);
    return "msg_max " + std::to_string(qbench::proc_sys("/proc/sys/fs/mqueue/msg_max")) + ", msgsize_max " +
           std::to_string(qbench::proc_sys("/proc/sys/fs/mqueue/msgsize_max")) + ", RLIMIT_MSGQUEUE " +
           (r.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : std::to_string(r.rlim_cur)) + " bytes";
}

class MqChannel {
public:
    explicit MqChannel(const ChannelConfig& cfg) : buf_(cfg.item) {
        const std::string name = "/bench." + std::to_string(getpid()) + ".mq." + cfg.tag;
        // The capacity, else the system's msg_max, else halves of it.
        std::vector<long> tries{static_cast<long>(cfg.capacity)};
        const long msg_max = qbench::proc_sys("/proc/sys/fs/mqueue/msg_max");
        for (long n = msg_max > 0 && msg_max < tries[0] ? msg_max : tries[0] / 2; n >= 1; n /= 2) tries.push_back(n);
        int err = 0;
        for (long n : tries) {
            mq_attr a{};
            a.mq_maxmsg = n;
            a.mq_msgsize = static_cast<long>(cfg.item);
            ::mq_unlink(name.c_str());
            q_ = ::mq_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600, &a);
            if (q_ != static_cast<mqd_t>(-1)) {
                ::mq_unlink(name.c_str());  // the workers inherit the descriptor
                maxmsg_ = n;
                return;
            }
            err = errno;
            if (err != EINVAL && err != EMFILE && err != ENOMEM) break;
        }
        if (err == ENOSYS)
            throw qbench::Unavailable("not available: this kernel has no POSIX message queues");
        throw qbench::Unavailable("not available: mq_open of " + std::to_string(cfg.item) + "-byte messages refused (" +
                                  std::strerror(err) + "; " + limits() + ")");
    }
    ~MqChannel() { ::mq_close(q_); }
    MqChannel(const MqChannel&) = delete;
    MqChannel& operator=(const MqChannel&) = delete;

    void put(const char* item, std::size_t n) {
        while (::mq_send(q_, item, n, 0) != 0)
            if (errno != EINTR) throw bench::Failure(qbench::sys_error("mq_send"));
    }

    template <class Use>
    void get(Use&& use) {
        for (;;) {
            ssize_t r = ::mq_receive(q_, buf_.data(), buf_.size(), nullptr);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) throw bench::Failure(qbench::sys_error("mq_receive"));
            return use(buf_.data(), static_cast<std::size_t>(r));
        }
    }

    void leave() {}
    std::string note() const { return "mq_send() / mq_receive(), " + std::to_string(maxmsg_) + " messages at most"; }

private:
    mqd_t q_ = static_cast<mqd_t>(-1);
    long maxmsg_ = 0;
    std::vector<char> buf_;
};

}  // namespace

int main(int argc, char** argv) {
    return qbench::run_qcases("posix_mq", qbench::standard_cases<MqChannel>("posix_mq"), argc, argv);
}
