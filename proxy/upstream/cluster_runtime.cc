#include "proxy/upstream/cluster_runtime.h"

#include <algorithm>
#include <chrono>
#include <iterator>

#include "absl/strings/str_cat.h"

namespace strait::upstream {

namespace {
constexpr const char* kPriorityNames[kResourcePriorities] = {"default", "high"};  // by ResourcePriority

// A priority's limits in ResourceManager order: connections, pending requests, requests, retries,
// connection pools.
constexpr const char* kOpenNames[] = {"cx_open", "rq_pending_open", "rq_open", "rq_retry_open", "cx_pool_open"};
constexpr const char* kRemainingNames[] = {"remaining_cx", "remaining_pending", "remaining_rq", "remaining_retries",
                                           "remaining_cx_pools"};

// "cluster.<name>.circuit_breakers.<priority>." + the five open gauges, as one block layout.
struct CircuitBreakerBlock {
  stats::StatBlock layout;
  uint32_t open[std::size(kOpenNames)] = {};
};
const CircuitBreakerBlock& circuitBreakerBlock() {
  static const CircuitBreakerBlock* block = [] {
    auto* b = new CircuitBreakerBlock;  // lives for the process, as every layout does
    for (size_t k = 0; k < std::size(kOpenNames); ++k) b->open[k] = b->layout.gauge(kOpenNames[k]);
    return b;
  }();
  return *block;
}
}  // namespace

void registerTicking(std::weak_ptr<ClusterRuntime> rt);

const std::shared_ptr<const CircuitBreakerLimits>& defaultCircuitBreakerLimits() {
  static const auto* defaults = new std::shared_ptr<const CircuitBreakerLimits>(std::make_shared<CircuitBreakerLimits>());
  return *defaults;
}

bool ResourceManager::tryAcquireRetry() {
  if (!has_retry_budget.load(std::memory_order_relaxed)) return retries.tryAcquire();
  // Envoy's budget: retries in flight may be at most budget_percent of the requests active or waiting,
  // and never fewer than min_retry_concurrency.
  const uint64_t active = requests.count() + pending_requests.count();
  const uint64_t allowed = std::max<uint64_t>(min_retry_concurrency.load(std::memory_order_relaxed),
                                              active * budget_per_mille.load(std::memory_order_relaxed) / 1000);
  return retries.tryAcquireUpTo(allowed);
}

ClusterRuntime::ClusterRuntime(stats::Store& store, std::string name, const std::string& stat_prefix)
    : scope_(store), name_(std::move(name)), stat_prefix_(stat_prefix) {
  // Envoy's defaults until a version is activated (no gauge writes here: this may run on a thread
  // without a stats shard). HIGH has the same defaults as DEFAULT.
  // The five "open" gauges of a priority are one stat block (stats.h, StatBlock): one store entry per
  // priority instead of five, the same names in /stats.
  const ResourceLimits defaults;
  const CircuitBreakerBlock& block = circuitBreakerBlock();
  for (size_t i = 0; i < kResourcePriorities; ++i) {
    ResourceManager& r = resources_[i];
    const uint32_t first = scope_.block(absl::StrCat("cluster.", stat_prefix, ".circuit_breakers.", kPriorityNames[i]),
                                        block.layout);
    ResourceLimit* const limits[] = {&r.connections, &r.pending_requests, &r.requests, &r.retries,
                                     &r.connection_pools};
    const uint64_t maxes[] = {defaults.max_connections, defaults.max_pending_requests, defaults.max_requests,
                              defaults.max_retries, defaults.max_connection_pools};
    for (size_t k = 0; k < std::size(limits); ++k) {
      limits[k]->open_ = stats::Gauge{first + block.open[k]};
      limits[k]->kind_ = static_cast<uint8_t>(k);
      limits[k]->priority_ = static_cast<uint8_t>(i);
      limits[k]->max_ = maxes[k];
    }
  }
}


namespace {
uint64_t keyHash(const std::string& key) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : key) h = (h ^ c) * 1099511628211ull;
  return h;
}
std::string keyOf(const Host& h) {
  return hostKey(h.address, h.transport_socket ? h.transport_socket->hashKey() : 0, h.priority,
                 h.locality ? *h.locality : Locality(), h.hostname());
}
}  // namespace

HostSharedPtr ClusterRuntime::findHost(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = hosts_.find(keyHash(key));
  if (it == hosts_.end()) return nullptr;
  HostSharedPtr h = it->second.lock();
  if (h && keyOf(*h) != key) return nullptr;  // another identity with the same hash
  return h;
}

