// A segment file is input from anyone who can write to the shm directory.
// Damage every structure the library follows (the header, the attach table,
// the object directory, a dict and a list, a queue's control block, a
// shared array's header and lock) and
// check that every reader either works or refuses with a shm::error that
// says the file is bad: never a signal, never a hang. Each case runs in a
// forked child, so that a crash fails the test instead of the runner.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "store/layout.hpp"
#include "store/heap.hpp"
#include "objects/container_layout.hpp"
#include "objects/queue_layout.hpp"
#include "objects/shared_array_layout.hpp"
#include "support.hpp"
#include "untrusted.hpp"

namespace {

std::uint64_t get64(const std::string& img, std::size_t off) {
    std::uint64_t v = 0;
    std::memcpy(&v, img.data() + off, sizeof v);
    return v;
}
void put64(std::string& img, std::size_t off, std::uint64_t v) { std::memcpy(&img[off], &v, sizeof v); }
void put32(std::string& img, std::size_t off, std::uint32_t v) { std::memcpy(&img[off], &v, sizeof v); }

// Run body in a forked child with SHM_DAEMON=off; the child exits 0 if body
// returns true. A signal, a hang or a false fails the test.
void isolated(const std::function<bool()>& body) {
    pid_t pid = test::spawn([&] {
        ::setenv("SHM_DAEMON", "off", 1);
        return body() ? 0 : 1;
    });
    test::require_exit_ok(pid, std::chrono::minutes(5));
}

// Drive every reader over img; report what was not expected.
bool drive_ok(const std::string& img, const std::string& label) {
    if (!untrusted::write_file(img)) return false;
    untrusted::Outcome o = untrusted::drive();
    for (const std::string& u : o.unexpected) std::fprintf(stderr, "%s: unexpected refusal: %s\n", label.c_str(), u.c_str());
    return o.unexpected.empty();
}

// Values worth writing over a 64-bit word that held v (v + 4: an offset
// inside the heap that is not aligned for the words it would hold).
std::vector<std::uint64_t> bad_words(std::uint64_t v) {
    return {0, 1, 8, ~std::uint64_t(0), std::uint64_t(1) << 40, v + 4, v + 8, v - 16, v ^ 0x8000, v * 2, v >> 1};
}

// Corrupt every 64-bit word of [begin, end) of img with bad_words(), and
// every 32-bit half with a few values; drive each variant.
bool corrupt_each_word(const std::string& img, std::size_t begin, std::size_t end, const std::string& what) {
    for (std::size_t off = begin; off + 8 <= end; off += 8) {
        for (std::uint64_t v : bad_words(get64(img, off))) {
            std::string m = img;
            put64(m, off, v);
            char label[128];
            std::snprintf(label, sizeof label, "%s: word at %zu = %#llx", what.c_str(), off,
                          static_cast<unsigned long long>(v));
            std::fprintf(stderr, "%s\r", label);  // the last line a crash leaves
            if (!drive_ok(m, label)) return false;
        }
        for (std::size_t half : {off, off + 4})
            for (std::uint32_t v : {0u, 1u, 0x7fffffffu, 0xffffffffu}) {
                std::string m = img;
                put32(m, half, v);
                if (!drive_ok(m, what + ": 32-bit word at " + std::to_string(half))) return false;
            }
    }
    return true;
}

// Offsets of the structures in a fresh image (read from the file itself).
struct Map {
    std::uint64_t heap_offset = 0, heap_end = 0;
    std::vector<std::uint64_t> entries;  // directory entries
    std::uint64_t dict = 0, list = 0;    // container headers
    std::uint64_t queue = 0, queue_size = 0;
    std::uint64_t array = 0, array_size = 0;    // "a": c_int x 5, with a lock
    std::uint64_t scalar = 0, scalar_size = 0;  // "v": c_double, without
    std::uint64_t work_root = 0, work = 0;      // "w": a WorkQueue's root and its state
    std::uint64_t objects_end = 0;              // past the last object
};
Map map_of(const std::string& img) {
    Map m;
    m.heap_offset = get64(img, offsetof(shm::layout::Header, heap_offset));
    m.heap_end = m.heap_offset + get64(img, offsetof(shm::layout::Header, heap_size));
    for (std::uint64_t e = get64(img, offsetof(shm::layout::Header, dir_head)); e;
         e = get64(img, e + offsetof(shm::heap::DirEntry, next))) {
        m.entries.push_back(e);
        shm::heap::DirEntry d;
        std::memcpy(static_cast<void*>(&d), img.data() + e, sizeof d);
        std::string name(d.name, d.name_len);
        if (name == "d") m.dict = get64(img, d.object_offset);
        if (name == "l") m.list = get64(img, d.object_offset);
        if (name == "q") {
            m.queue = d.object_offset;
            m.queue_size = d.object_size;
        }
        if (name == "a") {
            m.array = d.object_offset;
            m.array_size = d.object_size;
        }
        if (name == "w") {
            m.work_root = d.object_offset;
            m.work = get64(img, d.object_offset + 8);  // WorkQueueRoot::state
        }
        if (name == "v") {
            m.scalar = d.object_offset;
            m.scalar_size = d.object_size;
        }
        m.objects_end = std::max(m.objects_end, d.object_offset + d.object_size);
    }
    return m;
}

}  // namespace

