#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "proxy/network/transport_socket.h"
#include "proxy/upstream/dns_cluster.h"

namespace envoy::config::cluster::v3 {
class Cluster;
}
namespace envoy::config::core::v3 {
class Metadata;
}

namespace strait::config {

// A STRICT_DNS / LOGICAL_DNS cluster's resolution settings: its hostname endpoints (load_assignment),
// dns_refresh_rate, dns_failure_refresh_rate, respect_dns_ttl, dns_lookup_family and the resolver
// (typed_dns_resolver_config with CaresDnsResolverConfig, else dns_resolution_config, else
// dns_resolvers and use_tcp_for_dns_lookups, else /etc/resolv.conf). `socket_for`: the transport
// socket an endpoint with this metadata gets (transport_socket_matches, else the cluster's).
absl::StatusOr<upstream::DnsClusterConfigConstSharedPtr> translateDnsCluster(
    const envoy::config::cluster::v3::Cluster& c, const std::string& path,
    const std::function<network::TransportSocketFactorySharedPtr(const envoy::config::core::v3::Metadata*)>& socket_for);

}  // namespace strait::config
