#include <shm/shm.hpp>

#include "support.hpp"

TEST_CASE("segment names: accepted", "[names]") {
    for (const char* n : {"a", "jobs", "job-queue_1.v2", "A.b-c_d", "0"}) {
        INFO(n);
        REQUIRE_NOTHROW(shm::validate_segment_name(n));
    }
    REQUIRE_NOTHROW(shm::validate_segment_name(std::string(shm::kMaxSegmentName, 'x')));
}

TEST_CASE("segment names: rejected with a reason", "[names]") {
    struct Case {
        std::string name;
        const char* reason;
    };
    for (const Case& c : {Case{"", "empty"}, Case{"a/b", "'/'"}, Case{"..", "starts with '.'"},
                          Case{"a..b", "\"..\""}, Case{".hidden", "starts with '.'"},
                          Case{"-x", "starts with '-'"}, Case{"sp ace", "outside the allowed set"},
                          Case{"tab\t", "outside the allowed set"}, Case{"ü", "outside the allowed set"},
                          Case{std::string(shm::kMaxSegmentName + 1, 'x'), "too long"}}) {
        INFO(c.name);
        try {
            shm::validate_segment_name(c.name);
            FAIL("accepted");
        } catch (const shm::name_error& e) {
            std::string what = e.what();
            CHECK(what.find(c.reason) != std::string::npos);
            CHECK(what.find("segment names are") != std::string::npos);
            CHECK(e.code().value() == EINVAL);
        }
    }
}

TEST_CASE("object names", "[names]") {
    REQUIRE_NOTHROW(shm::validate_object_name("jobs/queue:1"));
    REQUIRE_THROWS_AS(shm::validate_object_name(""), shm::name_error);
    REQUIRE_THROWS_AS(shm::validate_object_name("/abs"), shm::name_error);
    REQUIRE_THROWS_AS(shm::validate_object_name("a b"), shm::name_error);
    REQUIRE_THROWS_AS(shm::validate_object_name(std::string(shm::kMaxObjectName + 1, 'o')), shm::name_error);
}

TEST_CASE("paths live in SHM_DIR with the libshm. prefix", "[names]") {
    test::ShmDir dir;
    REQUIRE(shm::shm_directory() == dir.path());
    REQUIRE(shm::segment_path("x") == dir.path() + "/libshm.x");
    REQUIRE_THROWS_AS(shm::segment_path("../etc/passwd"), shm::name_error);
    ::unsetenv("SHM_DIR");
    REQUIRE(shm::shm_directory() == "/dev/shm");
    ::setenv("SHM_DIR", dir.path().c_str(), 1);
}

TEST_CASE("a bad name never touches the file system", "[names]") {
    test::ShmDir dir;
    REQUIRE_THROWS_AS(shm::Segment::create("../escape", 1 << 20), shm::name_error);
    REQUIRE_THROWS_AS(shm::Segment::open("a/b"), shm::name_error);
    REQUIRE(dir.files().empty());
}
