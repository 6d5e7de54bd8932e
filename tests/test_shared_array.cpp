// SharedArray and SharedScalar (Python's multiprocessing Array and Value):
//
//  * element types: typecodes, sizes, the C++ types they map to;
//  * the typed handles and the type-erased functions a binding uses, over
//    the one layout: indexing, bounds, locks present or absent, the
//    element type checked on open, handles that outlive the Segment;
//  * refusals (too large, overflow, out of space, wrong type, bad
//    initializer) leave the segment byte for byte as it was;
//  * processes that add under the lock, or with fetch_add, end exact;
//  * crash tests: creators killed at every crash point; writers SIGKILLed
//    hundreds of times holding the lock, half-way through their writes,
//    while a bystander goes on: the next locker is told, the segment
//    verifies, nothing hangs.
//
// Children report through exit codes (never Catch macros); every wait is
// bounded; nothing asserts on durations.
#include <sched.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <numeric>

#include <shm/shm.hpp>

#include "objects/shared_array_layout.hpp"
#include "platform/testing.hpp"
#include "process.hpp"
#include "store/layout.hpp"
#include "support.hpp"

using namespace std::chrono_literals;
using shm::ElementType;
using shm::SharedArray;
using shm::SharedScalar;

namespace {

constexpr std::size_t kSize = 1 << 20;

struct Point {
    double x, y;
    std::int32_t id;
};
struct OtherPoint {  // the same size, another type
    double x, y;
    float w;
};
static_assert(sizeof(Point) == sizeof(OtherPoint));

struct Pair {  // 8 bytes: one atomic access
    std::int32_t a, b;
};

// The whole segment file as bytes, but the undo journal's entries: a heap
// transaction that rolls back leaves in them what it recorded (scratch
// space, meaningless while the journal count is 0, which is checked).
std::string image(shm::Segment& seg) {
    const auto* h = static_cast<const shm::layout::Header*>(seg.base());
    REQUIRE(h->journal_count.load() == 0);
    std::string b(static_cast<const char*>(seg.base()), seg.size());
    std::fill(b.begin() + static_cast<std::ptrdiff_t>(h->journal_offset),
              b.begin() + static_cast<std::ptrdiff_t>(h->journal_offset + h->journal_capacity * sizeof(shm::layout::UndoEntry)),
              '\0');
    return b;
}

int errno_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const shm::error& e) {
        return e.code().value();
    }
    return 0;
}

}  // namespace

// ---- element types -----------------------------------------------------------------------

TEST_CASE("element types: Python's typecodes, their sizes, names and C++ types", "[shared_array]") {
    const std::string codes = "cbBhHiIlLqQfd?";
    for (char c : codes) {
        INFO("typecode " << c);
        auto t = shm::from_typecode(c);
        REQUIRE(t);
        CHECK(static_cast<char>(*t) == c);
        CHECK(shm::typecode(*t) == c);
        CHECK(shm::element_size(*t) > 0);
        CHECK(std::string(shm::to_string(*t)).rfind("c_", 0) == 0);
    }
    for (char c : {'u', 'x', 'D', '\0', 'g'}) CHECK_FALSE(shm::from_typecode(c));
    CHECK(shm::typecode(ElementType::other) == '\0');
    CHECK(shm::element_size(ElementType::other) == 0);
    CHECK(std::string(shm::to_string(ElementType::other)) == "other");
    CHECK(std::string(shm::to_string(ElementType::c_int)) == "c_int");

    // Each typecode's C++ type and size (LP64: 'l' is 64 bits).
    CHECK(shm::element_type_v<char> == ElementType::c_char);
    CHECK(shm::element_type_v<std::int8_t> == ElementType::c_byte);
    CHECK(shm::element_type_v<std::uint8_t> == ElementType::c_ubyte);
    CHECK(shm::element_type_v<std::int16_t> == ElementType::c_short);
    CHECK(shm::element_type_v<std::uint16_t> == ElementType::c_ushort);
    CHECK(shm::element_type_v<std::int32_t> == ElementType::c_int);
    CHECK(shm::element_type_v<std::uint32_t> == ElementType::c_uint);
    CHECK(shm::element_type_v<long> == ElementType::c_long);
    CHECK(shm::element_type_v<unsigned long> == ElementType::c_ulong);
    CHECK(shm::element_type_v<long long> == ElementType::c_longlong);
    CHECK(shm::element_type_v<unsigned long long> == ElementType::c_ulonglong);
    CHECK(shm::element_type_v<float> == ElementType::c_float);
    CHECK(shm::element_type_v<double> == ElementType::c_double);
    CHECK(shm::element_type_v<bool> == ElementType::c_bool);
    CHECK(shm::element_type_v<Point> == ElementType::other);
    CHECK(shm::element_type_v<wchar_t> == ElementType::other);
    CHECK(shm::element_size(ElementType::c_char) == 1);
    CHECK(shm::element_size(ElementType::c_short) == 2);
    CHECK(shm::element_size(ElementType::c_int) == 4);
    CHECK(shm::element_size(ElementType::c_long) == 8);
    CHECK(shm::element_size(ElementType::c_ulong) == 8);
    CHECK(shm::element_size(ElementType::c_longlong) == 8);
    CHECK(shm::element_size(ElementType::c_float) == 4);
    CHECK(shm::element_size(ElementType::c_double) == 8);
    CHECK(shm::element_size(ElementType::c_bool) == 1);
}

