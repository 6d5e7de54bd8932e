#include "client/daemon_protocol.hpp"

#include <optional>
#include <string>
#include <variant>

#include <nlohmann/json.hpp>

#include "shm/error.hpp"
#include "shm/names.hpp"

namespace shm::proto {

using nlohmann::json;

const char* to_string(Op op) noexcept {
    switch (op) {
        case Op::hello: return "hello";
        case Op::attach: return "attach";
        case Op::detach: return "detach";
        case Op::reserve: return "reserve";
        case Op::remove: return "remove";
        case Op::status: return "status";
        case Op::list: return "list";
    }
    return "?";
}

namespace {

struct OpSpec {
    const char* name;
    Op op;
    bool segment, bytes, force, hello, after;
};
constexpr OpSpec kOps[] = {
    {"hello", Op::hello, false, false, false, true, false},
    {"attach", Op::attach, true, false, false, false, false},
    {"detach", Op::detach, true, false, false, false, false},
    {"reserve", Op::reserve, true, true, false, false, false},
    {"remove", Op::remove, true, false, true, false, false},
    {"status", Op::status, false, false, false, false, false},
    {"list", Op::list, false, false, false, false, true},
};

DecodeError err(const char* c, std::string m, const Request& r, bool fatal = true) {
    DecodeError e;
    e.code = c;
    e.message = std::move(m);
    e.has_id = r.has_id;
    e.id = r.id;
    e.fatal = fatal;
    return e;
}

bool get_uint(const json& v, std::uint64_t max, std::uint64_t& out) {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0)) return false;
    std::uint64_t x = v.get<std::uint64_t>();
    if (x > max) return false;
    out = x;
    return true;
}

// The envelope: "id" (first, so that every later error can echo it), "v"
// and "op". The op's spec, or an error.
std::variant<const OpSpec*, DecodeError> decode_envelope(const json& j, Request& r) {
    if (auto it = j.find("id"); it != j.end()) {
        if (!get_uint(*it, UINT64_MAX, r.id)) return err(code::malformed, "\"id\" must be an unsigned integer", r);
        r.has_id = true;
    }
    auto v = j.find("v");
    if (v == j.end()) return err(code::malformed, "missing protocol version \"v\"", r);
    std::uint64_t version = 0;
    if (!get_uint(*v, UINT32_MAX, version)) return err(code::malformed, "\"v\" must be an unsigned integer", r);
    if (version != static_cast<std::uint64_t>(kVersion))
        return err(code::unsupported_version,
                   "protocol version " + std::to_string(version) + " is not supported; this daemon speaks " +
                       std::to_string(kVersion),
                   r);
    auto o = j.find("op");
    if (o == j.end() || !o->is_string()) return err(code::malformed, "missing \"op\" (a string)", r);
    const std::string& name = o->get_ref<const std::string&>();
    for (const OpSpec& s : kOps)
        if (name == s.name) {
            r.op = s.op;
            return &s;
        }
    std::string shown = name.size() > 32 ? name.substr(0, 32) + "..." : name;
    return err(code::unknown_op, "unknown op \"" + json(shown).get<std::string>() + "\"", r, false);
}

