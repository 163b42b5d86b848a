#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "proxy/upstream/host.h"

namespace strait::upstream {

// A cluster's outlier_detection (envoy.config.cluster.v3.OutlierDetection), with Envoy's defaults.
// Durations are in milliseconds; percentages are 0..100. The translator from the protobuf applies
// Envoy's validation (see outlierConfigError) and one rule only it can: an explicitly set
// max_ejection_time smaller than base_ejection_time is rejected, while an unset one defaults to
// max(300000, base_ejection_time). The detector also treats max_ejection_time as at least
// base_ejection_time, so a forgotten default cannot make ejections shorter than the base.
struct OutlierConfig {
  // Failure runs that trigger an ejection attempt. 0 disables that detector (a run never reaches it).
  uint32_t consecutive_5xx = 5;
  uint32_t consecutive_gateway_failure = 5;       // 502, 503, 504 only
  uint32_t consecutive_local_origin_failure = 5;  // only with split_external_local_origin_errors
  uint64_t interval_ms = 10000;
  uint64_t base_ejection_time_ms = 30000;
  uint64_t max_ejection_time_ms = 300000;
  uint64_t max_ejection_time_jitter_ms = 0;
  // At most this share of the cluster's hosts is ejected at once, counting the host about to go:
  // an ejection happens only if (ejected + 1) x 100 <= max_ejection_percent x hosts. That is Envoy's
  // rule since 1.27 (PR #27624/#27909); before, Envoy compared the share already ejected with `<`,
  // which always allowed a first ejection and could overshoot by one host (3 hosts at 50% lost 2).
  // The old "always at least one" behaviour is now opt-in: always_eject_one_host.
  uint32_t max_ejection_percent = 10;
  bool always_eject_one_host = false;
  // The chance, in percent, that a detection actually ejects (the rest are only counted as detected).
  uint32_t enforcing_consecutive_5xx = 100;
  uint32_t enforcing_consecutive_gateway_failure = 0;
  uint32_t enforcing_consecutive_local_origin_failure = 100;
  uint32_t enforcing_success_rate = 100;
  uint32_t enforcing_local_origin_success_rate = 100;
  uint32_t enforcing_failure_percentage = 0;
  uint32_t enforcing_failure_percentage_local_origin = 0;
  // Success rate: hosts with at least success_rate_request_volume outcomes in the last interval take
  // part; with at least success_rate_minimum_hosts of them, a host whose success rate is below
  // mean - (success_rate_stdev_factor / 1000) x stdev is an outlier.
  uint32_t success_rate_minimum_hosts = 5;
  uint32_t success_rate_request_volume = 100;
  uint32_t success_rate_stdev_factor = 1900;
  // Failure percentage: hosts with at least failure_percentage_request_volume outcomes take part;
  // with at least failure_percentage_minimum_hosts of them, a host failing >= threshold % is one.
  uint32_t failure_percentage_threshold = 85;
  uint32_t failure_percentage_minimum_hosts = 5;
  uint32_t failure_percentage_request_volume = 50;
  // false: connect failures, resets and timeouts count as 503/504 responses. true: they feed their
  // own run (consecutive_local_origin_failure) and their own success-rate/failure-percentage tallies.
  bool split_external_local_origin_errors = false;
  // A passing active health check returns an ejected host to service (onActiveHealthCheckSuccess).
  bool successful_active_health_check_uneject_host = true;
};

// Empty if `config` passes Envoy's protobuf validation (intervals > 0, percentages <= 100), else why not.
std::string outlierConfigError(const OutlierConfig& config);

// Envoy's cluster.<name>.outlier_detection.* stats, under the same names. The caller owns the struct
// and publishes it; the detector only adds (and moves ejections_active both ways).
struct OutlierStats {
  std::atomic<uint64_t> ejections_enforced_total{0};
  std::atomic<uint64_t> ejections_active{0};  // gauge
  std::atomic<uint64_t> ejections_overflow{0};
  std::atomic<uint64_t> ejections_enforced_consecutive_5xx{0};
  std::atomic<uint64_t> ejections_detected_consecutive_5xx{0};
  std::atomic<uint64_t> ejections_enforced_consecutive_gateway_failure{0};
  std::atomic<uint64_t> ejections_detected_consecutive_gateway_failure{0};
  std::atomic<uint64_t> ejections_enforced_consecutive_local_origin_failure{0};
  std::atomic<uint64_t> ejections_detected_consecutive_local_origin_failure{0};
  std::atomic<uint64_t> ejections_enforced_success_rate{0};
  std::atomic<uint64_t> ejections_detected_success_rate{0};
  std::atomic<uint64_t> ejections_enforced_local_origin_success_rate{0};
  std::atomic<uint64_t> ejections_detected_local_origin_success_rate{0};
  std::atomic<uint64_t> ejections_enforced_failure_percentage{0};
  std::atomic<uint64_t> ejections_detected_failure_percentage{0};
  std::atomic<uint64_t> ejections_enforced_local_origin_failure_percentage{0};
  std::atomic<uint64_t> ejections_detected_local_origin_failure_percentage{0};
  // Deprecated in Envoy but still emitted there: ejections_total counts consecutive-5xx and success-rate
  // detections that passed the max_ejection_percent check (enforced or not); the other two count
  // detections of their kind.
  std::atomic<uint64_t> ejections_total{0};
  std::atomic<uint64_t> ejections_consecutive_5xx{0};
  std::atomic<uint64_t> ejections_success_rate{0};
};

// Why a request failed before (or without) an HTTP response from the host.
enum class LocalOriginFailure {
  ConnectFailed,  // connect error, refused, TLS handshake failure
  Timeout,        // the request (or per-try) timeout fired
  Reset,          // the stream or connection was reset before a response
};

enum class OutlierOrigin { External, Local };

// Passive health checking of one cluster's hosts, as Envoy's outlier detection does it. One per cluster,
// shared by all workers; it outlives config updates (updateConfig, setHosts) so ejections survive them.
//
// Threads: the put* calls come from workers on the request path. They touch only the host's od_*
// atomics (relaxed), allocate nothing and take no lock, except when a failure run reaches its
// threshold: then they take the detector's mutex to decide and perhaps eject. Everything else is for
// the main thread (it may run while workers report).
//
// Ejecting sets kFailedOutlierCheck in the host's health_flags and bumps *health_generation, which tells
// the workers' balancers to rebuild their healthy view; un-ejecting clears it and bumps again.
class OutlierDetector {
 public:
  using Clock = std::function<uint64_t()>;   // monotonic milliseconds
  using Random = std::function<uint64_t()>;  // uniformly distributed 64-bit values

