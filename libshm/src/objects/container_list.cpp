// shm::List, and its table in shared memory: an array of cells; inserts and
// removals in the middle copy the table (one journaled pointer swap instead
// of one journaled store per moved cell).
#include <algorithm>
#include <cstring>

#include "objects/container_op.hpp"
#include "platform/platform.hpp"

namespace shm {
namespace containers {

// Spare room of a list table at least this large is mapped in one call.
constexpr std::uint64_t kPrefaultFrom = 64 * 1024;

// Copy the table into a new one of capacity `cap`, leaving a gap at
// `gap` (or dropping index `drop`), and swap it in. Only the live cells
// are copied: a cell past the count is not live (garbage until an append
// fills it and publishes it with the count).
void Op::list_rebuild(CHdr* c, std::uint64_t cap, std::int64_t gap, std::int64_t drop) {
    std::uint64_t n = rd(c->count), old_off = rd(c->table);
    std::uint64_t tab_off = alloc(cap * sizeof(Cell), "a list table");
    Cell* tab = at<Cell>(tab_off);
    Cell* old = old_off ? at<Cell>(old_off) : nullptr;
    if (gap < 0 && drop < 0) {
        // Fresh memory, under the heap lock: a plain copy.
        if (n) std::memcpy(static_cast<void*>(tab), static_cast<const void*>(old), n * sizeof(Cell));
    } else {
        std::uint64_t j = 0;
        for (std::uint64_t i = 0; i < n; ++i) {
            if (static_cast<std::int64_t>(i) == drop) continue;
            if (static_cast<std::int64_t>(j) == gap) ++j;
            raw(tab[j].meta, rd(old[i].meta));
            raw(tab[j].data, rd(old[i].data));
            ++j;
        }
    }
    t.store(c->table, tab_off);
    t.store(c->capacity, cap);
    if (old_off) free_block(old_off);
}

// Capacity `cap` at least: the table's block grows in place where the free
// block after it has the room (no copy, and the pages already touched stay
// the table's), else the table is copied into a new one.
void Op::list_grow(CHdr* c, std::uint64_t cap) {
    const std::uint64_t tab = rd(c->table);
    if (tab && heap::expand(t, tab, cap * sizeof(Cell))) {
        t.store(c->capacity, cap);
    } else {
        list_rebuild(c, cap, -1, -1);
    }
    // The appends to come write the new room a cell at a time: map its pages
    // (in this process) in one call rather than a page fault each. Where the
    // table is large only: a small one shares its pages with other blocks.
    const std::uint64_t n = rd(c->count);
    if ((cap - n) * sizeof(Cell) >= kPrefaultFrom) platform::prefault_write(cells(c) + n, (cap - n) * sizeof(Cell));
}

// Room for `extra` more items at the end, in one growth.
void Op::list_reserve(CHdr* c, std::uint64_t extra) {
    std::uint64_t n = rd(c->count), cap = rd(c->capacity);
    if (n + extra <= cap) return;
    std::uint64_t want = cap ? cap : 8;
    while (want < n + extra) want *= 2;
    list_grow(c, want);
}

// The append path: with spare capacity it writes the cell past the count
// with plain stores (not live: a process killed here leaves nothing
// visible) and publishes it with one store of the count, which commits the
// operation by itself (Txn::store_last). Only growth (amortised: the
// capacity doubles) and a value that needs a block of its own journal
// anything.
void Op::list_append(std::uint64_t coff, const Value& v) {
    CHdr* c = hdr(coff, kListMagic);
    std::uint64_t n = rd(c->count);
    // Growth first: a string block allocated before it would sit right
    // after the table and keep it from growing in place.
    if (n == rd(c->capacity)) list_grow(c, n ? n * 2 : 8);
    auto mv = encode(v);
    Cell& cell = cells(c)[n];
    raw(cell.meta, mv.first);
    raw(cell.data, mv.second);
    last(c->count, n + 1);
}

std::int64_t normalize(std::int64_t i, std::uint64_t n, const char* op) {
    std::int64_t k = i < 0 ? i + static_cast<std::int64_t>(n) : i;
    if (k < 0 || k >= static_cast<std::int64_t>(n))
        throw index_error(std::string("shm::List::") + op + ": index " + std::to_string(i) +
                          " out of range for a list of " + std::to_string(n) + " items");
    return k;
}

}  // namespace containers

using namespace containers;

// ---- List ---------------------------------------------------------------------

List List::open_or_create(Segment& seg, std::string_view name) {
    return List(ContainerRef{detail::SegmentAccess::share(seg), open_root<detail::ListRoot>(seg, name, true, kListMagic)});
}
List List::open(Segment& seg, std::string_view name) {
    return List(ContainerRef{detail::SegmentAccess::share(seg), open_root<detail::ListRoot>(seg, name, false, kListMagic)});
}

void List::append(const Value& v) {
    std::pair<std::uint64_t, std::uint64_t> mv;
    if (detail::ValueAccess::scalar_cell(v, mv)) {
        // The common case on its own: a scalar (nothing to allocate, encoded
        // before the lock) into spare capacity, with no garbage to collect.
        // The same steps as list_append(), committed by the one store of the
        // count, without a journal. A header in doubt goes the general way,
        // which says what is wrong with it.
        detail::SegmentState& s = attached(ref_.seg);
        Header* h = s.hdr();
        heap::OneStore t(h);
        if (CHdr* c = sound_header(h, s.base(), ref_.offset, kListMagic)) {
            const std::uint64_t n = rd(c->count);
            if (n < rd(c->capacity) && rd(h->garbage_head) == 0) {
                Cell& cell = reinterpret_cast<Cell*>(s.base() + rd(c->table))[n];
                raw(cell.meta, mv.first);
                raw(cell.data, mv.second);
                t.commit(c->count, n + 1);
                return;
            }
        }
    }  // changed nothing: growth, garbage first or a header in doubt, below
    Value scratch;
    const Value& pv = prepare(v, scratch);
    run(ref_.seg, [&](Op& op) { op.list_append(ref_.offset, pv); });
}

void List::extend(const std::vector<Value>& vs) {
    std::vector<Value> prepared;
    prepared.reserve(vs.size());
    for (auto& v : vs) {
        Value scratch;
        prepared.push_back(prepare(v, scratch));
    }
    run(ref_.seg, [&](Op& op) {
        op.batch = true;
        op.list_reserve(op.hdr(ref_.offset, kListMagic), prepared.size());
        for (auto& v : prepared) op.list_append(ref_.offset, v);
    });
}

void List::insert(std::int64_t index, const Value& v) {
    Value scratch;
    const Value& pv = prepare(v, scratch);
    run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        std::int64_t n = static_cast<std::int64_t>(rd(c->count));
        std::int64_t i = index < 0 ? std::max<std::int64_t>(0, index + n) : std::min(index, n);
        if (i == n) {
            if (rd(c->count) == rd(c->capacity)) op.list_grow(c, n ? 2 * n : 8);
        } else {
            std::uint64_t cap = rd(c->capacity);
            op.list_rebuild(c, std::uint64_t(n) + 1 > cap ? cap * 2 : cap, i, -1);
        }
        auto mv = op.encode(pv);
        op.write_cell(op.cells(c)[i], mv);
        op.t.store(c->count, n + 1);
    });
}

