#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "proxy/config/snapshot.h"
#include "proxy/stats/stats.h"
#include "proxy/upstream/dns_cluster.h"
#include "proxy/upstream/dns_resolver.h"

namespace strait::server {

// Keeps the hosts of every STRICT_DNS and LOGICAL_DNS cluster resolved, on the resolver's own thread.
// Each hostname endpoint (target) is resolved on its own schedule (refresh rate or TTL, back-off after
// failures); a changed host set is activated in the cluster's runtime (weights, limits, outlier
// detection) and published through runtime->dns_hosts, where the workers pick it up on their next
// choice. No config snapshot is rebuilt for a DNS change.
class DnsClusters {
 public:
  explicit DnsClusters(stats::Store& store);
  ~DnsClusters();  // stops the resolver thread
  void start();
  void stop();

  // A snapshot comes into force (config threads; called before the workers get it). Each DNS cluster's
  // version is activated against the hosts of its newest resolution; a new cluster, or one whose
  // targets or resolver settings changed, starts resolving now (its current hosts serve until the new
  // answer is in); a cluster that is gone, or no longer a DNS cluster, stops and lets its hosts go.
  void apply(const config::Snapshot& snapshot);

  // Runs on the resolver thread after a cluster's host set changed (the server refreshes health checks).
  void setOnHostsChanged(std::function<void(const std::string& cluster)> fn) { on_hosts_changed_ = std::move(fn); }

 private:
  struct Target {
    explicit Target(const upstream::DnsClusterConfig& c) : schedule(c) {}
    std::optional<std::vector<upstream::DnsAnswer>> last_good;  // the newest successful answer
    upstream::DnsRefreshSchedule schedule;
    bool in_flight = false;
  };
  struct Entry {
    config::ClusterConstSharedPtr version;  // the newest accepted version (limits, outlier detection)
    upstream::ClusterRuntimeSharedPtr runtime;
    upstream::DnsClusterConfigConstSharedPtr config;  // what is being resolved
    std::string key;
    uint64_t epoch = 0;  // moves when `config` changes: answers and timers of an older one are dropped
    std::vector<Target> targets;
    std::vector<upstream::ClusterRuntime::HostParams> params;  // of the published set
    std::unique_ptr<stats::StatScope> scope;
    stats::Counter update_attempt, update_success, update_failure, update_empty, membership_change;
  };
  // Resolver thread.
  void resolveTarget(const std::string& name, uint64_t epoch, size_t index);
  void onResolved(const std::string& name, uint64_t epoch, size_t index, const upstream::DnsResolver::Result& result);
  // Under mu_: builds the host set from every target's newest answer and publishes it if it changed.
  bool republishLocked(Entry& e);
  void activateLocked(Entry& e, const std::vector<upstream::HostSharedPtr>& hosts,
                      const std::vector<upstream::ClusterRuntime::HostParams>& params);

  stats::Store& store_;
  upstream::DnsResolver resolver_;
  std::function<void(const std::string&)> on_hosts_changed_;
  std::mutex mu_;  // guards entries_ (config threads apply(), the resolver thread answers)
  std::map<std::string, std::unique_ptr<Entry>> entries_;
  bool started_ = false;
};

}  // namespace strait::server
