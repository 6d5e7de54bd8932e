// libFuzzer target: any bytes as a segment file. The input is written into
// a private shm directory under the segment's name and every reader runs
// over it (tests/untrusted.hpp: open, objects, Dict/List reads and verify,
// Queue::open and try_get, shmctl's inspection, gc's reap, create). A
// signal, a hang, a sanitizer report or a refusal other than "this file is
// bad" is a finding.
//
// The seed corpus (corpus/segment) is made by make_corpus.cpp; ./dev fuzz
// runs this longer, and the test suite replays the corpus (replay.cpp) and
// runs a few thousand inputs (run.sh).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "../untrusted.hpp"

namespace {
std::string g_dir;
void remove_dir() {
    std::error_code ec;
    std::filesystem::remove_all(g_dir, ec);
}
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    char tmpl[] = "/dev/shm/libshm-fuzz.XXXXXX";
    if (!::mkdtemp(tmpl)) std::abort();
    g_dir = tmpl;
    std::atexit(remove_dir);
    ::setenv("SHM_DIR", g_dir.c_str(), 1);
    ::setenv("SHM_DAEMON", "off", 1);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (!untrusted::write_file(std::string(reinterpret_cast<const char*>(data), size))) std::abort();
    untrusted::Outcome o = untrusted::drive();
    if (!o.unexpected.empty()) {
        for (const std::string& u : o.unexpected) std::fprintf(stderr, "unexpected refusal: %s\n", u.c_str());
        std::abort();
    }
    return 0;
}
