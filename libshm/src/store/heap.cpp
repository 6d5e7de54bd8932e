#include "store/heap.hpp"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "shm/error.hpp"
#include "platform/testing.hpp"
#include "store/heap_blocks.hpp"

namespace shm::testing {
std::atomic<long> crash_countdown{0};
std::atomic<int> failing_forks{0};
void crash_now() { std::raise(SIGKILL); }
}  // namespace shm::testing

namespace shm::heap {

using layout::Header;
using testing::crash_point;
using namespace detail;

std::string detail::where(Header* h) {
    return std::string("segment '") + h->name + "'";
}

void detail::corrupt(Header* h, const std::string& what) {
    throw corrupted(where(h) + ": heap is corrupt: " + what);
}

namespace {

constexpr int kFirstFitScan = 32;

// A block header at b, and the block it describes, wholly in the heap.
bool sane_block(Header* h, std::uint64_t b) {
    if (b % 16 != 0 || b < heap_begin(h) || b >= heap_end(h) || heap_end(h) - b < kMinBlock) return false;
    const std::uint64_t s = size_of(h, b);
    return s >= kMinBlock && s <= heap_end(h) - b;
}

// A block met on a free list (0: the end): a free block in the heap, or
// shm::corrupted (the lists are in the file, which is untrusted).
std::uint64_t listed(Header* h, std::uint64_t b) {
    if (b && !(sane_block(h, b) && is_free(h, b)))
        corrupt(h, "a free list holds a block that is not a free block in the heap");
    return b;
}

void list_remove(Txn& t, std::uint64_t b) {
    Header* h = t.header();
    // The block and its links, written through below: free blocks in the heap.
    listed(h, b);
    std::uint64_t n = listed(h, next_free(h, b)), p = listed(h, prev_free(h, b));
    int k = bin_of(size_of(h, b));
    if (p)
        t.store(word(h, p + 16), n);
    else
        t.store(h->bins[k], n);
    if (n) t.store(word(h, n + 24), p);
    if (!p && !n) t.store(h->bin_bitmap, h->bin_bitmap.load(std::memory_order_relaxed) & ~(1ull << k));
    // Journal the block's own links too: the caller may overwrite them with
    // payload, and an undo must restore them.
    t.store(word(h, b + 16), 0);
    t.store(word(h, b + 24), 0);
}

void list_push(Txn& t, std::uint64_t b) {
    Header* h = t.header();
    int k = bin_of(size_of(h, b));
    std::uint64_t head = listed(h, h->bins[k].load(std::memory_order_relaxed));
    t.store(word(h, b + 16), head);
    t.store(word(h, b + 24), 0);
    if (head) t.store(word(h, head + 24), b);
    t.store(h->bins[k], b);
    t.store(h->bin_bitmap, h->bin_bitmap.load(std::memory_order_relaxed) | (1ull << k));
}

// Write block b's header and the next block's prev_size.
void set_block(Txn& t, std::uint64_t b, std::uint64_t size, bool free) {
    Header* h = t.header();
    t.store(word(h, b), size | (free ? kFree : 0));
    if (b + size < heap_end(h)) t.store(word(h, b + size + 8), size);
}

std::uint64_t request_size(std::size_t bytes, std::size_t align) {
    std::uint64_t r = (std::uint64_t(bytes) + 15) & ~std::uint64_t(15);
    std::uint64_t need = r + 16 + (align > 16 ? align : 0);
    return need < kMinBlock ? kMinBlock : need;
}

std::uint64_t find_fit(Header* h, std::uint64_t need) {
    int k = bin_of(need);
    int scanned = 0;
    for (std::uint64_t b = listed(h, h->bins[k].load(std::memory_order_relaxed)); b && scanned < kFirstFitScan;
         b = listed(h, next_free(h, b)), ++scanned)
        if (size_of(h, b) >= need) return b;
    std::uint64_t higher = k + 1 < 64 ? h->bin_bitmap.load(std::memory_order_relaxed) & ~((2ull << k) - 1) : 0;
    if (!higher) return 0;
    const std::uint64_t b = listed(h, h->bins[__builtin_ctzll(higher)].load(std::memory_order_relaxed));
    return b && size_of(h, b) >= need ? b : 0;
}

}  // namespace

// ---- heap ---------------------------------------------------------------

void init(Header* h) {
    // Called before the segment is published: plain stores, no journal.
    for (auto& b : h->bins) b.store(0, std::memory_order_relaxed);
    h->bin_bitmap.store(0, std::memory_order_relaxed);
    h->used_bytes.store(0, std::memory_order_relaxed);
    h->used_blocks.store(0, std::memory_order_relaxed);
    h->dir_head.store(0, std::memory_order_relaxed);
    h->dir_count.store(0, std::memory_order_relaxed);
    h->journal_count.store(0, std::memory_order_relaxed);
    h->garbage_head.store(0, std::memory_order_relaxed);
    std::uint64_t b = heap_begin(h), size = h->heap_size;
    word(h, b).store(size | kFree, std::memory_order_relaxed);
    word(h, b + 8).store(0, std::memory_order_relaxed);
    word(h, b + 16).store(0, std::memory_order_relaxed);
    word(h, b + 24).store(0, std::memory_order_relaxed);
    int k = bin_of(size);
    h->bins[k].store(b, std::memory_order_relaxed);
    h->bin_bitmap.store(1ull << k, std::memory_order_relaxed);
}

namespace {

// Mark [b, b + size) free, merged with free neighbours, and list it.
void free_range(Txn& t, std::uint64_t b, std::uint64_t size) {
    Header* h = t.header();
    std::uint64_t n = b + size;
    // The neighbours are read, and joined to the range if free: they must be
    // blocks of the heap. (A block freed by offset, taken from an object's
    // state that the file may have damaged, can be one forged inside another
    // block's payload.)
    if (n < heap_end(h) && !sane_block(h, n)) corrupt(h, "a freed block's next block is not in the heap");
    if (b != heap_begin(h)) {
        const std::uint64_t ps = prev_size(h, b);
        if (ps < kMinBlock || ps % 16 != 0 || ps > b - heap_begin(h) || !sane_block(h, b - ps) ||
            size_of(h, b - ps) != ps)
            corrupt(h, "a freed block's previous block is not in the heap");
    }
    if (n < heap_end(h) && is_free(h, n)) {
        size += size_of(h, n);
        list_remove(t, n);
    }
    if (b != heap_begin(h)) {
        std::uint64_t pb = b - prev_size(h, b);
        if (is_free(h, pb)) {
            size += size_of(h, pb);
            list_remove(t, pb);
            b = pb;
        }
    }
    set_block(t, b, size, true);
    list_push(t, b);
}

// The block of payload p, checked to be a live allocation.
std::uint64_t live_block(Header* h, std::uint64_t p) {
    if (p % 16 != 0 || p < heap_begin(h) + 16 || p >= heap_end(h))
        corrupt(h, "deallocate of an address that is not a heap allocation");
    std::uint64_t b = p - 16;
    std::uint64_t w = load(h, b);
    if (w & kShim) {
        if (load(h, b + 8) != kShimMagic || (w & ~kFlagMask) > p - heap_begin(h))
            corrupt(h, "deallocate of an address that is not a heap allocation");
        b = p - (w & ~kFlagMask);
    }
    std::uint64_t size = size_of(h, b);
    std::uint64_t end = heap_end(h);
    if (b < heap_begin(h) || (b - heap_begin(h)) % 16 != 0 || is_free(h, b) || size < kMinBlock ||
        b + size > end || (b + size < end && prev_size(h, b + size) != size))
        corrupt(h, "deallocate of an address that is not a live allocation (double free?)");
    return b;
}

// Finish an allocation of block b (its header already written as used).
std::uint64_t hand_out(Txn& t, std::uint64_t b, std::size_t align) {
    Header* h = t.header();
    t.store(h->used_bytes, h->used_bytes.load(std::memory_order_relaxed) + size_of(h, b));
    t.store(h->used_blocks, h->used_blocks.load(std::memory_order_relaxed) + 1);
    std::uint64_t p = b + 16;
    if (align > 16 && p % align != 0) {
        p = (b + 32 + align - 1) & ~std::uint64_t(align - 1);
        t.store(word(h, p - 16), (p - b) | kShim);
        t.store(word(h, p - 8), kShimMagic);
    }
    return p;
}

}  // namespace

void detail::free_now(Txn& t, std::uint64_t p) {
    Header* h = t.header();
    std::uint64_t b = live_block(h, p);
    std::uint64_t size = size_of(h, b);
    t.store(h->used_bytes, h->used_bytes.load(std::memory_order_relaxed) - size);
    t.store(h->used_blocks, h->used_blocks.load(std::memory_order_relaxed) - 1);
    free_range(t, b, size);
}

namespace {

// The largest free block (the whole top bin is scanned up to a bound).
std::uint64_t largest_block(Header* h) {
    std::uint64_t bm = h->bin_bitmap.load(std::memory_order_relaxed);
    if (!bm) return 0;
    int k = 63 - __builtin_clzll(bm);
    std::uint64_t best = 0;
    int scanned = 0;
    for (std::uint64_t b = listed(h, h->bins[k].load(std::memory_order_relaxed)); b && scanned < 1024;
         b = listed(h, next_free(h, b)), ++scanned)
        if (!best || size_of(h, b) > size_of(h, best)) best = b;
    return best;
}

}  // namespace

void Txn::finish_arena() {
    if (!large_ || !large_->arena.end) return;
    Arena a = std::move(large_->arena);
    large_->arena = Arena{};
    Header* h = h_;
    std::sort(a.freed.begin(), a.freed.end());
    if (std::adjacent_find(a.freed.begin(), a.freed.end()) != a.freed.end())
        corrupt(h, "deallocate of an address that is not a live allocation (double free)");
    // Walk the blocks cut from the arena; hand back each run of freed ones
    // (and the uncut rest, merged with a run that ends at it).
    std::uint64_t run = 0;
    auto f = a.freed.begin();
    for (std::uint64_t b = a.begin; b < a.cur;) {
        std::uint64_t size = size_of(h, b);
        bool freed = f != a.freed.end() && *f == b;
        if (freed) {
            ++f;
            if (!run) run = b;
        } else if (run) {
            free_range(*this, run, b - run);
            run = 0;
        }
        b += size;
    }
    if (a.cur < a.end && !run) run = a.cur;
    if (run) free_range(*this, run, a.end - run);
}

std::uint64_t allocate(Txn& t, std::size_t bytes, std::size_t align) {
    Header* h = t.header();
    if (bytes > h->heap_size) return 0;
    std::uint64_t need = request_size(bytes, align);
    if (t.large_ && t.large_->arena.end && t.large_->arena.end - t.large_->arena.cur < need) t.finish_arena();
    if ((!t.large_ || !t.large_->arena.end) &&
        h->journal_count.load(std::memory_order_relaxed) >= h->journal_capacity / 4) {
        // A large transaction: take a whole free block as an arena.
        std::uint64_t b = largest_block(h);
        if (!b || size_of(h, b) < need) {
            b = find_fit(h, need);
            if (!b) return 0;
        }
        std::uint64_t size = size_of(h, b);
        list_remove(t, b);
        t.store(word(h, b), size);  // used: no neighbour merges with it while it is open
        Txn::Arena& a = t.large().arena;
        a.begin = a.cur = b;
        a.end = b + size;
        t.large_->fresh.add(b + 16, a.end);
    }
    if (t.large_ && t.large_->arena.end) {
        Txn::Arena& a = t.large_->arena;
        std::uint64_t b = a.cur;
        if (a.end - b - need < kMinBlock) need = a.end - b;  // no sliver left behind
        t.store(word(h, b), need);
        // What follows learns this block's size at once (the uncut rest, or
        // the block after the arena), as for any block.
        if (b + need < heap_end(h)) t.store(word(h, b + need + 8), need);
        a.cur = b + need;
        return hand_out(t, b, align);
    }
    std::uint64_t b = find_fit(h, need);
    if (!b) return 0;
    std::uint64_t size = size_of(h, b);
    list_remove(t, b);
    if (size - need >= kMinBlock) {
        std::uint64_t r = b + need;
        set_block(t, r, size - need, true);
        t.store(word(h, r + 8), need);
        list_push(t, r);
        set_block(t, b, need, false);
        size = need;
    } else {
        set_block(t, b, size, false);
    }
    // J2: the block's header and links are journaled above; its payload is
    // this transaction's own from here on.
    // Tracked in a large transaction, and for a large block in any (a table
    // rebuilt aside, whose every word the operation is about to write).
    if (t.large_ || size >= kLargeBlock) t.large().fresh.add(b + 16, b + size);
    return hand_out(t, b, align);
}

bool expand(Txn& t, std::uint64_t p, std::size_t bytes) {
    Header* h = t.header();
    // Blocks cut from an open arena have no free neighbour to take (its
    // uncut rest has no header yet): such a caller copies instead.
    if (t.large_ && t.large_->arena.end) return false;
    if (bytes > h->heap_size) return false;
    std::uint64_t b = live_block(h, p);
    if (b + 16 != p) return false;  // over-aligned: not grown in place
    const std::uint64_t size = size_of(h, b), need = request_size(bytes, 16);
    if (need <= size) return true;
    const std::uint64_t n = b + size;
    if (n >= heap_end(h) || !sane_block(h, n) || !is_free(h, n) || prev_size(h, n) != size) return false;
    const std::uint64_t total = size + size_of(h, n);
    if (total < need) return false;
    // The free block's header words become payload: journaled here (its
    // links by list_remove), so that an undo finds the block as it was
    // whatever the caller writes into its new room with plain writes (J2).
    t.store(word(h, n), load(h, n));
    t.store(word(h, n + 8), load(h, n + 8));
    list_remove(t, n);
    std::uint64_t grown = total;
    if (total - need >= kMinBlock) {
        const std::uint64_t r = b + need;
        set_block(t, r, total - need, true);
        t.store(word(h, r + 8), need);
        list_push(t, r);
        grown = need;
    }
    set_block(t, b, grown, false);
    t.store(h->used_bytes, h->used_bytes.load(std::memory_order_relaxed) + (grown - size));
    if (t.large_ || grown >= kLargeBlock) t.large().fresh.add(n, b + grown);
    return true;
}

void deallocate(Txn& t, std::uint64_t p) {
    Header* h = t.header();
    std::uint64_t b = live_block(h, p);
    if (t.large_ && t.large_->arena.end && b >= t.large_->arena.begin && b < t.large_->arena.cur) {
        Txn::Arena& a = t.large_->arena;
        // Cut from the open arena: handed back when the arena closes.
        std::uint64_t size = size_of(h, b);
        t.store(h->used_bytes, h->used_bytes.load(std::memory_order_relaxed) - size);
        t.store(h->used_blocks, h->used_blocks.load(std::memory_order_relaxed) - 1);
        a.freed.push_back(b);
        return;
    }
    if (t.fresh(b + 16, 16)) return free_now(t, p);
    // Existed before the transaction: freed at commit (J2).
    t.deferred_.push_back(p);
}

std::uint64_t largest_free(Header* h) {
    std::uint64_t b = largest_block(h);
    std::uint64_t size = b ? size_of(h, b) : 0;
    return size > 16 ? size - 16 : 0;
}

// ---- directory ----------------------------------------------------------

DirEntry* dir_entry(Header* h, std::uint64_t e) {
    if (e % 16 != 0 || !layout::in_heap(h, e, sizeof(DirEntry)) || e < heap_begin(h) + 16)
        throw corrupted(where(h) + ": object directory is corrupt: an entry at " + std::to_string(e) +
                        " is outside the heap");
    auto* d = reinterpret_cast<DirEntry*>(base(h) + e);
    if (d->name_len == 0 || d->name_len >= sizeof d->name)
        throw corrupted(where(h) + ": object directory is corrupt: an entry has a name of " +
                        std::to_string(d->name_len) + " bytes");
    if (d->object_offset % 16 != 0 || d->object_offset < heap_begin(h) + 16 ||
        !layout::in_heap(h, d->object_offset, d->object_size))
        throw corrupted(where(h) + ": object directory is corrupt: object '" + std::string(d->name, d->name_len) +
                        "' lies outside the heap");
    return d;
}

DirEntry* dir_find(Header* h, const char* name, std::size_t len, DirEntry** prev) {
    DirEntry* last = nullptr;
    std::uint64_t limit = h->dir_count.load(std::memory_order_relaxed) + 1;
    for (std::uint64_t e = h->dir_head.load(std::memory_order_relaxed); e;) {
        if (limit-- == 0)
            throw corrupted(where(h) + ": object directory is corrupt: it is longer than its count");
        DirEntry* d = dir_entry(h, e);
        if (d->name_len == len && std::memcmp(d->name, name, len) == 0) {
            if (prev) *prev = last;
            return d;
        }
        last = d;
        e = d->next.load(std::memory_order_relaxed);
    }
    return nullptr;
}

}  // namespace shm::heap
