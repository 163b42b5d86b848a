// Config objects workers let go of are released where releaseRetired() runs (the main thread).
#include <catch2/catch.hpp>

#include <memory>
#include <thread>
#include <vector>

#include "proxy/config/retire.h"

using namespace strait;

TEST_CASE("retire: objects handed over on another thread live until the releasing thread lets go") {
  config::releaseRetired();  // whatever earlier tests left
  auto a = std::make_shared<int>(1);
  auto b = std::make_shared<int>(2);
  std::weak_ptr<int> wa = a, wb = b;
  std::thread worker([a = std::move(a), b = std::move(b)]() mutable {
    config::retire({std::move(a)});
    config::retire({std::move(b)});
    config::retire({});  // nothing: no-op
  });
  worker.join();
  // The worker's references are gone, but the objects are not released until the main thread asks.
  REQUIRE_FALSE(wa.expired());
  REQUIRE_FALSE(wb.expired());
  REQUIRE(config::releaseRetired() == 2);
  REQUIRE(wa.expired());
  REQUIRE(wb.expired());
  REQUIRE(config::releaseRetired() == 0);
}
