// Segment::verify()'s heap check: the physical walk, the free lists and the
// object directory, each against the others and the header's counters.
#include <algorithm>
#include <string>

#include "shm/error.hpp"
#include "store/heap.hpp"
#include "store/heap_blocks.hpp"

namespace shm::heap {

using layout::Header;
using namespace detail;

namespace {

class Checker {
public:
    explicit Checker(Header* h) : h_(h) {}

    HeapReport run() {
        r_.heap_bytes = h_->heap_size;
        if (h_->journal_count.load(std::memory_order_acquire) != 0)
            problem("journal holds " + std::to_string(h_->journal_count.load()) + " uncommitted entries");
        walk();
        free_lists();
        directory();
        return std::move(r_);
    }

private:
    void problem(std::string s) {
        r_.ok = false;
        if (r_.problems.size() < 32) r_.problems.push_back(std::move(s));
    }

    // 1. Every block in address order: sizes, back sizes, coalescing, bins.
    void walk() {
        std::uint64_t begin = heap_begin(h_), end = heap_end(h_), prev = 0;
        bool prev_was_free = false;
        std::uint64_t b = begin;
        while (b < end) {
            std::uint64_t size = size_of(h_, b);
            if (size < kMinBlock || size % 16 != 0 || size > end - b) {
                problem("block at " + std::to_string(b) + " has bad size " + std::to_string(size));
                break;
            }
            if (prev_size(h_, b) != prev)
                problem("block at " + std::to_string(b) + " records prev_size " + std::to_string(prev_size(h_, b)) +
                        ", previous block is " + std::to_string(prev));
            bool f = is_free(h_, b);
            if (f) {
                if (prev_was_free) problem("adjacent free blocks at " + std::to_string(b));
                ++walk_free_blocks_;
                r_.free_bytes += size;
                r_.largest_free = std::max(r_.largest_free, size - 16);
                int k = bin_of(size);
                if (!(h_->bin_bitmap.load(std::memory_order_relaxed) & (1ull << k)))
                    problem("free block at " + std::to_string(b) + " in bin " + std::to_string(k) +
                            " whose bitmap bit is clear");
            } else {
                ++r_.used_blocks;
                r_.used_bytes += size;
            }
            prev_was_free = f;
            prev = size;
            b += size;
        }
        if (r_.ok && b != end) problem("heap walk ended at " + std::to_string(b) + ", not at " + std::to_string(end));
        if (r_.used_bytes + r_.free_bytes != h_->heap_size && r_.ok) problem("used + free != heap size");
        if (r_.used_bytes != h_->used_bytes.load(std::memory_order_relaxed))
            problem("used_bytes counter " + std::to_string(h_->used_bytes.load()) + " but walk found " +
                    std::to_string(r_.used_bytes));
        if (r_.used_blocks != h_->used_blocks.load(std::memory_order_relaxed))
            problem("used_blocks counter " + std::to_string(h_->used_blocks.load()) + " but walk found " +
                    std::to_string(r_.used_blocks));
    }

    // 2. Each bin's list: in the heap, free, the right bin, linked both ways,
    // no cycle, and as many blocks as the walk found.
    void free_lists() {
        std::uint64_t begin = heap_begin(h_), list_free_blocks = 0;
        std::uint64_t bm = h_->bin_bitmap.load(std::memory_order_relaxed);
        for (int k = 0; k < 64; ++k) {
            std::uint64_t head = h_->bins[k].load(std::memory_order_relaxed);
            if (bool(head) != bool(bm & (1ull << k))) problem("bin " + std::to_string(k) + " bitmap bit disagrees with its list");
            std::uint64_t p = 0, steps = 0;
            for (std::uint64_t e = head; e; e = next_free(h_, e)) {
                if (e < begin || !layout::in_heap(h_, e, kMinBlock) || (e - begin) % 16 != 0) {
                    problem("bin " + std::to_string(k) + " links to " + std::to_string(e) + " outside the heap");
                    break;
                }
                if (!is_free(h_, e)) problem("bin " + std::to_string(k) + " holds a used block at " + std::to_string(e));
                if (size_of(h_, e) < kMinBlock || bin_of(size_of(h_, e)) != k)
                    problem("block at " + std::to_string(e) + " is in the wrong bin");
                if (prev_free(h_, e) != p) problem("bad back link at " + std::to_string(e));
                p = e;
                if (++steps > walk_free_blocks_ + 1) {
                    problem("bin " + std::to_string(k) + " has a cycle");
                    break;
                }
            }
            list_free_blocks += steps;
        }
        if (list_free_blocks != walk_free_blocks_)
            problem("free lists hold " + std::to_string(list_free_blocks) + " blocks, the heap has " +
                    std::to_string(walk_free_blocks_));
        r_.free_blocks = walk_free_blocks_;
    }

    // 3. The object directory: sound entries in used blocks, as many as counted.
    void directory() {
        std::uint64_t count = h_->dir_count.load(std::memory_order_relaxed), seen = 0;
        for (std::uint64_t e = h_->dir_head.load(std::memory_order_relaxed); e;) {
            if (++seen > count + 1) {
                problem("object directory is broken");
                break;
            }
            DirEntry* d;
            try {
                d = dir_entry(h_, e);
            } catch (const corrupted& x) {
                problem(x.what());
                break;
            }
            if (is_free(h_, e - 16)) problem("directory entry at " + std::to_string(e) + " is in a free block");
            e = d->next.load(std::memory_order_relaxed);
        }
        if (seen != count) problem("directory count " + std::to_string(count) + " but " + std::to_string(seen) + " entries");
        r_.objects = seen;
    }

    Header* h_;
    HeapReport r_;
    std::uint64_t walk_free_blocks_ = 0;
};

}  // namespace

HeapReport verify(Header* h) { return Checker(h).run(); }

}  // namespace shm::heap