Value List::get(std::int64_t index) const {
    return read(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        return op.decode(op.cells(c)[normalize(index, rd(c->count), "get")]);
    });
}

void List::set(std::int64_t index, const Value& v) {
    Value scratch;
    const Value& pv = prepare(v, scratch);
    run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        std::int64_t i = normalize(index, rd(c->count), "set");
        auto mv = op.encode(pv);
        Cell& cell = op.cells(c)[i];
        std::uint64_t om = rd(cell.meta), od = rd(cell.data);
        op.write_cell(cell, mv);
        op.release_cell(om, od);
    });
}

Value List::pop(std::int64_t index) {
    return run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        std::uint64_t n = rd(c->count);
        if (n == 0) throw index_error("shm::List::pop: the list is empty");
        std::int64_t i = normalize(index, n, "pop");
        Cell& cell = op.cells(c)[i];
        Value out = op.copy_out(cell);
        std::uint64_t om = rd(cell.meta), od = rd(cell.data);
        if (static_cast<std::uint64_t>(i) + 1 != n) op.list_rebuild(c, rd(c->capacity), -1, i);
        op.t.store(c->count, n - 1);
        op.release_cell(om, od);
        return out;
    });
}

namespace {
std::int64_t list_index(Op& op, CHdr* c, const Value& v) {
    std::uint64_t n = rd(c->count);
    Cell* cs = n ? op.cells(c) : nullptr;
    for (std::uint64_t i = 0; i < n; ++i)
        if (op.decode(cs[i]) == v) return static_cast<std::int64_t>(i);
    return -1;
}
}  // namespace

