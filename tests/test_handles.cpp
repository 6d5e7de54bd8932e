// Handle lifetimes: Dict, List, Queue and nested container handles, and a
// Segment::share(), keep the segment's mapping (and its attach slot) alive
// on their own, whatever happens to the Segment handle they were made from:
// moved (a growing vector, a return from a function), detached or
// destroyed. The slot and, for a non-persistent segment, the file go when
// the last holder goes.
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <shm/shm.hpp>

#include "support.hpp"

namespace {

constexpr std::size_t kSize = 1 << 20;

shm::QueueOptions small_queue() {
    shm::QueueOptions o;
    o.capacity = 16;
    o.max_item_size = 64;
    return o;
}

// Live attach slots of `name`, counted by a reaper that does not attach.
std::uint32_t live_slots(const std::string& name) { return shm::Segment::reap_dead(name).live_slots; }

// Whether a second process can open `name` and find the dict "d" in it
// holding d["k"] == k.
bool other_process_sees(const std::string& name, std::int64_t k) {
    pid_t c = test::spawn([&] {
        auto s = shm::Segment::open(name);
        return shm::Dict::open(s, "d").get<std::int64_t>("k") == k ? 0 : 1;
    });
    test::Exit e = test::wait_for(c);
    return e.exited && e.code == 0;
}

struct Handles {
    std::string name;
    std::optional<shm::Dict> dict;
    std::optional<shm::List> list;
    std::optional<shm::Queue> queue;
};

// Everything that needs the segment's memory, through the handles alone.
void use(Handles& h, std::int64_t k) {
    h.dict->set("k", k);
    CHECK(h.dict->get<std::int64_t>("k") == k);
    h.list->append(k);
    CHECK(h.list->get<std::int64_t>(-1) == k);
    h.queue->put(std::to_string(k));
    CHECK(h.queue->get() == std::to_string(k));
}

Handles open_all(shm::Segment& seg) {
    Handles h;
    h.name = seg.name();
    h.dict.emplace(shm::Dict::open_or_create(seg, "d"));
    h.list.emplace(shm::List::open_or_create(seg, "l"));
    h.queue.emplace(shm::Queue::open_or_create(seg, "q", small_queue()));
    return h;
}

// A function that opens containers from the segment it returns. The
// Segment handle lives in a heap object freed on the way out, so returning
// it is a move from memory that is gone afterwards (no copy elision).
shm::Segment make_segment(const std::string& name, Handles& out) {
    struct Holder {
        shm::Segment seg;
    };
    auto holder = std::make_unique<Holder>(Holder{shm::Segment::create(name, kSize)});
    out = open_all(holder->seg);
    use(out, 1);
    return std::move(holder->seg);
}

}  // namespace

TEST_CASE("handles opened from the elements of a growing vector<Segment>", "[handles]") {
    test::ShmDir dir;
    std::vector<shm::Segment> segs;  // no reserve: it reallocates as it grows
    std::vector<Handles> handles;
    const int n = 20;
    for (int i = 0; i < n; ++i) {
        segs.push_back(shm::Segment::create("v" + std::to_string(i), kSize));
        handles.push_back(open_all(segs.back()));
        use(handles.back(), i);
    }
    for (int i = 0; i < n; ++i) {
        INFO("segment " << i);
        CHECK(handles[i].dict->get<std::int64_t>("k") == i);
        CHECK(handles[i].list->size() == 1);
        use(handles[i], 100 + i);
        CHECK(handles[i].list->snapshot() == std::vector<shm::Value>{i, 100 + i});
    }
    // Erasing from the front moves every later Segment handle down.
    segs.erase(segs.begin());
    use(handles[0], 7);
    use(handles[n - 1], 7);
    CHECK(segs.front().name() == "v1");
}

