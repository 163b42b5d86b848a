#pragma once

// Helpers for unit tests that run a real dispatcher on loopback: bounded loop runs, a listening socket
// on 127.0.0.1, quieter logs, and a stats shard for code that counts on the calling thread.

#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <string>

#include "proxy/common/log.h"
#include "proxy/event/dispatcher.h"
#include "proxy/network/address.h"
#include "proxy/network/listener.h"
#include "proxy/stats/stats.h"

namespace strait::testing {

// Lowers logging to `level` for the scope (connection churn logs at debug/info).
struct QuietLogs {
  common::LogLevel saved = common::currentLogLevel();
  explicit QuietLogs(common::LogLevel level = common::LogLevel::Error) { common::setLogLevel(level); }
  ~QuietLogs() { common::setLogLevel(saved); }
};

// Outlives every config object the tests make: clusters release their stats into it when they go.
inline stats::Store& testStore() {
  static stats::Store* store = new stats::Store(1);
  return *store;
}

// Code under test counts into the thread's stats shard; the previous one comes back afterwards (other
// tests may set their own).
struct ShardGuard {
  stats::Shard* saved = stats::threadShard();
  ShardGuard() { stats::setThreadShard(&testStore().shard(0)); }
  ~ShardGuard() { stats::setThreadShard(saved); }
};

// Runs the loop until `done` holds or `limit_ms` passes (a 2 ms poll timer, never a spin). The loop's
// clock is refreshed first: time spent outside the loop must not eat the limit.
inline bool runUntil(event::Dispatcher& d, const std::function<bool()>& done, uint64_t limit_ms = 1500) {
  d.updateTime();
  auto guard = d.createTimer([&d] { d.exit(); });
  guard->enable(limit_ms);
  event::TimerPtr poll;
  poll = d.createTimer([&] {
    if (done()) {
      d.exit();
    } else {
      poll->enable(2);
    }
  });
  poll->enable(0);
  d.run();
  return done();
}
inline void runFor(event::Dispatcher& d, uint64_t ms) { runUntil(d, [] { return false; }, ms); }

// A listening socket on 127.0.0.1 with a free port (in `bound`).
inline int listenSocket(network::Address& bound) {
  std::string err;
  auto a = network::Address::parse("127.0.0.1", 0);
  int fd = network::bindReusePortSocket(*a, &err, false);
  REQUIRE(fd >= 0);
  bound = network::boundAddress(fd);
  return fd;
}

}  // namespace strait::testing
