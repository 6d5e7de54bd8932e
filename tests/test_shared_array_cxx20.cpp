// SharedArray and SharedScalar compiled as C++20: span() and the atomic
// operations through std::atomic_ref (test_shared_array.cpp, compiled as
// C++17 like the rest of the suite, covers the same operations through the
// builtins they fall back to).
#include <span>

#include <shm/shm.hpp>

#include "support.hpp"

static_assert(__cplusplus >= 202002L, "this file is built as C++20 (tests/CMakeLists.txt)");
#if !defined(__cpp_lib_atomic_ref) || !defined(__cpp_lib_span)
#error "C++20 without std::atomic_ref or std::span"
#endif

namespace {
struct Pair {
    std::int32_t a, b;
    bool operator==(const Pair&) const = default;
};
}  // namespace

TEST_CASE("C++20: span() views the elements", "[shared_array][cxx20]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("span", 1 << 20);
    const int init[] = {3, 1, 2};
    auto a = shm::SharedArray<int>::create(seg, "a", init, 3);
    std::span<int> s = a.span();
    REQUIRE(s.size() == 3);
    CHECK(s.data() == a.data());
    std::ranges::sort(s);
    CHECK(a[0] == 1);
    CHECK(a[2] == 3);
    CHECK(shm::SharedArray<int>::create(seg, "none", 0).span().empty());
}

TEST_CASE("C++20: the atomic operations through std::atomic_ref, across processes", "[shared_array][cxx20]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("atomic-ref", 1 << 20);
    auto n = shm::SharedScalar<std::uint64_t>::create(seg, "n", 0, false);
    auto per = shm::SharedArray<std::int32_t>::create(seg, "per", 4, false);
    constexpr int kKids = 3, kAdds = 20000;
    std::vector<pid_t> kids;
    for (int k = 0; k < kKids; ++k)
        kids.push_back(test::spawn([&] {
            for (int i = 0; i < kAdds; ++i) {
                n.fetch_add(2);
                n.fetch_sub(1);
                per.fetch_add(static_cast<std::size_t>(i % 4), 1);
            }
            return 0;
        }));
    for (pid_t p : kids) test::require_exit_ok(p, std::chrono::minutes(5));
    CHECK(n.load() == kKids * kAdds);
    for (std::size_t i = 0; i < 4; ++i) CHECK(per[i] == kKids * kAdds / 4);

    auto d = shm::SharedScalar<double>::create(seg, "d", 1.5);
    CHECK(d.exchange(2.5) == 1.5);
    d.store(d.load() * 2);
    CHECK(d.load() == 5.0);
    auto p = shm::SharedScalar<Pair>::create(seg, "p", Pair{1, 2});
    Pair e{0, 0};
    CHECK_FALSE(p.compare_exchange(e, Pair{5, 6}));
    CHECK(e == Pair{1, 2});
    CHECK(p.compare_exchange(e, Pair{5, 6}));
    CHECK(p.load() == Pair{5, 6});
    auto b = shm::SharedScalar<bool>::create(seg, "b");
    CHECK_FALSE(b.exchange(true));
    CHECK(b.load());
}
