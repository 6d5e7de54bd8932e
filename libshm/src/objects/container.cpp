// shm::Dict, shm::List and shm::Value.
//
// Design note
// -----------
// Containers live in the segment heap and every operation is one heap
// transaction (heap.hpp): the robust heap lock is held throughout, every
// change to a word that existed before the operation goes through
// Txn::store (undo-journaled), and blocks allocated by the operation are
// filled with plain writes (an undo frees them). A process killed anywhere
// leaves the operation done or not done; the next lock holder rolls back.
//
// Shared layout (all offsets from the segment base):
//   Cell (16 B)       meta = type | length << 8, data = bool / int64 /
//                     double bits / offset of a string block / offset of a
//                     nested container header
//   CHdr (64 B)       magic (dict or list), count, capacity, table, used
//                     (dict: live + tombstone entries), next_garbage, cursor
//   list table        capacity × Cell
//   dict table        capacity × DEntry: hash, key (0 empty, 1 tombstone,
//                     else offset of the key's bytes), key_len, Cell
// Dicts are open-addressing tables with linear probing, grown by doubling at
// 3/4 load. List inserts/removals in the middle copy the table (one
// journaled pointer swap instead of one journaled store per moved cell).
//
// Freeing a large container cannot fit one transaction's journal, so clear()
// and the removal of a nested container move it onto the segment's garbage
// list (one journaled link) and every later operation frees a few of its
// blocks; an operation that runs out of space first drains the garbage.
//
// Size of one operation. The heap journals only words that existed before
// the transaction, once each (heap.hpp, J1/J2), so an operation is bounded by
// the free heap, not by the journal, as long as it writes few old words:
//   - extend() and update(items) size the table for all their items first
//     (a rebuilt table is fresh memory: its writes need no undo), and a dict
//     update of more than kInPlace items always rebuilds its table;
//   - what an operation drops (old string blocks, nested containers) is
//     released at its end: a few directly, many as one batch put on the
//     garbage list (kBatchMagic) and freed a few at a time afterwards.
// A refused operation (out of space, wrong type, missing key, ...) throws
// before commit, and the journal puts every old word back: it changes
// nothing.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

#include "objects/container_layout.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"
#include "platform/platform.hpp"
#include "shm/container.hpp"
#include "shm/segment.hpp"

