// The daemon's request decoder against at least 1,000,000 generated inputs:
// random bytes, mutated valid requests and random JSON objects built from
// the protocol's own vocabulary. It must never crash, throw or leak (this
// runs under ASan too), and whatever it accepts must be valid and survive
// an encode/decode round trip. Seeded: a failure prints its seed and input.
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <shm/names.hpp>

#include "client/daemon_protocol.hpp"
#include "support.hpp"

using nlohmann::json;
namespace proto = shm::proto;

namespace {

const std::vector<std::string> kSeeds = {
    R"({"v":1,"op":"hello","start_time":12345,"shm_dir":"/dev/shm"})",
    R"({"v":1,"op":"attach","segment":"jobs"})",
    R"({"v":1,"op":"detach","segment":"jobs","id":7})",
    R"({"v":1,"op":"reserve","segment":"big.one","bytes":1048576})",
    R"({"v":1,"op":"remove","segment":"x","force":true})",
    R"({"v":1,"op":"status"})",
    R"({"v":1,"op":"list","after":"abc"})",
};
const std::vector<std::string> kKeys = {"v", "op", "id", "segment", "bytes", "force", "start_time",
                                        "shm_dir", "after", "pid", "uid", "gid", "x", ""};
const std::vector<std::string> kOps = {"hello", "attach", "detach", "reserve", "remove", "status", "list", "", "HELLO"};

json random_value(std::mt19937_64& r, int depth) {
    switch (r() % 12) {
        case 0: return nullptr;
        case 1: return static_cast<bool>(r() & 1);
        case 2: return static_cast<std::int64_t>(r());
        case 3: return static_cast<std::uint64_t>(r());
        case 4: return static_cast<double>(r() % 1000) / 7.0;
        case 5: return kOps[r() % kOps.size()];
        case 6: return std::string(r() % 300, static_cast<char>('a' + r() % 26));
        case 7: return "../" + std::string(r() % 5, '.');
        case 8: return 1;
        case 9:
            if (depth < 3) {
                json a = json::array();
                for (int i = static_cast<int>(r() % 4); i > 0; --i) a.push_back(random_value(r, depth + 1));
                return a;
            }
            return 0;
        case 10:
            if (depth < 3) {
                json o = json::object();
                for (int i = static_cast<int>(r() % 4); i > 0; --i)
                    o[kKeys[r() % kKeys.size()]] = random_value(r, depth + 1);
                return o;
            }
            return "";
        default: return std::string("seg") + std::to_string(r() % 100);
    }
}

std::string generate(std::mt19937_64& r) {
    switch (r() % 4) {
        case 0: {  // random bytes, sometimes over the size limit
            std::size_t n = r() % 16 == 0 ? r() % (proto::kMaxMessage + 64) : r() % 64;
            std::string s(n, '\0');
            for (char& c : s) c = static_cast<char>(r());
            return s;
        }
        case 1: {  // a valid request, mutated
            std::string s = kSeeds[r() % kSeeds.size()];
            for (int m = static_cast<int>(1 + r() % 4); m > 0 && !s.empty(); --m) {
                std::size_t at = r() % s.size();
                switch (r() % 5) {
                    case 0: s[at] = static_cast<char>(s[at] ^ (1 << (r() % 8))); break;
                    case 1: s.erase(at, 1 + r() % 3); break;
                    case 2: s.insert(at, 1, "{}[]\":,0-e.\\u"[r() % 14]); break;
                    case 3: s.resize(at); break;
                    default: s.insert(at, kSeeds[r() % kSeeds.size()].substr(0, r() % 20)); break;
                }
            }
            return s;
        }
        default: {  // a JSON object from the protocol's words
            json o = json::object();
            if (r() % 8) o["v"] = r() % 16 ? json(1) : random_value(r, 0);
            if (r() % 8) o["op"] = kOps[r() % kOps.size()];
            for (int i = static_cast<int>(r() % 5); i > 0; --i) o[kKeys[r() % kKeys.size()]] = random_value(r, 1);
            return o.dump(-1, ' ', false, json::error_handler_t::replace);
        }
    }
}

}  // namespace

TEST_CASE("protocol: the request decoder survives a million generated inputs", "[shmd][fuzz]") {
    std::uint64_t n = 1'000'000;
    if (const char* v = std::getenv("SHM_FUZZ_INPUTS")) n = std::strtoull(v, nullptr, 10);
    std::uint64_t seed = std::random_device{}();
    if (const char* v = std::getenv("SHM_FUZZ_SEED")) seed = std::strtoull(v, nullptr, 10);
    INFO("seed " << seed << " (rerun with SHM_FUZZ_SEED=" << seed << ")");
    std::mt19937_64 r(seed);
    std::uint64_t accepted = 0, refused = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
        std::string in = generate(r);
        auto out = proto::decode_request(in);
        // Plain checks in the loop (a Catch assertion per input would cost
        // more than the decoding); a failure names the input.
        auto fail = [&](const char* what) {
            FAIL(what << "; input: " << json(in).dump(-1, ' ', false, json::error_handler_t::replace));
        };
        if (auto* req = std::get_if<proto::Request>(&out)) {
            ++accepted;
            // What is accepted is valid, and says the same after a round trip.
            if (!req->segment.empty()) {
                try {
                    shm::validate_segment_name(req->segment);
                } catch (const std::exception&) {
                    fail("accepted an invalid segment name");
                }
            }
            if (req->bytes > proto::kMaxBytes) fail("accepted bytes over the limit");
            auto again = proto::decode_request(proto::encode_request(*req));
            auto* back = std::get_if<proto::Request>(&again);
            if (!back) fail("its own encoding is refused");
            if (back->op != req->op || back->segment != req->segment || back->bytes != req->bytes ||
                back->force != req->force || back->start_time != req->start_time || back->shm_dir != req->shm_dir ||
                back->has_id != req->has_id || back->id != req->id)
                fail("the round trip changed the request");
        } else {
            ++refused;
            const auto& e = std::get<proto::DecodeError>(out);
            if (!e.code || e.message.empty()) fail("an error without a code or message");
            // Every error reply is valid JSON the client can read.
            json reply = json::parse(proto::error_reply(e.code, e.message, e.has_id, e.id), nullptr, false);
            if (reply.is_discarded() || reply["ok"] != false) fail("an unreadable error reply");
        }
    }
    std::printf("protocol fuzz: %llu inputs, %llu accepted, %llu refused (seed %llu)\n",
                static_cast<unsigned long long>(n), static_cast<unsigned long long>(accepted),
                static_cast<unsigned long long>(refused), static_cast<unsigned long long>(seed));
    CHECK(accepted > 1000);  // the generator reaches the decoder's accepting paths
    CHECK(refused > 1000);
}
