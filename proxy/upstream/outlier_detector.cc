#include "proxy/upstream/outlier_detector.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace strait::upstream {

namespace {

constexpr size_t kExt = static_cast<size_t>(OutlierOrigin::External);
constexpr size_t kLocal = static_cast<size_t>(OutlierOrigin::Local);

bool isGatewayError(uint32_t status) { return status == 502 || status == 503 || status == 504; }

// Successes are the common case: skipping the store when the run is already 0 keeps the host's
// cache line shared between workers instead of bouncing it on every response.
void clearRun(std::atomic<uint32_t>& run) {
  if (run.load(std::memory_order_relaxed) != 0) run.store(0, std::memory_order_relaxed);
}

void inc(std::atomic<uint64_t>& stat) { stat.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

std::string outlierConfigError(const OutlierConfig& c) {
  if (c.interval_ms == 0) return "outlier_detection.interval must be greater than 0";
  if (c.base_ejection_time_ms == 0) return "outlier_detection.base_ejection_time must be greater than 0";
  if (c.max_ejection_time_ms == 0) return "outlier_detection.max_ejection_time must be greater than 0";
  const std::pair<const char*, uint32_t> percents[] = {
      {"max_ejection_percent", c.max_ejection_percent},
      {"enforcing_consecutive_5xx", c.enforcing_consecutive_5xx},
      {"enforcing_consecutive_gateway_failure", c.enforcing_consecutive_gateway_failure},
      {"enforcing_consecutive_local_origin_failure", c.enforcing_consecutive_local_origin_failure},
      {"enforcing_success_rate", c.enforcing_success_rate},
      {"enforcing_local_origin_success_rate", c.enforcing_local_origin_success_rate},
      {"enforcing_failure_percentage", c.enforcing_failure_percentage},
      {"enforcing_failure_percentage_local_origin", c.enforcing_failure_percentage_local_origin},
      {"failure_percentage_threshold", c.failure_percentage_threshold},
  };
  for (const auto& [name, value] : percents) {
    if (value > 100) return std::string("outlier_detection.") + name + " must be at most 100";
  }
  return {};
}

OutlierDetector::OutlierDetector(const OutlierConfig& config, OutlierStats& stats,
                                 std::atomic<uint64_t>* health_generation, Clock now_ms, Random random)
    : stats_(stats),
      health_generation_(health_generation),
      now_ms_(std::move(now_ms)),
      random_(std::move(random)),
      threshold_5xx_(config.consecutive_5xx),
      threshold_gateway_(config.consecutive_gateway_failure),
      threshold_local_(config.consecutive_local_origin_failure),
      split_(config.split_external_local_origin_errors),
      config_(config) {
  if (!random_) rng_.seed(std::random_device{}());
}

OutlierDetector::~OutlierDetector() {
  std::lock_guard<std::mutex> lock(mu_);
  bool changed = false;
  for (Entry& e : entries_) {
    if (ejected(*e.host)) {
      stats_.ejections_active.fetch_sub(1, std::memory_order_relaxed);
      changed = true;
    }
    resetState(*e.host);
  }
  ejected_count_.store(0, std::memory_order_relaxed);
  if (changed) bumpGeneration();
}

void OutlierDetector::updateConfig(const OutlierConfig& config) {
  std::lock_guard<std::mutex> lock(mu_);
  const bool runs_changed = config.consecutive_5xx != config_.consecutive_5xx ||
                            config.consecutive_gateway_failure != config_.consecutive_gateway_failure ||
                            config.consecutive_local_origin_failure != config_.consecutive_local_origin_failure;
  const bool split_changed = config.split_external_local_origin_errors != config_.split_external_local_origin_errors;
  config_ = config;
  threshold_5xx_.store(config.consecutive_5xx, std::memory_order_relaxed);
  threshold_gateway_.store(config.consecutive_gateway_failure, std::memory_order_relaxed);
  threshold_local_.store(config.consecutive_local_origin_failure, std::memory_order_relaxed);
  split_.store(config.split_external_local_origin_errors, std::memory_order_relaxed);
  if (!runs_changed && !split_changed) return;
  // Runs are compared with `==` against the threshold (so each run triggers once): a run already past
  // a lowered threshold would otherwise never trigger until a success reset it.
  for (Entry& e : entries_) {
    resetRuns(*e.host);
    if (split_changed) {
      // Without split mode local failures were tallied as external ones; mixing the two regimes in
      // one interval's rates would judge hosts on a blend.
      e.host->passive().od_success.store(0, std::memory_order_relaxed);
      e.host->passive().od_failure.store(0, std::memory_order_relaxed);
      e.host->passive().od_local_success.store(0, std::memory_order_relaxed);
      e.host->passive().od_local_failure.store(0, std::memory_order_relaxed);
    }
  }
}

void OutlierDetector::setHosts(std::vector<HostSharedPtr> hosts) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Entry> next;
  next.reserve(hosts.size());
  std::unordered_map<const Host*, size_t> next_index;
  next_index.reserve(hosts.size());
  bool cleared = false;
  for (HostSharedPtr& h : hosts) {
    if (!h || next_index.count(h.get()) != 0) continue;
    auto it = index_.find(h.get());
    if (it != index_.end()) {
      next.push_back(std::move(entries_[it->second]));  // leaves a null host behind: "kept"
    } else {
      // Its od_* state was not made by this detector (a host that left and came back, or a stale
      // flag): nothing here would ever return it to service, so it starts clean.
      if (ejected(*h)) cleared = true;
      resetState(*h);
      Entry e;
      e.host = std::move(h);
      next.push_back(std::move(e));
    }
    next_index.emplace(next.back().host.get(), next.size() - 1);
  }
  for (Entry& gone : entries_) {
    // Envoy leaves a departed host's flag alone (the host object may still serve draining requests
    // and should not look healthy to anyone still holding it); it only stops counting it.
    if (gone.host && ejected(*gone.host)) {
      ejected_count_.fetch_sub(1, std::memory_order_relaxed);
      stats_.ejections_active.fetch_sub(1, std::memory_order_relaxed);
    }
  }
  entries_ = std::move(next);
  index_ = std::move(next_index);
  if (cleared) bumpGeneration();
}

uint64_t OutlierDetector::intervalMs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return config_.interval_ms;
}