// ---- SharedArray ---------------------------------------------------------------------------

TEST_CASE("SharedArray: zero-filled, indexing, at(), iteration and its lock", "[shared_array]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("arr", kSize);
    auto a = SharedArray<std::int32_t>::create(seg, "a", 10);
    REQUIRE(a.size() == 10);
    CHECK_FALSE(a.empty());
    CHECK(a.name() == "a");
    CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % 16 == 0);
    CHECK(std::all_of(a.begin(), a.end(), [](std::int32_t v) { return v == 0; }));
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<std::int32_t>(i * i);
    CHECK(std::accumulate(a.begin(), a.end(), 0) == 285);
    CHECK(a.at(9) == 81);
    CHECK_THROWS_AS(a.at(10), std::out_of_range);
    CHECK_THROWS_WITH(a.at(10), Catch::Contains("index 10") && Catch::Contains("size 10"));

    REQUIRE(a.has_lock());
    shm::RecursiveMutex& m = a.get_lock();
    {
        std::lock_guard<shm::RecursiveMutex> g(m);
        std::lock_guard<shm::RecursiveMutex> again(a.get_lock());  // re-entrant, like an RLock
        CHECK(m.depth() == 2);
        CHECK_FALSE(m.previous_owner_died());
        CHECK(m.owner_pid() == ::getpid());
    }
    CHECK(m.depth() == 0);

    const shm::SharedArrayInfo& info = a.info();
    CHECK(info.name == "a");
    CHECK(info.type == ElementType::c_int);
    CHECK(info.typecode() == 'i');
    CHECK(info.element_size == 4);
    CHECK(info.count == 10);
    CHECK(info.bytes() == 40);
    CHECK_FALSE(info.scalar);
    CHECK(info.data == a.data());
    CHECK(info.lock == &m);
    CHECK(info.attachment != nullptr);

    // Another handle, and another attachment, see the same elements.
    auto b = SharedArray<std::int32_t>::open(seg, "a");
    CHECK(b.data() == a.data());
    auto other = shm::Segment::open("arr");
    auto c = SharedArray<std::int32_t>::open(other, "a");
    CHECK(c.data() != a.data());
    CHECK(c[7] == 49);
    c[7] = -1;
    CHECK(a[7] == -1);
    CHECK(seg.verify().ok);

    const auto objs = seg.objects();
    REQUIRE(objs.size() == 1);
    CHECK(objs[0].kind == shm::ObjectKind::shared_array);
    CHECK(std::string(shm::to_string(objs[0].kind)) == "shared_array");
    CHECK(objs[0].size == shm::detail::data_offset(shm::detail::kHasLock) + 40);
}

TEST_CASE("SharedArray: made from values, without a lock, of length 0, of structs", "[shared_array]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("arr2", kSize);
    SECTION("from values") {
        const double v[] = {1.5, -2.25, 3.0};
        auto a = SharedArray<double>::create(seg, "d", v, 3);
        REQUIRE(a.size() == 3);
        CHECK(a[0] == 1.5);
        CHECK(a[1] == -2.25);
        CHECK(a[2] == 3.0);
        CHECK(a.info().type == ElementType::c_double);
        // open_or_create finds it as it is: its length and values.
        const double w[] = {9, 9, 9, 9, 9};
        auto b = SharedArray<double>::open_or_create(seg, "d", w, 5);
        CHECK(b.size() == 3);
        CHECK(b[0] == 1.5);
        CHECK(b.has_lock());
        auto c = SharedArray<double>::open_or_create(seg, "e", w, 5, false);
        CHECK(c.size() == 5);
        CHECK(c[4] == 9);
        CHECK_FALSE(c.has_lock());
    }
    SECTION("without a lock") {
        auto a = SharedArray<std::uint8_t>::create(seg, "raw", 100, false);
        CHECK_FALSE(a.has_lock());
        CHECK(a.info().lock == nullptr);
        CHECK(errno_of([&] { a.get_lock(); }) == ENOLCK);
        CHECK_THROWS_WITH(a.get_lock(), Catch::Contains("without a lock"));
        CHECK(seg.objects()[0].size == 32 + 100);  // no room for a lock
        CHECK(reinterpret_cast<std::uintptr_t>(a.data()) % 16 == 0);
    }
    SECTION("of length 0") {
        auto a = SharedArray<float>::create(seg, "none", 0);
        CHECK(a.size() == 0);
        CHECK(a.empty());
        CHECK(a.begin() == a.end());
        CHECK_THROWS_AS(a.at(0), std::out_of_range);
        CHECK(SharedArray<float>::open(seg, "none").size() == 0);
        CHECK(shm::open_shared_array(seg, "none").count == 0);
    }
    SECTION("of a struct: checked by its C++ type") {
        auto a = SharedArray<Point>::create(seg, "pts", 4);
        a[2] = Point{1.0, 2.0, 7};
        CHECK(SharedArray<Point>::open(seg, "pts")[2].id == 7);
        CHECK_THROWS_AS(SharedArray<OtherPoint>::open(seg, "pts"), shm::type_mismatch);
        CHECK_THROWS_AS(SharedArray<std::int64_t>::open(seg, "pts"), shm::type_mismatch);
        shm::SharedArrayInfo info = shm::open_shared_array(seg, "pts");
        CHECK(info.type == ElementType::other);
        CHECK(info.typecode() == '\0');
        CHECK(info.element_size == sizeof(Point));
        CHECK(info.count == 4);
        // The type-erased functions make only typecode types.
        CHECK(errno_of([&] { shm::create_shared_array(seg, "o", ElementType::other, 4); }) == EINVAL);
        CHECK_THROWS_AS(shm::open_or_create_shared_array(seg, "pts", ElementType::c_double, 4), shm::type_mismatch);
    }
}

