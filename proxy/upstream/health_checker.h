#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "proxy/event/dispatcher.h"
#include "proxy/http/matchers.h"
#include "proxy/upstream/host.h"

namespace strait::network {
struct SslStats;
}

namespace strait::upstream {

// HTTP status codes start <= s < end (envoy.type.v3.Int64Range).
struct StatusRange {
  uint32_t start = 0;
  uint32_t end = 0;
};

// One cluster's active health check (envoy.config.core.v3.HealthCheck), translated from the proto by
// the caller. Durations are milliseconds; a 0 in an optional duration means "not set" (the proto
// rejects explicit zeros for all of them), and the documented default applies.
struct HealthCheckConfig {
  enum class Kind { Http, Tcp, Grpc };
  Kind kind = Kind::Http;

  // The cluster's name: the default HTTP Host / gRPC :authority (Envoy's default). When it is empty
  // too, the host's "ip:port" is used.
  std::string cluster_name;

  uint64_t timeout_ms = 1000;     // required in the proto; one check (connect included) must finish in it
  uint64_t interval_ms = 10000;   // required in the proto
  uint64_t interval_jitter_ms = 0;        // random [0, jitter) added to every interval
  uint32_t interval_jitter_percent = 0;   // random [0, interval x percent / 100) added as well
  uint64_t initial_jitter_ms = 0;         // first check of a host after random [0, jitter) (0: at once)
  // Consecutive failures that make a healthy host unhealthy, and successes that make an unhealthy one
  // healthy. Required in the proto; 0 is treated as 1 (with 0 Envoy would never reach the threshold).
  // Only failures of the network kind (connect failure, reset, timeout) and HTTP retriable_statuses
  // count towards unhealthy_threshold: any other failed check (an HTTP status outside both lists, a
  // body mismatch, a gRPC answer that is not SERVING) makes the host unhealthy at once, as in Envoy.
  uint32_t unhealthy_threshold = 1;
  uint32_t healthy_threshold = 1;
  // Used while the cluster has had no traffic (the has_traffic hook says so): no_traffic_interval
  // after failed checks and pending transitions, no_traffic_healthy_interval (0: no_traffic_interval)
  // after passed checks.
  uint64_t no_traffic_interval_ms = 60000;
  uint64_t no_traffic_healthy_interval_ms = 0;
  // After a failed check: unhealthy_interval (0: interval). While a transition is pending (the check
  // disagreed with the host's state but the threshold is not reached yet): unhealthy_edge_interval
  // after a failure (0: unhealthy_interval), healthy_edge_interval after a success (0: interval). This
  // is what Envoy's code does (its API comments describe the edge intervals as "the first check right
  // after a transition"; its implementation and the example in its source apply them while the
  // transition is pending).
  uint64_t unhealthy_interval_ms = 0;
  uint64_t unhealthy_edge_interval_ms = 0;
  uint64_t healthy_edge_interval_ms = 0;
  // Keep the connection between checks (HTTP, gRPC, and TCP checks with a receive payload). A
  // connect-only TCP check always closes after connecting, as in Envoy.
  bool reuse_connection = true;
  // Log every failed check (by default only a host's first check, and every transition, are logged).
  bool always_log_health_check_failures = false;
  // A host new to the checker starts with kFailedActiveHc (Envoy: a host is unhealthy until its first
  // check passes; the first passing check makes it healthy at once, whatever healthy_threshold).
  // With this set (the default) it also gets kPendingActiveHc until its first check completes, either
  // way. Envoy sets PENDING_ACTIVE_HC only under common_lb_config.ignore_new_hosts_until_first_hc;
  // set this from that field for Envoy's exact behaviour.
  bool mark_new_hosts_pending = true;

  struct Http {
    std::string host;          // Host / :authority; empty: cluster_name
    std::string path = "/";    // required, non-empty
    std::string method = "GET";
    std::vector<StatusRange> expected_statuses;   // empty: [200, 201)
    std::vector<StatusRange> retriable_statuses;  // failures that count towards unhealthy_threshold
    // Added after the defaults (:method, :path, :authority, :scheme, user-agent: Envoy/HC); the
    // removals are applied first, so a user-agent can be replaced. Pseudo-headers cannot be set here.
    std::vector<std::pair<std::string, std::string>> request_headers_to_add;
    std::vector<std::string> request_headers_to_remove;
    // Byte strings the response body must contain, in this order, not necessarily adjacent (Envoy's
    // PayloadMatcher). Only the first response_buffer_size bytes of the body are searched (0: all of
    // it, up to a hard 1 MiB).
    std::vector<std::string> receive;
    uint64_t response_buffer_size = 1024;
    // service_name_matcher: the response's x-envoy-upstream-healthchecked-cluster must match it
    // (missing: matched as ""), else the check fails; counted in verify_cluster.
    std::optional<http::StringMatch> service_name_matcher;
    bool http2 = false;  // codec_client_type HTTP2 (prior knowledge on plaintext, ALPN "h2" over TLS)
  } http;