TEST_CASE("a fresh image drives cleanly", "[untrusted]") {
    test::ShmDir dir;
    std::string img = untrusted::make_image();
    isolated([&] {
        if (!untrusted::write_file(img)) return false;
        untrusted::Outcome o = untrusted::drive();
        for (auto& u : o.unexpected) std::fprintf(stderr, "unexpected: %s\n", u.c_str());
        // Everything works except create() of a name that exists.
        return o.unexpected.empty() && o.refused == 1;
    });
    Map m = map_of(img);
    CHECK(m.entries.size() == 6);
    CHECK(m.work != 0);
    CHECK(m.dict != 0);
    CHECK(m.list != 0);
    CHECK(m.queue != 0);
    CHECK(m.array != 0);
    CHECK(m.scalar != 0);
}

TEST_CASE("the reported headers: attach table offset and directory head", "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image(1 << 20);
    SECTION("offset 40 (attach_offset) of ~0 or 1 << 40: open() and create() throw corrupted") {
        for (std::uint64_t v : {~std::uint64_t(0), std::uint64_t(1) << 40}) {
            std::string m = img;
            put64(m, 40, v);
            isolated([&] {
                untrusted::write_file(m);
                try {
                    shm::Segment::open(untrusted::kName);
                    return false;
                } catch (const shm::corrupted& e) {
                    if (!std::strstr(e.what(), "attach table")) return false;
                }
                try {
                    shm::Segment::create(untrusted::kName, 1 << 20);
                    return false;
                } catch (const shm::corrupted&) {
                }
                // shmctl stat says the same, from the same check.
                shm::admin::SegmentInfo si = shm::admin::inspect_segment(untrusted::path(), true);
                return si.status == shm::admin::SegmentStatus::corrupt &&
                       si.error.message.find("attach table") != std::string::npos;
            });
        }
    }
    SECTION("offset 376 (dir_head): open() refuses, or objects() and Dict::open() throw corrupted") {
        Map mp = map_of(img);
        for (std::uint64_t v : {std::uint64_t(1), std::uint64_t(8), ~std::uint64_t(0), std::uint64_t(1) << 40,
                                mp.heap_offset + 16, mp.heap_offset + 4096, mp.heap_end - 16, mp.heap_end,
                                mp.dict, mp.entries[0] + 16}) {
            std::string m = img;
            put64(m, 376, v);
            isolated([&] {
                untrusted::write_file(m);
                std::unique_ptr<shm::Segment> seg;
                try {
                    seg = std::make_unique<shm::Segment>(shm::Segment::open(untrusted::kName));
                } catch (const shm::corrupted&) {
                    return true;  // refused at open: the head is outside the heap
                }
                bool ok = true;
                try {
                    (void)seg->objects();
                    ok = false;
                } catch (const shm::corrupted&) {
                }
                try {
                    (void)shm::Dict::open(*seg, "d");
                    ok = false;
                } catch (const shm::corrupted&) {
                } catch (const shm::not_found&) {
                }
                return ok;
            });
        }
    }
}

