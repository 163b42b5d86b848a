#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "proxy/stats/stats.h"
#include "proxy/upstream/host.h"
#include "proxy/upstream/outlier_detector.h"
#include "proxy/upstream/resolved_hosts.h"

namespace strait::upstream {

// One circuit-breaker limit, shared by every worker. Acquiring never overshoots the limit (a CAS loop),
// so the "open" gauge flips exactly when the count reaches the limit and back when it leaves it.
class ResourceLimit {
 public:
  // false: at the limit; the caller counts the overflow and answers (503, no retry, no connection).
  bool tryAcquire() { return tryAcquireUpTo(max_.load(std::memory_order_relaxed)); }
  // The same against a limit computed by the caller (a retry budget).
  bool tryAcquireUpTo(uint64_t max) {
    uint32_t cur = current_.load(std::memory_order_relaxed);
    do {
      if (cur >= max) return false;
    } while (!current_.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed));
    if (cur + 1 == max_.load(std::memory_order_relaxed)) stats::inc(open_);
    if (track_remaining_) stats::dec(remaining_);
    return true;
  }
  void release() {
    const uint32_t old = current_.fetch_sub(1, std::memory_order_relaxed);
    if (old == max_.load(std::memory_order_relaxed)) stats::dec(open_);
    if (track_remaining_) stats::inc(remaining_);
  }
  bool canCreate() const { return current_.load(std::memory_order_relaxed) < max_.load(std::memory_order_relaxed); }
  uint64_t count() const { return current_.load(std::memory_order_relaxed); }
  uint64_t max() const { return max_.load(std::memory_order_relaxed); }

 private:
  friend class ClusterRuntime;
  // 32 bits, as Envoy's thresholds are (UInt32Value): ten of these in every cluster.
  std::atomic<uint32_t> current_{0};
  std::atomic<uint32_t> max_{1024};
  stats::Gauge open_;       // circuit_breakers.<priority>.<name>_open: 1 while at the limit
  // circuit_breakers.<priority>.remaining_<name>: made when track_remaining first asks for it (Envoy
  // publishes these only then; at 10,000 clusters, 10 gauges each that nobody reads).
  stats::Gauge remaining_;
  uint8_t kind_ = 0;      // which limit of its ResourceManager (names its remaining_ gauge)
  uint8_t priority_ = 0;  // ResourcePriority
  bool remaining_made_ = false;
  bool track_remaining_ = false;
};

// Envoy's circuit-breaker thresholds for one routing priority (CircuitBreakers.Thresholds).
struct ResourceLimits {
  uint64_t max_connections = 1024;
  uint64_t max_pending_requests = 1024;
  uint64_t max_requests = 1024;
  uint64_t max_retries = 3;
  uint64_t max_connection_pools = UINT32_MAX;  // Envoy: unlimited unless set
  bool track_remaining = false;
  // retry_budget: retries may add at most budget_percent of the active requests (and pending ones),
  // but at least min_retry_concurrency; replaces max_retries when set.
  bool has_retry_budget = false;
  double budget_percent = 20.0;
  uint32_t min_retry_concurrency = 3;
};

// Envoy's RoutingPriority: a route's requests (RouteAction.priority) count against the thresholds of
// their priority; each priority has its own counts and limits.
enum class ResourcePriority : uint8_t { Default = 0, High = 1 };
inline constexpr size_t kResourcePriorities = 2;

// A cluster's circuit_breakers thresholds by ResourcePriority. Most clusters of a mesh set none: they
// share defaultCircuitBreakerLimits() instead of holding Envoy's defaults twice each.
struct CircuitBreakerLimits {
  ResourceLimits by_priority[kResourcePriorities];
};
const std::shared_ptr<const CircuitBreakerLimits>& defaultCircuitBreakerLimits();

// A cluster's limits for one routing priority, across all workers.
struct ResourceManager {
  ResourceLimit connections;
  ResourceLimit pending_requests;
  ResourceLimit requests;
  ResourceLimit retries;
  ResourceLimit connection_pools;
  // retry_budget, if any (read by the router when it wants a retry).
  std::atomic<bool> has_retry_budget{false};
  std::atomic<uint32_t> budget_per_mille{200};
  std::atomic<uint32_t> min_retry_concurrency{3};
  // A retry may start: under max_retries, or under the budget when one is set. Takes the retry slot
  // (release it when the retry attempt ends).
  bool tryAcquireRetry();
};

class HealthChecker;

// What a cluster keeps across its config versions: one object per cluster name for as long as any
// config (snapshot, request in flight) holds a version of it. Each translated Cluster points here.
// - Hosts by identity: an update that keeps an endpoint keeps its Host object, so health, outlier
//   and load state carry on (translation looks them up; activate() applies the new version's weights,
//   EDS health and limits once the update is accepted, so a rejected update changes nothing).
// - The resource manager: circuit-breaker counts that hold across workers.
// - health_generation: bumped whenever a host's health flags change; the workers' load balancers
//   rebuild their healthy views when it moves.
class ClusterRuntime : public std::enable_shared_from_this<ClusterRuntime> {
 public:
  ClusterRuntime(stats::Store& store, std::string name, const std::string& stat_prefix);
  ~ClusterRuntime();
  const std::string& name() const { return name_; }
  // The limits of one routing priority (circuit_breakers.thresholds[] of that priority).
  ResourceManager& resources(ResourcePriority p = ResourcePriority::Default) const {
    return resources_[static_cast<size_t>(p)];
  }
  std::atomic<uint64_t>& healthGeneration() const { return health_generation_; }