// ---- request path ----

void OutlierDetector::putHttpResponse(Host& host, uint32_t status) {
  if (status < 500 || status > 599) {
    host.passive().od_success.fetch_add(1, std::memory_order_relaxed);
    clearRun(host.passive().od_consecutive_5xx);
    clearRun(host.passive().od_consecutive_gateway);
    return;
  }
  host.passive().od_failure.fetch_add(1, std::memory_order_relaxed);
  // The gateway run is checked first, as in Envoy: with both thresholds equal, a gateway detection that
  // is not enforced (the default) is counted before the 5xx run ejects the host.
  if (isGatewayError(status)) {
    // fetch_add hands exactly one caller the value equal to the threshold, so one worker (not all of
    // those racing on the host) goes for the lock.
    const uint32_t run = host.passive().od_consecutive_gateway.fetch_add(1, std::memory_order_relaxed) + 1;
    if (run == threshold_gateway_.load(std::memory_order_relaxed)) onRunThreshold(host, Detection::ConsecutiveGateway);
  } else {
    clearRun(host.passive().od_consecutive_gateway);  // a 500 breaks a run of gateway errors
  }
  const uint32_t run = host.passive().od_consecutive_5xx.fetch_add(1, std::memory_order_relaxed) + 1;
  if (run == threshold_5xx_.load(std::memory_order_relaxed)) onRunThreshold(host, Detection::Consecutive5xx);
}