TEST_CASE("handles opened from a Segment that a function then returns", "[handles]") {
    test::ShmDir dir;
    Handles h;
    shm::Segment seg = make_segment("ret", h);
    use(h, 2);
    CHECK(h.dict->get<std::int64_t>("k") == 2);
    CHECK(h.list->snapshot() == std::vector<shm::Value>{1, 2});
    // Move-assigning the returned handle elsewhere changes nothing for them.
    shm::Segment other = shm::Segment::create("other", kSize);
    other = std::move(seg);
    use(h, 3);
    CHECK(shm::Dict::open(other, "d").get<std::int64_t>("k") == 3);
    CHECK_FALSE(dir.has("other"));  // replaced by the move: its last holder went
}

TEST_CASE("handles outlive the Segment handle they were opened from", "[handles][lifetime]") {
    test::ShmDir dir;
    Handles h;
    std::optional<shm::Dict> inner;
    std::optional<shm::List> tags;
    shm::Value inner_value;
    {
        auto seg = shm::Segment::create("outlive", kSize);
        h = open_all(seg);
        h.dict->set("inner", shm::Value::new_dict({{"x", 1}, {"tags", shm::Value::new_list({"a"})}}));
        inner.emplace(h.dict->get<shm::Dict>("inner"));
        tags.emplace(inner->get<shm::List>("tags"));
        inner_value = h.dict->get("inner");
        h.queue->put("queued before the Segment went");
        SECTION("destroyed") {}
        SECTION("detached") {
            seg.detach();
            CHECK_FALSE(seg.attached());
            CHECK(dir.has("outlive"));
        }
    }
    // Only the handles hold the segment now; it is still attached and whole.
    CHECK(dir.has("outlive"));
    CHECK(live_slots("outlive") == 1);
    CHECK(h.queue->get() == "queued before the Segment went");
    use(h, 5);
    CHECK(inner->get<std::int64_t>("x") == 1);
    tags->append("b");
    CHECK(tags->snapshot() == std::vector<shm::Value>{"a", "b"});
    CHECK(inner_value.as_dict().get<shm::List>("tags").size() == 2);
    CHECK(h.dict->verify().empty());
    CHECK(other_process_sees("outlive", 5));
}

TEST_CASE("the segment is reclaimed when the last of its holders goes", "[handles][lifetime]") {
    test::ShmDir dir;
    std::optional<shm::Segment> seg(shm::Segment::create("last", kSize));
    Handles h = open_all(*seg);
    h.dict->set("inner", shm::Value::new_list({1, 2, 3}));
    std::optional<shm::List> nested(h.dict->get<shm::List>("inner"));
    std::optional<shm::Value> value(h.dict->get("inner"));
    use(h, 9);

    // Every holder shares this handle's one attach slot.
    CHECK(seg->attachments().size() == 1);
    CHECK(live_slots("last") == 1);

    // Drop them one by one, the Segment handle first: until the last one
    // goes, the file stays, its slot stays live, and another process can
    // open it and read what was written.
    SECTION("detach") { seg->detach(); }
    SECTION("destroy") { seg.reset(); }
    CHECK(dir.has("last"));
    CHECK(live_slots("last") == 1);
    CHECK(other_process_sees("last", 9));

    h.dict.reset();
    CHECK(dir.has("last"));
    CHECK(nested->size() == 3);
    h.queue.reset();
    CHECK(dir.has("last"));
    nested.reset();
    CHECK(dir.has("last"));
    CHECK(value->as_list().size() == 3);
    value.reset();
    CHECK(dir.has("last"));
    CHECK(live_slots("last") == 1);
    h.list->append(10);
    h.list.reset();  // the last holder
    CHECK_FALSE(dir.has("last"));
    CHECK(dir.files().empty());
    CHECK_THROWS_AS(shm::Segment::open("last"), shm::not_found);
}

