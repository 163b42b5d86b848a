#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "proxy/network/address.h"
#include "proxy/network/transport_socket.h"
#include "proxy/stats/stats.h"

namespace strait::upstream {

// Why a host is not taking (all) traffic. Bits of Host::health_flags; several may be set at once.
enum HealthFlag : uint32_t {
  kFailedActiveHc = 1u << 0,      // the active health checker saw it fail (/clusters: /failed_active_hc)
  kFailedOutlierCheck = 1u << 1,  // ejected by outlier detection (/failed_outlier_check)
  kFailedEdsHealth = 1u << 2,     // EDS health_status UNHEALTHY or TIMEOUT (/failed_eds_health)
  kDegradedEdsHealth = 1u << 3,   // EDS health_status DEGRADED (/degraded_eds_health)
  kEdsDraining = 1u << 4,         // EDS health_status DRAINING: no new requests (/pending_dynamic_removal)
  kPendingActiveHc = 1u << 5,     // new host, first active check not in yet (Envoy's /pending_active_hc)
};

// Where a host runs (EDS LocalityLbEndpoints.locality).
struct Locality {
  std::string region, zone, sub_zone;
  bool operator==(const Locality& o) const { return region == o.region && zone == o.zone && sub_zone == o.sub_zone; }
};

// The per-host state of passive health checking and of the latency-aware balancer (written by workers
// with relaxed atomics; the ejection state only by the detector, under its lock).
struct HostPassiveState {
  // Peak-EWMA of response latency in nanoseconds and its last update (steady clock, ns), for the
  // latency-aware balancer; 0: no sample yet.
  std::atomic<uint64_t> ewma_latency_ns{0};
  std::atomic<uint64_t> ewma_stamp_ns{0};
  // Outlier detection (outlier_detector.h): failure runs and this interval's tallies.
  std::atomic<uint32_t> od_consecutive_5xx{0};
  std::atomic<uint32_t> od_consecutive_gateway{0};
  std::atomic<uint32_t> od_consecutive_local{0};
  std::atomic<uint32_t> od_times_ejected{0};
  std::atomic<uint64_t> od_success{0};        // external-origin (HTTP status) outcomes this interval
  std::atomic<uint64_t> od_failure{0};
  std::atomic<uint64_t> od_local_success{0};  // local-origin (connect, reset, timeout) outcomes
  std::atomic<uint64_t> od_local_failure{0};
  std::atomic<uint64_t> od_ejected_at_ms{0};  // 0: not ejected
};

// A cluster member. One object per (cluster, address, transport, priority, locality) for as long as a
// config lists it: an EDS or CDS update that keeps the endpoint keeps the object, so its health,
// outlier and load state survive updates. Shared by all workers: the fields in the first block never
// change after construction; the rest are atomics written by the main thread (health, weight) or by
// workers (load), read anywhere without a lock.
class Host : public std::enable_shared_from_this<Host> {
 public:
  // ---- immutable ----
  network::Address address;
  uint32_t priority = 0;  // next to the address, in what would be its padding
  // TLS to this host: the cluster's transport_socket_matches entry its metadata selects, else the
  // cluster's transport_socket; null for plaintext.
  network::TransportSocketFactorySharedPtr transport_socket;
  std::shared_ptr<const Locality> locality;  // never null once built; shared by the hosts of one locality
  // Per-host stats for /clusters (Envoy keeps them out of /stats too). They live in the Host itself,
  // as Envoy's HostStats do: plain shared atomics, with no name, no store slot and no per-worker copy,
  // since only the admin reads them off the host (a named, sharded stat set per host cost more than
  // the host). Written with stats::inc()/dec() like any stat.
  stats::PrimitiveCounter cx_total;
  stats::PrimitiveGauge cx_active;
  stats::PrimitiveCounter cx_connect_fail;
  stats::PrimitiveCounter rq_total;
  stats::PrimitiveCounter rq_error;
  stats::PrimitiveGauge rq_active;

  // ---- shared, mutable (atomics: `mutable`, since hosts are handed around as const) ----
  mutable std::atomic<uint32_t> weight{1};            // load_balancing_weight (>= 1)
  mutable std::atomic<uint32_t> locality_weight{0};   // its locality's load_balancing_weight (0: none given)
  mutable std::atomic<uint32_t> health_flags{0};      // HealthFlag bits
  mutable std::atomic<uint32_t> active_requests{0};   // requests in flight to it, all workers
  // Outlier detection's and the latency balancer's state: made the first time either needs it, so the
  // hosts of the many clusters that use neither carry a pointer instead of 72 bytes each.
  HostPassiveState& passive() const {
    HostPassiveState* p = passive_.load(std::memory_order_acquire);
    return p != nullptr ? *p : makePassive();
  }
  bool hasPassive() const { return passive_.load(std::memory_order_acquire) != nullptr; }

  // EDS endpoint.hostname (ring hash may hash it); empty for most hosts, so it is kept out of line.
  const std::string& hostname() const { return hostname_ ? *hostname_ : emptyHostname(); }
  void setHostname(std::string name) {
    hostname_ = name.empty() ? nullptr : std::make_unique<const std::string>(std::move(name));
  }

  Host() = default;
  ~Host() { delete passive_.load(std::memory_order_relaxed); }
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  uint32_t healthFlags() const { return health_flags.load(std::memory_order_relaxed); }
  // Takes requests at full preference: no failure and not degraded or draining.
  bool healthy() const {
    return (healthFlags() & (kFailedActiveHc | kFailedOutlierCheck | kFailedEdsHealth | kEdsDraining |
                             kDegradedEdsHealth | kPendingActiveHc)) == 0;
  }
  // Takes requests only when too few hosts are healthy.
  bool degraded() const {
    const uint32_t f = healthFlags();
    return (f & (kFailedActiveHc | kFailedOutlierCheck | kFailedEdsHealth | kEdsDraining | kPendingActiveHc)) == 0 &&
           (f & kDegradedEdsHealth) != 0;
  }
  // Never gets a new request, not even in panic mode.
  bool draining() const { return (healthFlags() & kEdsDraining) != 0; }

 private:
  // Any thread: the first caller's state wins; a racing one frees its own.
  HostPassiveState& makePassive() const {
    auto* fresh = new HostPassiveState;
    HostPassiveState* expected = nullptr;
    if (passive_.compare_exchange_strong(expected, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;
    return *expected;
  }
  mutable std::atomic<HostPassiveState*> passive_{nullptr};
  std::unique_ptr<const std::string> hostname_;  // null: no hostname
  static const std::string& emptyHostname() {
    static const std::string kEmpty;
    return kEmpty;
  }
};

using HostSharedPtr = std::shared_ptr<Host>;
using HostConstSharedPtr = std::shared_ptr<const Host>;

}  // namespace strait::upstream
