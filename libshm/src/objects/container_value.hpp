// What the container code needs of shm::Value beyond its public API. Private.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "shm/container.hpp"

namespace shm::detail {

// The items of a new nested container (Value::new_list/new_dict), made when
// it is stored.
struct NewContainer {
    std::vector<Value> list;
    std::vector<std::pair<std::string, Value>> dict;
};

struct ValueAccess {
    // What a new nested container holds; nullptr for any other value.
    static const NewContainer* pending(const Value& v) noexcept { return v.pending_.get(); }
    // The cell (type, bits) of a scalar, which needs no block of its own;
    // false for any other value. Pure: callers encode before they lock.
    static bool scalar_cell(const Value& v, std::pair<std::uint64_t, std::uint64_t>& mv) noexcept {
        switch (v.type_) {
            case Value::Type::null: mv = {0, 0}; return true;
            case Value::Type::boolean: mv = {std::uint64_t(Value::Type::boolean), v.i_ != 0 ? 1u : 0u}; return true;
            case Value::Type::integer:
                mv = {std::uint64_t(Value::Type::integer), static_cast<std::uint64_t>(v.i_)};
                return true;
            case Value::Type::real: {
                std::uint64_t bits;
                std::memcpy(&bits, &v.d_, sizeof bits);
                mv = {std::uint64_t(Value::Type::real), bits};
                return true;
            }
            default: return false;
        }
    }
    // A handle to the stored container r, a list or a dict as t says.
    static Value container(Value::Type t, ContainerRef r) {
        Value v;
        v.type_ = t;
        v.ref_ = std::move(r);
        return v;
    }
};

}  // namespace shm::detail