void ClusterRuntime::rememberHost(const std::string& key, const HostSharedPtr& host) {
  std::lock_guard<std::mutex> lock(mu_);
  // Forget the hosts no version holds any more, so the map follows the cluster's size.
  if (hosts_.size() > 64 && hosts_.size() % 64 == 0) {
    for (auto it = hosts_.begin(); it != hosts_.end();) {
      if (it->second.expired()) {
        hosts_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  hosts_[keyHash(key)] = host;
}

void ClusterRuntime::setLimit(ResourceLimit& l, uint64_t max, bool track) {
  if (track && !l.remaining_made_) {
    l.remaining_ = scope_.gauge(absl::StrCat("cluster.", stat_prefix_, ".circuit_breakers.", kPriorityNames[l.priority_],
                                             ".", kRemainingNames[l.kind_]));
    l.remaining_made_ = true;
  }
  // Envoy's thresholds are 32-bit (max_connection_pools' "no limit" is UINT32_MAX).
  max = std::min<uint64_t>(max, UINT32_MAX);
  const uint64_t old = l.max_.exchange(static_cast<uint32_t>(max), std::memory_order_relaxed);
  const uint64_t count = l.current_.load(std::memory_order_relaxed);
  // Keep the gauges true across a change of the limit: "open" is whether the count is at it.
  const bool was_open = count >= old, is_open = count >= max;
  if (was_open != is_open) stats::add(l.open_, is_open ? 1 : -1);
  if (track && !l.track_remaining_) {
    stats::add(l.remaining_, static_cast<int64_t>(max) - static_cast<int64_t>(count));
  } else if (track) {
    stats::add(l.remaining_, static_cast<int64_t>(max) - static_cast<int64_t>(old));
  } else if (l.track_remaining_) {
    stats::add(l.remaining_, -(static_cast<int64_t>(old) - static_cast<int64_t>(count)));
  }
  l.track_remaining_ = track;
}

void ClusterRuntime::activate(const std::vector<HostSharedPtr>& hosts, const std::vector<HostParams>& params,
                              const ResourceLimits& limits, const OutlierConfig* outlier,
                              const ResourceLimits& high_limits) {
  std::lock_guard<std::mutex> lock(mu_);
  if (outlier != nullptr) {
    if (!od_) {
      od_stats_ = std::make_unique<OutlierStats>();
      od_ = std::make_unique<OutlierDetector>(*outlier, *od_stats_, &health_generation_, [] {
        return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now().time_since_epoch())
                                         .count());
      });
      const std::string p = absl::StrCat("cluster.", stat_prefix_, ".outlier_detection.");
      const OutlierStats& s = *od_stats_;
      const std::pair<const char*, const std::atomic<uint64_t>*> counters[] = {
          {"ejections_enforced_total", &s.ejections_enforced_total},
          {"ejections_overflow", &s.ejections_overflow},
          {"ejections_enforced_consecutive_5xx", &s.ejections_enforced_consecutive_5xx},
          {"ejections_detected_consecutive_5xx", &s.ejections_detected_consecutive_5xx},
          {"ejections_enforced_consecutive_gateway_failure", &s.ejections_enforced_consecutive_gateway_failure},
          {"ejections_detected_consecutive_gateway_failure", &s.ejections_detected_consecutive_gateway_failure},
          {"ejections_enforced_consecutive_local_origin_failure", &s.ejections_enforced_consecutive_local_origin_failure},
          {"ejections_detected_consecutive_local_origin_failure", &s.ejections_detected_consecutive_local_origin_failure},
          {"ejections_enforced_success_rate", &s.ejections_enforced_success_rate},
          {"ejections_detected_success_rate", &s.ejections_detected_success_rate},
          {"ejections_enforced_local_origin_success_rate", &s.ejections_enforced_local_origin_success_rate},
          {"ejections_detected_local_origin_success_rate", &s.ejections_detected_local_origin_success_rate},
          {"ejections_enforced_failure_percentage", &s.ejections_enforced_failure_percentage},
          {"ejections_detected_failure_percentage", &s.ejections_detected_failure_percentage},
          {"ejections_enforced_local_origin_failure_percentage", &s.ejections_enforced_local_origin_failure_percentage},
          {"ejections_detected_local_origin_failure_percentage", &s.ejections_detected_local_origin_failure_percentage},
          {"ejections_total", &s.ejections_total},
          {"ejections_consecutive_5xx", &s.ejections_consecutive_5xx},
          {"ejections_success_rate", &s.ejections_success_rate},
      };
      for (const auto& [name, src] : counters) {
        od_published_.push_back(PublishedStat{src, scope_.counter(p + name), {}, false, 0});
      }
      od_published_.push_back(PublishedStat{&s.ejections_active, {}, scope_.gauge(p + "ejections_active"), true, 0});
      registerTicking(weak_from_this());
    } else {
      od_->updateConfig(*outlier);
    }
    od_->setHosts(hosts);
    od_enabled_.store(true, std::memory_order_release);
  } else if (od_ && od_enabled_.load(std::memory_order_relaxed)) {
    // Outlier detection was removed: no more reports, and every host it ejected returns now.
    od_enabled_.store(false, std::memory_order_release);
    bool changed = false;
    for (const auto& h : hosts) {
      if ((h->health_flags.fetch_and(~kFailedOutlierCheck, std::memory_order_relaxed) & kFailedOutlierCheck) != 0) {
        changed = true;
      }
    }
    od_->setHosts({});
    if (changed) health_generation_.fetch_add(1, std::memory_order_release);
  }
  bool health_changed = false;
  constexpr uint32_t kEdsBits = kFailedEdsHealth | kDegradedEdsHealth | kEdsDraining;
  for (size_t i = 0; i < hosts.size() && i < params.size(); ++i) {
    Host& h = *hosts[i];
    h.weight.store(std::max<uint32_t>(params[i].weight, 1), std::memory_order_relaxed);
    h.locality_weight.store(params[i].locality_weight, std::memory_order_relaxed);
    uint32_t flags = h.health_flags.load(std::memory_order_relaxed);
    uint32_t next;
    do {
      next = (flags & ~kEdsBits) | params[i].eds_flags;
    } while (next != flags && !h.health_flags.compare_exchange_weak(flags, next, std::memory_order_relaxed));
    health_changed = health_changed || next != flags;
  }
  // Weights are read when a balancer is built; a new cluster version rebuilds them anyway, but a
  // health change must reach balancers of the same version too.
  if (health_changed) health_generation_.fetch_add(1, std::memory_order_release);
  const ResourceLimits* by_priority[kResourcePriorities] = {&limits, &high_limits};
  for (size_t i = 0; i < kResourcePriorities; ++i) {
    ResourceManager& r = resources_[i];
    const ResourceLimits& l = *by_priority[i];
    setLimit(r.connections, l.max_connections, l.track_remaining);
    setLimit(r.pending_requests, l.max_pending_requests, l.track_remaining);
    setLimit(r.requests, l.max_requests, l.track_remaining);
    setLimit(r.retries, l.max_retries, l.track_remaining);
    setLimit(r.connection_pools, l.max_connection_pools, l.track_remaining);
    r.has_retry_budget.store(l.has_retry_budget, std::memory_order_relaxed);
    r.budget_per_mille.store(static_cast<uint32_t>(l.budget_percent * 10), std::memory_order_relaxed);
    r.min_retry_concurrency.store(l.min_retry_concurrency, std::memory_order_relaxed);
  }
}

namespace {

// Runtimes with periodic work (outlier detection), so the tick does not walk every cluster.
struct Ticking {
  std::mutex mu;
  std::vector<std::weak_ptr<ClusterRuntime>> runtimes;
};

Ticking& ticking() {
  static Ticking* t = new Ticking();
  return *t;
}

}  // namespace

void registerTicking(std::weak_ptr<ClusterRuntime> rt) {
  Ticking& t = ticking();
  std::lock_guard<std::mutex> lock(t.mu);
  t.runtimes.push_back(std::move(rt));
}

void tickClusterRuntimes(uint64_t now_ms) {
  std::vector<ClusterRuntimeSharedPtr> live;
  {
    Ticking& t = ticking();
    std::lock_guard<std::mutex> lock(t.mu);
    std::erase_if(t.runtimes, [](const auto& w) { return w.expired(); });
    for (const auto& w : t.runtimes) {
      if (auto rt = w.lock()) live.push_back(std::move(rt));
    }
  }
  for (const auto& rt : live) rt->onMainTick(now_ms);
}

void ClusterRuntime::onMainTick(uint64_t now_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!od_) return;
  if (od_enabled_.load(std::memory_order_relaxed)) {
    if (od_next_interval_ms_ == 0) od_next_interval_ms_ = now_ms + od_->intervalMs();
    if (now_ms >= od_next_interval_ms_) {
      od_->onInterval();
      od_next_interval_ms_ = now_ms + od_->intervalMs();
    }
  }
  publishOutlierStats();
}

