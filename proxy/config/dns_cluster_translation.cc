// STRICT_DNS and LOGICAL_DNS clusters: what to resolve, how often and through which name servers.
#include "proxy/config/dns_cluster_translation.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/core/v3/resolver.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/extensions/network/dns_resolver/cares/v3/cares_dns_resolver.pb.h"
#include "proxy/config/bootstrap.h"
#include "proxy/config/translate_internal.h"

namespace strait::config {

namespace cluster_v3 = envoy::config::cluster::v3;
namespace core_v3 = envoy::config::core::v3;

namespace {

constexpr char kCaresType[] = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig";

// Envoy's validation of these durations: greater than 1 ms.
absl::StatusOr<uint64_t> refreshDuration(const google::protobuf::Duration& d, const std::string& path) {
  if (d.seconds() < 0 || d.nanos() < 0 || (d.seconds() == 0 && d.nanos() <= 1000000)) {
    return fieldError(path, "must be greater than 1ms");
  }
  return durationMs(d);
}

// A name server: a numeric IP and a port (53 when 0). UDP or TCP both mean "this server".
absl::StatusOr<network::Address> nameServer(const core_v3::Address& a, const std::string& path) {
  if (!a.has_socket_address()) return fieldError(path + ".socket_address", "a name server needs an IP address and port");
  const auto& sa = a.socket_address();
  if (sa.port_specifier_case() == core_v3::SocketAddress::kNamedPort) {
    return fieldError(path + ".socket_address.named_port", "named ports are not supported; use port_value");
  }
  if (sa.port_value() > 65535) return fieldError(path + ".socket_address.port_value", "is not a valid port (0-65535)");
  auto addr = network::Address::parse(sa.address(), sa.port_value() == 0 ? 53 : sa.port_value());
  if (!addr) {
    return fieldError(path + ".socket_address.address",
                      absl::StrCat("'", sa.address(), "' is not a numeric IPv4 or IPv6 address"));
  }
  return *addr;
}

absl::Status nameServers(const google::protobuf::RepeatedPtrField<core_v3::Address>& list, const std::string& path,
                         upstream::DnsResolverSettings& out) {
  for (int i = 0; i < list.size(); ++i) {
    auto a = nameServer(list.Get(i), absl::StrCat(path, "[", i, "]"));
    if (!a.ok()) return a.status();
    out.servers.push_back(*a);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<upstream::DnsClusterConfigConstSharedPtr> translateDnsCluster(
    const cluster_v3::Cluster& c, const std::string& path,
    const std::function<network::TransportSocketFactorySharedPtr(const core_v3::Metadata*)>& socket_for) {
  auto out = std::make_shared<upstream::DnsClusterConfig>();
  out->logical = c.type() == cluster_v3::Cluster::LOGICAL_DNS;
  out->cluster_name = c.name();
  out->stat_prefix = c.alt_stat_name().empty() ? c.name() : c.alt_stat_name();
  if (c.has_dns_refresh_rate()) {
    auto ms = refreshDuration(c.dns_refresh_rate(), path + ".dns_refresh_rate");
    if (!ms.ok()) return ms.status();
    out->refresh_ms = *ms;
  }
  if (c.has_dns_failure_refresh_rate()) {
    const auto& r = c.dns_failure_refresh_rate();
    const std::string rp = path + ".dns_failure_refresh_rate";
    if (!r.has_base_interval()) return fieldError(rp + ".base_interval", "is required");
    auto base = refreshDuration(r.base_interval(), rp + ".base_interval");
    if (!base.ok()) return base.status();
    out->failure_base_ms = *base;
    out->failure_max_ms = *base * 10;
    if (r.has_max_interval()) {
      auto max = refreshDuration(r.max_interval(), rp + ".max_interval");
      if (!max.ok()) return max.status();
      if (*max < *base) return fieldError(rp + ".max_interval", "must not be less than base_interval");
      out->failure_max_ms = *max;
    }
  }
  out->respect_ttl = c.respect_dns_ttl();
  switch (c.dns_lookup_family()) {
    case cluster_v3::Cluster::AUTO: out->family = upstream::DnsLookupFamily::Auto; break;
    case cluster_v3::Cluster::V4_ONLY: out->family = upstream::DnsLookupFamily::V4Only; break;
    case cluster_v3::Cluster::V6_ONLY: out->family = upstream::DnsLookupFamily::V6Only; break;
    case cluster_v3::Cluster::V4_PREFERRED: out->family = upstream::DnsLookupFamily::V4Preferred; break;
    case cluster_v3::Cluster::ALL: out->family = upstream::DnsLookupFamily::All; break;
    default:
      return fieldError(path + ".dns_lookup_family", absl::StrCat("unknown value ", static_cast<int>(c.dns_lookup_family())));
  }
  // The resolver: the newest way of saying it wins, as in Envoy.
  if (c.has_typed_dns_resolver_config()) {
    const std::string tp = path + ".typed_dns_resolver_config";
    const auto& any = c.typed_dns_resolver_config().typed_config();
    if (any.type_url() != kCaresType) {
      return fieldError(tp + ".typed_config", absl::StrCat("unsupported DNS resolver '", any.type_url(),
                                                           "' (Strait resolves with c-ares: ", kCaresType, ")"));
    }
    envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig cares;
    if (!any.UnpackTo(&cares)) return fieldError(tp + ".typed_config", "cannot decode CaresDnsResolverConfig");
    auto st = nameServers(cares.resolvers(), tp + ".typed_config.resolvers", out->resolver);
    if (!st.ok()) return st;
    out->resolver.use_tcp = cares.dns_resolver_options().use_tcp_for_dns_lookups();
    out->resolver.no_search_domain = cares.dns_resolver_options().no_default_search_domain();
  } else if (c.has_dns_resolution_config()) {
    const auto& r = c.dns_resolution_config();
    auto st = nameServers(r.resolvers(), path + ".dns_resolution_config.resolvers", out->resolver);
    if (!st.ok()) return st;
    out->resolver.use_tcp = r.dns_resolver_options().use_tcp_for_dns_lookups();
    out->resolver.no_search_domain = r.dns_resolver_options().no_default_search_domain();
  } else {
    auto st = nameServers(c.dns_resolvers(), path + ".dns_resolvers", out->resolver);
    if (!st.ok()) return st;
    out->resolver.use_tcp = c.use_tcp_for_dns_lookups();
  }

  // The endpoints: names (or IPs) with ports, resolved at run time.
  const auto& la = c.load_assignment();
  const std::string lap = path + ".load_assignment";
  std::map<std::string, std::shared_ptr<const upstream::Locality>> localities;
  size_t count = 0;
  for (int i = 0; i < la.endpoints_size(); ++i) {
    const auto& locality = la.endpoints(i);
    const std::string lp = absl::StrCat(lap, ".endpoints[", i, "]");
    if (locality.has_load_balancing_weight() && locality.load_balancing_weight().value() == 0) {
      return fieldError(lp + ".load_balancing_weight", "must be at least 1");
    }
    upstream::Locality where{locality.locality().region(), locality.locality().zone(), locality.locality().sub_zone()};
    auto& shared_locality = localities[absl::StrCat(where.region, "/", where.zone, "/", where.sub_zone)];
    if (!shared_locality) shared_locality = std::make_shared<const upstream::Locality>(where);
    for (int j = 0; j < locality.lb_endpoints_size(); ++j) {
      const std::string ep = absl::StrCat(lp, ".lb_endpoints[", j, "]");
      const auto& lbe = locality.lb_endpoints(j);
      if (!lbe.has_endpoint()) return fieldError(ep + ".endpoint", "is required");
      const auto& a = lbe.endpoint().address();
      const std::string ap = ep + ".endpoint.address";
      if (!a.has_socket_address()) {
        return fieldError(ap + ".socket_address", "a DNS cluster's endpoint needs a name (or IP) and a port");
      }
      const auto& sa = a.socket_address();
      if (sa.protocol() != core_v3::SocketAddress::TCP) return fieldError(ap + ".socket_address.protocol", "only TCP is supported");
      if (sa.port_specifier_case() == core_v3::SocketAddress::kNamedPort) {
        return fieldError(ap + ".socket_address.named_port", "named ports are not supported; use port_value");
      }
      if (sa.port_value() == 0 || sa.port_value() > 65535) {
        return fieldError(ap + ".socket_address.port_value", "must be 1-65535");
      }
      if (sa.address().empty()) return fieldError(ap + ".socket_address.address", "is required");
      if (lbe.has_load_balancing_weight() && lbe.load_balancing_weight().value() == 0) {
        return fieldError(ep + ".load_balancing_weight", "must be at least 1");
      }
      upstream::DnsTarget t;
      t.name = sa.address();
      t.port = sa.port_value();
      t.priority = locality.priority();
      t.locality = shared_locality;
      t.weight = lbe.has_load_balancing_weight() ? lbe.load_balancing_weight().value() : 1;
      t.locality_weight = locality.has_load_balancing_weight() ? locality.load_balancing_weight().value() : 0;
      t.hostname = lbe.endpoint().hostname().empty() ? sa.address() : lbe.endpoint().hostname();
      t.socket = socket_for(lbe.has_metadata() ? &lbe.metadata() : nullptr);
      out->targets.push_back(std::move(t));
      ++count;
    }
  }
  if (out->logical && (la.endpoints_size() != 1 || count != 1)) {
    return fieldError(lap, "a LOGICAL_DNS cluster takes exactly one locality with exactly one lb_endpoint");
  }
  return upstream::DnsClusterConfigConstSharedPtr(std::move(out));
}

}  // namespace strait::config