  struct Tcp {
    std::string send;                  // written at every check (empty: nothing)
    // Byte strings the answer must contain, in this order, not necessarily adjacent (Envoy's
    // PayloadMatcher: "each block must be found, and in the order specified"). Empty: connect-only
    // check, which passes once the connection (and its TLS handshake) is up.
    std::vector<std::string> receive;
  } tcp;

  struct Grpc {
    std::string service_name;  // HealthCheckRequest.service
    std::string authority;     // :authority; empty: cluster_name
    std::vector<std::pair<std::string, std::string>> initial_metadata;
  } grpc;
};

// Empty if `config` passes Envoy's proto validation as far as this struct can tell (timeout and
// interval > 0, status ranges within [100, 600) and not empty, a non-empty HTTP path without CR/LF,
// no CONNECT method, the receive payload fits response_buffer_size), else why not.
std::string healthCheckConfigError(const HealthCheckConfig& config);

// Envoy's cluster.<name>.health_check.* stats, under the same names. `healthy` is a gauge: hosts
// under this checker without kFailedActiveHc. Envoy's `degraded` gauge has no counterpart (no
// degraded active-HC flag exists here).
struct HealthCheckStats {
  std::atomic<uint64_t> attempt{0};
  std::atomic<uint64_t> success{0};
  std::atomic<uint64_t> failure{0};
  std::atomic<uint64_t> network_failure{0};  // connect failures, resets, timeouts (a subset of failure)
  std::atomic<uint64_t> passive_failure{0};  // reportPassiveFailure (a subset of failure)
  std::atomic<uint64_t> verify_cluster{0};
  std::atomic<uint64_t> healthy{0};          // gauge
};

// What one completed check (or passive report) did to its host's health (Envoy's HealthTransition).
enum class HealthTransition {
  Unchanged,      // the host's state stays
  Changed,        // it flipped (or lost kPendingActiveHc)
  ChangePending,  // the check disagreed with the state, the threshold is not reached yet
};

class HealthCheckSession;

// Active health checking of one cluster's hosts, as Envoy does it. Everything runs on one dispatcher
// (the main thread's): construction, every call and destruction belong to that thread, except
// PassiveFailureReporter::report. Workers only read the result: kFailedActiveHc / kPendingActiveHc in
// each Host::health_flags (atomic), and *health_generation, bumped after every flag change so their
// balancers rebuild.
//
// Per host, one check at a time: connect (through the host's transport_socket factory when it has one,
// so checks speak mTLS like the traffic does), send, read and judge the answer within timeout_ms, then
// wait for the next interval. A check that cannot finish in timeout_ms fails (a network failure, so
// it counts towards unhealthy_threshold).
//
// Destruction is safe at any time, checks in flight included: sessions and connections go through
// the dispatcher's deferred deletion, and nothing calls back after the destructor.
class HealthChecker {
 public:
  // Called after every completed check (and passive report) on the checker's thread: the host, the
  // transition it caused, and whether the check passed. The wiring uses it to tell the outlier
  // detector about passing checks and to finish cluster warming. It may call setHosts(), stop() or
  // destroy the checker.
  using CheckCompleteCb = std::function<void(const HostSharedPtr& host, HealthTransition transition, bool passed)>;

  // Thread-safe handle for reporting a passive failure from a worker (Envoy's
  // HealthCheckHostMonitor::setUnhealthy: an upstream answered with
  // x-envoy-immediate-health-check-fail). report() posts to the checker's dispatcher, where the host
  // is marked unhealthy at once (if the checker and the host's session still exist by then). The
  // dispatcher must outlive the reporter's use (the main dispatcher does).
  class PassiveFailureReporter {
   public:
    void report(HostSharedPtr host) const;

