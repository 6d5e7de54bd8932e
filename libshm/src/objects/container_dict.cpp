// shm::Dict, and its table in shared memory: open addressing with linear
// probing, grown by doubling at 3/4 load.
#include <cstring>

#include "objects/container_op.hpp"

namespace shm {
namespace containers {

// Index of the key's entry, or -1; *insert_at gets the slot where it
// would go (first tombstone or the empty slot ending the probe).
std::int64_t Op::dict_find(CHdr* c, std::string_view key, std::uint64_t hash, std::int64_t* insert_at) const {
    std::uint64_t cap = rd(c->capacity);
    if (insert_at) *insert_at = -1;
    if (cap == 0) return -1;
    DEntry* tab = at<DEntry>(rd(c->table));
    std::uint64_t i = hash & (cap - 1);
    for (std::uint64_t n = 0; n < cap; ++n, i = (i + 1) & (cap - 1)) {
        std::uint64_t k = rd(tab[i].key);
        if (k == kEmpty) {
            if (insert_at && *insert_at < 0) *insert_at = static_cast<std::int64_t>(i);
            return -1;
        }
        if (k == kTomb) {
            if (insert_at && *insert_at < 0) *insert_at = static_cast<std::int64_t>(i);
            continue;
        }
        if (rd(tab[i].hash) == hash && rd(tab[i].key_len) == key.size() &&
            (key.empty() || std::memcmp(key_bytes(tab[i]), key.data(), key.size()) == 0))
            return static_cast<std::int64_t>(i);
    }
    return -1;
}

// Rebuild the table with room for `target` live entries (dropping the
// tombstones); the new table is fresh memory.
void Op::dict_grow(CHdr* c, std::uint64_t target) {
    std::uint64_t count = rd(c->count);
    std::uint64_t cap = 8;
    while (cap * 3 < (std::max(target, count) + 1) * 4) cap *= 2;
    std::uint64_t tab_off = alloc(cap * sizeof(DEntry), "a dict table");
    DEntry* tab = at<DEntry>(tab_off);
    std::memset(static_cast<void*>(tab), 0, cap * sizeof(DEntry));
    std::uint64_t old_cap = rd(c->capacity), old_off = rd(c->table);
    if (old_cap) {
        DEntry* old = at<DEntry>(old_off);
        for (std::uint64_t i = 0; i < old_cap; ++i) {
            std::uint64_t k = rd(old[i].key);
            if (k <= kTomb) continue;
            std::uint64_t hsh = rd(old[i].hash), j = hsh & (cap - 1);
            while (rd(tab[j].key) != kEmpty) j = (j + 1) & (cap - 1);
            raw(tab[j].hash, hsh);
            raw(tab[j].key, k);
            raw(tab[j].key_len, rd(old[i].key_len));
            raw(tab[j].v.meta, rd(old[i].v.meta));
            raw(tab[j].v.data, rd(old[i].v.data));
        }
    }
    t.store(c->table, tab_off);
    t.store(c->capacity, cap);
    t.store(c->used, count);
    if (old_cap) free_block(old_off);
}

// Returns true if the key was new.
bool Op::dict_set(std::uint64_t coff, std::string_view key, const Value& v) {
    CHdr* c = hdr(coff, kDictMagic);
    std::uint64_t hsh = hash_key(key);
    std::int64_t slot;
    std::int64_t i = dict_find(c, key, hsh, &slot);
    auto mv = encode(v);
    if (i >= 0) {
        DEntry& e = at<DEntry>(rd(c->table))[i];
        std::uint64_t om = rd(e.v.meta), od = rd(e.v.data);
        VT ot = static_cast<VT>(om & 0xff);
        if (om == mv.first && ot != VT::string && ot != VT::bytes && ot != VT::list && ot != VT::dict) {
            last(e.v.data, mv.second);  // same scalar type: one store
            return false;
        }
        write_cell(e.v, mv);
        release_cell(om, od);
        return false;
    }
    if ((rd(c->used) + 1) * 4 > rd(c->capacity) * 3) {
        dict_grow(c, 2 * rd(c->count) + 1);  // room to double before the next grow
        dict_find(c, key, hsh, &slot);
    }
    DEntry& e = at<DEntry>(rd(c->table))[slot];
    bool was_empty = rd(e.key) == kEmpty;
    std::uint64_t koff = 0;
    if (!key.empty()) {
        koff = alloc(key.size(), "a dict key");
        std::memcpy(base + koff, key.data(), key.size());
    } else {
        koff = 2;  // an empty key owns no block; any value > kTomb marks the slot live
    }
    t.store(e.hash, hsh);
    t.store(e.key_len, key.size());
    write_cell(e.v, mv);
    t.store(e.key, koff);
    t.store(c->count, rd(c->count) + 1);
    if (was_empty) t.store(c->used, rd(c->used) + 1);
    return true;
}

void Op::dict_erase_at(CHdr* c, std::int64_t i) {
    DEntry& e = at<DEntry>(rd(c->table))[i];
    if (rd(e.key_len)) free_block(rd(e.key));
    release_cell(rd(e.v.meta), rd(e.v.data));
    t.store(e.key, kTomb);
    t.store(e.v.meta, 0);
    t.store(e.v.data, 0);
    t.store(c->count, rd(c->count) - 1);
}

// For more than kInPlace new keys, rebuild the table with room for all of
// them, even if it has room: the writes that follow go to fresh memory.
void Op::dict_reserve(CHdr* c, std::uint64_t extra) {
    if (extra > kInPlace) dict_grow(c, rd(c->count) + extra);
}

}  // namespace containers

using namespace containers;

// ---- Dict ---------------------------------------------------------------------

Dict Dict::open_or_create(Segment& seg, std::string_view name) {
    return Dict(ContainerRef{detail::SegmentAccess::share(seg), open_root<detail::DictRoot>(seg, name, true, kDictMagic)});
}
Dict Dict::open(Segment& seg, std::string_view name) {
    return Dict(ContainerRef{detail::SegmentAccess::share(seg), open_root<detail::DictRoot>(seg, name, false, kDictMagic)});
}

std::optional<Value> Dict::find(std::string_view key) const {
    return read(ref_.seg, [&](Op& op) -> std::optional<Value> {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        if (i < 0) return std::nullopt;
        return op.decode(op.at<DEntry>(rd(c->table))[i].v);
    });
}

Value Dict::get(std::string_view key) const {
    auto v = find(key);
    if (!v) throw key_error("shm::Dict: no key '" + std::string(key) + "' in this dict of segment '" + ref_.seg->name + "'");
    return std::move(*v);
}

Value Dict::get(std::string_view key, const Value& dflt) const {
    auto v = find(key);
    return v ? *v : dflt;
}

void Dict::set(std::string_view key, const Value& v) {
    Value scratch;
    const Value& pv = prepare(v, scratch);
    run(ref_.seg, [&](Op& op) { op.dict_set(ref_.offset, key, pv); });
}

bool Dict::erase(std::string_view key) {
    return run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        if (i < 0) return false;
        op.dict_erase_at(c, i);
        return true;
    });
}