void OutlierDetector::putLocalOriginFailure(Host& host, LocalOriginFailure kind) {
  if (!split_.load(std::memory_order_relaxed)) {
    // Envoy's mapping without split mode: a timeout is the 504 the router answers with, any other
    // failure to get a response (connect failure, reset) a 503.
    putHttpResponse(host, kind == LocalOriginFailure::Timeout ? 504 : 503);
    return;
  }
  host.passive().od_local_failure.fetch_add(1, std::memory_order_relaxed);
  const uint32_t run = host.passive().od_consecutive_local.fetch_add(1, std::memory_order_relaxed) + 1;
  if (run == threshold_local_.load(std::memory_order_relaxed)) onRunThreshold(host, Detection::ConsecutiveLocal);
}

void OutlierDetector::putLocalOriginSuccess(Host& host, bool final_outcome) {
  if (!split_.load(std::memory_order_relaxed)) {
    // A connection that came up says nothing yet: the response status will be reported. Only a user
    // with no response to come (final) reports it as one.
    if (final_outcome) putHttpResponse(host, 200);
    return;
  }
  host.passive().od_local_success.fetch_add(1, std::memory_order_relaxed);
  clearRun(host.passive().od_consecutive_local);
}

void OutlierDetector::onRunThreshold(Host& host, Detection detection) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(&host);
  if (it == index_.end()) return;  // the host left the cluster while the request was in flight
  // Already out (it still gets traffic in panic mode): nothing to do. Like Envoy, the run is not reset,
  // so it grows past the threshold and does not call here again until a success or the un-ejection.
  if (ejected(host)) return;
  // The run is not re-read: the failures did come in a row, even if a success has just broken it.
  if (tryEject(entries_[it->second], detection, now_ms_())) return;  // the ejection reset every run
  // Not ejected (overflow or the enforcing roll): restart the run that fired so a new bout can be
  // detected, but only that one, so a gateway detection that is not enforced does not wipe the 5xx run
  // that would be.
  switch (detection) {
    case Detection::Consecutive5xx:
      host.passive().od_consecutive_5xx.store(0, std::memory_order_relaxed);
      break;
    case Detection::ConsecutiveGateway:
      host.passive().od_consecutive_gateway.store(0, std::memory_order_relaxed);
      break;
    case Detection::ConsecutiveLocal:
      host.passive().od_consecutive_local.store(0, std::memory_order_relaxed);
      break;
    default:
      break;
  }
}

// ---- ejection ----

void OutlierDetector::countDetected(Detection d) {
  switch (d) {
    case Detection::Consecutive5xx:
      inc(stats_.ejections_detected_consecutive_5xx);
      inc(stats_.ejections_consecutive_5xx);
      break;
    case Detection::ConsecutiveGateway:
      inc(stats_.ejections_detected_consecutive_gateway_failure);
      break;
    case Detection::ConsecutiveLocal:
      inc(stats_.ejections_detected_consecutive_local_origin_failure);
      break;
    case Detection::SuccessRate:
      inc(stats_.ejections_detected_success_rate);
      inc(stats_.ejections_success_rate);
      break;
    case Detection::SuccessRateLocal:
      inc(stats_.ejections_detected_local_origin_success_rate);
      inc(stats_.ejections_success_rate);
      break;
    case Detection::FailurePercentage:
      inc(stats_.ejections_detected_failure_percentage);
      break;
    case Detection::FailurePercentageLocal:
      inc(stats_.ejections_detected_local_origin_failure_percentage);
      break;
  }
}

