// Writes the fuzzer's seed corpus: a fresh 96 KiB segment with a dict, a
// list, a queue, a shared array and a shared scalar (tests/untrusted.hpp),
// and mutants of it that each break one thing the readers follow. (Not a
// forged heap lock, nor a forged lock of the array: opening gives such a
// lock 100 ms to be released, and every mutant of that seed would pay it;
// test_untrusted covers them.) Usage: make_corpus DIR (the committed corpus
// is tests/fuzz/corpus/segment; ./dev fuzz --seed-corpus remakes it).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "../untrusted.hpp"
#include "objects/container_layout.hpp"
#include "store/heap.hpp"
#include "store/layout.hpp"
#include "objects/queue_layout.hpp"
#include "objects/shared_array_layout.hpp"

namespace {
using shm::layout::Header;

std::uint64_t get64(const std::string& img, std::size_t off) {
    std::uint64_t v = 0;
    std::memcpy(&v, img.data() + off, sizeof v);
    return v;
}
std::string with64(std::string img, std::size_t off, std::uint64_t v) {
    std::memcpy(&img[off], &v, sizeof v);
    return img;
}
std::string with32(std::string img, std::size_t off, std::uint32_t v) {
    std::memcpy(&img[off], &v, sizeof v);
    return img;
}
}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    const std::filesystem::path out = argv[1];
    std::filesystem::create_directories(out);
    char tmpl[] = "/dev/shm/libshm-corpus.XXXXXX";
    if (!::mkdtemp(tmpl)) return 1;
    ::setenv("SHM_DIR", tmpl, 1);
    ::setenv("SHM_DAEMON", "off", 1);
    const std::string img = untrusted::make_image(96 * 1024);
    std::filesystem::remove_all(tmpl);

    // Where the objects are, read from the image.
    std::uint64_t dict = 0, list = 0, queue = 0, array = 0, scalar = 0, work = 0;
    for (std::uint64_t e = get64(img, offsetof(Header, dir_head)); e;
         e = get64(img, e + offsetof(shm::heap::DirEntry, next))) {
        const char* name = img.data() + e + offsetof(shm::heap::DirEntry, name);
        const std::uint64_t obj = get64(img, e + offsetof(shm::heap::DirEntry, object_offset));
        if (std::strcmp(name, "d") == 0) dict = get64(img, obj);
        if (std::strcmp(name, "l") == 0) list = get64(img, obj);
        if (std::strcmp(name, "q") == 0) queue = obj;
        if (std::strcmp(name, "a") == 0) array = obj;
        if (std::strcmp(name, "v") == 0) scalar = obj;
        if (std::strcmp(name, "w") == 0) work = get64(img, obj + 8);  // WorkQueueRoot::state
    }
    if (!dict || !list || !queue || !array || !scalar || !work) return 1;
    using shm::detail::SharedArrayHeader;
    using shm::container_layout::CHdr;
    using shm::detail::QueueControl;
    const std::uint64_t heap = get64(img, offsetof(Header, heap_offset));
    const std::uint64_t journal = get64(img, offsetof(Header, journal_offset));

    const std::pair<const char*, std::string> seeds[] = {
        {"fresh", img},
        {"attach-offset-max", with64(img, offsetof(Header, attach_offset), ~std::uint64_t(0))},
        {"dir-head-inside-heap", with64(img, offsetof(Header, dir_head), heap + 16)},
        {"journal-onto-itself", with64(with32(img, offsetof(Header, journal_count), 1), journal, offsetof(Header, journal_count))},
        {"half-made", with32(img, offsetof(Header, state), shm::layout::kInitialising)},
        {"dict-count-huge", with64(img, dict + offsetof(CHdr, count), std::uint64_t(1) << 40)},
        {"list-table-outside", with64(img, list + offsetof(CHdr, table), 8)},
        {"list-capacity-past-block", with64(img, list + offsetof(CHdr, capacity), 64)},
        {"list-full", with64(img, list + offsetof(CHdr, count), get64(img, list + offsetof(CHdr, capacity)))},
        {"queue-capacity-3", with32(img, queue + offsetof(QueueControl, capacity), 3)},
        {"queue-item-outside",
         with64(img, queue + sizeof(QueueControl) + offsetof(shm::detail::QueueSlot, item), ~std::uint64_t(0) >> 1)},
        {"array-count-huge", with64(img, array + offsetof(SharedArrayHeader, count), std::uint64_t(1) << 40)},
        {"array-lock-kind", with32(img, array + shm::detail::kLockOffset + offsetof(pthread_mutex_t, __data.__kind), 0)},
        {"scalar-size-wrong", with32(img, scalar + offsetof(SharedArrayHeader, element_size), 4)},
        // The WorkQueue's state (work_queue.cpp): word 2 the ring, word 4 the waiting count.
        {"workqueue-ring-outside", with64(img, work + 2 * 8, ~std::uint64_t(0) >> 1)},
        {"workqueue-waiting-huge", with64(img, work + 4 * 8, std::uint64_t(1) << 40)},
    };
    for (const auto& [name, bytes] : seeds) {
        std::ofstream f(out / name, std::ios::binary | std::ios::trunc);
        f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        if (!f) return 1;
    }
    std::printf("make_corpus: %zu seeds in %s\n", std::size(seeds), out.c_str());
    return 0;
}
