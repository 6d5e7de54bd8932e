// The shmd wire protocol, shared by the library's client, the daemon and
// shmctl. Private to the project.
//
// Transport: a Unix SOCK_SEQPACKET socket, so every message is one packet
// and a packet larger than kMaxMessage is detected (MSG_TRUNC), never
// reassembled. A message is one JSON object.
//
// Request:  {"v": 1, "op": OP, "id": N?, ...fields of OP}
//   hello    {"start_time": TICKS, "shm_dir": PATH}   first message of a connection
//   attach   {"segment": NAME}    this process attached the segment
//   detach   {"segment": NAME}    this process detached it
//   reserve  {"segment": NAME, "bytes": N}   may I create it (quotas)?
//   remove   {"segment": NAME, "force": BOOL?}   unlink it (owner or root only)
//   status   {}                   daemon counters
//   list     {"after": NAME?}     segments the daemon tracks, with their users,
//                                  in name order, at most kListPage per reply
//                                  ("more": true when there are more)
// Reply:    {"v": 1, "ok": true, "id": N?, ...} or
//           {"v": 1, "ok": false, "id": N?, "error": CODE, "message": TEXT}
//
// Identity (pid, uid, gid) comes from the socket (SO_PEERCRED), never from
// a message: a request carrying "pid", "uid" or "gid" is refused as
// unauthorised. Every other unknown field, a wrong type or an out-of-range
// value makes the request malformed (error reply, connection closed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

namespace shm::proto {

inline constexpr int kVersion = 1;
inline constexpr std::size_t kMaxMessage = 4096;
inline constexpr std::size_t kMaxReply = 256 * 1024;
inline constexpr std::size_t kListPage = 256;
inline constexpr std::uint64_t kMaxBytes = std::uint64_t(1) << 50;  // 1 PiB: bigger is nonsense

enum class Op { hello, attach, detach, reserve, remove, status, list };
const char* to_string(Op op) noexcept;

struct Request {
    Op op = Op::status;
    bool has_id = false;
    std::uint64_t id = 0;
    std::string segment;           // attach, detach, reserve, remove; list: "after"
    std::uint64_t bytes = 0;       // reserve
    bool force = false;            // remove
    std::uint64_t start_time = 0;  // hello
    std::string shm_dir;           // hello
};

// Error codes of a reply.
namespace code {
inline constexpr const char* malformed = "malformed";
inline constexpr const char* unsupported_version = "unsupported_version";
inline constexpr const char* unknown_op = "unknown_op";
inline constexpr const char* unauthorised = "unauthorised";
inline constexpr const char* not_found = "not_found";
inline constexpr const char* in_use = "in_use";
inline constexpr const char* quota = "quota";
inline constexpr const char* reserve = "reserve";
inline constexpr const char* wrong_dir = "wrong_dir";
inline constexpr const char* limit = "limit";
inline constexpr const char* failed = "failed";
}  // namespace code

struct DecodeError {
    const char* code = code::malformed;
    std::string message;
    bool has_id = false;
    std::uint64_t id = 0;
    // Whether the connection must be closed after the error reply (the
    // peer does not speak the protocol).
    bool fatal = true;
};

// Parse and validate one request. Never throws.
std::variant<Request, DecodeError> decode_request(std::string_view bytes) noexcept;
std::string encode_request(const Request& r);

// A reply with "v", "ok" and "id" filled in; the caller adds fields and dumps it.
std::string error_reply(const char* code, const std::string& message, bool has_id, std::uint64_t id);

}  // namespace shm::proto