TEST_CASE("opening checks the element type and the shape, and changes nothing", "[shared_array]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("types", kSize);
    auto a = SharedArray<std::int32_t>::create(seg, "ints", 4);
    a[0] = 5;
    auto s = SharedScalar<double>::create(seg, "x", 2.5);
    shm::Dict d = shm::Dict::open_or_create(seg, "d");
    const std::string before = image(seg);

    CHECK_THROWS_AS(SharedArray<double>::open(seg, "ints"), shm::type_mismatch);
    CHECK_THROWS_WITH(SharedArray<double>::open(seg, "ints"),
                      Catch::Contains("'ints'") && Catch::Contains("c_int ('i', 4 bytes)") &&
                          Catch::Contains("not c_double ('d', 8 bytes)"));
    CHECK_THROWS_AS(SharedArray<std::uint32_t>::open(seg, "ints"), shm::type_mismatch);
    CHECK_THROWS_AS(SharedArray<float>::open(seg, "ints"), shm::type_mismatch);
    CHECK_THROWS_AS(SharedArray<double>::open_or_create(seg, "ints", 4), shm::type_mismatch);
    CHECK_THROWS_AS(shm::open_or_create_shared_array(seg, "ints", ElementType::c_short, 4), shm::type_mismatch);
    // A scalar is not an array, and the other way round.
    CHECK_THROWS_AS(SharedScalar<std::int32_t>::open(seg, "ints"), shm::type_mismatch);
    CHECK_THROWS_WITH(SharedArray<double>::open(seg, "x"), Catch::Contains("is a shm::SharedScalar, not a shm::SharedArray"));
    CHECK_THROWS_AS(shm::open_or_create_shared_scalar(seg, "ints", ElementType::c_int), shm::type_mismatch);
    CHECK_THROWS_AS(shm::open_or_create_shared_array(seg, "x", ElementType::c_double, 1), shm::type_mismatch);
    // Other objects and absent names.
    CHECK_THROWS_AS(SharedArray<std::int32_t>::open(seg, "d"), shm::type_mismatch);
    CHECK_THROWS_AS(shm::open_shared_array(seg, "d"), shm::type_mismatch);
    CHECK_THROWS_AS(shm::Dict::open(seg, "ints"), shm::type_mismatch);
    CHECK_THROWS_AS(seg.find<std::int32_t>("ints"), shm::type_mismatch);
    CHECK_THROWS_AS(SharedArray<std::int32_t>::open(seg, "absent"), shm::not_found);
    CHECK_THROWS_AS(shm::open_shared_array(seg, "absent"), shm::not_found);
    CHECK_THROWS_AS(SharedArray<std::int32_t>::create(seg, "ints", 4), shm::already_exists);
    CHECK_THROWS_AS(SharedScalar<double>::create(seg, "x"), shm::already_exists);
    CHECK_THROWS_AS(SharedArray<std::int32_t>::create(seg, "/bad", 4), shm::name_error);
    CHECK(image(seg) == before);
    CHECK(a[0] == 5);
    CHECK(s.load() == 2.5);

    // Types of one representation open each other's arrays: C long and
    // long long are both 64 bits here ('l' and 'q').
    shm::create_shared_array(seg, "q", ElementType::c_longlong, 3);
    auto ql = SharedArray<long>::open(seg, "q");
    auto qll = SharedArray<long long>::open(seg, "q");
    auto q64 = SharedArray<std::int64_t>::open(seg, "q");
    ql[1] = -7;
    CHECK(qll[1] == -7);
    CHECK(q64[1] == -7);
    CHECK(ql.info().type == ElementType::c_longlong);  // as made
    CHECK_THROWS_AS(SharedArray<unsigned long>::open(seg, "q"), shm::type_mismatch);
    shm::create_shared_array(seg, "L", ElementType::c_ulong, 3);
    CHECK(SharedArray<unsigned long long>::open(seg, "L").size() == 3);
    CHECK_THROWS_AS(SharedArray<std::int8_t>::open(seg, "L"), shm::type_mismatch);
    // char is characters: not the same as a signed or unsigned byte.
    shm::create_shared_array(seg, "c", ElementType::c_char, 3);
    CHECK_THROWS_AS(SharedArray<std::int8_t>::open(seg, "c"), shm::type_mismatch);
    CHECK_THROWS_AS(SharedArray<std::uint8_t>::open(seg, "c"), shm::type_mismatch);
    CHECK(SharedArray<char>::open(seg, "c").size() == 3);
    CHECK(seg.verify().ok);
}