TEST_CASE("every word of the header, damaged", "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image();
    isolated([&] { return corrupt_each_word(img, 0, sizeof(shm::layout::Header), "header"); });
}

TEST_CASE("the attach table, damaged", "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image();
    isolated([&] { return corrupt_each_word(img, 4096, 4096 + 2 * shm::layout::kSlotSize, "attach table"); });
}

TEST_CASE("every directory entry, damaged", "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image();
    Map m = map_of(img);
    REQUIRE(m.entries.size() == 6);
    for (std::uint64_t e : m.entries)
        isolated([&] { return corrupt_each_word(img, e, e + sizeof(shm::heap::DirEntry), "directory entry"); });
}

TEST_CASE("a dict and a list, damaged: their headers and tables", "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image();
    Map m = map_of(img);
    using shm::container_layout::CHdr;
    for (std::uint64_t c : {m.dict, m.list}) {
        const std::uint64_t table = get64(img, c + offsetof(CHdr, table));
        const std::uint64_t cap = get64(img, c + offsetof(CHdr, capacity));
        const std::uint64_t esz = c == m.dict ? sizeof(shm::container_layout::DEntry) : sizeof(shm::container_layout::Cell);
        isolated([&] { return corrupt_each_word(img, c, c + sizeof(CHdr), "container header"); });
        isolated([&] { return corrupt_each_word(img, table, table + cap * esz, "container table"); });
    }
}

TEST_CASE("a queue's control block and slots, damaged", "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image();
    Map m = map_of(img);
    REQUIRE(m.queue != 0);
    // The control block up to the actors, then the slots.
    isolated([&] { return corrupt_each_word(img, m.queue, m.queue + 512, "queue control"); });
    const std::uint64_t slots = m.queue + sizeof(shm::detail::QueueControl);
    isolated([&] { return corrupt_each_word(img, slots, slots + 8 * sizeof(shm::detail::QueueSlot), "queue slots"); });
}

TEST_CASE("a work queue's root, state, ring, leases and items, damaged", "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image();
    Map m = map_of(img);
    REQUIRE(m.work != 0);
    // The root; the state (16 words: work_queue.cpp); then its ring, lease
    // records and dead letters (capacity 4), and the items they name.
    isolated([&] { return corrupt_each_word(img, m.work_root, m.work_root + 32, "work queue root"); });
    isolated([&] { return corrupt_each_word(img, m.work, m.work + 128, "work queue state"); });
    for (int k : {2, 5, 7}) {  // ring, leases, dead letters
        const std::uint64_t a = get64(img, m.work + 8 * k);
        isolated([&] { return corrupt_each_word(img, a, a + (k == 5 ? 4 * 32 : 4 * 8), "work queue array"); });
    }
    const std::uint64_t ring = get64(img, m.work + 16), head = get64(img, m.work + 24);
    const std::uint64_t item = get64(img, ring + 8 * head);
    isolated([&] { return corrupt_each_word(img, item, item + 48, "work queue item"); });
}

TEST_CASE("a shared array's and a shared scalar's header and lock, damaged", "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image();
    Map m = map_of(img);
    REQUIRE(m.array != 0);
    REQUIRE(m.scalar != 0);
    using namespace shm::detail;
    // Header, lock and the first elements; the scalar's header and value.
    isolated([&] { return corrupt_each_word(img, m.array, m.array + data_offset(kHasLock) + 16, "shared array"); });
    isolated([&] { return corrupt_each_word(img, m.scalar, m.scalar + m.scalar_size, "shared scalar"); });
}

