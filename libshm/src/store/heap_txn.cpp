// Heap transactions: the undo journal, and what only a large transaction
// needs (fresh ranges, a filter, an index, an arena). See heap.hpp.
#include <algorithm>
#include <cstring>
#include <string>

#include "core/wait.hpp"
#include "platform/platform.hpp"
#include "platform/testing.hpp"
#include "shm/error.hpp"
#include "store/heap.hpp"
#include "store/heap_blocks.hpp"

namespace shm::heap {

using layout::Header;
using testing::crash_point;
using namespace detail;

// ---- transactions -------------------------------------------------------


namespace {
// A waiter for the heap lock tries this many times, 16 PAUSEs apart (some
// µs in all), before it sleeps.
constexpr int kHeapLockTries = 64;

// Take the heap lock. Its holders hold it briefly (one container operation
// or allocation), while a waiter that sleeps costs the holder a futex wake
// at its unlock and itself a wake-up across CPUs (tens of µs): two
// processes appending to one list, or setting keys of one dict, ran half
// as fast as one. So a waiter first tries for a moment, unless more tasks
// are runnable than there are CPUs (then spinning would hold a CPU the
// holder may need). try_lock() recovers from a dead owner as lock() does.
void lock_heap(Mutex& m) {
    if (m.try_lock()) return;
    if (core::spin_allowed(core::now_ns()))
        for (int i = 0; i < kHeapLockTries; ++i) {
            for (int k = 0; k < 16; ++k) platform::cpu_relax();
            if (m.try_lock()) return;
        }
    m.lock();
}

// Lock the heap; roll back what a dead holder left (true if it did).
bool lock_and_recover(Header* h) {
    Mutex& m = layout::heap_lock(h);
    lock_heap(m);
    // Acquire: the count and entries were published by a dead holder's
    // release stores (Txn::store); the mutex acquisition already orders them.
    if (m.previous_owner_died() || h->journal_count.load(std::memory_order_acquire) != 0) {
        try {
            rollback(h);
        } catch (...) {
            m.unlock();
            throw;
        }
        return true;
    }
    return false;
}
}  // namespace

Txn::Txn(Header* h) : h_(h) { recovered_ = lock_and_recover(h); }

OneStore::OneStore(Header* h) : h_(h) { lock_and_recover(h); }

OneStore::~OneStore() { layout::heap_lock(h_).unlock(); }

void OneStore::commit(std::atomic<std::uint64_t>& w, std::uint64_t value) {
    crash_point();
    w.store(value, std::memory_order_release);
    crash_point();
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

}  // namespace shm::heap