// ---- SharedScalar ---------------------------------------------------------------------------

TEST_CASE("SharedScalar: load, store, the atomic operations and its lock", "[shared_array]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("scalar", kSize);
    auto n = SharedScalar<std::int64_t>::create(seg, "n", 40);
    CHECK(n.load() == 40);
    CHECK(n.fetch_add(2) == 40);
    CHECK(n.fetch_sub(10) == 42);
    CHECK(n.load() == 32);
    CHECK(n.exchange(7) == 32);
    std::int64_t expected = 6;
    CHECK_FALSE(n.compare_exchange(expected, 100));
    CHECK(expected == 7);
    CHECK(n.compare_exchange(expected, 100));
    CHECK(n.load() == 100);
    n.store(-1);
    CHECK(*n.data() == -1);
    CHECK(reinterpret_cast<std::uintptr_t>(n.data()) % 16 == 0);
    REQUIRE(n.has_lock());
    {
        std::lock_guard<shm::RecursiveMutex> g(n.get_lock());
        *n.data() += 1;  // a read-modify-write under the lock, as Python's `with v.get_lock(): v.value += 1`
        CHECK(n.load() == 0);  // load() does not take the lock: no deadlock, no wait
    }
    const shm::SharedArrayInfo& info = n.info();
    CHECK(info.scalar);
    CHECK(info.count == 1);
    CHECK(info.type == ElementType::c_long);
    CHECK(info.element_size == 8);
    CHECK(seg.objects()[0].kind == shm::ObjectKind::shared_scalar);

    auto d = SharedScalar<double>::create(seg, "d", 0.5, false);
    CHECK_FALSE(d.has_lock());
    CHECK(errno_of([&] { d.get_lock(); }) == ENOLCK);
    d.store(1.25);
    CHECK(SharedScalar<double>::open(seg, "d").load() == 1.25);
    CHECK(d.exchange(2.0) == 1.25);

    auto flag = SharedScalar<bool>::open_or_create(seg, "flag", true);
    CHECK(flag.load());
    CHECK(SharedScalar<bool>::open_or_create(seg, "flag", false).load());  // it exists: keeps its value
    CHECK(flag.exchange(false));

    auto p = SharedScalar<Pair>::create(seg, "pair", Pair{1, 2});
    Pair e{1, 2};
    CHECK(p.compare_exchange(e, Pair{3, 4}));
    CHECK(p.load().b == 4);
    auto pt = SharedScalar<Point>::create(seg, "pt", Point{1, 2, 3});  // larger: plain copies
    pt.store(Point{4, 5, 6});
    CHECK(pt.load().id == 6);
    CHECK(shm::open_shared_array(seg, "pt").element_size == sizeof(Point));
    CHECK(seg.verify().ok);
}

// ---- the type-erased functions ------------------------------------------------------------

TEST_CASE("the type-erased functions: create, open, initial bytes, destroy", "[shared_array]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("erased", kSize);
    const std::size_t empty_use = seg.used_memory();
    const std::int16_t init[] = {1, 2, 3};
    shm::SharedArrayInfo a = shm::create_shared_array(seg, "h", ElementType::c_short, 5, true, init, sizeof init);
    CHECK(a.type == ElementType::c_short);
    CHECK(a.typecode() == 'h');
    CHECK(a.element_size == 2);
    CHECK(a.count == 5);
    CHECK(a.bytes() == 10);
    CHECK_FALSE(a.scalar);
    REQUIRE(a.lock != nullptr);
    const auto* v = static_cast<const std::int16_t*>(a.data);
    CHECK(v[0] == 1);
    CHECK(v[2] == 3);
    CHECK(v[3] == 0);
    CHECK(v[4] == 0);
    CHECK(SharedArray<std::int16_t>::open(seg, "h")[1] == 2);

    shm::SharedArrayInfo o = shm::open_shared_array(seg, "h");
    CHECK(o.data == a.data);
    CHECK(o.lock == a.lock);
    CHECK(o.count == 5);
    CHECK(o.type == ElementType::c_short);

    const double pi = 3.25;
    shm::SharedArrayInfo s = shm::create_shared_scalar(seg, "pi", ElementType::c_double, false, &pi, sizeof pi);
    CHECK(s.scalar);
    CHECK(s.count == 1);
    CHECK(s.lock == nullptr);
    CHECK(SharedScalar<double>::open(seg, "pi").load() == 3.25);
    shm::SharedArrayInfo s2 = shm::open_or_create_shared_scalar(seg, "pi", ElementType::c_double, true);
    CHECK(s2.data == s.data);
    CHECK(s2.lock == nullptr);  // it exists: keeps having no lock
    shm::SharedArrayInfo t = shm::open_or_create_shared_scalar(seg, "flag", ElementType::c_bool);
    CHECK(t.lock != nullptr);
    CHECK(*static_cast<bool*>(t.data) == false);
    CHECK(shm::open_shared_array(seg, "flag").scalar);

    // Every typecode makes an array of its size.
    for (char c : std::string("cbBhHiIlLqQfd?")) {
        shm::SharedArrayInfo x = shm::create_shared_array(seg, "t" + std::to_string(int(c)), *shm::from_typecode(c), 3);
        CHECK(x.element_size == shm::element_size(x.type));
        CHECK(x.typecode() == c);
    }

    // Destroy: gone, memory back; a held lock refuses it.
    {
        std::lock_guard<shm::RecursiveMutex> g(*a.lock);
        CHECK(errno_of([&] { shm::destroy_shared_array(seg, "h"); }) == EBUSY);
    }
    CHECK(shm::destroy_shared_array(seg, "h"));
    CHECK_FALSE(shm::destroy_shared_array(seg, "h"));
    CHECK_THROWS_AS(shm::open_shared_array(seg, "h"), shm::not_found);
    CHECK_THROWS_AS(shm::destroy_shared_array(seg, "not a name"), shm::name_error);
    for (const auto& info : seg.objects()) CHECK(shm::destroy_shared_array(seg, info.name));
    CHECK(seg.used_memory() == empty_use);
    CHECK(seg.verify().ok);
}

