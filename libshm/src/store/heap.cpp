#include "store/heap.hpp"

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "shm/error.hpp"
#include "platform/testing.hpp"

namespace shm::testing {
std::atomic<long> crash_countdown{0};
void crash_now() { std::raise(SIGKILL); }
}  // namespace shm::testing

namespace shm::heap {

using layout::Header;
using testing::crash_point;

namespace {

constexpr std::uint64_t kFree = 1;
constexpr std::uint64_t kShim = 2;  // word before an over-aligned payload
constexpr std::uint64_t kFlagMask = 15;
constexpr std::uint64_t kMinBlock = 32;
constexpr std::uint64_t kShimMagic = 0x6d696873'6d687362ull;
constexpr int kFirstFitScan = 32;

char* base(Header* h) { return reinterpret_cast<char*>(h); }
std::atomic<std::uint64_t>& word(Header* h, std::uint64_t off) {
    return *reinterpret_cast<std::atomic<std::uint64_t>*>(base(h) + off);
}
std::uint64_t load(Header* h, std::uint64_t off) {
    return word(h, off).load(std::memory_order_relaxed);  // under the heap lock
}

std::uint64_t heap_begin(Header* h) { return h->heap_offset; }
std::uint64_t heap_end(Header* h) { return h->heap_offset + h->heap_size; }

// Block fields.
std::uint64_t size_of(Header* h, std::uint64_t b) { return load(h, b) & ~kFlagMask; }
bool is_free(Header* h, std::uint64_t b) { return (load(h, b) & kFree) != 0; }
std::uint64_t prev_size(Header* h, std::uint64_t b) { return load(h, b + 8); }
std::uint64_t next_free(Header* h, std::uint64_t b) { return load(h, b + 16); }
std::uint64_t prev_free(Header* h, std::uint64_t b) { return load(h, b + 24); }

int bin_of(std::uint64_t size) { return 63 - __builtin_clzll(size); }

std::string where(Header* h) {
    return std::string("segment '") + h->name + "'";
}

[[noreturn]] void corrupt(Header* h, const std::string& what) {
    throw corrupted(where(h) + ": heap is corrupt: " + what);
}

void list_remove(Txn& t, std::uint64_t b) {
    Header* h = t.header();
    std::uint64_t n = next_free(h, b), p = prev_free(h, b);
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
    std::uint64_t head = h->bins[k].load(std::memory_order_relaxed);
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
    for (std::uint64_t b = h->bins[k].load(std::memory_order_relaxed); b && scanned < kFirstFitScan;
         b = next_free(h, b), ++scanned)
        if (size_of(h, b) >= need) return b;
    std::uint64_t higher = k + 1 < 64 ? h->bin_bitmap.load(std::memory_order_relaxed) & ~((2ull << k) - 1) : 0;
    if (!higher) return 0;
    return h->bins[__builtin_ctzll(higher)].load(std::memory_order_relaxed);
}

}  // namespace

// ---- transactions -------------------------------------------------------

namespace {
// J1 and J2 only save journal entries (an entry too many is harmless: replay
// restores the oldest value, and a fresh block freed at commit rather than at
// once is still freed). Below this many entries a transaction neither looks
// for them nor keeps what it would need to (Txn::Large).
constexpr std::uint32_t kSaveFrom = 256;
constexpr std::uint64_t kLargeBlock = 1024;
void free_now(Txn& t, std::uint64_t p);
}  // namespace

Txn::Txn(Header* h) : h_(h) {
    Mutex& m = layout::heap_lock(h);
    m.lock();
    // Acquire: the count and entries were published by a dead holder's
    // release stores (Txn::store); the mutex acquisition already orders them.
    if (m.previous_owner_died() || h->journal_count.load(std::memory_order_acquire) != 0) {
        try {
            rollback(h);
        } catch (...) {
            m.unlock();
            throw;
        }
        recovered_ = true;
    }
}

Txn::~Txn() {
    if (!committed_) {
        try {
            rollback(h_);
        } catch (...) {
            // A journal that cannot be replayed stays in place; the next
            // holder reports it as corruption instead of using the heap.
        }
    }
    layout::heap_lock(h_).unlock();
}

std::size_t Txn::journal_room() const noexcept {
    std::uint32_t n = h_->journal_count.load(std::memory_order_relaxed);
    return n < h_->journal_capacity ? h_->journal_capacity - n : 0;
}

bool FreshRanges::contains(std::uint64_t off, std::uint64_t len) const noexcept {
    if (sorted_.empty()) {
        for (std::size_t i = 0; i < n_; ++i)
            if (off >= small_[i].begin && off + len <= small_[i].end) return true;
        return false;
    }
    // The last range starting at or before off (ranges never overlap here).
    auto it = std::upper_bound(sorted_.begin(), sorted_.end(), std::make_pair(off, ~std::uint64_t(0)));
    if (it == sorted_.begin()) return false;
    --it;
    return off + len <= it->second;
}

void FreshRanges::add(std::uint64_t begin, std::uint64_t end) {
    if (sorted_.empty() && n_ < kSmall) {
        small_[n_++] = {begin, end};
        return;
    }
    if (sorted_.empty()) {
        // Spill: from here on sorted and merged, so one search answers.
        std::size_t n = n_;
        n_ = 0;
        sorted_.emplace_back(small_[0].begin, small_[0].end);
        for (std::size_t i = 1; i < n; ++i) add(small_[i].begin, small_[i].end);
    }
    auto it = std::lower_bound(sorted_.begin(), sorted_.end(), std::make_pair(begin, std::uint64_t(0)));
    if (it != sorted_.begin() && std::prev(it)->second >= begin) {
        --it;
        begin = it->first;
    }
    auto last = it;
    while (last != sorted_.end() && last->first <= end) {
        end = std::max(end, last->second);
        ++last;
    }
    it = sorted_.erase(it, last);
    sorted_.insert(it, {begin, end});
}

namespace {
unsigned filter_bit(std::uint64_t off) { return static_cast<unsigned>(((off >> 3) * 0x9E37'79B9'7F4A'7C15ull) >> 56); }
}  // namespace

Txn::Large& Txn::large() {
    if (!large_) {
        large_ = std::make_unique<Large>();
        std::uint32_t n = h_->journal_count.load(std::memory_order_relaxed);
        const layout::UndoEntry* j = layout::journal(h_);
        for (std::uint32_t i = 0; i < n; ++i) {
            unsigned bit = filter_bit(j[i].offset.load(std::memory_order_relaxed));
            large_->filter[bit >> 6] |= std::uint64_t(1) << (bit & 63);
        }
    }
    return *large_;
}

bool Txn::journaled(std::uint64_t off) {
    Large& l = large();
    unsigned bit = filter_bit(off);
    if (!((l.filter[bit >> 6] >> (bit & 63)) & 1)) return false;
    std::uint32_t n = h_->journal_count.load(std::memory_order_relaxed);
    const layout::UndoEntry* j = layout::journal(h_);
    for (; l.indexed < n; ++l.indexed) l.journaled.insert(j[l.indexed].offset.load(std::memory_order_relaxed));
    return l.journaled.count(off) != 0;
}

void Txn::store(std::atomic<std::uint64_t>& w, std::uint64_t value) {
    std::uint64_t off = static_cast<std::uint64_t>(reinterpret_cast<char*>(&w) - base(h_));
    if (h_->journal_count.load(std::memory_order_relaxed) >= kSaveFrom && (journaled(off) || fresh(off))) {
        // J1/J2: an undo needs nothing more for this word.
        w.store(value, std::memory_order_relaxed);
        crash_point();
        return;
    }
    std::uint32_t i = h_->journal_count.load(std::memory_order_relaxed);
    if (i >= h_->journal_capacity)
        // The destructor rolls back what this transaction did so far.
        throw error(E2BIG, where(h_) + ": operation too large to commit atomically (it changes more than " +
                               std::to_string(h_->journal_capacity) + " words that existed before it); split it");
    layout::UndoEntry* j = layout::journal(h_);
    j[i].offset.store(off, std::memory_order_relaxed);
    j[i].old_value.store(w.load(std::memory_order_relaxed), std::memory_order_relaxed);
    if (large_) {
        unsigned bit = filter_bit(off);
        large_->filter[bit >> 6] |= std::uint64_t(1) << (bit & 63);
    }
    crash_point();
    // Release: publishes the entry above before the count that covers it;
    // partner is the acquire load of count in rollback().
    h_->journal_count.store(i + 1, std::memory_order_release);
    crash_point();
    // Release: the new value is never in memory before its undo entry.
    w.store(value, std::memory_order_release);
    crash_point();
}

void Txn::store_last(std::atomic<std::uint64_t>& w, std::uint64_t value) {
    if (h_->journal_count.load(std::memory_order_relaxed) != 0 || !deferred_.empty() || (large_ && large_->arena.end))
        return store(w, value);
    crash_point();
    // Release: the fresh memory this store makes reachable (filled with plain
    // writes) is complete first; partner: the next lock holder's reads.
    w.store(value, std::memory_order_release);
    crash_point();
}

void Txn::commit() {
    crash_point();
    if (large_ && large_->arena.end) finish_arena();
    if (!deferred_.empty()) {
        std::sort(deferred_.begin(), deferred_.end());
        if (std::adjacent_find(deferred_.begin(), deferred_.end()) != deferred_.end())
            corrupt(h_, "deallocate of an address that is not a live allocation (double free)");
        for (std::uint64_t p : deferred_) free_now(*this, p);
        deferred_.clear();
    }
    // Release: every store of the transaction precedes the commit; partner is
    // the acquire load of count in the next holder's Txn constructor. A
    // transaction that changed nothing (a read) writes nothing.
    if (h_->journal_count.load(std::memory_order_relaxed) != 0)
        h_->journal_count.store(0, std::memory_order_release);
    committed_ = true;
}

void rollback(Header* h) {
    std::uint32_t n = h->journal_count.load(std::memory_order_acquire);  // partner: Txn::store's release
    if (n > h->journal_capacity || h->journal_capacity > layout::kJournalCapacity ||
        h->journal_offset + std::uint64_t(h->journal_capacity) * sizeof(layout::UndoEntry) > h->heap_offset)
        corrupt(h, "journal count " + std::to_string(n) + " out of range");
    layout::UndoEntry* j = layout::journal(h);
    for (std::uint32_t i = n; i-- > 0;) {
        std::uint64_t off = j[i].offset.load(std::memory_order_relaxed);
        // Only the heap's words are ever journaled: its header words (bins,
        // counters, directory, garbage list), never the journal's own, and
        // the heap itself.
        const bool header_word = off >= offsetof(Header, bin_bitmap) && off < offsetof(Header, journal_count);
        const bool garbage_word = off == offsetof(Header, garbage_head);
        if (off % 8 != 0 || !(header_word || garbage_word || layout::in_heap(h, off, 8)))
            corrupt(h, "journal entry points outside the heap");
        crash_point();
        word(h, off).store(j[i].old_value.load(std::memory_order_relaxed), std::memory_order_release);
    }
    // Release: the restored words precede the cleared count. Replaying again
    // after a crash right here restores the same values.
    h->journal_count.store(0, std::memory_order_release);
}

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

// Free the block of payload p now (it is not in an open arena).
void free_now(Txn& t, std::uint64_t p) {
    Header* h = t.header();
    std::uint64_t b = live_block(h, p);
    std::uint64_t size = size_of(h, b);
    t.store(h->used_bytes, h->used_bytes.load(std::memory_order_relaxed) - size);
    t.store(h->used_blocks, h->used_blocks.load(std::memory_order_relaxed) - 1);
    free_range(t, b, size);
}

// The largest free block (the whole top bin is scanned up to a bound).
std::uint64_t largest_block(Header* h) {
    std::uint64_t bm = h->bin_bitmap.load(std::memory_order_relaxed);
    if (!bm) return 0;
    int k = 63 - __builtin_clzll(bm);
    std::uint64_t best = 0;
    int scanned = 0;
    for (std::uint64_t b = h->bins[k].load(std::memory_order_relaxed); b && scanned < 1024;
         b = next_free(h, b), ++scanned)
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

// ---- verify -------------------------------------------------------------

HeapReport verify(Header* h) {
    HeapReport r;
    auto problem = [&](std::string s) {
        r.ok = false;
        if (r.problems.size() < 32) r.problems.push_back(std::move(s));
    };
    std::uint64_t begin = heap_begin(h), end = heap_end(h);
    r.heap_bytes = h->heap_size;
    if (h->journal_count.load(std::memory_order_acquire) != 0)
        problem("journal holds " + std::to_string(h->journal_count.load()) + " uncommitted entries");

    // 1. Physical walk.
    std::uint64_t walk_free_blocks = 0, prev = 0;
    bool prev_was_free = false;
    std::uint64_t b = begin;
    while (b < end) {
        std::uint64_t size = size_of(h, b);
        if (size < kMinBlock || size % 16 != 0 || size > end - b) {
            problem("block at " + std::to_string(b) + " has bad size " + std::to_string(size));
            break;
        }
        if (prev_size(h, b) != prev)
            problem("block at " + std::to_string(b) + " records prev_size " +
                    std::to_string(prev_size(h, b)) + ", previous block is " + std::to_string(prev));
        bool f = is_free(h, b);
        if (f) {
            if (prev_was_free) problem("adjacent free blocks at " + std::to_string(b));
            ++walk_free_blocks;
            r.free_bytes += size;
            r.largest_free = std::max(r.largest_free, size - 16);
            int k = bin_of(size);
            if (!(h->bin_bitmap.load(std::memory_order_relaxed) & (1ull << k)))
                problem("free block at " + std::to_string(b) + " in bin " + std::to_string(k) +
                        " whose bitmap bit is clear");
        } else {
            ++r.used_blocks;
            r.used_bytes += size;
        }
        prev_was_free = f;
        prev = size;
        b += size;
    }
    if (r.ok && b != end) problem("heap walk ended at " + std::to_string(b) + ", not at " + std::to_string(end));
    if (r.used_bytes + r.free_bytes != h->heap_size && r.ok)
        problem("used + free != heap size");
    if (r.used_bytes != h->used_bytes.load(std::memory_order_relaxed))
        problem("used_bytes counter " + std::to_string(h->used_bytes.load()) + " but walk found " +
                std::to_string(r.used_bytes));
    if (r.used_blocks != h->used_blocks.load(std::memory_order_relaxed))
        problem("used_blocks counter " + std::to_string(h->used_blocks.load()) + " but walk found " +
                std::to_string(r.used_blocks));

    // 2. Free lists.
    std::uint64_t list_free_blocks = 0;
    std::uint64_t bm = h->bin_bitmap.load(std::memory_order_relaxed);
    for (int k = 0; k < 64; ++k) {
        std::uint64_t head = h->bins[k].load(std::memory_order_relaxed);
        if (bool(head) != bool(bm & (1ull << k)))
            problem("bin " + std::to_string(k) + " bitmap bit disagrees with its list");
        std::uint64_t p = 0, steps = 0;
        for (std::uint64_t e = head; e; e = next_free(h, e)) {
            if (e < begin || !layout::in_heap(h, e, kMinBlock) || (e - begin) % 16 != 0) {
                problem("bin " + std::to_string(k) + " links to " + std::to_string(e) + " outside the heap");
                break;
            }
            if (!is_free(h, e)) problem("bin " + std::to_string(k) + " holds a used block at " + std::to_string(e));
            if (size_of(h, e) < kMinBlock || bin_of(size_of(h, e)) != k)
                problem("block at " + std::to_string(e) + " is in the wrong bin");
            if (prev_free(h, e) != p) problem("bad back link at " + std::to_string(e));
            p = e;
            if (++steps > walk_free_blocks + 1) {
                problem("bin " + std::to_string(k) + " has a cycle");
                break;
            }
        }
        list_free_blocks += steps;
    }
    if (list_free_blocks != walk_free_blocks)
        problem("free lists hold " + std::to_string(list_free_blocks) + " blocks, the heap has " +
                std::to_string(walk_free_blocks));
    r.free_blocks = walk_free_blocks;

    // 3. Directory.
    std::uint64_t count = h->dir_count.load(std::memory_order_relaxed), seen = 0;
    for (std::uint64_t e = h->dir_head.load(std::memory_order_relaxed); e;) {
        if (++seen > count + 1) {
            problem("object directory is broken");
            break;
        }
        DirEntry* d;
        try {
            d = dir_entry(h, e);
        } catch (const corrupted& x) {
            problem(x.what());
            break;
        }
        if (is_free(h, e - 16)) problem("directory entry at " + std::to_string(e) + " is in a free block");
        e = d->next.load(std::memory_order_relaxed);
    }
    if (seen != count) problem("directory count " + std::to_string(count) + " but " + std::to_string(seen) + " entries");
    r.objects = seen;
    return r;
}

}  // namespace shm::heap
