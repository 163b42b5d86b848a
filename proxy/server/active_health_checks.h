#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "proxy/config/snapshot.h"
#include "proxy/event/dispatcher.h"
#include "proxy/stats/stats.h"
#include "proxy/upstream/health_checker.h"

namespace strait::server {

// The clusters' active health checkers, on the main thread. A checker belongs to a cluster name (its
// ClusterRuntime) and lives across versions of the cluster: update() gives it each accepted version's
// hosts and, when the health_checks config changed, its new settings; a version without health checks,
// or a cluster that is gone, stops it (its hosts get their kFailedActiveHc flags back off). Checkers
// are made and destroyed here only, never by whichever thread drops a cluster's last reference.
class ActiveHealthChecks {
 public:
  ActiveHealthChecks(event::Dispatcher& dispatcher, stats::Store& store) : dispatcher_(dispatcher), store_(store) {}
  ~ActiveHealthChecks();
  // Main thread: `snapshot` was accepted.
  void update(const config::Snapshot& snapshot);
  // Main thread, periodically: the checkers' counters into /stats.
  void publishStats();
  size_t size() const { return checks_.size(); }

 private:
  struct Published {
    const std::atomic<uint64_t>* source;
    stats::Counter counter;
    stats::Gauge gauge;
    bool is_gauge;
    uint64_t last;
  };
  struct Entry {
    std::weak_ptr<upstream::ClusterRuntime> runtime;
    uint64_t config_hash = 0;
    std::unique_ptr<upstream::HealthChecker> checker;
    std::unique_ptr<stats::StatScope> scope;
    std::vector<Published> published;
  };

  event::Dispatcher& dispatcher_;
  stats::Store& store_;
  std::map<std::string, Entry> checks_;  // by cluster name
  uint64_t seed_ = 0x5eed;
};

}  // namespace strait::server