  // `stats` and `health_generation` (may be null) must outlive the detector. `now_ms` is also called by
  // workers (on the rare path, under the detector's mutex), so it must be safe from any thread.
  // `random` is only called under that mutex; without it, an internal generator seeded from
  // std::random_device rolls the enforcing_* chances and the jitter.
  OutlierDetector(const OutlierConfig& config, OutlierStats& stats, std::atomic<uint64_t>* health_generation,
                  Clock now_ms, Random random = nullptr);
  // Returns every host it ejected to service: a detector goes away when the cluster's outlier
  // detection is removed, and its hosts (which outlive it) would otherwise stay ejected forever.
  ~OutlierDetector();
  OutlierDetector(const OutlierDetector&) = delete;
  OutlierDetector& operator=(const OutlierDetector&) = delete;

  // ---- main thread ----
  // A new config applies from now on: current ejections keep their start time and are judged by the
  // new durations. Changing a consecutive_* threshold or the split mode restarts every host's runs
  // (and, for the split mode, this interval's tallies), since their meaning changed.
  void updateConfig(const OutlierConfig& config);
  // The cluster's hosts, all priorities (max_ejection_percent counts them all, as Envoy does). Hosts
  // kept keep their state; a host that left is forgotten (an ejected one leaves ejections_active, its
  // flag is left alone, as it may still be draining); a host that joined starts with clean od_* state.
  void setHosts(std::vector<HostSharedPtr> hosts);
  // Call every intervalMs(): returns hosts whose ejection time is over, runs the success-rate and
  // failure-percentage detectors over the interval's tallies, then lets the ejection backoff of hosts
  // that stayed in service for a whole interval decay by one.
  void onInterval();
  uint64_t intervalMs() const;
  // The health checker saw `host` pass: with successful_active_health_check_uneject_host (the default)
  // an ejected host returns to service at once, unless active checking itself failed it.
  void onActiveHealthCheckSuccess(Host& host);