Value Dict::pop(std::string_view key) {
    auto v = run(ref_.seg, [&](Op& op) -> std::optional<Value> {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        if (i < 0) return std::nullopt;
        Value out = op.copy_out(op.at<DEntry>(rd(c->table))[i].v);
        op.dict_erase_at(c, i);
        return out;
    });
    if (!v) throw key_error("shm::Dict::pop: no key '" + std::string(key) + "' in this dict of segment '" + ref_.seg->name + "'");
    return *v;
}

Value Dict::pop(std::string_view key, const Value& dflt) {
    try {
        return pop(key);
    } catch (const key_error&) {
        return dflt;
    }
}

bool Dict::contains(std::string_view key) const { return find(key).has_value(); }

std::size_t Dict::size() const {
    return read(ref_.seg, [&](Op& op) { return static_cast<std::size_t>(rd(op.hdr(ref_.offset, kDictMagic)->count)); });
}

void Dict::clear() {
    run(ref_.seg, [&](Op& op) { op.detach_contents(op.hdr(ref_.offset, kDictMagic)); });
}

std::vector<std::pair<std::string, Value>> Dict::items() const {
    return read(ref_.seg, [&](Op& op) {
        std::vector<std::pair<std::string, Value>> out;
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::uint64_t cap = rd(c->capacity);
        out.reserve(rd(c->count));
        DEntry* tab = cap ? op.at<DEntry>(rd(c->table)) : nullptr;
        for (std::uint64_t i = 0; i < cap; ++i) {
            std::uint64_t k = rd(tab[i].key), len = rd(tab[i].key_len);
            if (k <= kTomb) continue;
            out.emplace_back(std::string(op.key_bytes(tab[i]), len), op.decode(tab[i].v));
        }
        return out;
    });
}

