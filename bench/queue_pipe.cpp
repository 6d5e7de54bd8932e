// A pipe (impl "pipe") in the queue benchmarks (queue_harness.hpp).
//
// Items are fixed-size records, one write() and one read() each: a record of
// at most PIPE_BUF bytes (64 B, 4 KiB) is written atomically, so several
// producers and consumers can share the pipe (every record is whole, and a
// read of one record's size returns exactly one). A 1 MiB record takes
// several kernel copies and is only used one to one. The pipe's buffer is
// made as large as the queue's ring where the system allows (fcntl
// F_SETPIPE_SZ, bounded by /proc/sys/fs/pipe-max-size without privilege).
#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "harness.hpp"
#include "queue_harness.hpp"
#include "queue_kernel.hpp"

namespace {

using qbench::ChannelConfig;

class PipeChannel {
public:
    explicit PipeChannel(const ChannelConfig& cfg) : item_(cfg.item), buf_(cfg.item) {
        static_assert(PIPE_BUF >= qbench::k4KiB);
        if (::pipe2(fd_, O_CLOEXEC) != 0) throw bench::Failure(qbench::sys_error("pipe2"));
        const std::size_t want = std::size_t(cfg.capacity) * cfg.item;
        long size = ::fcntl(fd_[1], F_GETPIPE_SZ);
        if (static_cast<std::size_t>(size) < want) {
            long max = qbench::proc_sys("/proc/sys/fs/pipe-max-size");
            long set = ::fcntl(fd_[1], F_SETPIPE_SZ, static_cast<int>(want));
            if (set < 0 && max > size) set = ::fcntl(fd_[1], F_SETPIPE_SZ, static_cast<int>(max));
            if (set > 0) size = set;
        }
        size_ = static_cast<std::size_t>(size);
    }
    ~PipeChannel() {
        ::close(fd_[0]);
        ::close(fd_[1]);
    }
    PipeChannel(const PipeChannel&) = delete;
    PipeChannel& operator=(const PipeChannel&) = delete;

    void put(const char* item, std::size_t n) { qbench::write_all(fd_[1], item, n); }

    template <class Use>
    void get(Use&& use) {
        qbench::read_all(fd_[0], buf_.data(), item_);
        use(buf_.data(), item_);
    }

    void leave() {}
    std::string note() const {
        return "write() / read() of fixed records, pipe buffer " + qbench::kib(size_);
    }

private:
    int fd_[2] = {-1, -1};
    std::size_t item_;
    std::size_t size_ = 0;
    std::vector<char> buf_;
};

}  // namespace

int main(int argc, char** argv) {
    return qbench::run_qcases("pipe", qbench::standard_cases<PipeChannel>("pipe"), argc, argv);
}
