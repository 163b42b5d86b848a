#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "proxy/upstream/host.h"

namespace strait::upstream {

// A cluster's load-balancing settings (Envoy's Cluster.lb_policy and its *_lb_config, common_lb_config).
struct LbConfig {
  enum class Policy { RoundRobin, LeastRequest, Random, RingHash, Maglev, PeakEwma };
  Policy policy = Policy::RoundRobin;
  // LEAST_REQUEST: hosts sampled per choice, and the active-request bias of the weighted form
  // (weight / (active + 1)^bias).
  uint32_t choice_count = 2;
  double active_request_bias = 1.0;
  // RING_HASH: ring size bounds (entries), and whether endpoint hostnames are hashed instead of addresses.
  uint64_t ring_min_size = 1024;
  uint64_t ring_max_size = 8 * 1024 * 1024;
  bool use_hostname_for_hashing = false;
  // MAGLEV: lookup table size, a prime.
  uint64_t maglev_table_size = 65537;
  // Priority levels: a level takes min(100, healthy% x overprovisioning_factor/100) of the load, the
  // rest spills to the next. A level whose available share is below panic_threshold percent (while
  // the levels together are short of 100%) is in panic: the balancer picks among all its hosts,
  // draining ones excepted, as Envoy does. 0 disables panic.
  uint32_t overprovisioning_factor = 140;
  double panic_threshold_percent = 50.0;
  // common_lb_config.locality_weighted_lb_config: pick a locality by its weight x its healthy share first.
  bool locality_weighted = false;
  // common_lb_config.zone_aware_lb_config, for zone-aware routing (which needs a LocalCluster, see
  // createLoadBalancer): the percent of requests it applies to, the fewest healthy priority-0 hosts the
  // cluster must have for it, and whether a cluster in panic fails requests instead of using all hosts.
  double zone_routing_enabled_percent = 100.0;
  uint64_t zone_min_cluster_size = 6;
  bool zone_fail_traffic_on_panic = false;
  // PeakEwma (our extension): decay time of the latency average, and the penalty (in ns) a failed
  // response counts as.
  uint64_t ewma_decay_ns = 10ull * 1000 * 1000 * 1000;
  uint64_t ewma_error_penalty_ns = 1ull * 1000 * 1000 * 1000;
};

// What a load balancer may use to choose for one request.
struct LbContext {
  // From the route's hash_policy (header, cookie, source IP, query parameter): RING_HASH and MAGLEV
  // map it to a host; unset: they pick at random.
  std::optional<uint64_t> hash_key;
  // retry_host_predicate previous_hosts: hosts already tried by this request, avoided while another is
  // available (up to host_selection_retry_max_attempts re-picks).
  const Host* const* avoid = nullptr;
  uint32_t avoid_count = 0;
  uint32_t host_selection_retry_max_attempts = 1;
  // PeakEwma: the steady-clock time of the choice in ns, for decaying latency averages; 0: the balancer
  // reads the steady clock itself (only when it needs the time).
  uint64_t now_ns = 0;
  bool shouldAvoid(const Host* h) const {
    for (uint32_t i = 0; i < avoid_count; ++i) {
      if (avoid[i] == h) return true;
    }
    return false;
  }
};

// The local cluster (bootstrap cluster_manager.local_cluster_name: the cluster this proxy's own workload
// belongs to) as zone-aware routing sees it: how its healthy hosts spread over localities, and this
// proxy's locality (node.locality). Each worker keeps its own copy and refreshes it on its own thread
// before choosing, so balancers read it without a lock; `stamp()` changes whenever the counts may have,
// and a balancer re-plans its zone routing when it sees a new stamp.
class LocalCluster {
 public:
  explicit LocalCluster(Locality locality) : locality_(std::move(locality)) {}
  const Locality& locality() const { return locality_; }
  // Recounts when the local cluster's version or health generation moved (else two loads). `hosts`
  // null: the local cluster is not in the config (yet). `panic_threshold_percent`: the local cluster's.
  void refresh(uint64_t version_id, const std::vector<HostSharedPtr>* hosts, const std::atomic<uint64_t>* generation,
               double panic_threshold_percent);
  uint64_t stamp() const { return stamp_; }
  // The local cluster is known, has healthy hosts in this proxy's locality and is not in panic.
  bool ok() const { return ok_; }
  uint64_t healthyTotal() const { return healthy_total_; }
  uint64_t healthyIn(const Locality& l) const;