bool OutlierDetector::tryEject(Entry& e, Detection d, uint64_t now) {
  countDetected(d);
  // max_ejection_percent over all hosts of the cluster, counting this one (see OutlierConfig). In
  // integers: (ejected + 1) / hosts x 100 <= max  <=>  (ejected + 1) x 100 <= max x hosts.
  const uint64_t hosts = entries_.size();
  const uint64_t current = ejected_count_.load(std::memory_order_relaxed);
  const uint64_t max_percent = std::min<uint32_t>(config_.max_ejection_percent, 100);
  const bool allowed = (current + 1) * 100 <= max_percent * hosts || (config_.always_eject_one_host && current == 0);
  if (!allowed) {
    inc(stats_.ejections_overflow);
    return false;
  }
  if (d == Detection::Consecutive5xx || d == Detection::SuccessRate) inc(stats_.ejections_total);

  uint32_t enforcing = 0;
  std::atomic<uint64_t>* enforced = nullptr;
  switch (d) {
    case Detection::Consecutive5xx:
      enforcing = config_.enforcing_consecutive_5xx;
      enforced = &stats_.ejections_enforced_consecutive_5xx;
      break;
    case Detection::ConsecutiveGateway:
      enforcing = config_.enforcing_consecutive_gateway_failure;
      enforced = &stats_.ejections_enforced_consecutive_gateway_failure;
      break;
    case Detection::ConsecutiveLocal:
      enforcing = config_.enforcing_consecutive_local_origin_failure;
      enforced = &stats_.ejections_enforced_consecutive_local_origin_failure;
      break;
    case Detection::SuccessRate:
      enforcing = config_.enforcing_success_rate;
      enforced = &stats_.ejections_enforced_success_rate;
      break;
    case Detection::SuccessRateLocal:
      enforcing = config_.enforcing_local_origin_success_rate;
      enforced = &stats_.ejections_enforced_local_origin_success_rate;
      break;
    case Detection::FailurePercentage:
      enforcing = config_.enforcing_failure_percentage;
      enforced = &stats_.ejections_enforced_failure_percentage;
      break;
    case Detection::FailurePercentageLocal:
      enforcing = config_.enforcing_failure_percentage_local_origin;
      enforced = &stats_.ejections_enforced_local_origin_failure_percentage;
      break;
  }
  if (!roll(enforcing)) return false;

  Host& h = *e.host;
  // The backoff multiplier grows with each ejection until base x n covers max + base (Envoy's bound),
  // past which more would change nothing but the time it takes to decay.
  const uint64_t base = config_.base_ejection_time_ms;
  const uint64_t times = h.passive().od_times_ejected.load(std::memory_order_relaxed);
  if (times * base < effectiveMaxEjectionMs() + base) {
    h.passive().od_times_ejected.store(static_cast<uint32_t>(times + 1), std::memory_order_relaxed);
  }
  e.ejected_at_ms = now;
  // Spreads the return of hosts ejected together, so they are not all hit at the same moment.
  const uint64_t max_jitter = config_.max_ejection_time_jitter_ms;
  e.jitter_ms = max_jitter == 0 ? 0 : nextRandom() % (max_jitter + 1);
  h.passive().od_ejected_at_ms.store(std::max<uint64_t>(now, 1), std::memory_order_relaxed);  // 0 means "not ejected"
  // Fresh runs for when it comes back; Envoy resets them at un-ejection, doing it here too keeps
  // failures that still reach it (panic mode) from calling back into the detector.
  resetRuns(h);
  h.health_flags.fetch_or(kFailedOutlierCheck, std::memory_order_release);
  ejected_count_.fetch_add(1, std::memory_order_relaxed);
  inc(stats_.ejections_active);
  inc(stats_.ejections_enforced_total);
  inc(*enforced);
  bumpGeneration();
  return true;
}

void OutlierDetector::uneject(Entry& e, uint64_t now) {
  Host& h = *e.host;
  // Runs that were close to their threshold would eject it again after a failure or two.
  resetRuns(h);
  h.passive().od_ejected_at_ms.store(0, std::memory_order_relaxed);
  h.health_flags.fetch_and(~static_cast<uint32_t>(kFailedOutlierCheck), std::memory_order_release);
  e.unejected_once = true;
  e.last_unejected_ms = now;
  ejected_count_.fetch_sub(1, std::memory_order_relaxed);
  stats_.ejections_active.fetch_sub(1, std::memory_order_relaxed);
  bumpGeneration();
}

