#pragma once

#include <cstdint>
#include <string_view>

#include "proxy/stats/istio_metrics.h"

namespace strait::network {
class Connection;
}

namespace strait::filters::network {

// Istio's TCP metrics for one tcp_proxy session (istio_tcp_connections_opened_total / _closed_total,
// istio_tcp_sent_bytes_total / _received_bytes_total; stats/istio_metrics.h). Active only for a
// connection that passed an istio.stats network filter while Istio telemetry is on.
//   reporter: "destination" on an inbound listener (traffic_direction INBOUND) or to an inbound|...
//             cluster, else "source"
//   principals: the peers' URI SANs: inbound from the downstream TLS connection (peer = source, local =
//             destination), outbound from the upstream one (local = source, peer = destination)
//   connection_security_policy: inbound mutual_tls / none; outbound unknown (as Istio reports it)
//   workloads: this pod's; the peer's from Istio's TCP metadata exchange (metadata_exchange.h: inbound
//             the downstream's, outbound the upstream's), else only its namespace from its SPIFFE id
//   destination_service: the fqdn of an outbound|port|subset|fqdn cluster, else unknown
// The labels are fixed when the upstream connects (the connection is then counted as opened) or, when a
// metadata exchange runs, once it has read the peer's frame or given up (as Istio waits for it); a
// session that never got that far counts as opened and closed at its end, with its response flags.
class IstioTcpStats {
 public:
  // At accept: whether the connection's istio.stats filter marked it.
  void begin(const strait::network::Connection& downstream, bool inbound_listener);
  bool active() const { return active_; }
  void opened(const strait::network::Connection& downstream, const strait::network::Connection* upstream,
              std::string_view cluster);
  void closed(const strait::network::Connection& downstream, std::string_view cluster, uint32_t response_flags,
              uint64_t sent, uint64_t received);
  // The peers a metadata exchange learnt (stats::istio peer ids), before opened().
  void setDownstreamPeer(uint32_t peer) { downstream_peer_ = peer; }
  void setUpstreamPeer(uint32_t peer) { upstream_peer_ = peer; }

 private:
  void labels(const strait::network::Connection& downstream, const strait::network::Connection* upstream,
              std::string_view cluster);
  bool active_ = false;
  bool inbound_ = false;
  bool opened_ = false;
  uint32_t downstream_peer_ = stats::istio::kUnknown, upstream_peer_ = stats::istio::kUnknown;
  stats::istio::SeriesKey key_;
};

}  // namespace strait::filters::network
