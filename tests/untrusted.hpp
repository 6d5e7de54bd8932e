// A segment file as untrusted input: build a small valid one, write any
// bytes under its name, and drive everything that reads such a file (the
// library's open, objects, Dict/List, Queue, WorkQueue, SharedArray/SharedScalar,
// verify; shmctl's inspection; gc's reap). Every call may work or refuse
// with a shm::error; none may end in a signal, a hang or a sanitizer
// report. Shared by test_untrusted.cpp and the fuzzer (tests/fuzz/), so
// both drive the same calls.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <typeinfo>
#include <vector>

#include "shm/admin.hpp"
#include "shm/shm.hpp"

namespace untrusted {

inline constexpr const char* kName = "untrusted";

inline std::string path() { return shm::segment_path(kName).string(); }

// Write `bytes` as the segment file (replacing whatever is there).
inline bool write_file(const std::string& bytes) {
    ::unlink(path().c_str());
    int fd = ::open(path().c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    std::size_t off = 0;
    while (off < bytes.size()) {
        ssize_t n = ::pwrite(fd, bytes.data() + off, bytes.size() - off, static_cast<off_t>(off));
        if (n <= 0) break;
        off += static_cast<std::size_t>(n);
    }
    ::close(fd);
    return off == bytes.size();
}

inline std::string read_file() {
    std::string out;
    int fd = ::open(path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return out;
    char buf[65536];
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return out;
}

// A fresh persistent segment of `size` bytes (in $SHM_DIR) with a dict "d"
// (an int, a string, a nested list), a list "l" (three items, one a dict),
// a queue "q" holding three items, a shared array "a" (five c_int, with a
// lock) and a shared scalar "v" (a c_double, without); returns the file's
// bytes. The file stays (persistent) until the caller removes it.
inline std::string make_image(std::size_t size = 128 * 1024) {
    shm::SegmentOptions o;
    o.persistent = true;
    o.max_attach = 8;
    {
        shm::Segment seg = shm::Segment::create(kName, size, o);
        shm::Dict d = shm::Dict::open_or_create(seg, "d");
        d.set("answer", shm::Value(std::int64_t(42)));
        d.set("greeting", shm::Value("hello, untrusted world"));
        d.set("nested", shm::Value::new_list({shm::Value(std::int64_t(1)), shm::Value("two")}));
        shm::List l = shm::List::open_or_create(seg, "l");
        l.append(shm::Value(3.5));
        l.append(shm::Value::bytes(std::string("\0\1\2", 3)));
        l.append(shm::Value::new_dict({{"k", shm::Value(true)}}));
        shm::QueueOptions qo;
        qo.capacity = 8;
        qo.max_item_size = 64;
        shm::Queue q = shm::Queue::create(seg, "q", qo);
        q.put("first");
        q.put("second item");
        q.put(std::string(40, 'x'));
        const std::int32_t ints[] = {10, -20, 30, -40, 50};
        shm::SharedArray<std::int32_t>::create(seg, "a", ints, 5);
        shm::SharedScalar<double>::create(seg, "v", 2.5, false);
        shm::WorkQueue w = shm::WorkQueue::create(seg, "w", {4, 2});
        w.put("job one");
        w.put("job two");
        w.put("job three");
        w.get();  // leased, never acknowledged
        w.get().ack();
    }
    return read_file();
}

// What one drive saw: how many calls worked, how many refused with an error
// that says the file is bad (or a plain consequence of that: a key gone, a
// type changed), and the messages of any other refusal.
struct Outcome {
    int worked = 0;
    int refused = 0;
    std::vector<std::string> unexpected;
};

// Whether e is a refusal a damaged file may legitimately cause.
inline bool expected(const shm::error& e) {
    return dynamic_cast<const shm::not_a_segment*>(&e) || dynamic_cast<const shm::corrupted*>(&e) ||
           dynamic_cast<const shm::version_mismatch*>(&e) || dynamic_cast<const shm::not_found*>(&e) ||
           dynamic_cast<const shm::type_mismatch*>(&e) || dynamic_cast<const shm::key_error*>(&e) ||
           dynamic_cast<const shm::index_error*>(&e) || dynamic_cast<const shm::value_type_error*>(&e) ||
           dynamic_cast<const shm::closed*>(&e) || dynamic_cast<const shm::empty*>(&e) ||
           dynamic_cast<const shm::already_exists*>(&e) ||
           // A heap whose free lists were damaged can look full: the
           // allocation is refused and nothing changes.
           dynamic_cast<const shm::out_of_space*>(&e) ||
           // drive() bounds waits for a half-made file at 5 ms; on a loaded
           // machine one pass of create() can take longer than that.
           dynamic_cast<const shm::timeout*>(&e);
}

template <class F>
void call(Outcome& o, const char* what, F&& f) {
    try {
        f();
        ++o.worked;
    } catch (const shm::error& e) {
        ++o.refused;
        if (!expected(e)) o.unexpected.push_back(std::string(what) + ": " + typeid(e).name() + ": " + e.what());
    }
}

// Drive every reader over the file now under kName. Other exceptions than
// shm::error propagate (a test counts them as failures; the fuzzer aborts).
inline Outcome drive() {
    Outcome o;
    shm::SegmentOptions opt;
    opt.timeout = std::chrono::milliseconds(5);  // a half-made file is refused quickly
    call(o, "inspect_segment", [&] { (void)shm::admin::inspect_segment(path(), true); });
    call(o, "open", [&] {
        shm::Segment seg = shm::Segment::open(kName, opt);
        call(o, "objects", [&] { (void)seg.objects(); });
        call(o, "Dict", [&] {
            shm::Dict d = shm::Dict::open(seg, "d");
            call(o, "Dict::get", [&] { (void)d.get("answer"); });
            call(o, "Dict::get", [&] { (void)d.get("greeting"); });
            call(o, "Dict::get nested", [&] {
                shm::Value v = d.get("nested");
                if (v.type() == shm::Value::Type::list) (void)v.as_list().snapshot();
            });
            call(o, "Dict::find", [&] { (void)d.find("absent"); });
            call(o, "Dict::items", [&] { (void)d.items(); });
            call(o, "Dict::verify", [&] { (void)d.verify(); });
        });
        call(o, "List", [&] {
            shm::List l = shm::List::open(seg, "l");
            call(o, "List::snapshot", [&] {
                for (const shm::Value& v : l.snapshot())
                    if (v.type() == shm::Value::Type::dict) (void)v.as_dict().items();
            });
            call(o, "List::get", [&] { (void)l.get(-1); });
            call(o, "List::verify", [&] { (void)l.verify(); });
            // The write path: appends past the table's capacity (it grows, in
            // place or by a copy), then a pop of one of them.
            call(o, "List::append", [&] {
                for (std::int64_t i = 0; i < 6; ++i)
                    l.append(i % 2 ? shm::Value(i) : shm::Value(std::string(static_cast<std::size_t>(8 * i), 'g')));
            });
            call(o, "List::pop", [&] { (void)l.pop(); });
        });
        call(o, "Queue", [&] {
            shm::Queue q = shm::Queue::open(seg, "q");
            (void)q.qsize();
            (void)q.bytes_used();
            call(o, "Queue::get_many", [&] { (void)q.get_many(2, std::chrono::milliseconds(0)); });
            for (int i = 0; i < 4; ++i) call(o, "Queue::try_get", [&] { (void)q.try_get(); });
        });
        call(o, "WorkQueue", [&] {
            shm::WorkQueue w = shm::WorkQueue::open(seg, "w");
            (void)w.qsize();
            (void)w.unfinished();
            call(o, "WorkQueue::recover", [&] { (void)w.recover(); });
            for (int i = 0; i < 3; ++i)
                call(o, "WorkQueue::try_get", [&] {
                    if (auto l = w.try_get()) l->ack();
                });
            call(o, "WorkQueue::try_get_dead", [&] { (void)w.try_get_dead(); });
            call(o, "WorkQueue::verify", [&] { (void)w.verify(); });
        });
        call(o, "SharedArray", [&] {
            auto a = shm::SharedArray<std::int32_t>::open(seg, "a");
            std::int64_t sum = 0;
            for (std::int32_t x : a) sum += x;
            volatile std::int64_t read = sum;  // every element read, not optimised away
            (void)read;
            if (a.has_lock() && a.get_lock().try_lock()) a.get_lock().unlock();
        });
        call(o, "SharedScalar", [&] { (void)shm::SharedScalar<double>::open(seg, "v").load(); });
        call(o, "open_shared_array", [&] {
            for (const char* n : {"a", "v"}) {
                shm::SharedArrayInfo i = shm::open_shared_array(seg, n);
                unsigned sum = 0;
                for (std::size_t k = 0; k < i.bytes(); ++k) sum += static_cast<const unsigned char*>(i.data)[k];
                volatile unsigned read = sum;
                (void)read;
            }
        });
        call(o, "verify", [&] { (void)seg.verify(); });
    });
    call(o, "reap_dead", [&] { (void)shm::Segment::reap_dead(kName); });
    // create() of the same name: the file exists, damaged or not.
    call(o, "create", [&] { (void)shm::Segment::create(kName, 128 * 1024, opt); });
    return o;
}

}  // namespace untrusted