TEST_CASE("a shared array's header, damaged: each check refuses with corrupted, naming what is wrong",
          "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image();
    const Map m = map_of(img);
    using namespace shm::detail;
    using H = SharedArrayHeader;
    struct Case {
        const char* what;
        const char* object;  // "a" (the array) or "v" (the scalar)
        std::function<void(std::string&)> damage;
        const char* says;
    };
    auto put8 = [](std::string& b, std::size_t off, std::uint8_t v) { b[off] = static_cast<char>(v); };
    const std::uint64_t a = m.array, v = m.scalar;
    const std::size_t lock_word = kLockOffset + offsetof(pthread_mutex_t, __data.__lock);
    const std::size_t lock_kind = kLockOffset + offsetof(pthread_mutex_t, __data.__kind);
    const std::vector<Case> cases = {
        {"bad magic", "a", [&](std::string& b) { put64(b, a + offsetof(H, magic), 1); }, "bad magic"},
        {"count past its block", "a", [&](std::string& b) { put64(b, a + offsetof(H, count), 6); },
         "do not fill its block"},
        {"count short of its block", "a", [&](std::string& b) { put64(b, a + offsetof(H, count), 4); },
         "do not fill its block"},
        {"count × size overflowing", "a",
         [&](std::string& b) { put64(b, a + offsetof(H, count), (std::uint64_t(1) << 62) + 5); },
         "do not fill its block"},
        {"an element size that is not its type's", "a",
         [&](std::string& b) { put32(b, a + offsetof(H, element_size), 8); }, "does not match its element type"},
        {"a type of another size", "a", [&](std::string& b) { put8(b, a + offsetof(H, element_type), 'd'); },
         "does not match its element type"},
        {"an unknown type", "a", [&](std::string& b) { put8(b, a + offsetof(H, element_type), 'x'); },
         "not one this libshm knows"},
        {"other, without a key", "a", [&](std::string& b) { put8(b, a + offsetof(H, element_type), 0); },
         "no size or no key"},
        {"a typecode and a key", "a", [&](std::string& b) { put64(b, a + offsetof(H, type_key), 99); },
         "both a typecode"},
        {"unknown flags", "a", [&](std::string& b) { put8(b, a + offsetof(H, flags), kHasLock | 0x80); }, "flags"},
        {"reserved bytes", "a", [&](std::string& b) { put8(b, a + offsetof(H, reserved), 1); }, "flags"},
        {"a scalar of five", "a", [&](std::string& b) { put8(b, a + offsetof(H, flags), kHasLock | kScalar); },
         "scalar of other than one element"},
        {"a lock it has no room for", "v", [&](std::string& b) { put8(b, v + offsetof(H, flags), kHasLock | kScalar); },
         "smaller than its header and lock"},
        {"a lock that is not a RecursiveMutex", "a", [&](std::string& b) { put32(b, a + lock_kind, 0); },
         "not a libshm RecursiveMutex"},
        // A lock word naming a thread that cannot exist (over pid_max):
        // nobody would ever release it.
        {"a lock held by nobody", "a", [&](std::string& b) { put32(b, a + lock_word, 0x3ffffff0); }, "stays held"},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        std::string bad = img;
        c.damage(bad);
        isolated([&] {
            untrusted::write_file(bad);
            auto seg = shm::Segment::open(untrusted::kName);
            const char* name = c.object;
            // Type-erased, then typed: both refuse.
            for (int k = 0; k < 2; ++k) {
                try {
                    if (k == 0)
                        (void)shm::open_shared_array(seg, name);
                    else if (*name == 'a')
                        (void)shm::SharedArray<std::int32_t>::open(seg, name);
                    else
                        (void)shm::SharedScalar<double>::open(seg, name);
                    std::fprintf(stderr, "%s: opened\n", c.what);
                    return false;
                } catch (const shm::corrupted& e) {
                    if (!std::strstr(e.what(), c.says)) {
                        std::fprintf(stderr, "%s: %s\n", c.what, e.what());
                        return false;
                    }
                }
            }
            // shmctl stat says so too, from the same checks.
            shm::admin::SegmentInfo si = shm::admin::inspect_segment(untrusted::path(), true);
            for (const auto& o : si.objects)
                // (It reads a lock's holder without judging it.)
                if (o.info.name == name && std::strcmp(c.says, "stays held") != 0 &&
                    o.error.message.find(c.says) == std::string::npos) {
                    std::fprintf(stderr, "%s: inspect says '%s'\n", c.what, o.error.message.c_str());
                    return false;
                }
            return true;
        });
    }
    // Its element type changed to another of the same size: a typed open
    // is refused as the wrong type; a type-erased one sees the new type.
    std::string other = img;
    put8(other, m.array + offsetof(H, element_type), 'f');
    isolated([&] {
        untrusted::write_file(other);
        auto seg = shm::Segment::open(untrusted::kName);
        try {
            (void)shm::SharedArray<std::int32_t>::open(seg, "a");
            return false;
        } catch (const shm::type_mismatch&) {
        }
        return shm::open_shared_array(seg, "a").type == shm::ElementType::c_float &&
               shm::SharedArray<float>::open(seg, "a").size() == 5;
    });
}