void ClusterRuntime::publishOutlierStats() {
  for (auto& p : od_published_) {
    const uint64_t v = p.source->load(std::memory_order_relaxed);
    if (v == p.last) continue;
    if (p.is_gauge) {
      stats::add(p.gauge, static_cast<int64_t>(v) - static_cast<int64_t>(p.last));
    } else {
      stats::inc(p.counter, static_cast<int64_t>(v - p.last));
    }
    p.last = v;
  }
}

namespace {

struct Registry {
  std::mutex mu;
  std::map<std::pair<stats::Store*, std::string>, std::weak_ptr<ClusterRuntime>> runtimes;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: runtimes may outlive static destruction order
  return *r;
}

}  // namespace

ClusterRuntimeSharedPtr clusterRuntime(stats::Store& store, const std::string& name, const std::string& stat_prefix) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto& slot = r.runtimes[{&store, name}];
  if (auto rt = slot.lock()) return rt;
  // No sweep of expired entries here: each runtime erases its own entry when it goes (below), and a
  // sweep per creation made a 10,000-cluster push quadratic (a quarter of its time).
  auto rt = std::make_shared<ClusterRuntime>(store, name, stat_prefix);
  slot = rt;
  return rt;
}

bool ClusterRuntime::responseCodeCounter(uint32_t code, stats::Counter* out) {
  if (code < 100 || code > 599) return false;
  if (const CodeTable* t = codes_.load(std::memory_order_acquire)) {
    for (uint32_t i = 0; i < kMaxResponseCodes; ++i) {
      const uint64_t e = t->entries[(code + i) % kMaxResponseCodes].load(std::memory_order_acquire);
      if (e == 0) break;
      if ((e >> 32) == code) {
        *out = stats::Counter{static_cast<uint32_t>(e)};
        return true;
      }
    }
  }
  return makeResponseCodeCounter(code, out);
}