 private:
  Locality locality_;
  uint64_t stamp_ = 1;
  uint64_t version_id_ = 0;
  uint64_t generation_ = UINT64_MAX;
  bool ok_ = false;
  uint64_t healthy_total_ = 0;
  std::vector<std::pair<Locality, uint64_t>> healthy_;  // per locality
};

// Zone-aware routing's counters (cluster.<name>.lb_zone_* and lb_local_cluster_not_ok). The "all
// directly", "sampled" and "cross zone" ones count choices; "too small" and "not ok" count the plans a
// worker's balancer made (at each rebuild) that had to leave zone routing off for that reason.
struct ZoneStats {
  stats::Counter routing_all_directly;  // lb_zone_routing_all_directly
  stats::Counter routing_sampled;       // lb_zone_routing_sampled
  stats::Counter routing_cross_zone;    // lb_zone_routing_cross_zone
  stats::Counter cluster_too_small;     // lb_zone_cluster_too_small
  stats::Counter local_cluster_not_ok;  // lb_local_cluster_not_ok
};

// One worker's balancer for one version of a cluster's host list. Workers each build their own (no
// shared mutable state but the hosts' atomics), so choosing takes no lock. Health changes at run time
// (outlier ejection, active health checks) bump `health_generation`; the balancer compares it on each
// choice (one relaxed load) and rebuilds its healthy view when it moved.
class LoadBalancer {
 public:
  virtual ~LoadBalancer() = default;
  // null: no host can take the request (none, or all draining).
  virtual const Host* chooseHost(const LbContext& context) = 0;
};
using LoadBalancerPtr = std::unique_ptr<LoadBalancer>;

// `hosts` in any order (priority and locality are on each host). `seed` makes a worker's random
// choices its own; tests pass a fixed one.
// `rotation_offset`: where equal-weight round robin starts (a worker passes its index, so workers
// start one host apart); kRandomRotation: from a random start.
// `local` (may be null; must outlive the balancer): zone-aware routing for round robin, least request,
// random and peak EWMA, unless locality-weighted (Envoy does one or the other). Only priority 0 takes
// part. The plan compares the share of the local cluster's healthy hosts in this proxy's locality with
// the share of this cluster's: when this cluster's is at least as large, every request stays in the
// locality; else that ratio of requests stays, and the rest goes to the other localities in proportion
// to their residual capacity (how much more of this cluster than of the local cluster they hold). Off
// when this cluster has one locality, no healthy host in the local one, fewer than zone_min_cluster_size
// healthy hosts, or is in panic; or when the local cluster is not ok. `zone_stats` (may be null): where
// it counts.
inline constexpr uint32_t kRandomRotation = UINT32_MAX;
LoadBalancerPtr createLoadBalancer(const LbConfig& config, std::vector<HostSharedPtr> hosts,
                                   const std::atomic<uint64_t>* health_generation, uint64_t seed,
                                   uint32_t rotation_offset = kRandomRotation, const LocalCluster* local = nullptr,
                                   const ZoneStats* zone_stats = nullptr);

// Envoy-compatible hashing of a hash_policy value (xxHash64, seed 0), so the same keys map the same way.
uint64_t hashKey(std::string_view value);

// xxHash64 of `data` with `seed` (hashKey is xxHash64(value, 0); Maglev also uses seed 1 for its skips).
uint64_t xxHash64(std::string_view data, uint64_t seed);

// PeakEwma: records one response from `host` that took `latency_ns` (error: the request failed, which
// counts as at least config.ewma_error_penalty_ns) at steady-clock time `now_ns`. A sample above the
// host's average replaces it at once (peak); a lower one moves the average toward it with weight
// 1 - exp(-elapsed / ewma_decay_ns). Any worker may call it; concurrent updates of one host are not
// serialized (a lost sample only delays the average a little).
void recordLatency(Host& host, uint64_t latency_ns, bool error, uint64_t now_ns, const LbConfig& config);

}  // namespace strait::upstream