  // Config threads: the host with this identity key if a live version of the cluster has it.
  HostSharedPtr findHost(const std::string& key);
  void rememberHost(const std::string& key, const HostSharedPtr& host);

  // What one host of one version of the cluster should be once that version is in force.
  struct HostParams {
    uint32_t weight = 1;
    uint32_t locality_weight = 0;
    uint32_t eds_flags = 0;  // kFailedEdsHealth / kDegradedEdsHealth / kEdsDraining
  };
  // An accepted version comes into force: its hosts take their weights and EDS health, the limits of
  // both priorities are set (`high_limits`: the HIGH thresholds). Any thread; serialised inside.
  // `outlier`: the version's outlier_detection (null: none; a detector already running is disabled and
  // its ejected hosts return).
  void activate(const std::vector<HostSharedPtr>& hosts, const std::vector<HostParams>& params,
                const ResourceLimits& limits, const OutlierConfig* outlier,
                const ResourceLimits& high_limits = ResourceLimits());

  // Passive health checking, for the request path (null while disabled). Created the first time a
  // version enables it and never replaced while the runtime lives, so workers read it without a lock.
  OutlierDetector* outlierDetector() const {
    return od_enabled_.load(std::memory_order_acquire) ? od_.get() : nullptr;
  }
  // Main thread, about once a second: the detector's interval when due, and its stats published.
  void onMainTick(uint64_t now_ms);

  // cluster.<stat prefix>.upstream_rq_<code>, Envoy's counter per response code: made the first time a
  // worker sees that code on this cluster (as Envoy makes them: only codes that occurred are listed),
  // found after with an atomic load or two. Any thread. False for a code outside 100-599 or once
  // kMaxResponseCodes distinct codes have counters (upstream_rq_<N>xx still counts those).
  bool responseCodeCounter(uint32_t code, stats::Counter* out);
  static constexpr uint32_t kMaxResponseCodes = 16;

  // Active health checking, owned here so its state survives config versions; created, updated and
  // stopped by the server on the main thread (server/cluster_health.cc). Null when the cluster has none.
  std::shared_ptr<HealthChecker> health_checker;

  // STRICT_DNS / LOGICAL_DNS: the hosts of the newest resolution, published by the resolver thread
  // between config versions (server/dns_clusters.cc); workers rebuild their balancer when it moves.
  ResolvedHosts dns_hosts;

 private:
  void setLimit(ResourceLimit& l, uint64_t max, bool track);
  void publishOutlierStats();
  stats::StatScope scope_;
  std::string name_;
  std::string stat_prefix_;
  std::unique_ptr<OutlierStats> od_stats_;
  std::unique_ptr<OutlierDetector> od_;
  std::atomic<bool> od_enabled_{false};
  uint64_t od_next_interval_ms_ = 0;  // main thread
  // Published copies of od_stats_: counters get the delta since the last tick (main thread).
  struct PublishedStat {
    const std::atomic<uint64_t>* source;
    stats::Counter counter;
    stats::Gauge gauge;
    bool is_gauge;
    uint64_t last;
  };
  std::vector<PublishedStat> od_published_;
  mutable ResourceManager resources_[kResourcePriorities];  // by ResourcePriority
  mutable std::atomic<uint64_t> health_generation_{0};
  std::mutex mu_;
  // Per-code counters (responseCodeCounter): (code << 32 | slot) by open addressing, entries only added
  // (under mu_), so a reader that meets an empty entry may stop. Made on first use: a cluster that never
  // answers costs a pointer.
  struct CodeTable {
    std::atomic<uint64_t> entries[kMaxResponseCodes] = {};
  };
  std::atomic<CodeTable*> codes_{nullptr};
  bool makeResponseCodeCounter(uint32_t code, stats::Counter* out);
  // Live hosts by the hash of their identity key (the key itself is not kept: findHost() checks a
  // candidate by recomputing it from the host, so a hash collision only costs a host its state). Open
  // addressing: 24 bytes a host in one array, where a node map cost a 48-byte node each.
  absl::flat_hash_map<uint64_t, std::weak_ptr<Host>> hosts_;
};
using ClusterRuntimeSharedPtr = std::shared_ptr<ClusterRuntime>;

// The runtime of cluster `name` in `store`: the existing one while any version of the cluster lives,
// else a new one. Config threads only (serialised inside).
ClusterRuntimeSharedPtr clusterRuntime(stats::Store& store, const std::string& name, const std::string& stat_prefix);

// Every live runtime (for /clusters and tests).
std::vector<ClusterRuntimeSharedPtr> liveClusterRuntimes();
// The main thread's periodic work: onMainTick() of every live runtime that ever had outlier detection.
void tickClusterRuntimes(uint64_t now_ms);

// The identity key of a host: what must stay equal for an update to keep the object.
std::string hostKey(const network::Address& address, uint64_t transport_hash, uint32_t priority, const Locality& locality,
                    const std::string& hostname);

}  // namespace strait::upstream