TEST_CASE("handles keep the segment attached after the Segment handle goes", "[shared_array]") {
    test::ShmDir dir;
    std::optional<SharedArray<std::int32_t>> a;
    std::optional<shm::SharedArrayInfo> info;
    {
        auto seg = shm::Segment::create("gone", kSize);
        a = SharedArray<std::int32_t>::create(seg, "a", 3);
        info = shm::create_shared_scalar(seg, "s", ElementType::c_int);
    }
    (*a)[2] = 5;
    std::lock_guard<shm::RecursiveMutex> g(a->get_lock());
    *static_cast<std::int32_t*>(info->data) = 6;
    CHECK(dir.has("gone"));
    auto again = shm::Segment::open("gone");
    CHECK(SharedArray<std::int32_t>::open(again, "a")[2] == 5);
    CHECK(SharedScalar<std::int32_t>::open(again, "s").load() == 6);
    shm::Segment moved = std::move(again);
    CHECK_THROWS_AS(SharedArray<std::int32_t>::open(again, "a"), shm::error);  // a moved-from handle
}

// ---- refusals ---------------------------------------------------------------------------------

TEST_CASE("a creation that cannot be leaves the segment byte for byte as it was", "[shared_array][refusal]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("refuse", kSize);
    auto keep = SharedArray<std::int64_t>::create(seg, "keep", 16);
    keep[3] = 33;
    shm::Dict d = shm::Dict::open_or_create(seg, "d");
    d.set("k", "v");
    // Fill the heap until less than a 4 KiB array's worth is left.
    std::vector<std::string> fillers;
    for (int i = 0; seg.free_memory() > 64 * 1024; ++i) {
        fillers.push_back("f" + std::to_string(i));
        SharedArray<char>::create(seg, fillers.back(), 32 * 1024, false);
    }
    const std::size_t free_now = seg.free_memory();
    const std::int32_t init[4] = {1, 2, 3, 4};
    const std::size_t huge = std::numeric_limits<std::size_t>::max();
    struct Case {
        const char* what;
        std::function<void()> op;
        int code;
    };
    const std::vector<Case> cases = {
        {"larger than the free heap", [&] { SharedArray<double>::create(seg, "big", free_now / 8 + 1024); }, ENOSPC},
        {"larger than the free heap, without a lock",
         [&] { shm::create_shared_array(seg, "big", ElementType::c_char, free_now + 1, false); }, ENOSPC},
        {"larger than the segment", [&] { SharedArray<std::int32_t>::create(seg, "big", kSize); }, ENOSPC},
        {"count × size overflows", [&] { SharedArray<std::int64_t>::create(seg, "big", huge / 4); }, ENOSPC},
        {"count × size just overflows", [&] { SharedArray<std::int64_t>::create(seg, "big", huge / 8); }, ENOSPC},
        {"the largest count", [&] { shm::create_shared_array(seg, "big", ElementType::c_char, huge); }, ENOSPC},
        {"a struct array too large", [&] { SharedArray<Point>::create(seg, "big", huge / 3); }, ENOSPC},
        {"open_or_create too large", [&] { SharedArray<double>::open_or_create(seg, "big", kSize); }, ENOSPC},
        {"an existing name", [&] { SharedArray<std::int64_t>::create(seg, "keep", 1); }, EEXIST},
        {"an existing name as a scalar", [&] { SharedScalar<std::int64_t>::create(seg, "keep"); }, EEXIST},
        {"another type", [&] { SharedArray<double>::open_or_create(seg, "keep", 16); }, EINVAL},
        {"a scalar of an array", [&] { SharedScalar<std::int64_t>::open_or_create(seg, "keep"); }, EINVAL},
        {"an invalid name", [&] { SharedArray<std::int32_t>::create(seg, "/starts-with-a-slash", 4); }, EINVAL},
        {"an initializer larger than the array",
         [&] { shm::create_shared_array(seg, "init", ElementType::c_int, 3, true, init, sizeof init); }, EINVAL},
        {"an initializer without bytes",
         [&] { shm::create_shared_array(seg, "init", ElementType::c_int, 3, true, nullptr, 4); }, EINVAL},
        {"element type other", [&] { shm::create_shared_array(seg, "o", ElementType::other, 3); }, EINVAL},
        {"not an element type", [&] { shm::create_shared_array(seg, "o", static_cast<ElementType>('x'), 3); }, EINVAL},
        {"not an element type, scalar", [&] { shm::create_shared_scalar(seg, "o", static_cast<ElementType>(200)); }, EINVAL},
        {"absent", [&] { shm::open_shared_array(seg, "absent"); }, ENOENT},
    };
    const std::string before = image(seg);
    const std::size_t used = seg.used_memory();
    for (const Case& c : cases) {
        INFO(c.what);
        CHECK(errno_of(c.op) == c.code);
        CHECK(image(seg) == before);
        CHECK(seg.used_memory() == used);
    }
    CHECK(keep[3] == 33);
    CHECK(d.get<std::string>("k") == "v");
    CHECK(seg.verify().ok);
    // The message says what did not fit, and where.
    CHECK_THROWS_WITH(SharedArray<std::int32_t>::create(seg, "big", kSize),
                      Catch::Contains("'big'") && Catch::Contains("segment 'refuse'") &&
                          Catch::Contains("c_int") && Catch::Contains("more than the whole segment"));
    CHECK_THROWS_WITH(SharedArray<std::int64_t>::create(seg, "big", huge / 4), Catch::Contains("2^64"));
    CHECK_THROWS_WITH(SharedArray<double>::create(seg, "big", free_now / 8 + 1024),
                      Catch::Contains("cannot allocate") && Catch::Contains("'big'"));
    // What does fit still does.
    auto fits = SharedArray<char>::create(seg, "fits", 1024);
    CHECK(fits.size() == 1024);
}

