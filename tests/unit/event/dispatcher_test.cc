#include <catch2/catch.hpp>
#include <atomic>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "proxy/event/dispatcher.h"

using strait::event::Dispatcher;

TEST_CASE("Dispatcher: post from another thread runs on the loop thread") {
  Dispatcher d("test");
  std::atomic<bool> ran{false};
  std::thread::id loop_thread;
  std::thread t([&] {
    d.post([&] {
      ran = true;
      loop_thread = std::this_thread::get_id();
      d.exit();
    });
  });
  d.run();
  t.join();
  REQUIRE(ran);
  REQUIRE(loop_thread == std::this_thread::get_id());
}

TEST_CASE("Dispatcher: timers fire once after their delay and can be disabled") {
  Dispatcher d("test");
  int fired = 0, never = 0;
  auto t1 = d.createTimer([&] {
    ++fired;
    d.exit();
  });
  auto t2 = d.createTimer([&] { ++never; });
  t2->enable(5);
  t2->disable();
  t1->enable(20);
  d.run();
  REQUIRE(fired == 1);
  REQUIRE(never == 0);
}

TEST_CASE("Dispatcher: re-enabling a timer moves its deadline both ways") {
  // Timers re-arm lazily (the libuv timer is left running when the deadline moves later): the callback
  // must still come at the latest deadline set, never at an earlier one that was replaced.
  Dispatcher d("test");
  std::vector<std::pair<std::string, uint64_t>> fired;
  const uint64_t start = d.nowMs();
  auto later = d.createTimer([&] { fired.emplace_back("later", d.nowMs() - start); });
  auto sooner = d.createTimer([&] { fired.emplace_back("sooner", d.nowMs() - start); });
  auto off = d.createTimer([&] { fired.emplace_back("off", d.nowMs() - start); });
  auto stop = d.createTimer([&] { d.exit(); });
  later->enable(10);
  later->enable(120);  // pushed back: the early libuv expiry must not run the callback
  sooner->enable(300);
  sooner->enable(30);  // brought forward
  off->enable(10);
  off->disable();
  off->enable(400);
  off->disable();      // enabled twice, then off for good
  REQUIRE(later->enabled());
  REQUIRE_FALSE(off->enabled());
  stop->enable(600);
  d.run();
  REQUIRE(fired.size() == 2);
  REQUIRE(fired[0].first == "sooner");
  REQUIRE(fired[0].second >= 30);
  REQUIRE(fired[0].second < 300);
  REQUIRE(fired[1].first == "later");
  REQUIRE(fired[1].second >= 120);
  REQUIRE_FALSE(later->enabled());
}

TEST_CASE("Dispatcher: a timer may be destroyed inside its own callback") {
  Dispatcher d("test");
  strait::event::TimerPtr t;
  bool ran = false;
  t = d.createTimer([&] {
    ran = true;
    t.reset();
    d.exit();
  });
  t->enable(1);
  d.run();
  REQUIRE(ran);
  REQUIRE(t == nullptr);
}

TEST_CASE("Dispatcher: a timer replaced from inside its own callback reuses the handle and fires") {
  // The router re-creates its retry timer from that timer's callback; handles are recycled, so the new
  // Timer gets the handle libuv is calling right now.
  Dispatcher d("test");
  std::optional<strait::event::Timer> t;
  int first = 0, second = 0;
  t.emplace(d, [&] {
    ++first;
    t.emplace(d, [&] {
      ++second;
      d.exit();
    });
    t->enable(5);
  });
  t->enable(1);
  auto guard = d.createTimer([&] { d.exit(); });
  guard->enable(2000);
  d.run();
  REQUIRE(first == 1);
  REQUIRE(second == 1);
}

namespace {
struct Tracked : strait::event::DeferredDeletable {
  explicit Tracked(bool* flag) : flag_(flag) {}
  ~Tracked() override { *flag_ = true; }
  bool* flag_;
};
}  // namespace

TEST_CASE("Dispatcher: deferred deletion waits until the callback returns") {
  Dispatcher d("test");
  bool deleted = false;
  bool deleted_inside = true;
  d.post([&] {
    d.deferredDelete(std::make_unique<Tracked>(&deleted));
    deleted_inside = deleted;
  });
  auto stop = d.createTimer([&] { d.exit(); });
  stop->enable(20);
  d.run();
  REQUIRE_FALSE(deleted_inside);
  REQUIRE(deleted);
}
