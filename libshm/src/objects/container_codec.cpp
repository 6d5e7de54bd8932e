// shm::Value, and the cells of a container that hold values: encoding a
// Value into a new cell (allocating what it needs), decoding a cell, and the
// handling of values that are or hold handles to stored containers.
#include <cstring>
#include <sstream>

#include "objects/container_op.hpp"

namespace shm {
namespace containers {

// Make the content of a new cell for v (allocating what it needs).
std::pair<std::uint64_t, std::uint64_t> Op::encode(const Value& v) {
    std::pair<std::uint64_t, std::uint64_t> mv;
    if (detail::ValueAccess::scalar_cell(v, mv)) return mv;
    switch (v.type()) {
        case VT::string:
        case VT::bytes: {
            const std::string& s = v.type() == VT::string ? v.as_string() : v.as_bytes();
            std::uint64_t off = 0;
            if (!s.empty()) {
                off = alloc(s.size(), v.type() == VT::string ? "a string value" : "a bytes value");
                std::memcpy(base + off, s.data(), s.size());
            }
            return {std::uint64_t(v.type()) | (std::uint64_t(s.size()) << 8), off};
        }
        case VT::list:
        case VT::dict: {
            const detail::NewContainer* p = pending(v);
            if (!p)
                throw value_type_error(
                    "shm: store a nested container as Value::new_list()/new_dict() (or a snapshot); an existing "
                    "container handle cannot be stored in a second place");
            const bool was_batch = batch;
            batch = true;  // the caller's own store comes after these
            std::uint64_t c;
            if (v.type() == VT::list) {
                c = new_container(kListMagic);
                list_reserve(at<CHdr>(c), p->list.size());
                for (const Value& item : p->list) list_append(c, item);
            } else {
                c = new_container(kDictMagic);
                if (!p->dict.empty()) dict_reserve(at<CHdr>(c), p->dict.size());
                for (const auto& kv : p->dict) dict_set(c, kv.first, kv.second);
            }
            batch = was_batch;
            return {std::uint64_t(v.type()), c};
        }
        default: break;  // the scalars: above
    }
    throw value_type_error("shm::Value: unknown type");
}

// A process-local deep copy (for values that are about to be freed).
Value Op::copy_out(const Cell& c, int depth) const {
    Value v = decode(c);
    if (depth > 64 || (v.type() != VT::list && v.type() != VT::dict)) return v;
    CHdr* ch = hdr(v.ref().offset, v.type() == VT::list ? kListMagic : kDictMagic);
    std::uint64_t cap = rd(ch->capacity);
    if (v.type() == VT::list) {
        std::vector<Value> items;
        for (std::uint64_t i = 0; i < rd(ch->count); ++i) items.push_back(copy_out(at<Cell>(rd(ch->table))[i], depth + 1));
        return Value::new_list(std::move(items));
    }
    std::vector<std::pair<std::string, Value>> items;
    for (std::uint64_t i = 0; i < cap; ++i) {
        DEntry& e = at<DEntry>(rd(ch->table))[i];
        std::uint64_t k = rd(e.key), len = rd(e.key_len);
        if (k <= kTomb) continue;
        items.emplace_back(std::string(key_bytes(e), len), copy_out(e.v, depth + 1));
    }
    return Value::new_dict(std::move(items));
}

Value Op::decode(const Cell& c) const {
    std::uint64_t meta = rd(c.meta), data = rd(c.data);
    VT ty = static_cast<VT>(meta & 0xff);
    std::uint64_t len = meta >> 8;
    switch (ty) {
        case VT::null: return Value();
        case VT::boolean: return Value(data != 0);
        case VT::integer: return Value(static_cast<std::int64_t>(data));
        case VT::real: {
            double d;
            std::memcpy(&d, &data, sizeof d);
            return Value(d);
        }
        case VT::string:
        case VT::bytes: {
            if (len && !layout::in_heap(h, data, len))
                throw corrupted(where() + ": a string value points outside the heap");
            std::string_view sv(len ? base + data : "", len);
            return ty == VT::string ? Value(sv) : Value::bytes(sv);
        }
        case VT::list: return detail::ValueAccess::container(VT::list, ContainerRef{seg, data});
        case VT::dict: return detail::ValueAccess::container(VT::dict, ContainerRef{seg, data});
    }
    throw corrupted(where() + ": a container cell has an unknown type " + std::to_string(meta & 0xff));
}


// A container Value from another handle is stored as a copy.
Value storable(const Value& v) {
    if ((v.type() == VT::list || v.type() == VT::dict) && !pending(v)) {
        if (v.type() == VT::list) return Value::new_list(v.as_list().snapshot());
        std::vector<std::pair<std::string, Value>> items;
        for (auto& kv : v.as_dict().items()) items.emplace_back(kv.first, storable(kv.second));
        return Value::new_dict(std::move(items));
    }
    if (v.type() == VT::list && pending(v)) {
        std::vector<Value> items;
        for (auto& x : pending(v)->list) items.push_back(storable(x));
        return Value::new_list(std::move(items));
    }
    if (v.type() == VT::dict && pending(v)) {
        std::vector<std::pair<std::string, Value>> items;
        for (auto& kv : pending(v)->dict) items.emplace_back(kv.first, storable(kv.second));
        return Value::new_dict(std::move(items));
    }
    return v;
}

bool has_handles(const Value& v) {
    if (v.type() != VT::list && v.type() != VT::dict) return false;
    if (!pending(v)) return true;
    for (auto& x : pending(v)->list)
        if (has_handles(x)) return true;
    for (auto& kv : pending(v)->dict)
        if (has_handles(kv.second)) return true;
    return false;
}

// Copy handles out before taking the lock (a handle may be of this segment).
// Returns v itself when it holds none (no copy on the common path).
const Value& prepare(const Value& v, Value& scratch) {
    if (!has_handles(v)) return v;
    scratch = storable(v);
    return scratch;
}

}  // namespace containers

// ---- Value ------------------------------------------------------------------

Value::Value(const Dict& d) : type_(Type::dict), ref_(d.ref()) {}
Value::Value(const List& l) : type_(Type::list), ref_(l.ref()) {}

Value Value::new_list(std::vector<Value> items) {
    Value v;
    v.type_ = Type::list;
    auto p = std::make_shared<detail::NewContainer>();
    p->list = std::move(items);
    v.pending_ = std::move(p);
    return v;
}

Value Value::new_dict(std::vector<std::pair<std::string, Value>> items) {
    Value v;
    v.type_ = Type::dict;
    auto p = std::make_shared<detail::NewContainer>();
    p->dict = std::move(items);
    v.pending_ = std::move(p);
    return v;
}

const char* Value::type_name() const noexcept {
    switch (type_) {
        case Type::null: return "null";
        case Type::boolean: return "bool";
        case Type::integer: return "int";
        case Type::real: return "double";
        case Type::string: return "string";
        case Type::bytes: return "bytes";
        case Type::list: return "list";
        case Type::dict: return "dict";
    }
    return "unknown";
}

void Value::wrong(const char* wanted) const {
    throw value_type_error(std::string("shm::Value: wanted ") + wanted + ", but the value is " + type_name() +
                           " " + repr());
}

bool Value::as_bool() const {
    if (type_ != Type::boolean) wrong("bool");
    return i_ != 0;
}
std::int64_t Value::as_int() const {
    if (type_ != Type::integer) wrong("int");
    return i_;
}
double Value::as_double() const {
    if (type_ == Type::integer) return static_cast<double>(i_);
    if (type_ != Type::real) wrong("double");
    return d_;
}
const std::string& Value::as_string() const {
    if (type_ != Type::string) wrong("string");
    return s_;
}
const std::string& Value::as_bytes() const {
    if (type_ != Type::bytes) wrong("bytes");
    return s_;
}
const std::vector<Value>& Value::new_list_items() const {
    if (type_ != Type::list || !pending_) wrong("new list (Value::new_list)");
    return pending_->list;
}
const std::vector<std::pair<std::string, Value>>& Value::new_dict_items() const {
    if (type_ != Type::dict || !pending_) wrong("new dict (Value::new_dict)");
    return pending_->dict;
}
Dict Value::as_dict() const {
    if (type_ != Type::dict || pending_) wrong("dict (stored in a segment)");
    return Dict(ref_);
}
List Value::as_list() const {
    if (type_ != Type::list || pending_) wrong("list (stored in a segment)");
    return List(ref_);
}

bool Value::operator==(const Value& o) const {
    bool num_a = type_ == Type::integer || type_ == Type::real;
    bool num_b = o.type_ == Type::integer || o.type_ == Type::real;
    if (num_a && num_b) {
        if (type_ == Type::integer && o.type_ == Type::integer) return i_ == o.i_;
        return as_double() == o.as_double();
    }
    if (type_ == Type::boolean && o.type_ == Type::boolean) return i_ == o.i_;
    if (type_ != o.type_) return false;
    switch (type_) {
        case Type::null: return true;
        case Type::string:
        case Type::bytes: return s_ == o.s_;
        case Type::list:
        case Type::dict:
            if (pending_ || o.pending_) return pending_ == o.pending_;
            return ref_.seg == o.ref_.seg && ref_.offset == o.ref_.offset;
        default: return false;
    }
}

std::string Value::repr() const {
    std::ostringstream os;
    switch (type_) {
        case Type::null: return "None";
        case Type::boolean: return i_ ? "True" : "False";
        case Type::integer: return std::to_string(i_);
        case Type::real: os << d_; return os.str();
        case Type::string:
        case Type::bytes: {
            std::string s = type_ == Type::bytes ? "b'" : "'";
            for (char c : s_.substr(0, 60)) s += (static_cast<unsigned char>(c) < 0x20 ? '?' : c);
            if (s_.size() > 60) s += "...";
            return s + "'";
        }
        case Type::list: return pending_ ? "[new list]" : "<shm list>";
        case Type::dict: return pending_ ? "{new dict}" : "<shm dict>";
    }
    return "?";
}

}  // namespace shm
