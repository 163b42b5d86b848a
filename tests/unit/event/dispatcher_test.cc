#include <catch2/catch.hpp>
#include <atomic>
#include <thread>

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