   private:
    friend class HealthChecker;
    struct Token {
      HealthChecker* checker;
    };
    PassiveFailureReporter(event::Dispatcher& d, std::weak_ptr<Token> t) : dispatcher_(d), token_(std::move(t)) {}
    event::Dispatcher& dispatcher_;
    std::weak_ptr<Token> token_;
  };

  // `health_generation` may be null; it must outlive the checker. `seed` drives the jitter.
  HealthChecker(event::Dispatcher& dispatcher, HealthCheckConfig config, std::atomic<uint64_t>* health_generation,
                uint64_t seed);
  // Stops every session and clears kFailedActiveHc / kPendingActiveHc on the hosts it checked (a
  // checker goes away when a cluster's health checking is removed; its hosts outlive it and would
  // stay unhealthy forever otherwise). To change the config of a live checker use updateConfig.
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  // Whether the cluster has had traffic (Envoy: upstream_cx_total or byte counters ever used); without
  // it the no_traffic intervals apply. Default: always true. Called after every check.
  void setHasTrafficHook(std::function<bool()> has_traffic) { has_traffic_ = std::move(has_traffic); }
  void setCheckCompleteCallback(CheckCompleteCb cb) { on_check_complete_ = std::move(cb); }
  // Where the TLS handshakes of checks count (the cluster's ssl stats); null: nowhere.
  void setTransportSocketStats(const network::SslStats* stats) { ssl_stats_ = stats; }

  // The cluster's hosts, all priorities (called on every cluster update). A host seen for the first
  // time gets kFailedActiveHc (and kPendingActiveHc, see mark_new_hosts_pending) and a session; when
  // the checker is started its first check follows (after initial_jitter_ms, or on the next loop
  // turn). A kept host keeps its state and its schedule. A host no longer listed loses its session
  // (a check in flight is abandoned uncounted); its flags are left as they are.
  void setHosts(std::vector<HostSharedPtr> hosts);
  // Starts checking every host (again, after stop()).
  void start();
  // Stops every check and connection; hosts keep their flags and counters. start() resumes.
  void stop();
  bool started() const { return started_; }
  // A new config for the same cluster: sessions restart under it (checks in flight are abandoned),
  // hosts keep their flags and their consecutive-result counts.
  void updateConfig(HealthCheckConfig config);

  PassiveFailureReporter passiveFailureReporter() const { return PassiveFailureReporter(dispatcher_, token_); }
  // The same on the checker's thread: `host` fails at once, whatever unhealthy_threshold (Envoy's
  // PASSIVE failure type); counted in failure and passive_failure. Unknown hosts are ignored.
  void reportPassiveFailure(const Host& host);

  const HealthCheckConfig& config() const { return config_; }
  const HealthCheckStats& stats() const { return *stats_; }
  // The same stats, for a publisher that may outlive the checker.
  std::shared_ptr<const HealthCheckStats> sharedStats() const { return stats_; }
  size_t hostCount() const { return sessions_.size(); }

 private:
  friend class HealthCheckSession;

  std::unique_ptr<HealthCheckSession> makeSession(HostSharedPtr host);
  // The wait before a host's next check, from the last result and the transition it caused.
  uint64_t nextIntervalMs(bool passed, HealthTransition transition);
  uint64_t withJitter(uint64_t base_ms, uint64_t jitter_ms);
  uint64_t initialDelayMs();
  bool hasTraffic() const { return !has_traffic_ || has_traffic_(); }
  void bumpGeneration();
  void recountHealthy();
  // Stops a session for good and hands it to deferred deletion.
  void retire(std::unique_ptr<HealthCheckSession> session);

  event::Dispatcher& dispatcher_;
  HealthCheckConfig config_;
  // config_ with the defaults and clamps applied.
  struct Effective {
    uint64_t unhealthy_interval_ms, unhealthy_edge_interval_ms, healthy_edge_interval_ms;
    uint64_t no_traffic_interval_ms, no_traffic_healthy_interval_ms;
    uint32_t unhealthy_threshold, healthy_threshold;
  } eff_{};
  void computeEffective();
  std::atomic<uint64_t>* health_generation_;
  std::mt19937_64 random_;
  std::shared_ptr<HealthCheckStats> stats_;
  std::function<bool()> has_traffic_;
  CheckCompleteCb on_check_complete_;
  const network::SslStats* ssl_stats_ = nullptr;
  std::unordered_map<const Host*, std::unique_ptr<HealthCheckSession>> sessions_;
  std::shared_ptr<PassiveFailureReporter::Token> token_;
  bool started_ = false;
};

}  // namespace strait::upstream
