#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "watchdog.hpp"

int main(int argc, char** argv) {
    test::watchdog::start();  // before any thread or segment
    return Catch::Session().run(argc, argv);
}