// One field k of a request of kind spec, into r; an error when it is not
// one of that op's fields or not of its type.
std::optional<DecodeError> decode_field(const std::string& k, const json& value, const OpSpec& spec, Request& r) {
    if (k == "pid" || k == "uid" || k == "gid")
        return err(code::unauthorised,
                   "\"" + k + "\" is not accepted: the daemon takes a client's identity from the socket, "
                              "and a client speaks only for itself",
                   r, false);
    if ((k == "segment" && spec.segment) || (k == "after" && spec.after)) {
        const char* what = spec.after ? "\"after\"" : "\"segment\"";
        if (!value.is_string()) return err(code::malformed, std::string(what) + " must be a string", r);
        r.segment = value.get<std::string>();
        try {
            validate_segment_name(r.segment);
        } catch (const error& e) {
            return err(code::malformed, e.what(), r);
        }
    } else if (k == "bytes" && spec.bytes) {
        if (!get_uint(value, kMaxBytes, r.bytes))
            return err(code::malformed, "\"bytes\" must be an unsigned integer up to 2^50", r);
    } else if (k == "force" && spec.force) {
        if (!value.is_boolean()) return err(code::malformed, "\"force\" must be true or false", r);
        r.force = value.get<bool>();
    } else if (k == "start_time" && spec.hello) {
        if (!get_uint(value, UINT64_MAX, r.start_time))
            return err(code::malformed, "\"start_time\" must be an unsigned integer", r);
    } else if (k == "shm_dir" && spec.hello) {
        if (!value.is_string()) return err(code::malformed, "\"shm_dir\" must be a string", r);
        r.shm_dir = value.get<std::string>();
        if (r.shm_dir.empty() || r.shm_dir[0] != '/' || r.shm_dir.size() > 1024 ||
            r.shm_dir.find('\0') != std::string::npos)
            return err(code::malformed, "\"shm_dir\" must be an absolute path of at most 1024 bytes", r);
    } else {
        std::string shown = k.size() > 32 ? k.substr(0, 32) + "..." : k;
        return err(code::malformed,
                   "unexpected field \"" + json(shown).dump(-1, ' ', false, json::error_handler_t::replace) +
                       "\" in a " + spec.name + " request",
                   r);
    }
    return std::nullopt;
}

}  // namespace

std::variant<Request, DecodeError> decode_request(std::string_view bytes) noexcept {
    Request r;
    try {
        if (bytes.size() > kMaxMessage)
            return err(code::malformed, "message of " + std::to_string(bytes.size()) + " bytes; the limit is " +
                                            std::to_string(kMaxMessage), r);
        json j = json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded()) return err(code::malformed, "not valid JSON", r);
        if (!j.is_object()) return err(code::malformed, "a request is a JSON object", r);
        auto envelope = decode_envelope(j, r);
        if (auto* e = std::get_if<DecodeError>(&envelope)) return std::move(*e);
        const OpSpec& spec = *std::get<const OpSpec*>(envelope);
        for (auto it = j.begin(); it != j.end(); ++it) {
            const std::string& k = it.key();
            if (k == "v" || k == "op" || k == "id") continue;
            if (auto e = decode_field(k, *it, spec, r)) return std::move(*e);
        }
        if (spec.segment && r.segment.empty())
            return err(code::malformed, std::string("a ") + spec.name + " request needs \"segment\"", r);
        if (spec.bytes && j.find("bytes") == j.end())
            return err(code::malformed, "a reserve request needs \"bytes\"", r);
        if (spec.hello && (j.find("start_time") == j.end() || r.shm_dir.empty()))
            return err(code::malformed, "a hello request needs \"start_time\" and \"shm_dir\"", r);
        return r;
    } catch (const std::exception& e) {
        return err(code::malformed, std::string("cannot decode: ") + e.what(), r);
    }
}

std::string encode_request(const Request& r) {
    json j;
    j["v"] = kVersion;
    j["op"] = to_string(r.op);
    if (r.has_id) j["id"] = r.id;
    switch (r.op) {
        case Op::hello:
            j["start_time"] = r.start_time;
            j["shm_dir"] = r.shm_dir;
            break;
        case Op::attach:
        case Op::detach: j["segment"] = r.segment; break;
        case Op::reserve:
            j["segment"] = r.segment;
            j["bytes"] = r.bytes;
            break;
        case Op::remove:
            j["segment"] = r.segment;
            if (r.force) j["force"] = true;
            break;
        case Op::list:
            if (!r.segment.empty()) j["after"] = r.segment;
            break;
        case Op::status: break;
    }
    return j.dump();
}

std::string error_reply(const char* c, const std::string& message, bool has_id, std::uint64_t id) {
    json j;
    j["v"] = kVersion;
    j["ok"] = false;
    if (has_id) j["id"] = id;
    j["error"] = c;
    j["message"] = message;
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace shm::proto