void OutlierDetector::onActiveHealthCheckSuccess(Host& host) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!config_.successful_active_health_check_uneject_host) return;
  auto it = index_.find(&host);
  if (it == index_.end() || !ejected(host)) return;
  if ((host.healthFlags() & kFailedActiveHc) != 0) return;
  uneject(entries_[it->second], now_ms_());
}

// ---- interval ----

void OutlierDetector::onInterval() {
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t now = now_ms_();
  const uint64_t base = config_.base_ejection_time_ms;
  const uint64_t max_ejection = effectiveMaxEjectionMs();
  for (Entry& e : entries_) {
    Host& h = *e.host;
    if (ejected(h)) {
      const uint64_t times = h.passive().od_times_ejected.load(std::memory_order_relaxed);
      const uint64_t duration = std::min(base * times, max_ejection) + e.jitter_ms;
      if (now >= e.ejected_at_ms && now - e.ejected_at_ms >= duration) uneject(e, now);
    }
    // Take the interval's outcomes. exchange() moves each count out whole: an outcome landing between
    // two of these reads falls into the next interval rather than being lost.
    const uint64_t ok = h.passive().od_success.exchange(0, std::memory_order_relaxed);
    const uint64_t failed = h.passive().od_failure.exchange(0, std::memory_order_relaxed);
    const uint64_t local_ok = h.passive().od_local_success.exchange(0, std::memory_order_relaxed);
    const uint64_t local_failed = h.passive().od_local_failure.exchange(0, std::memory_order_relaxed);
    e.success[kExt] = ok;
    e.total[kExt] = ok + failed;
    e.success[kLocal] = local_ok;
    e.total[kLocal] = local_ok + local_failed;
    e.success_rate[kExt] = e.success_rate[kLocal] = -1;
  }

  processRates(OutlierOrigin::External);
  // Without split mode nothing feeds the local tallies (local failures count as external ones).
  if (config_.split_external_local_origin_errors) {
    processRates(OutlierOrigin::Local);
  } else {
    sr_average_[kLocal] = sr_threshold_[kLocal] = -1;
  }

  // The backoff decays by one per interval a host spends back in service (Envoy's rule: at least an
  // interval since its last un-ejection, checked after this interval's ejections).
  for (Entry& e : entries_) {
    Host& h = *e.host;
    if (ejected(h) || !e.unejected_once) continue;
    if (now < e.last_unejected_ms || now - e.last_unejected_ms < config_.interval_ms) continue;
    const uint32_t times = h.passive().od_times_ejected.load(std::memory_order_relaxed);
    if (times > 0) h.passive().od_times_ejected.store(times - 1, std::memory_order_relaxed);
  }
}

