// A Unix domain socket pair (impl "unix_socket") in the queue benchmarks
// (queue_harness.hpp).
//
// Up to 4 KiB, a SOCK_SEQPACKET socketpair: one send() and one recv() per
// item, message boundaries kept by the kernel, so several producers and
// consumers can share it. A 1 MiB item is larger than a socket's send
// buffer may be without privilege, so that case uses a SOCK_STREAM
// socketpair with fixed-size records (one producer, one consumer). Default
// socket buffer sizes.
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "harness.hpp"
#include "queue_harness.hpp"
#include "queue_kernel.hpp"

namespace {

using qbench::ChannelConfig;

class SocketChannel {
public:
    explicit SocketChannel(const ChannelConfig& cfg)
        : item_(cfg.item), stream_(cfg.item > qbench::k4KiB), buf_(cfg.item) {
        if (::socketpair(AF_UNIX, (stream_ ? SOCK_STREAM : SOCK_SEQPACKET) | SOCK_CLOEXEC, 0, fd_) != 0)
            throw bench::Failure(qbench::sys_error("socketpair"));
    }
    ~SocketChannel() {
        ::close(fd_[0]);
        ::close(fd_[1]);
    }
    SocketChannel(const SocketChannel&) = delete;
    SocketChannel& operator=(const SocketChannel&) = delete;

    void put(const char* item, std::size_t n) {
        if (stream_) return qbench::write_all(fd_[0], item, n);
        for (;;) {
            ssize_t w = ::send(fd_[0], item, n, 0);
            if (w == static_cast<ssize_t>(n)) return;
            if (w < 0 && errno == EINTR) continue;
            throw bench::Failure(w < 0 ? qbench::sys_error("send") : "send: short message");
        }
    }

    template <class Use>
    void get(Use&& use) {
        if (stream_) {
            qbench::read_all(fd_[1], buf_.data(), item_);
            return use(buf_.data(), item_);
        }
        for (;;) {
            ssize_t r = ::recv(fd_[1], buf_.data(), buf_.size(), 0);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) throw bench::Failure(qbench::sys_error("recv"));
            return use(buf_.data(), static_cast<std::size_t>(r));
        }
    }

    void leave() {}
    std::string note() const {
        return stream_ ? "SOCK_STREAM socketpair, write() / read() of fixed records"
                       : "SOCK_SEQPACKET socketpair, send() / recv()";
    }

private:
    int fd_[2] = {-1, -1};
    std::size_t item_;
    bool stream_;
    std::vector<char> buf_;
};

}  // namespace

int main(int argc, char** argv) {
    return qbench::run_qcases("unix_socket", qbench::standard_cases<SocketChannel>("unix_socket", false), argc, argv);
}
