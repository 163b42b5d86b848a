// STRICT_DNS / LOGICAL_DNS clusters in a bootstrap: what translation keeps and what it refuses.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "filters/network/tcp_proxy.h"
#include "proxy/config/bootstrap.h"

using namespace strait;

namespace {

absl::StatusOr<config::SnapshotConstSharedPtr> loadYaml(const std::string& yaml) {
  filters::network::registerTcpProxy();
  static stats::Store store(1);  // outlives every snapshot kept (clusters release stats into it)
  static int n = 0;
  const std::string path = "/tmp/strait_dns_config_test_" + std::to_string(getpid()) + "_" + std::to_string(n++) + ".yaml";
  std::ofstream(path) << yaml;
  config::LoadOptions o;
  o.path = path;
  auto r = config::loadBootstrap(o, store);
  std::remove(path.c_str());
  return r;
}

// One tcp_proxy listener to cluster "dns", whose body is `cluster` (YAML lines at 4 spaces).
std::string bootstrap(const std::string& cluster) {
  return R"(
node: {id: n1, cluster: c1}
static_resources:
  listeners:
  - name: l1
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: dns
  clusters:
  - name: dns
)" + cluster;
}

const char* kStrict = R"(    type: STRICT_DNS
    dns_refresh_rate: 2s
    respect_dns_ttl: true
    dns_lookup_family: V4_ONLY
    dns_failure_refresh_rate: {base_interval: 0.5s, max_interval: 4s}
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
        resolvers: [{socket_address: {address: 127.0.0.1, port_value: 5353}}]
        dns_resolver_options: {use_tcp_for_dns_lookups: true, no_default_search_domain: true}
    load_assignment:
      cluster_name: dns
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: zipkin.istio-system, port_value: 9411}}}
          load_balancing_weight: 2
        - endpoint: {address: {socket_address: {address: other.test, port_value: 80}}}
)";

}  // namespace

TEST_CASE("DNS config: a STRICT_DNS cluster keeps its names, timing and resolver", "[config][dns]") {
  auto snap = loadYaml(bootstrap(kStrict));
  REQUIRE(snap.ok());
  REQUIRE((*snap)->clusters.size() == 1);
  const config::Cluster& c = *(*snap)->clusters[0];
  CHECK(c.type == config::Cluster::Type::StrictDns);
  CHECK(c.isDns());
  CHECK(c.hosts.empty());  // nothing resolved yet: hosts come from the resolver
  REQUIRE(c.dns != nullptr);
  const upstream::DnsClusterConfig& d = *c.dns;
  CHECK_FALSE(d.logical);
  CHECK(d.refresh_ms == 2000);
  CHECK(d.respect_ttl);
  CHECK(d.family == upstream::DnsLookupFamily::V4Only);
  CHECK(d.failure_base_ms == 500);
  CHECK(d.failure_max_ms == 4000);
  REQUIRE(d.resolver.servers.size() == 1);
  CHECK(d.resolver.servers[0].asString() == "127.0.0.1:5353");
  CHECK(d.resolver.use_tcp);
  CHECK(d.resolver.no_search_domain);
  REQUIRE(d.targets.size() == 2);
  CHECK(d.targets[0].name == "zipkin.istio-system");
  CHECK(d.targets[0].port == 9411);
  CHECK(d.targets[0].weight == 2);
  CHECK(d.targets[0].hostname == "zipkin.istio-system");
  CHECK(d.targets[1].name == "other.test");
}

TEST_CASE("DNS config: defaults and the older resolver fields", "[config][dns]") {
  auto snap = loadYaml(bootstrap(R"(    type: LOGICAL_DNS
    dns_resolvers: [{socket_address: {address: "::1", port_value: 0}}]
    use_tcp_for_dns_lookups: true
    load_assignment:
      cluster_name: dns
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: api.test, port_value: 443}}}}]}]
)"));
  REQUIRE(snap.ok());
  const config::Cluster& c = *(*snap)->clusters[0];
  CHECK(c.type == config::Cluster::Type::LogicalDns);
  REQUIRE(c.dns != nullptr);
  CHECK(c.dns->logical);
  CHECK(c.dns->refresh_ms == 5000);
  CHECK_FALSE(c.dns->respect_ttl);
  CHECK(c.dns->failure_base_ms == 0);  // no back-off: failures retry at the refresh rate
  CHECK(c.dns->family == upstream::DnsLookupFamily::Auto);
  REQUIRE(c.dns->resolver.servers.size() == 1);
  CHECK(c.dns->resolver.servers[0].asString() == "[::1]:53");
  CHECK(c.dns->resolver.use_tcp);
}

TEST_CASE("DNS config: what a DNS cluster refuses names the field", "[config][dns]") {
  auto error = [](const std::string& cluster) {
    auto r = loadYaml(bootstrap(cluster));
    REQUIRE_FALSE(r.ok());
    return std::string(r.status().message());
  };
  const std::string endpoint =
      "    load_assignment: {cluster_name: dns, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: "
      "{address: a.test, port_value: 80}}}}]}]}\n";
  SECTION("LOGICAL_DNS with two endpoints") {
    auto m = error(R"(    type: LOGICAL_DNS
    load_assignment:
      cluster_name: dns
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: a.test, port_value: 80}}}},
                                  {endpoint: {address: {socket_address: {address: b.test, port_value: 80}}}}]}]
)");
    CHECK_THAT(m, Catch::Contains("static_resources.clusters[0].load_assignment"));
    CHECK_THAT(m, Catch::Contains("exactly one"));
  }
  SECTION("a refresh rate of 1 ms") {
    auto m = error("    type: STRICT_DNS\n    dns_refresh_rate: 0.001s\n" + endpoint);
    CHECK_THAT(m, Catch::Contains("dns_refresh_rate"));
  }
  SECTION("a failure back-off without base_interval, or with max below base") {
    CHECK_THAT(error("    type: STRICT_DNS\n    dns_failure_refresh_rate: {max_interval: 2s}\n" + endpoint),
               Catch::Contains("dns_failure_refresh_rate.base_interval"));
    CHECK_THAT(error("    type: STRICT_DNS\n    dns_failure_refresh_rate: {base_interval: 2s, max_interval: 1s}\n" + endpoint),
               Catch::Contains("dns_failure_refresh_rate.max_interval"));
  }
  SECTION("a resolver other than c-ares") {
    auto m = error(R"(    type: STRICT_DNS
    typed_dns_resolver_config:
      name: envoy.network.dns_resolver.cares
      typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer}
)" + endpoint);
    CHECK_THAT(m, Catch::Contains("typed_dns_resolver_config.typed_config"));
  }
  SECTION("a name server that is a name") {
    auto m = error("    type: STRICT_DNS\n    dns_resolvers: [{socket_address: {address: ns.test, port_value: 53}}]\n" + endpoint);
    CHECK_THAT(m, Catch::Contains("dns_resolvers[0].socket_address.address"));
  }
  SECTION("an endpoint without a port") {
    auto m = error(R"(    type: STRICT_DNS
    load_assignment: {cluster_name: dns, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: a.test}}}}]}]}
)");
    CHECK_THAT(m, Catch::Contains("lb_endpoints[0].endpoint.address.socket_address.port_value"));
  }
}
