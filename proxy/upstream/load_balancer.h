#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>
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
inline constexpr uint32_t kRandomRotation = UINT32_MAX;
LoadBalancerPtr createLoadBalancer(const LbConfig& config, std::vector<HostSharedPtr> hosts,
                                   const std::atomic<uint64_t>* health_generation, uint64_t seed,
                                   uint32_t rotation_offset = kRandomRotation);

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