void OutlierDetector::processRates(OutlierOrigin origin) {
  const size_t o = static_cast<size_t>(origin);
  sr_average_[o] = sr_threshold_[o] = -1;
  const uint64_t hosts = entries_.size();
  if (hosts < config_.success_rate_minimum_hosts && hosts < config_.failure_percentage_minimum_hosts) return;

  const uint64_t sr_volume = config_.success_rate_request_volume;
  const uint64_t fp_volume = config_.failure_percentage_request_volume;
  uint64_t sr_hosts = 0, fp_hosts = 0;
  double sr_sum = 0;
  for (Entry& e : entries_) {
    e.sr_candidate = e.fp_candidate = false;
    // Ejected hosts get little or no traffic: their rate says nothing about the others.
    if (ejected(*e.host) || e.total[o] == 0) continue;
    const double rate = static_cast<double>(e.success[o]) * 100.0 / static_cast<double>(e.total[o]);
    if (e.total[o] >= std::min(sr_volume, fp_volume)) e.success_rate[o] = rate;
    if (e.total[o] >= sr_volume) {
      e.sr_candidate = true;
      ++sr_hosts;
      sr_sum += rate;
    }
    if (e.total[o] >= fp_volume) {
      e.fp_candidate = true;
      ++fp_hosts;
    }
  }
  const uint64_t now = now_ms_();

  if (sr_hosts > 0 && sr_hosts >= config_.success_rate_minimum_hosts) {
    // Population mean and standard deviation of the candidates' success rates (in percent); an outlier
    // is more than stdev_factor deviations below the mean.
    const double mean = sr_sum / static_cast<double>(sr_hosts);
    double variance = 0;
    for (const Entry& e : entries_) {
      if (!e.sr_candidate) continue;
      const double d = e.success_rate[o] - mean;
      variance += d * d;
    }
    variance /= static_cast<double>(sr_hosts);
    const double threshold = mean - (config_.success_rate_stdev_factor / 1000.0) * std::sqrt(variance);
    sr_average_[o] = mean;
    sr_threshold_[o] = threshold;
    for (Entry& e : entries_) {
      if (e.sr_candidate && e.success_rate[o] < threshold) {
        tryEject(e, origin == OutlierOrigin::External ? Detection::SuccessRate : Detection::SuccessRateLocal, now);
      }
    }
  }

  if (fp_hosts > 0 && fp_hosts >= config_.failure_percentage_minimum_hosts) {
    const double threshold = config_.failure_percentage_threshold;
    const Detection d = origin == OutlierOrigin::External ? Detection::FailurePercentage
                                                          : Detection::FailurePercentageLocal;
    for (Entry& e : entries_) {
      if (!e.fp_candidate || 100.0 - e.success_rate[o] < threshold) continue;
      // Ejected a moment ago by the success-rate pass: still a detection, but one ejection is enough
      // (Envoy would eject it twice over and count it twice in ejections_active).
      if (ejected(*e.host)) {
        countDetected(d);
        continue;
      }
      tryEject(e, d, now);
    }
  }
}

// ---- /clusters ----

double OutlierDetector::hostSuccessRate(const Host& host, OutlierOrigin origin) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(&host);
  return it == index_.end() ? -1 : entries_[it->second].success_rate[static_cast<size_t>(origin)];
}

double OutlierDetector::successRateAverage(OutlierOrigin origin) const {
  std::lock_guard<std::mutex> lock(mu_);
  return sr_average_[static_cast<size_t>(origin)];
}

double OutlierDetector::successRateEjectionThreshold(OutlierOrigin origin) const {
  std::lock_guard<std::mutex> lock(mu_);
  return sr_threshold_[static_cast<size_t>(origin)];
}

// ---- helpers ----

bool OutlierDetector::roll(uint32_t percent) {
  if (percent == 0) return false;
  if (percent >= 100) return true;
  return nextRandom() % 100 < percent;
}

uint64_t OutlierDetector::nextRandom() { return random_ ? random_() : rng_(); }

uint64_t OutlierDetector::effectiveMaxEjectionMs() const {
  return std::max(config_.max_ejection_time_ms, config_.base_ejection_time_ms);
}

void OutlierDetector::bumpGeneration() {
  // Release: a balancer that sees the new generation (with acquire) also sees the flag change.
  if (health_generation_) health_generation_->fetch_add(1, std::memory_order_release);
}

void OutlierDetector::resetRuns(Host& h) {
  h.passive().od_consecutive_5xx.store(0, std::memory_order_relaxed);
  h.passive().od_consecutive_gateway.store(0, std::memory_order_relaxed);
  h.passive().od_consecutive_local.store(0, std::memory_order_relaxed);
}

void OutlierDetector::resetState(Host& h) {
  resetRuns(h);
  h.passive().od_success.store(0, std::memory_order_relaxed);
  h.passive().od_failure.store(0, std::memory_order_relaxed);
  h.passive().od_local_success.store(0, std::memory_order_relaxed);
  h.passive().od_local_failure.store(0, std::memory_order_relaxed);
  h.passive().od_times_ejected.store(0, std::memory_order_relaxed);
  h.passive().od_ejected_at_ms.store(0, std::memory_order_relaxed);
  h.health_flags.fetch_and(~static_cast<uint32_t>(kFailedOutlierCheck), std::memory_order_release);
}

}  // namespace strait::upstream