bool ClusterRuntime::makeResponseCodeCounter(uint32_t code, stats::Counter* out) {
  std::lock_guard<std::mutex> lock(mu_);
  CodeTable* t = codes_.load(std::memory_order_relaxed);
  if (t == nullptr) {
    t = new CodeTable;
    codes_.store(t, std::memory_order_release);
  }
  for (uint32_t i = 0; i < kMaxResponseCodes; ++i) {
    std::atomic<uint64_t>& entry = t->entries[(code + i) % kMaxResponseCodes];
    const uint64_t e = entry.load(std::memory_order_relaxed);
    if (e != 0 && (e >> 32) == code) {  // made by another worker meanwhile
      *out = stats::Counter{static_cast<uint32_t>(e)};
      return true;
    }
    if (e == 0) {
      *out = scope_.counter(absl::StrCat("cluster.", stat_prefix_, ".upstream_rq_", code));
      entry.store((uint64_t{code} << 32) | out->index, std::memory_order_release);
      return true;
    }
  }
  return false;  // kMaxResponseCodes codes already: the class counter alone counts this one
}

ClusterRuntime::~ClusterRuntime() {
  delete codes_.load(std::memory_order_relaxed);
  // Leave the registry now rather than at the next cluster's creation, so that a mesh that shrinks
  // gives its names back (the entry may already be a newer runtime of the same name: keep that).
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.runtimes.find({&scope_.store(), name_});
  if (it != r.runtimes.end() && it->second.expired()) r.runtimes.erase(it);
}

std::vector<ClusterRuntimeSharedPtr> liveClusterRuntimes() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<ClusterRuntimeSharedPtr> out;
  for (const auto& [key, weak] : r.runtimes) {
    if (auto rt = weak.lock()) out.push_back(std::move(rt));
  }
  return out;
}

std::string hostKey(const network::Address& address, uint64_t transport_hash, uint32_t priority, const Locality& locality,
                    const std::string& hostname) {
  return absl::StrCat(address.asString(), "|", transport_hash, "|", priority, "|", locality.region, "/", locality.zone,
                      "/", locality.sub_zone, "|", hostname);
}

}  // namespace strait::upstream