// ---- across processes -------------------------------------------------------------------------

TEST_CASE("4 processes add to every element under the lock: the sums are exact", "[shared_array][process]") {
    test::ShmDir dir;
    constexpr int kKids = 4, kRounds = 2000;
    constexpr std::size_t kLen = 16;
    auto seg = shm::Segment::create("sums", kSize);
    auto a = SharedArray<std::int64_t>::create(seg, "a", kLen);
    auto n = SharedScalar<std::int64_t>::create(seg, "n", 0, false);
    std::vector<pid_t> kids;
    for (int k = 0; k < kKids; ++k)
        kids.push_back(test::spawn([k] {
            // Each child opens the segment and the array by name, as an
            // unrelated process would, while the others hold the lock.
            auto s = shm::Segment::open("sums");
            auto arr = SharedArray<std::int64_t>::open(s, "a");
            auto cnt = SharedScalar<std::int64_t>::open(s, "n");
            for (int r = 0; r < kRounds; ++r) {
                std::lock_guard<shm::RecursiveMutex> g(arr.get_lock());
                if (arr.get_lock().previous_owner_died()) return 2;
                for (std::size_t i = 0; i < arr.size(); ++i) {
                    arr[i] += static_cast<std::int64_t>(i + 1);
                    if ((r + k + static_cast<int>(i)) % 64 == 0) ::sched_yield();  // others try meanwhile
                }
                cnt.fetch_add(1);
            }
            return 0;
        }));
    for (pid_t p : kids) test::require_exit_ok(p, std::chrono::minutes(5));
    for (std::size_t i = 0; i < kLen; ++i) {
        INFO("element " << i);
        CHECK(a[i] == static_cast<std::int64_t>((i + 1) * kKids * kRounds));
    }
    CHECK(n.load() == kKids * kRounds);
    CHECK(a.get_lock().recoveries() == 0);
    CHECK(seg.verify().ok);
}

TEST_CASE("4 processes fetch_add without a lock: the counts are exact", "[shared_array][process]") {
    test::ShmDir dir;
    constexpr int kKids = 4, kAdds = 50000;
    auto seg = shm::Segment::create("atomics", kSize);
    auto total = SharedScalar<std::uint32_t>::create(seg, "total", 0, false);
    auto per = SharedArray<std::int16_t>::create(seg, "per", 8, false);
    std::vector<pid_t> kids;
    for (int k = 0; k < kKids; ++k)
        kids.push_back(test::spawn([&, k] {
            for (int i = 0; i < kAdds; ++i) {
                total.fetch_add(1);
                per.fetch_add(static_cast<std::size_t>(i % 8), 1);
                per.fetch_sub(static_cast<std::size_t>((i + k) % 8), 1);
            }
            return 0;
        }));
    for (pid_t p : kids) test::require_exit_ok(p, std::chrono::minutes(5));
    CHECK(total.load() == kKids * kAdds);
    // Every child added and took away as many of each.
    for (std::size_t i = 0; i < 8; ++i) CHECK(per[i] == 0);
    CHECK_THROWS_AS(per.fetch_add(8, 1), std::out_of_range);
}