void List::remove(const Value& v) {
    run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        std::int64_t i = list_index(op, c, v);
        if (i < 0) throw error(ENOENT, "shm::List::remove: " + v.repr() + " is not in the list");
        Cell& cell = op.cells(c)[i];
        std::uint64_t om = rd(cell.meta), od = rd(cell.data), n = rd(c->count);
        if (static_cast<std::uint64_t>(i) + 1 != n) op.list_rebuild(c, rd(c->capacity), -1, i);
        op.t.store(c->count, n - 1);
        op.release_cell(om, od);
    });
}

std::size_t List::index(const Value& v) const {
    std::int64_t i = read(ref_.seg, [&](Op& op) { return list_index(op, op.hdr(ref_.offset, kListMagic), v); });
    if (i < 0) throw error(ENOENT, "shm::List::index: " + v.repr() + " is not in the list");
    return static_cast<std::size_t>(i);
}

std::size_t List::count(const Value& v) const {
    std::size_t k = 0;
    for (auto& x : snapshot())
        if (x == v) ++k;
    return k;
}

std::size_t List::size() const {
    return read(ref_.seg, [&](Op& op) { return static_cast<std::size_t>(rd(op.hdr(ref_.offset, kListMagic)->count)); });
}

namespace {
// The items, made storable (outside the transaction: a nested handle is
// read into a copy).
std::vector<Value> prepared(const std::vector<Value>& vs) {
    std::vector<Value> out;
    out.reserve(vs.size());
    for (auto& v : vs) {
        Value scratch;
        const Value& pv = prepare(v, scratch);
        out.push_back(&pv == &v ? v : std::move(scratch));
    }
    return out;
}

// Inside a transaction: the list's items become `items` (prepared).
void replace_all(Op& op, std::uint64_t coff, const std::vector<Value>& items) {
    op.batch = true;
    CHdr* c = op.hdr(coff, kListMagic);
    op.detach_contents(c);
    op.list_reserve(c, items.size());
    for (auto& v : items) op.list_append(coff, v);
}
}  // namespace

void List::assign(const std::vector<Value>& items) {
    std::vector<Value> ps = prepared(items);
    run(ref_.seg, [&](Op& op) { replace_all(op, ref_.offset, ps); });
}

bool List::assign_if(const std::vector<Value>& expected, const std::vector<Value>& items) {
    std::vector<Value> ps = prepared(items);
    return run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        const std::uint64_t n = rd(c->count);
        if (n != expected.size()) return false;
        Cell* cs = n ? op.cells(c) : nullptr;
        for (std::uint64_t i = 0; i < n; ++i)
            if (!(op.decode(cs[i]) == expected[i])) return false;
        replace_all(op, ref_.offset, ps);
        return true;
    });
}

void List::clear() {
    run(ref_.seg, [&](Op& op) { op.detach_contents(op.hdr(ref_.offset, kListMagic)); });
}

std::vector<Value> List::snapshot() const { return slice(0, INT64_MAX); }

std::vector<Value> List::slice(std::int64_t start, std::int64_t stop) const {
    return read(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        std::int64_t n = static_cast<std::int64_t>(rd(c->count));
        auto clamp = [n](std::int64_t i) {
            if (i < 0) i += n;
            return std::min(std::max<std::int64_t>(i, 0), n);
        };
        std::int64_t a = clamp(start), b = clamp(stop);
        std::vector<Value> out;
        if (b > a) out.reserve(static_cast<std::size_t>(b - a));
        for (std::int64_t i = a; i < b; ++i) out.push_back(op.decode(op.cells(c)[i]));
        return out;
    });
}

Value List::update(std::int64_t index, const std::function<Value(const Value&)>& fn) {
    return run(ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        std::int64_t i = normalize(index, rd(c->count), "update");
        Cell& cell = op.cells(c)[i];
        Value next = fn(op.decode(cell));
        if (has_handles(next))
            throw value_type_error("shm::List::update: fn must return a plain value or Value::new_list/new_dict");
        auto mv = op.encode(next);
        std::uint64_t om = rd(cell.meta), od = rd(cell.data);
        op.write_cell(cell, mv);
        op.release_cell(om, od);
        return next;
    });
}

std::vector<std::string> List::verify() const { return verify_container(ref_.seg, ref_.offset, kListMagic, "list"); }

}  // namespace shm