// shm::Dict and shm::List: one operation on a container (Op), its core.
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
//   list table        capacity × Cell: the cells past count are not live
//                     (garbage until an append fills one and publishes it
//                     with its count store); the capacity doubles, in place
//                     where the heap block after the table is free
//                     (heap::expand), else by a copy of the live cells
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
#include <cstring>

#include "platform/platform.hpp"
#include "objects/container_op.hpp"

namespace shm::containers {

std::uint64_t Op::alloc(std::size_t n, const char* what) {
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

// What Op::hdr found wrong with the header at off, as an error.
void Op::bad_header(std::uint64_t off, std::uint64_t magic) const {
    const bool dict = magic == kDictMagic;
    const char* kind = dict ? "dict" : "list";
    if (off % 8 != 0 || !layout::in_heap(h, off, sizeof(CHdr)))
        throw corrupted(where() + ": container handle points outside the heap");
    CHdr* c = at<CHdr>(off);
    if (rd(c->magic) != magic) throw corrupted(where() + ": no " + kind + " at this handle (destroyed?)");
    const std::uint64_t cap = rd(c->capacity), tab = rd(c->table), n = rd(c->count);
    const std::uint64_t esz = dict ? sizeof(DEntry) : sizeof(Cell);
    if (n <= cap && cap && tab % 8 == 0 && layout::in_heap(h, tab, cap, esz) &&
        !(dict && ((cap & (cap - 1)) != 0 || rd(c->used) > cap)))
        throw corrupted(where() + ": a " + kind + "'s table (at " + std::to_string(tab) + ") is not a heap block of " +
                        std::to_string(cap) + " entries");
    throw corrupted(where() + ": a " + kind + "'s header is corrupt (count " + std::to_string(n) + ", capacity " +
                    std::to_string(cap) + ", table at " + std::to_string(tab) + ")");
}

// The bytes of a dict key, checked against the heap.
const char* Op::key_bytes(const DEntry& e) const {
    const std::uint64_t k = rd(e.key), len = rd(e.key_len);
    if (len == 0) return "";
    if (!layout::in_heap(h, k, len)) throw corrupted(where() + ": a dict key points outside the heap");
    return base + k;
}

std::uint64_t Op::new_container(std::uint64_t magic) {
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

void Op::release_cell(std::uint64_t meta, std::uint64_t data) {
    VT ty = static_cast<VT>(meta & 0xff);
    if ((ty == VT::string || ty == VT::bytes) && data) free_block(data);
    if (ty == VT::list || ty == VT::dict) dropped.push_back(data);
}

void Op::write_cell(Cell& c, std::pair<std::uint64_t, std::uint64_t> mv) {
    t.store(c.meta, mv.first);
    t.store(c.data, mv.second);
}

void Op::to_garbage(std::uint64_t c) {
    CHdr* g = at<CHdr>(c);
    t.store(g->cursor, 0);
    t.store(g->next_garbage, rd(h->garbage_head));
    t.store(h->garbage_head, c);
}

// Move a container's contents to the garbage list and leave it empty.
void Op::detach_contents(CHdr* c) {
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
bool Op::collect(int budget) {
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

// Put what this operation dropped on its way out, then commit. A few
// pieces are released directly; many go on the garbage list as one batch
// (one journaled link instead of a few journal entries per piece).
void Op::finish(int gc_budget) {
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

}  // namespace shm::containers