// ---- crash tests -------------------------------------------------------------------------------

TEST_CASE("a creator killed at every crash point leaves the array whole or absent", "[shared_array][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("points", kSize);
    auto before = SharedArray<std::int32_t>::create(seg, "before", 8);
    std::vector<std::int32_t> values(300);
    std::iota(values.begin(), values.end(), 1000);
    int killed = 0;
    for (long n = 1;; ++n) {
        REQUIRE(n < 5000);  // creation has far fewer steps
        const std::string name = "a" + std::to_string(n);
        pid_t c = test::spawn([&] {
            shm::testing::kill_at_crash_point(n);
            SharedArray<std::int32_t>::create(seg, name, values.data(), values.size());
            shm::testing::kill_at_crash_point(0);
            return 7;
        });
        auto e = test::wait_for(c);
        REQUIRE((e.signaled || e.exited));
        auto r = seg.verify();
        INFO("crash point " << n << ": " << (r.problems.empty() ? "" : r.problems.front()));
        REQUIRE(r.ok);
        if (e.exited) {
            REQUIRE(e.code == 7);  // ran past the last crash point: made
            auto a = SharedArray<std::int32_t>::open(seg, name);
            CHECK(std::equal(a.begin(), a.end(), values.begin(), values.end()));
            break;
        }
        ++killed;
        // Whole (committed before the kill) or not there at all.
        try {
            auto a = SharedArray<std::int32_t>::open(seg, name);
            CHECK(std::equal(a.begin(), a.end(), values.begin(), values.end()));
            CHECK(a.has_lock());
        } catch (const shm::not_found&) {
        }
        CHECK(SharedArray<std::int32_t>::open(seg, "before").size() == 8);
    }
    CHECK(killed > 3);
    WARN("creation killed at " << killed << " crash points");
}