namespace shm {

using layout::Header;

namespace {

constexpr int kGcBudget = 8;        // garbage pieces freed by each operation
constexpr int kDrainBudget = 64;    // ... per transaction when space runs out
constexpr std::size_t kDirectRelease = 32;  // more dropped pieces than this go in a batch
constexpr std::size_t kInPlace = 64;        // larger dict updates rebuild the table
using namespace container_layout;

std::uint64_t rd(const Word& w) { return w.load(std::memory_order_relaxed); }  // under the heap lock
void raw(Word& w, std::uint64_t v) { w.store(v, std::memory_order_relaxed); }  // fresh blocks only

std::uint64_t hash_key(std::string_view k) {
    // FNV-1a: stable across processes and builds (the table is shared).
    std::uint64_t h = 1469598103934665603ull;
    for (unsigned char c : k) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

using VT = Value::Type;

// One operation on a container of a segment: the transaction plus helpers.
struct Op {
    Segment& seg;
    Header* h;
    char* base;
    heap::Txn t;
    // Several changes in one transaction (update(items), extend()): no change
    // may commit by itself with an unjournaled store.
    bool batch = false;
    // Nested containers this operation dropped: put on the garbage list at
    // its end (finish()).
    std::vector<std::uint64_t> dropped;

    void last(std::atomic<std::uint64_t>& w, std::uint64_t v) {
        if (batch)
            t.store(w, v);
        else
            t.store_last(w, v);
    }

    explicit Op(Segment& s)
        : seg(s), h(static_cast<Header*>(s.base())), base(static_cast<char*>(s.base())), t(h) {}

    template <class T>
    T* at(std::uint64_t off) const { return reinterpret_cast<T*>(base + off); }
    std::string where() const { return "segment '" + seg.name() + "'"; }

    std::uint64_t alloc(std::size_t n, const char* what) {
        std::uint64_t off = heap::allocate(t, n ? n : 1, 16);
        if (!off) {
            std::uint64_t used = rd(h->used_bytes);
            throw out_of_space(where() + " (" + platform::human_bytes(h->total_size) + "): no room for " +
                               platform::human_bytes(n) + " (" + what + "): " + platform::human_bytes(used) +
                               " of the heap's " + platform::human_bytes(h->heap_size) + " used, largest free block " +
                               platform::human_bytes(heap::largest_free(h)));
        }
        return off;
    }
    void free_block(std::uint64_t off) { heap::deallocate(t, off); }

    // The container header at off, checked on every use (a few compares):
    // its table, count and capacity are what every read below follows.
    CHdr* hdr(std::uint64_t off, std::uint64_t magic) const {
        const char* kind = magic == kDictMagic ? "dict" : "list";
        if (off % 8 != 0 || !layout::in_heap(h, off, sizeof(CHdr)))
            throw corrupted(where() + ": container handle points outside the heap");
        CHdr* c = at<CHdr>(off);
        if (rd(c->magic) != magic)
            throw corrupted(where() + ": no " + kind + " at this handle (destroyed?)");
        const std::uint64_t cap = rd(c->capacity), tab = rd(c->table), n = rd(c->count);
        const std::uint64_t esz = magic == kDictMagic ? sizeof(DEntry) : sizeof(Cell);
        if (n > cap || (cap && (tab % 8 != 0 || !layout::in_heap(h, tab, cap, esz))) ||
            (magic == kDictMagic && ((cap & (cap - 1)) != 0 || rd(c->used) > cap)))
            throw corrupted(where() + ": a " + kind + "'s header is corrupt (count " + std::to_string(n) +
                            ", capacity " + std::to_string(cap) + ", table at " + std::to_string(tab) + ")");
        return c;
    }

    // The bytes of a dict key, checked against the heap.
    const char* key_bytes(const DEntry& e) const {
        const std::uint64_t k = rd(e.key), len = rd(e.key_len);
        if (len == 0) return "";
        if (!layout::in_heap(h, k, len)) throw corrupted(where() + ": a dict key points outside the heap");
        return base + k;
    }

    std::uint64_t new_container(std::uint64_t magic) {
        std::uint64_t off = alloc(sizeof(CHdr), "container header");
        CHdr* c = at<CHdr>(off);
        raw(c->magic, magic);
        raw(c->count, 0);
        raw(c->capacity, 0);
        raw(c->table, 0);
        raw(c->used, 0);
        raw(c->next_garbage, 0);
        raw(c->cursor, 0);
        raw(c->reserved, 0);
        return off;
    }

    // ---- values ---------------------------------------------------------
    // Make the content of a new cell for v (allocating what it needs).
    std::pair<std::uint64_t, std::uint64_t> encode(const Value& v) {
        switch (v.type()) {
            case VT::null: return {0, 0};
            case VT::boolean: return {std::uint64_t(VT::boolean), v.as_bool() ? 1u : 0u};
            case VT::integer: return {std::uint64_t(VT::integer), static_cast<std::uint64_t>(v.as_int())};
            case VT::real: {
                double d = v.as_double();
                std::uint64_t bits;
                std::memcpy(&bits, &d, sizeof bits);
                return {std::uint64_t(VT::real), bits};
            }
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
                const Value::Pending* p = v.pending();
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
        }
        throw value_type_error("shm::Value: unknown type");
    }

    void release_cell(std::uint64_t meta, std::uint64_t data) {
        VT ty = static_cast<VT>(meta & 0xff);
        if ((ty == VT::string || ty == VT::bytes) && data) free_block(data);
        if (ty == VT::list || ty == VT::dict) dropped.push_back(data);
    }

    void write_cell(Cell& c, std::pair<std::uint64_t, std::uint64_t> mv) {
        t.store(c.meta, mv.first);
        t.store(c.data, mv.second);
    }

    // A process-local deep copy (for values that are about to be freed).
    Value copy_out(const Cell& c, int depth = 0) const {
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

    Value decode(const Cell& c) const {
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
            case VT::list: return Value::container(VT::list, ContainerRef{&seg, data});
            case VT::dict: return Value::container(VT::dict, ContainerRef{&seg, data});
        }
        throw corrupted(where() + ": a container cell has an unknown type " + std::to_string(meta & 0xff));
    }

    // ---- garbage ----------------------------------------------------------
    void to_garbage(std::uint64_t c) {
        CHdr* g = at<CHdr>(c);
        t.store(g->cursor, 0);
        t.store(g->next_garbage, rd(h->garbage_head));
        t.store(h->garbage_head, c);
    }

    // Move a container's contents to the garbage list and leave it empty.
    void detach_contents(CHdr* c) {
        if (rd(c->capacity) == 0) return;
        std::uint64_t shell = alloc(sizeof(CHdr), "a cleared container");
        CHdr* s = at<CHdr>(shell);
        raw(s->magic, rd(c->magic));
        raw(s->count, rd(c->count));
        raw(s->capacity, rd(c->capacity));
        raw(s->table, rd(c->table));
        raw(s->used, rd(c->used));
        raw(s->next_garbage, rd(h->garbage_head));
        raw(s->cursor, 0);
        raw(s->reserved, 0);
        t.store(h->garbage_head, shell);
        t.store(c->count, 0);
        t.store(c->capacity, 0);
        t.store(c->table, 0);
        t.store(c->used, 0);
    }

    // Free up to `budget` pieces of garbage. Returns whether garbage is left.
    bool collect(int budget) {
        while (budget-- > 0) {
            std::uint64_t g = rd(h->garbage_head);
            if (!g) return false;
            CHdr* c = at<CHdr>(g);
            std::uint64_t cur = rd(c->cursor), cap = rd(c->capacity);
            bool dict = rd(c->magic) == kDictMagic;
            if (rd(c->magic) == kBatchMagic) {
                if (cur < rd(c->count)) {
                    std::uint64_t item = rd(at<Word>(rd(c->table))[cur]);
                    if (item & 1)
                        to_garbage(item & ~std::uint64_t(1));  // goes in front of c
                    else
                        free_block(item);
                    t.store(c->cursor, cur + 1);
                    continue;
                }
                cap = cur;  // done: free it below
            }
            if (cur < cap) {
                if (dict) {
                    DEntry* e = at<DEntry>(rd(c->table)) + cur;
                    std::uint64_t k = rd(e->key);
                    if (k > kTomb) {
                        if (rd(e->key_len)) free_block(k);
                        release_cell(rd(e->v.meta), rd(e->v.data));
                    }
                } else if (cur < rd(c->count)) {
                    Cell* cell = at<Cell>(rd(c->table)) + cur;
                    release_cell(rd(cell->meta), rd(cell->data));
                }
                t.store(c->cursor, cur + 1);
                continue;
            }
            // release_cell may have pushed nested containers in front of c.
            if (rd(h->garbage_head) != g) continue;
            if (rd(c->table)) free_block(rd(c->table));
            t.store(h->garbage_head, rd(c->next_garbage));
            t.store(c->magic, 0);
            free_block(g);
        }
        return rd(h->garbage_head) != 0;
    }

    // ---- dict -------------------------------------------------------------
    // Index of the key's entry, or -1; *insert_at gets the slot where it
    // would go (first tombstone or the empty slot ending the probe).
    std::int64_t dict_find(CHdr* c, std::string_view key, std::uint64_t hash, std::int64_t* insert_at) const {
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
    void dict_grow(CHdr* c, std::uint64_t target) {
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
    bool dict_set(std::uint64_t coff, std::string_view key, const Value& v) {
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

    void dict_erase_at(CHdr* c, std::int64_t i) {
        DEntry& e = at<DEntry>(rd(c->table))[i];
        if (rd(e.key_len)) free_block(rd(e.key));
        release_cell(rd(e.v.meta), rd(e.v.data));
        t.store(e.key, kTomb);
        t.store(e.v.meta, 0);
        t.store(e.v.data, 0);
        t.store(c->count, rd(c->count) - 1);
    }

    // ---- list -------------------------------------------------------------
    Cell* cells(CHdr* c) const { return at<Cell>(rd(c->table)); }

    // Copy the table into a new one of capacity `cap`, leaving a gap at
    // `gap` (or dropping index `drop`), and swap it in.
    void list_rebuild(CHdr* c, std::uint64_t cap, std::int64_t gap, std::int64_t drop) {
        std::uint64_t n = rd(c->count), old_off = rd(c->table);
        std::uint64_t tab_off = alloc(cap * sizeof(Cell), "a list table");
        Cell* tab = at<Cell>(tab_off);
        std::memset(static_cast<void*>(tab), 0, cap * sizeof(Cell));
        Cell* old = old_off ? at<Cell>(old_off) : nullptr;
        std::uint64_t j = 0;
        for (std::uint64_t i = 0; i < n; ++i) {
            if (static_cast<std::int64_t>(i) == drop) continue;
            if (static_cast<std::int64_t>(j) == gap) ++j;
            raw(tab[j].meta, rd(old[i].meta));
            raw(tab[j].data, rd(old[i].data));
            ++j;
        }
        t.store(c->table, tab_off);
        t.store(c->capacity, cap);
        if (old_off) free_block(old_off);
    }

    // Room for `extra` more items at the end, in one table rebuild.
    void list_reserve(CHdr* c, std::uint64_t extra) {
        std::uint64_t n = rd(c->count), cap = rd(c->capacity);
        if (n + extra <= cap) return;
        std::uint64_t want = cap ? cap : 8;
        while (want < n + extra) want *= 2;
        list_rebuild(c, want, -1, -1);
    }

    // For more than kInPlace new keys, rebuild the table with room for all of
    // them, even if it has room: the writes that follow go to fresh memory.
    void dict_reserve(CHdr* c, std::uint64_t extra) {
        if (extra > kInPlace) dict_grow(c, rd(c->count) + extra);
    }

    void list_append(std::uint64_t coff, const Value& v) {
        CHdr* c = hdr(coff, kListMagic);
        auto mv = encode(v);
        std::uint64_t n = rd(c->count);
        if (n == rd(c->capacity)) list_rebuild(c, n ? n * 2 : 8, -1, -1);
        // The cell past the count is not live: plain writes, and the count
        // store publishes it (one store, if nothing else was changed).
        Cell& cell = cells(c)[n];
        raw(cell.meta, mv.first);
        raw(cell.data, mv.second);
        last(c->count, n + 1);
    }

    // Put what this operation dropped on its way out, then commit. A few
    // pieces are released directly; many go on the garbage list as one batch
    // (one journaled link instead of a few journal entries per piece).
    void finish(int gc_budget = kGcBudget) {
        if (dropped.size() + t.deferred_count() <= kDirectRelease) {
            for (std::uint64_t c : dropped) to_garbage(c);
        } else {
            std::vector<std::uint64_t> blocks = t.take_deferred();
            for (std::uint64_t c : dropped) blocks.push_back(c | 1);
            std::uint64_t items = alloc(blocks.size() * sizeof(std::uint64_t), "the list of memory to free");
            std::memcpy(base + items, blocks.data(), blocks.size() * sizeof(std::uint64_t));
            std::uint64_t b = new_container(kBatchMagic);
            CHdr* bh = at<CHdr>(b);
            raw(bh->count, blocks.size());
            raw(bh->table, items);
            to_garbage(b);
        }
        dropped.clear();
        // After the batch: what garbage collection frees here is freed at
        // commit, never batched again, and the nested containers it meets
        // go on the garbage list in their turn.
        collect(gc_budget);
        for (std::uint64_t c : dropped) to_garbage(c);
        dropped.clear();
        t.commit();
    }
};

// Run op(Op&) as one transaction; if it runs out of space while garbage is
// waiting, drain the garbage (in transactions of its own) and retry once.
template <class F>
auto run(Segment& seg, F&& f) -> decltype(f(std::declval<Op&>())) {
    for (int attempt = 0;; ++attempt) {
        try {
            Op op(seg);
            if constexpr (std::is_void_v<decltype(f(op))>) {
                f(op);
                op.finish();
                return;
            } else {
                auto r = f(op);
                op.finish();
                return r;
            }
        } catch (const out_of_space&) {
            if (attempt > 0) throw;
            if (!static_cast<Header*>(seg.base())->garbage_head.load(std::memory_order_relaxed)) throw;
            for (bool left = true; left;) {
                Op op(seg);
                op.finish(kDrainBudget);
                left = rd(static_cast<Header*>(seg.base())->garbage_head) != 0;
            }
        }
    }
}

// A read: one transaction that changes nothing (no garbage collection).
template <class F>
auto read(Segment& seg, F&& f) -> decltype(f(std::declval<Op&>())) {
    Op op(seg);
    if constexpr (std::is_void_v<decltype(f(op))>) {
        f(op);
        op.t.commit();
    } else {
        auto r = f(op);
        op.t.commit();
        return r;
    }
}

std::int64_t normalize(std::int64_t i, std::uint64_t n, const char* op) {
    std::int64_t k = i < 0 ? i + static_cast<std::int64_t>(n) : i;
    if (k < 0 || k >= static_cast<std::int64_t>(n))
        throw index_error(std::string("shm::List::") + op + ": index " + std::to_string(i) +
                          " out of range for a list of " + std::to_string(n) + " items");
    return k;
}

// A container Value from another handle is stored as a copy.
Value storable(const Value& v) {
    if ((v.type() == VT::list || v.type() == VT::dict) && !v.pending()) {
        if (v.type() == VT::list) return Value::new_list(v.as_list().snapshot());
        std::vector<std::pair<std::string, Value>> items;
        for (auto& kv : v.as_dict().items()) items.emplace_back(kv.first, storable(kv.second));
        return Value::new_dict(std::move(items));
    }
    if (v.type() == VT::list && v.pending()) {
        std::vector<Value> items;
        for (auto& x : v.pending()->list) items.push_back(storable(x));
        return Value::new_list(std::move(items));
    }
    if (v.type() == VT::dict && v.pending()) {
        std::vector<std::pair<std::string, Value>> items;
        for (auto& kv : v.pending()->dict) items.emplace_back(kv.first, storable(kv.second));
        return Value::new_dict(std::move(items));
    }
    return v;
}

bool has_handles(const Value& v) {
    if (v.type() != VT::list && v.type() != VT::dict) return false;
    if (!v.pending()) return true;
    for (auto& x : v.pending()->list)
        if (has_handles(x)) return true;
    for (auto& kv : v.pending()->dict)
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

template <class Root>
std::uint64_t open_root(Segment& seg, std::string_view name, bool create, std::uint64_t magic) {
    Root* r = create ? &seg.find_or_construct<Root>(name) : seg.find<Root>(name);
    if (!r)
        throw not_found(std::string(magic == kDictMagic ? "dict '" : "list '") + std::string(name) +
                        "' does not exist in segment '" + seg.name() + "'");
    std::uint64_t off = r->header.load(std::memory_order_acquire);
    if (off) {
        read(seg, [&](Op& op) { op.hdr(off, magic); });  // a handle to a valid header only
        return off;
    }
    return run(seg, [&](Op& op) {
        std::uint64_t cur = rd(r->header);
        if (cur) return cur;
        std::uint64_t c = op.new_container(magic);
        op.t.store(r->header, c);
        return c;
    });
}

// ---- verify ---------------------------------------------------------------
struct Verifier {
    const Op& op;
    std::vector<std::string>& problems;
    std::set<std::uint64_t> seen;
    void bad(const std::string& s) {
        if (problems.size() < 64) problems.push_back(s);
    }
    bool in_heap(std::uint64_t off, std::uint64_t len) const { return layout::in_heap(op.h, off, len); }
    void cell(const Cell& c, const std::string& where, int depth) {
        std::uint64_t meta = rd(c.meta), data = rd(c.data);
        VT ty = static_cast<VT>(meta & 0xff);
        if ((meta & 0xff) > 7) return bad(where + ": unknown value type");
        if (ty == VT::string || ty == VT::bytes) {
            std::uint64_t len = meta >> 8;
            if (len && !in_heap(data, len)) bad(where + ": string outside the heap");
        } else if (ty == VT::list || ty == VT::dict) {
            container(data, ty == VT::dict ? kDictMagic : kListMagic, where, depth + 1);
        } else if (meta >> 8) {
            bad(where + ": scalar with a length");
        }
    }
    void container(std::uint64_t off, std::uint64_t magic, const std::string& where, int depth) {
        if (depth > 64) return bad(where + ": nesting deeper than 64 (a cycle?)");
        if (!in_heap(off, sizeof(CHdr)) || off % 8 != 0) return bad(where + ": container header outside the heap");
        if (!seen.insert(off).second) return bad(where + ": container referenced twice");
        CHdr* c = op.at<CHdr>(off);
        if (rd(c->magic) != magic) return bad(where + ": bad container magic");
        std::uint64_t cap = rd(c->capacity), n = rd(c->count), tab = rd(c->table);
        if (cap == 0) {
            if (n || tab) bad(where + ": empty table with items");
            return;
        }
        if ((cap & (cap - 1)) && magic == kDictMagic) bad(where + ": dict capacity not a power of two");
        std::uint64_t esz = magic == kDictMagic ? sizeof(DEntry) : sizeof(Cell);
        if (!layout::in_heap(op.h, tab, cap, esz) || tab % 8 != 0) return bad(where + ": table outside the heap");
        if (magic == kListMagic) {
            if (n > cap) return bad(where + ": count above capacity");
            Cell* cs = op.at<Cell>(tab);
            for (std::uint64_t i = 0; i < n; ++i) cell(cs[i], where + "[" + std::to_string(i) + "]", depth);
            return;
        }
        DEntry* es = op.at<DEntry>(tab);
        std::uint64_t live = 0, used = 0;
        for (std::uint64_t i = 0; i < cap; ++i) {
            std::uint64_t k = rd(es[i].key), len = rd(es[i].key_len);
            if (k == kEmpty) continue;
            ++used;
            if (k == kTomb) continue;
            ++live;
            if (len && !in_heap(k, len)) {
                bad(where + ": key outside the heap");
                continue;
            }
            std::string_view key(len ? op.base + k : "", len);
            if (rd(es[i].hash) != hash_key(key)) bad(where + ": key hash mismatch");
            std::int64_t at = -1;
            try {
                at = op.dict_find(c, key, hash_key(key), nullptr);  // may meet a bad key on its way
            } catch (const corrupted& x) {
                bad(where + ": " + x.what());
            }
            if (at != static_cast<std::int64_t>(i)) bad(where + ": key not reachable by probing");
            cell(es[i].v, where + "['" + std::string(key.substr(0, 40)) + "']", depth);
        }
        if (live != n) bad(where + ": count " + std::to_string(n) + " but " + std::to_string(live) + " live entries");
        if (used != rd(c->used)) bad(where + ": used counter disagrees with the table");
    }
};

std::vector<std::string> verify_container(Segment& seg, std::uint64_t off, std::uint64_t magic, const char* what) {
    std::vector<std::string> problems;
    Op op(seg);
    Verifier v{op, problems, {}};
    v.container(off, magic, what, 0);
    HeapReport r = heap::verify(op.h);
    for (auto& p : r.problems) problems.push_back("heap: " + p);
    op.t.commit();
    return problems;
}

}  // namespace

// ---- Value ------------------------------------------------------------------

Value::Value(const Dict& d) : type_(Type::dict), ref_(d.ref()) {}
Value::Value(const List& l) : type_(Type::list), ref_(l.ref()) {}

Value Value::new_list(std::vector<Value> items) {
    Value v;
    v.type_ = Type::list;
    auto p = std::make_shared<Pending>();
    p->list = std::move(items);
    v.pending_ = std::move(p);
    return v;
}

Value Value::new_dict(std::vector<std::pair<std::string, Value>> items) {
    Value v;
    v.type_ = Type::dict;
    auto p = std::make_shared<Pending>();
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

// ---- Dict ---------------------------------------------------------------------

Dict Dict::open_or_create(Segment& seg, std::string_view name) {
    return Dict(ContainerRef{&seg, open_root<detail::DictRoot>(seg, name, true, kDictMagic)});
}
Dict Dict::open(Segment& seg, std::string_view name) {
    return Dict(ContainerRef{&seg, open_root<detail::DictRoot>(seg, name, false, kDictMagic)});
}

std::optional<Value> Dict::find(std::string_view key) const {
    return read(*ref_.seg, [&](Op& op) -> std::optional<Value> {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        if (i < 0) return std::nullopt;
        return op.decode(op.at<DEntry>(rd(c->table))[i].v);
    });
}

Value Dict::get(std::string_view key) const {
    auto v = find(key);
    if (!v) throw key_error("shm::Dict: no key '" + std::string(key) + "' in this dict of segment '" + ref_.seg->name() + "'");
    return std::move(*v);
}

Value Dict::get(std::string_view key, const Value& dflt) const {
    auto v = find(key);
    return v ? *v : dflt;
}

void Dict::set(std::string_view key, const Value& v) {
    Value scratch;
    const Value& pv = prepare(v, scratch);
    run(*ref_.seg, [&](Op& op) { op.dict_set(ref_.offset, key, pv); });
}

bool Dict::erase(std::string_view key) {
    return run(*ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        if (i < 0) return false;
        op.dict_erase_at(c, i);
        return true;
    });
}

Value Dict::pop(std::string_view key) {
    auto v = run(*ref_.seg, [&](Op& op) -> std::optional<Value> {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        if (i < 0) return std::nullopt;
        Value out = op.copy_out(op.at<DEntry>(rd(c->table))[i].v);
        op.dict_erase_at(c, i);
        return out;
    });
    if (!v) throw key_error("shm::Dict::pop: no key '" + std::string(key) + "' in this dict of segment '" + ref_.seg->name() + "'");
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
    return read(*ref_.seg, [&](Op& op) { return static_cast<std::size_t>(rd(op.hdr(ref_.offset, kDictMagic)->count)); });
}

void Dict::clear() {
    run(*ref_.seg, [&](Op& op) { op.detach_contents(op.hdr(ref_.offset, kDictMagic)); });
}

std::vector<std::pair<std::string, Value>> Dict::items() const {
    return read(*ref_.seg, [&](Op& op) {
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
    run(*ref_.seg, [&](Op& op) {
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
    return run(*ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        if (i >= 0) return op.decode(op.at<DEntry>(rd(c->table))[i].v);
        op.dict_set(ref_.offset, key, pv);
        c = op.hdr(ref_.offset, kDictMagic);
        return op.decode(op.at<DEntry>(rd(c->table))[op.dict_find(c, key, hash_key(key), nullptr)].v);
    });
}

Value Dict::update(std::string_view key, const std::function<Value(const Value&)>& fn) {
    return run(*ref_.seg, [&](Op& op) {
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
    return run(*ref_.seg, [&](Op& op) {
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
    return run(*ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kDictMagic);
        std::int64_t i = op.dict_find(c, key, hash_key(key), nullptr);
        Value cur = i >= 0 ? op.decode(op.at<DEntry>(rd(c->table))[i].v) : Value(0.0);
        double r = cur.as_double() + n;
        op.dict_set(ref_.offset, key, Value(r));
        return r;
    });
}

std::vector<std::string> Dict::verify() const { return verify_container(*ref_.seg, ref_.offset, kDictMagic, "dict"); }

// ---- List ---------------------------------------------------------------------

List List::open_or_create(Segment& seg, std::string_view name) {
    return List(ContainerRef{&seg, open_root<detail::ListRoot>(seg, name, true, kListMagic)});
}
List List::open(Segment& seg, std::string_view name) {
    return List(ContainerRef{&seg, open_root<detail::ListRoot>(seg, name, false, kListMagic)});
}

void List::append(const Value& v) {
    Value scratch;
    const Value& pv = prepare(v, scratch);
    run(*ref_.seg, [&](Op& op) { op.list_append(ref_.offset, pv); });
}

void List::extend(const std::vector<Value>& vs) {
    std::vector<Value> prepared;
    prepared.reserve(vs.size());
    for (auto& v : vs) {
        Value scratch;
        prepared.push_back(prepare(v, scratch));
    }
    run(*ref_.seg, [&](Op& op) {
        op.batch = true;
        op.list_reserve(op.hdr(ref_.offset, kListMagic), prepared.size());
        for (auto& v : prepared) op.list_append(ref_.offset, v);
    });
}

void List::insert(std::int64_t index, const Value& v) {
    Value scratch;
    const Value& pv = prepare(v, scratch);
    run(*ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        std::int64_t n = static_cast<std::int64_t>(rd(c->count));
        std::int64_t i = index < 0 ? std::max<std::int64_t>(0, index + n) : std::min(index, n);
        auto mv = op.encode(pv);
        if (i == n) {
            if (rd(c->count) == rd(c->capacity)) op.list_rebuild(c, n ? 2 * n : 8, -1, -1);
        } else {
            std::uint64_t cap = rd(c->capacity);
            op.list_rebuild(c, std::uint64_t(n) + 1 > cap ? cap * 2 : cap, i, -1);
        }
        op.write_cell(op.cells(c)[i], mv);
        op.t.store(c->count, n + 1);
    });
}

Value List::get(std::int64_t index) const {
    return read(*ref_.seg, [&](Op& op) {
        CHdr* c = op.hdr(ref_.offset, kListMagic);
        return op.decode(op.cells(c)[normalize(index, rd(c->count), "get")]);
    });
}

void List::set(std::int64_t index, const Value& v) {
    Value scratch;
    const Value& pv = prepare(v, scratch);
    run(*ref_.seg, [&](Op& op) {
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
    return run(*ref_.seg, [&](Op& op) {
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
    run(*ref_.seg, [&](Op& op) {
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
    std::int64_t i = read(*ref_.seg, [&](Op& op) { return list_index(op, op.hdr(ref_.offset, kListMagic), v); });
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
    return read(*ref_.seg, [&](Op& op) { return static_cast<std::size_t>(rd(op.hdr(ref_.offset, kListMagic)->count)); });
}

void List::clear() {
    run(*ref_.seg, [&](Op& op) { op.detach_contents(op.hdr(ref_.offset, kListMagic)); });
}

std::vector<Value> List::snapshot() const { return slice(0, INT64_MAX); }

std::vector<Value> List::slice(std::int64_t start, std::int64_t stop) const {
    return read(*ref_.seg, [&](Op& op) {
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
    return run(*ref_.seg, [&](Op& op) {
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

std::vector<std::string> List::verify() const { return verify_container(*ref_.seg, ref_.offset, kListMagic, "list"); }

}  // namespace shm