TEST_CASE("random damage to the header and the heap, fixed seed", "[untrusted]") {
    test::ShmDir dir;
    const std::string img = untrusted::make_image();
    Map m = map_of(img);
    // Batches of iterations per child: a crash names its batch and the last
    // iteration it printed.
    constexpr int kBatches = 20, kPerBatch = 100;
    for (int b = 0; b < kBatches; ++b) {
        INFO("batch " << b);
        isolated([&] {
            std::mt19937_64 rng(0x5eed0000u + static_cast<unsigned>(b));
            for (int i = 0; i < kPerBatch; ++i) {
                std::string mtd = img;
                const int changes = 1 + static_cast<int>(rng() % 8);
                // Half the iterations in the header, half anywhere up to the
                // end of the objects (directory, containers, queue, arrays).
                const std::size_t limit = i % 2 ? sizeof(shm::layout::Header) : std::size_t(m.objects_end);
                for (int k = 0; k < changes; ++k) {
                    std::size_t off = (i % 2 ? 0 : m.heap_offset) + rng() % (limit - (i % 2 ? 0 : m.heap_offset));
                    if (rng() % 2)
                        mtd[off] = static_cast<char>(rng());
                    else
                        mtd[off] ^= static_cast<char>(1u << (rng() % 8));
                }
                std::fprintf(stderr, "random batch %d iteration %d\r", b, i);
                if (!drive_ok(mtd, "random batch " + std::to_string(b) + " iteration " + std::to_string(i)))
                    return false;
            }
            return true;
        });
    }
}

TEST_CASE("shmctl names a segment by its file, not by the name its header claims", "[untrusted]") {
    test::ShmDir dir;
    std::string img = untrusted::make_image();
    const char other[] = "someone-else";
    std::memset(&img[offsetof(shm::layout::Header, name)], 0, sizeof(shm::layout::Header::name));
    std::memcpy(&img[offsetof(shm::layout::Header, name)], other, sizeof other - 1);
    REQUIRE(untrusted::write_file(img));
    // gc and rm act on this name: a forged header must not point them at
    // another segment.
    shm::admin::SegmentInfo si = shm::admin::inspect_segment(untrusted::path(), false);
    CHECK(si.status == shm::admin::SegmentStatus::ok);
    CHECK(si.name == untrusted::kName);
}