  // ---- workers (request path) ----
  // An HTTP response from the host (also a gRPC response's HTTP status).
  void putHttpResponse(Host& host, uint32_t status);
  // A request that got no response from the host. Do not report circuit-breaker overflows here (the
  // host did nothing wrong). Without split mode, as in Envoy, a connect failure or reset counts as a
  // 503 and a timeout as a 504; with it, they count for consecutive_local_origin_failure only.
  void putLocalOriginFailure(Host& host, LocalOriginFailure kind);
  // The connection to the host is up (pool ready). Counts only in split mode: otherwise the HTTP
  // status that follows decides. `final_outcome` (a TCP-level user with no response to report) makes
  // it count as a 200 without split mode, as Envoy's LocalOriginConnectSuccessFinal does.
  void putLocalOriginSuccess(Host& host, bool final_outcome = false);

  // ---- anywhere ----
  static bool ejected(const Host& host) { return (host.healthFlags() & kFailedOutlierCheck) != 0; }
  uint32_t ejectedCount() const { return ejected_count_.load(std::memory_order_relaxed); }
  OutlierStats& stats() const { return stats_; }
  // For /clusters: the last interval's success rate (percent) of a host and of the cluster, and the
  // ejection threshold; -1 when the interval had too few requests or hosts (Envoy prints -1 too).
  double hostSuccessRate(const Host& host, OutlierOrigin origin) const;
  double successRateAverage(OutlierOrigin origin) const;
  double successRateEjectionThreshold(OutlierOrigin origin) const;

 private:
  enum class Detection {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocal,
    SuccessRate,
    SuccessRateLocal,
    FailurePercentage,
    FailurePercentageLocal,
  };
  // Detector-side state of a host, guarded by mu_.
  struct Entry {
    HostSharedPtr host;
    uint64_t ejected_at_ms = 0;
    uint64_t jitter_ms = 0;
    bool unejected_once = false;
    uint64_t last_unejected_ms = 0;
    // This interval's outcomes, taken from the host at the tick.
    uint64_t success[2] = {0, 0};  // [OutlierOrigin]
    uint64_t total[2] = {0, 0};
    double success_rate[2] = {-1, -1};
    // Scratch of one processRates pass: enough volume for success rate / failure percentage.
    bool sr_candidate = false;
    bool fp_candidate = false;
  };

  void onRunThreshold(Host& host, Detection detection);
  void putExternal(Host& host, uint32_t status);
  void putLocal(Host& host, bool success);
  // Under mu_: counts the detection, then ejects if max_ejection_percent and the enforcing roll allow.
  bool tryEject(Entry& entry, Detection detection, uint64_t now);
  void countDetected(Detection detection);
  void uneject(Entry& entry, uint64_t now);
  void processRates(OutlierOrigin origin);
  bool roll(uint32_t percent);
  uint64_t nextRandom();
  uint64_t effectiveMaxEjectionMs() const;
  void bumpGeneration();
  static void resetRuns(Host& host);
  static void resetState(Host& host);

  OutlierStats& stats_;
  std::atomic<uint64_t>* const health_generation_;
  const Clock now_ms_;
  const Random random_;

  // Copies of the settings the request path reads, so it needs no lock.
  std::atomic<uint32_t> threshold_5xx_;
  std::atomic<uint32_t> threshold_gateway_;
  std::atomic<uint32_t> threshold_local_;
  std::atomic<bool> split_;
  std::atomic<uint32_t> ejected_count_{0};

  mutable std::mutex mu_;
  OutlierConfig config_;                               // guarded by mu_
  std::vector<Entry> entries_;                         // guarded by mu_, in setHosts order
  std::unordered_map<const Host*, size_t> index_;      // guarded by mu_: host -> entries_ slot
  std::mt19937_64 rng_;                                // guarded by mu_, when random_ is not given
  double sr_average_[2] = {-1, -1};                    // guarded by mu_
  double sr_threshold_[2] = {-1, -1};                  // guarded by mu_
};

}  // namespace strait::upstream