TEST_CASE("a share of the attachment keeps objects found in the segment usable", "[handles][lifetime]") {
    test::ShmDir dir;
    std::optional<shm::Segment> seg(shm::Segment::create("share", kSize));
    auto& m = seg->construct<shm::Mutex>("m");
    auto& n = seg->construct<std::atomic<int>>("n", 7);
    std::shared_ptr<const void> share = seg->share();
    SECTION("detach") { seg->detach(); }
    SECTION("destroy") { seg.reset(); }
    CHECK(dir.has("share"));
    CHECK(live_slots("share") == 1);
    {
        std::lock_guard<shm::Mutex> g(m);
        CHECK(++n == 8);
    }
    share.reset();  // the last holder
    CHECK_FALSE(dir.has("share"));
    // A handle that holds no attachment has none to share.
    auto other = shm::Segment::create("share2", kSize);
    other.detach();
    CHECK_THROWS_AS(other.share(), shm::error);
}

TEST_CASE("a persistent segment is only detached when its last holder goes", "[handles][lifetime]") {
    test::ShmDir dir;
    shm::SegmentOptions o;
    o.persistent = true;
    std::optional<shm::Dict> d;
    {
        auto seg = shm::Segment::create("kept", kSize, o);
        d.emplace(shm::Dict::open_or_create(seg, "d"));
    }
    d->set("k", 4);
    CHECK(live_slots("kept") == 1);
    d.reset();
    CHECK(live_slots("kept") == 0);
    REQUIRE(dir.has("kept"));
    CHECK(other_process_sees("kept", 4));
    CHECK(shm::Segment::unlink("kept"));
}

TEST_CASE("a Reservation outlives its Queue and Segment handles", "[handles][queue]") {
    test::ShmDir dir;
    std::optional<shm::Segment> seg(shm::Segment::create("resv", kSize));
    std::optional<shm::Queue> q(shm::Queue::create(*seg, "q", small_queue()));
    shm::Queue::Reservation r = q->reserve(8);
    std::memcpy(r.data(), "reserved", 8);
    q.reset();
    seg.reset();
    CHECK(dir.has("resv"));
    CHECK(live_slots("resv") == 1);  // the reservation's
    auto again = shm::Segment::open("resv");
    CHECK(live_slots("resv") == 2);
    r.commit(8);  // publishes, and drops the reservation's hold
    CHECK(live_slots("resv") == 1);
    CHECK(shm::Queue::open(again, "q").get() == "reserved");
}

TEST_CASE("a moved-from or detached Segment handle refuses to open with a clear error", "[handles]") {
    test::ShmDir dir;
    auto seg = shm::Segment::create("moved", kSize);
    shm::Dict::open_or_create(seg, "d").set("k", 1);
    shm::Segment to = std::move(seg);
    auto refused = [](auto&& f) {
        try {
            f();
        } catch (const shm::error& e) {
            CHECK(e.code().value() == EBADF);
            return std::string(e.what());
        }
        FAIL("no error");
        return std::string();
    };
    for (shm::Segment* s : {&seg, &to}) {
        if (s == &to) to.detach();
        INFO((s == &seg ? "moved from" : "detached"));
        CHECK_FALSE(s->attached());
        std::string what = refused([&] { shm::Dict::open_or_create(*s, "d"); });
        CHECK(what.find("handle") != std::string::npos);
        refused([&] { shm::Dict::open(*s, "d"); });
        refused([&] { shm::List::open_or_create(*s, "l"); });
        refused([&] { shm::Queue::open_or_create(*s, "q"); });
        refused([&] { shm::Queue::create(*s, "q2"); });
        refused([&] { s->find<int>("x"); });
        refused([&] { s->construct<int>("x", 1); });
        refused([&] { s->attachments(); });
        refused([&] { s->allocate(16); });
        refused([&] { s->verify(); });
        CHECK(s->base() == nullptr);
        CHECK(s->size() == 0);
        CHECK_FALSE(s->persistent());
    }
    CHECK_FALSE(dir.has("moved"));
}