std::vector<std::string> Dict::keys() const {
    std::vector<std::string> out;
    for (auto& kv : items()) out.push_back(std::move(kv.first));
    return out;
}

std::vector<Value> Dict::values() const {
    std::vector<Value> out;
    for (auto& kv : items()) out.push_back(std::move(kv.second));
    return out;
}

void Dict::update(const std::vector<std::pair<std::string, Value>>& items) {
    std::vector<std::pair<std::string, Value>> prepared;
    prepared.reserve(items.size());
    for (auto& kv : items) {
        Value scratch;
        prepared.emplace_back(kv.first, prepare(kv.second, scratch));
    }
    run(ref_.seg, [&](Op& op) {
        op.batch = true;
        if (!prepared.empty()) op.dict_reserve(op.hdr(ref_.offset, kDictMagic), prepared.size());
        for (auto& kv : prepared) op.dict_set(ref_.offset, kv.first, kv.second);
    });
}

void Dict::update(const Dict& other) {
    std::vector<std::pair<std::string, Value>> items;
    for (auto& kv : other.items()) items.emplace_back(kv.first, storable(kv.second));
    update(items);
}

Value Dict::setdefault(std::string_view key, const Value& dflt) {
    Value scratch;
    const Value& pv = prepare(dflt, scratch);
    return run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        if (i >= 0) return op.decode(op.at<DEntry>(rd(c->table))[i].v);
        op.dict_set(ref_.offset, key, pv);
        c = op.hdr(ref_.offset, kDictMagic);
        return op.decode(op.at<DEntry>(rd(c->table))[op.dict_find(c, key, hash_key(key), nullptr)].v);
    });
}

Value Dict::update(std::string_view key, const std::function<Value(const Value&)>& fn) {
    return run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        Value cur = i >= 0 ? op.decode(op.at<DEntry>(rd(c->table))[i].v) : Value();
        Value next = fn(cur);
        if (has_handles(next))
            throw value_type_error("shm::Dict::update: fn must return a plain value or Value::new_list/new_dict");
        op.dict_set(ref_.offset, key, next);
        return next;
    });
}

std::int64_t Dict::increment_int(std::string_view key, std::int64_t n) {
    return run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::uint64_t hsh = hash_key(key);
        std::int64_t i = op.dict_find(c, key, hsh, nullptr);
        if (i < 0) {
            op.dict_set(ref_.offset, key, Value(n));
            return n;
        }
        Cell& cell = op.at<DEntry>(rd(c->table))[i].v;
        if ((rd(cell.meta) & 0xff) != std::uint64_t(VT::integer))
            throw value_type_error("shm::Dict::increment: '" + std::string(key) + "' holds " +
                                   op.decode(cell).type_name() + ", not int");
        std::int64_t v = static_cast<std::int64_t>(rd(cell.data));
        std::int64_t r;
        if (__builtin_add_overflow(v, n, &r))
            throw error(EOVERFLOW, "shm::Dict::increment: '" + std::string(key) + "' would overflow int64");
        op.t.store_last(cell.data, static_cast<std::uint64_t>(r));  // one store commits the increment
        return r;
    });
}

double Dict::increment(std::string_view key, double n) {
    return run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        Value cur = i >= 0 ? op.decode(op.at<DEntry>(rd(c->table))[i].v) : Value(0.0);
        double r = cur.as_double() + n;
        op.dict_set(ref_.offset, key, Value(r));
        return r;
    });
}

std::vector<std::string> Dict::verify() const { return verify_container(ref_.seg, ref_.offset, kDictMagic, "dict"); }

}  // namespace shm
