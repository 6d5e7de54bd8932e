// The bytes of a remote Dict's or List's values and keys (docs/remote.md,
// "Encoding"). Everything read back is untrusted: a value of another form
// is shm::corrupted, never misread.
#include <cstring>

#include "remote/internal.hpp"

namespace shm::remote {

namespace {

constexpr int kMaxDepth = 64;

void put_u32(std::string& out, std::uint64_t n, const char* what) {
    if (n > 0xffffffffu) throw shm::error(EMSGSIZE, std::string("shm::remote: ") + what + " too large to encode");
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
}
void put_u64(std::string& out, std::uint64_t n) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
}

void encode_into(std::string& out, const Value& v, int depth) {
    if (depth > kMaxDepth) throw value_type_error("shm::remote: values nested more than 64 deep");
    switch (v.type()) {
        case Value::Type::null: out.push_back('N'); return;
        case Value::Type::boolean: out.push_back(v.as_bool() ? 'T' : 'F'); return;
        case Value::Type::integer:
            out.push_back('I');
            put_u64(out, static_cast<std::uint64_t>(v.as_int()));
            return;
        case Value::Type::real: {
            double d = v.as_double();
            std::uint64_t bits;
            std::memcpy(&bits, &d, sizeof bits);
            out.push_back('D');
            put_u64(out, bits);
            return;
        }
        case Value::Type::string:
        case Value::Type::bytes: {
            const std::string& s = v.type() == Value::Type::string ? v.as_string() : v.as_bytes();
            out.push_back(v.type() == Value::Type::string ? 'S' : 'B');
            put_u32(out, s.size(), "a string");
            out += s;
            return;
        }
        case Value::Type::list: {
            // A new nested list, or a copy of a stored (local) one.
            std::vector<Value> items = v.is_new_container() ? v.new_list_items() : v.as_list().snapshot();
            out.push_back('L');
            put_u32(out, items.size(), "a list");
            for (const Value& item : items) encode_into(out, item, depth + 1);
            return;
        }
        case Value::Type::dict: {
            std::vector<std::pair<std::string, Value>> items =
                v.is_new_container() ? v.new_dict_items() : v.as_dict().items();
            out.push_back('M');
            put_u32(out, items.size(), "a dict");
            for (const auto& kv : items) {
                put_u32(out, kv.first.size(), "a key");
                out += kv.first;
                encode_into(out, kv.second, depth + 1);
            }
            return;
        }
    }
    throw value_type_error("shm::remote: a value of unknown type");
}

struct Reader {
    std::string_view b;
    std::size_t pos = 0;
    [[noreturn]] void bad(const char* why) const {
        throw shm::corrupted(std::string("shm::remote: a stored value is not in libshm's encoding (") + why +
                             " at byte " + std::to_string(pos) + " of " + std::to_string(b.size()) + ")");
    }
    std::uint64_t uint(int bytes) {
        if (b.size() - pos < static_cast<std::size_t>(bytes)) bad("truncated");
        std::uint64_t n = 0;
        for (int i = 0; i < bytes; ++i) n |= std::uint64_t(static_cast<unsigned char>(b[pos + i])) << (8 * i);
        pos += bytes;
        return n;
    }
    std::string_view bytes(std::uint64_t n) {
        if (b.size() - pos < n) bad("truncated");
        std::string_view s = b.substr(pos, n);
        pos += n;
        return s;
    }
    Value value(int depth) {
        if (depth > kMaxDepth) bad("nested too deep");
        if (pos >= b.size()) bad("truncated");
        char tag = b[pos++];
        switch (tag) {
            case 'N': return Value();
            case 'T': return Value(true);
            case 'F': return Value(false);
            case 'I': return Value(static_cast<std::int64_t>(uint(8)));
            case 'D': {
                std::uint64_t bits = uint(8);
                double d;
                std::memcpy(&d, &bits, sizeof d);
                return Value(d);
            }
            case 'S': return Value(std::string(bytes(uint(4))));
            case 'B': return Value::bytes(bytes(uint(4)));
            case 'L': {
                std::uint64_t n = uint(4);
                if (n > b.size() - pos) bad("a count larger than the value");
                std::vector<Value> items;
                items.reserve(n);
                for (std::uint64_t i = 0; i < n; ++i) items.push_back(value(depth + 1));
                return Value::new_list(std::move(items));
            }
            case 'M': {
                std::uint64_t n = uint(4);
                if (n > b.size() - pos) bad("a count larger than the value");
                std::vector<std::pair<std::string, Value>> items;
                items.reserve(n);
                for (std::uint64_t i = 0; i < n; ++i) {
                    std::string k(bytes(uint(4)));
                    items.emplace_back(std::move(k), value(depth + 1));
                }
                return Value::new_dict(std::move(items));
            }
            default: --pos; bad("an unknown type tag");
        }
    }
};

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int b64_index(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

}  // namespace

std::string encode_value(const Value& v) {
    std::string out;
    encode_into(out, v, 0);
    return out;
}

Value decode_value(std::string_view bytes) {
    Reader r{bytes};
    Value v = r.value(0);
    if (r.pos != bytes.size()) r.bad("bytes after the value");
    return v;
}

// "k" then the key in unpadded base64url: only characters NATS allows in a
// key, and the empty key is "k".
std::string encode_key(std::string_view key) {
    std::string out = "k";
    out.reserve(1 + (key.size() * 4 + 2) / 3);
    std::size_t i = 0;
    for (; i + 3 <= key.size(); i += 3) {
        std::uint32_t n = (std::uint32_t(static_cast<unsigned char>(key[i])) << 16) |
                          (std::uint32_t(static_cast<unsigned char>(key[i + 1])) << 8) |
                          static_cast<unsigned char>(key[i + 2]);
        for (int s = 18; s >= 0; s -= 6) out.push_back(kB64[(n >> s) & 63]);
    }
    std::size_t rest = key.size() - i;
    if (rest == 1) {
        std::uint32_t n = std::uint32_t(static_cast<unsigned char>(key[i])) << 16;
        out.push_back(kB64[(n >> 18) & 63]);
        out.push_back(kB64[(n >> 12) & 63]);
    } else if (rest == 2) {
        std::uint32_t n = (std::uint32_t(static_cast<unsigned char>(key[i])) << 16) |
                          (std::uint32_t(static_cast<unsigned char>(key[i + 1])) << 8);
        out.push_back(kB64[(n >> 18) & 63]);
        out.push_back(kB64[(n >> 12) & 63]);
        out.push_back(kB64[(n >> 6) & 63]);
    }
    return out;
}

std::string decode_key(std::string_view kv_key) {
    auto bad = [&]() -> std::string {
        throw shm::corrupted("shm::remote: key '" + std::string(kv_key) + "' is not a key libshm wrote");
    };
    if (kv_key.empty() || kv_key[0] != 'k') return bad();
    std::string_view s = kv_key.substr(1);
    if (s.size() % 4 == 1) return bad();
    std::string out;
    std::uint32_t acc = 0;
    int bits = 0;
    for (char c : s) {
        int v = b64_index(c);
        if (v < 0) return bad();
        acc = (acc << 6) | static_cast<std::uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xff));
        }
    }
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return bad();  // not canonical
    return out;
}

}  // namespace shm::remote
