// What the container code needs of shm::Value beyond its public API. Private.
#pragma once

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
    // A handle to the stored container r, a list or a dict as t says.
    static Value container(Value::Type t, ContainerRef r) {
        Value v;
        v.type_ = t;
        v.ref_ = std::move(r);
        return v;
    }
};

}  // namespace shm::detail