namespace {
// The state a writer keeps under the array's lock. All elements equal is
// the invariant outside the critical section; `holder` marks a writer
// inside it. Atomics, relaxed, so that the stores stay in program order:
// a writer may die between any two.
struct Ledger {
    std::atomic<std::int32_t> holder{0};
    std::atomic<std::uint64_t> rounds{0};       // completed critical sections
    std::atomic<std::uint64_t> marked_deaths{0};  // lockers that found `holder` set
    std::atomic<std::uint64_t> unreported{0};   // found `holder` set but not told: a bug
    std::atomic<std::uint64_t> repairs{0};
    std::atomic<std::uint64_t> bystander_ops{0};
    std::atomic<int> stop{0};
    std::atomic<int> ready{0};
};

constexpr std::size_t kElems = 64;

// A relaxed atomic store: it stays in program order with the others.
void set(std::int64_t& x, std::int64_t v) { __atomic_store_n(&x, v, __ATOMIC_RELAXED); }

// Under the lock: if the previous holder died mid-write, finish its work
// (bring every element to the highest value seen). Returns false on a torn
// array nobody was told about.
bool repair_if_needed(SharedArray<std::int64_t>& a, Ledger& l) {
    shm::RecursiveMutex& m = a.get_lock();
    if (l.holder.load(std::memory_order_relaxed) != 0) {
        l.marked_deaths.fetch_add(1, std::memory_order_relaxed);
        if (!m.previous_owner_died()) l.unreported.fetch_add(1, std::memory_order_relaxed);
    }
    const bool torn = std::adjacent_find(a.begin(), a.end(), std::not_equal_to<>()) != a.end();
    if (!m.previous_owner_died()) return !torn;
    const std::int64_t top = *std::max_element(a.begin(), a.end());
    for (std::size_t i = 0; i < a.size(); ++i) set(a[i], top);
    l.holder.store(0, std::memory_order_relaxed);
    l.repairs.fetch_add(1, std::memory_order_relaxed);
    return true;
}

// One critical section: every element one higher, element by element, with
// a system call part-way (a SIGKILL is delivered on the way out of the
// kernel, so many kills land there) and a nested acquisition.
void write_all(SharedArray<std::int64_t>& a, Ledger& l, std::uint64_t i) {
    std::lock_guard<shm::RecursiveMutex> nested(a.get_lock());
    l.holder.store(::getpid(), std::memory_order_relaxed);
    for (std::size_t k = 0; k < a.size(); ++k) {
        set(a[k], a[k] + 1);
        if (k == (i * 7) % a.size()) ::sched_yield();
    }
    l.holder.store(0, std::memory_order_relaxed);
    l.rounds.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace

TEST_CASE("300 writers SIGKILLed holding the lock mid-write: the next locker is told, a bystander goes on",
          "[shared_array][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("writers", 4 << 20);
    auto a = SharedArray<std::int64_t>::create(seg, "a", kElems);
    auto& ledger = seg.construct<Ledger>("ledger");

    // The bystander works through every round with bounded waits, and opens
    // the array again now and then (the lock may be held by a dead process,
    // or by a live one: neither may be refused).
    pid_t bystander = test::spawn([&] {
        auto s = shm::Segment::open("writers");
        auto& l = *s.find<Ledger>("ledger");
        std::uint64_t i = 0;
        while (!l.stop.load()) {
            auto arr = SharedArray<std::int64_t>::open(s, "a");
            for (int k = 0; k < 20; ++k) {
                if (!arr.get_lock().try_lock_for(10s)) return 2;  // would be a deadlock
                if (!repair_if_needed(arr, l)) {
                    arr.get_lock().unlock();
                    return 3;  // a torn array that nobody was told about
                }
                write_all(arr, l, i++);
                l.bystander_ops.fetch_add(1);
                arr.get_lock().unlock();
                std::this_thread::sleep_for(20us);
            }
        }
        return s.verify().ok ? 0 : 4;
    });

    int held_at_kill = 0;
    constexpr int kRounds = 300;
    for (int round = 0; round < kRounds; ++round) {
        ledger.ready.store(0);
        pid_t c = test::spawn([&] {
            auto arr = SharedArray<std::int64_t>::open(seg, "a");  // the inherited handle, reopened
            for (std::uint64_t i = 0;; ++i) {
                {
                    std::lock_guard<shm::RecursiveMutex> g(arr.get_lock());
                    if (!repair_if_needed(arr, ledger)) return 3;
                    write_all(arr, ledger, i);
                }
                // Ready once in the loop: the random pause then lands
                // wherever it is, however late a busy machine ran it.
                if (i == 0) ledger.ready.store(1);
            }
            return 0;
        });
        REQUIRE(test::eventually([&] { return ledger.ready.load() == 1; }, 30s));
        std::this_thread::sleep_for(std::chrono::microseconds(test::rng()() % 3000));
        test::kill_and_reap(c);

        INFO("round " << round);
        REQUIRE(a.get_lock().try_lock_for(10s));
        if (ledger.holder.load() == c) ++held_at_kill;
        const bool ok = repair_if_needed(a, ledger);
        const bool even = std::adjacent_find(a.begin(), a.end(), std::not_equal_to<>()) == a.end();
        a.get_lock().unlock();
        REQUIRE(ok);
        REQUIRE(even);
        CHECK(ledger.unreported.load() == 0);
        if (round % 50 == 0) {
            auto r = seg.verify();
            REQUIRE(r.ok);
        }
    }
    // The bystander carried on (counted, not assumed from the time spent).
    REQUIRE(test::eventually([&] { return ledger.bystander_ops.load() > 0; }, 300s));
    ledger.stop.store(1);
    test::require_exit_ok(bystander, 60s);
    REQUIRE(seg.verify().ok);
    // Opening it afresh works and finds it whole.
    auto again = shm::Segment::open("writers");
    auto b = SharedArray<std::int64_t>::open(again, "a");
    CHECK(std::adjacent_find(b.begin(), b.end(), std::not_equal_to<>()) == b.end());
    WARN(kRounds << " kills: " << ledger.marked_deaths.load() << " inside the critical section (" << held_at_kill
                 << " found by the parent, the rest by the bystander), " << a.get_lock().recoveries()
                 << " recoveries, " << ledger.rounds.load() << " critical sections, " << ledger.bystander_ops.load()
                 << " by the bystander");
    CHECK(ledger.unreported.load() == 0);
    CHECK(ledger.marked_deaths.load() > 0);
    CHECK(a.get_lock().recoveries() >= ledger.marked_deaths.load());
    // A locker killed before it repaired leaves the report to the next one.
    CHECK(ledger.repairs.load() > 0);
    CHECK(ledger.repairs.load() <= a.get_lock().recoveries());
}

TEST_CASE("SIGKILL while holding a scalar's lock: open, load and the atomic operations go on",
          "[shared_array][crash]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("scalar-kill", kSize);
    auto v = SharedScalar<std::int64_t>::create(seg, "v", 0);
    constexpr int kRounds = 100;
    std::int64_t added = 0;
    for (int round = 0; round < kRounds; ++round) {
        test::Ready ready;
        pid_t c = test::spawn([&] {
            auto s = shm::Segment::open("scalar-kill");
            auto x = SharedScalar<std::int64_t>::open(s, "v");
            x.get_lock().lock();
            x.get_lock().lock();
            x.fetch_add(1);
            ready.signal();
            for (;;) ::pause();
            return 0;
        });
        REQUIRE(ready.wait());
        // Held by a live process: others open it and use the atomics.
        auto s = shm::Segment::open("scalar-kill");
        auto x = SharedScalar<std::int64_t>::open(s, "v");
        CHECK_FALSE(x.get_lock().try_lock());
        x.fetch_add(1);
        added += 2;
        CHECK(x.load() == added);
        test::kill_and_reap(c);
        // Opening after the death is not refused, and leaves the report of
        // the death to the next locker.
        auto y = SharedScalar<std::int64_t>::open(s, "v");
        CHECK(y.load() == added);
        REQUIRE(y.get_lock().try_lock_for(10s));
        CHECK(y.get_lock().previous_owner_died());
        CHECK(y.get_lock().depth() == 1);
        y.get_lock().unlock();
    }
    CHECK(v.get_lock().recoveries() == kRounds);
    CHECK(seg.verify().ok);
}
