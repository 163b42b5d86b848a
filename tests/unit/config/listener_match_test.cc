// Istio's sidecar listener model: the use_original_dst hand-off table, Envoy's filter chain match order,
// bind_to_port: false, and the inert Istio network filters.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "filters/network/istio_noop.h"
#include "filters/network/tcp_proxy.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/struct.pb.h"
#include "proxy/config/bootstrap.h"

using namespace strait;

namespace {

network::Address addr(const char* ip, uint32_t port) {
  auto a = network::Address::parse(ip, port);
  REQUIRE(a.has_value());
  return *a;
}

stats::Store& store() {
  static stats::Store s(1);
  return s;
}

absl::StatusOr<config::SnapshotConstSharedPtr> load(const std::string& yaml) {
  filters::network::registerTcpProxy();
  filters::network::registerIstioNoopFilters();
  static int n = 0;
  config::LoadOptions o;
  o.path = "/tmp/strait_listener_match_test_" + std::to_string(getpid()) + "_" + std::to_string(n++) + ".yaml";
  std::ofstream(o.path) << yaml;
  auto r = config::loadBootstrap(o, store());
  std::remove(o.path.c_str());
  return r;
}

// One listener whose chains are `chains` (YAML list items, each given a tcp_proxy to "c" and named by
// its `name`), plus a default chain named "default".
std::string listenerYaml(const std::string& chains, const std::string& extra = "") {
  return R"(
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 0.0.0.0, port_value: 15006}}
)" + extra + R"(
    filter_chains:
)" + chains + R"(
    default_filter_chain:
      name: default
      filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}]
  clusters:
  - name: c
    connect_timeout: 1s
    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]}
)";
}

std::string chain(const std::string& name, const std::string& match) {
  return "    - name: " + name + "\n      filter_chain_match: " + match +
         "\n      filters: [{name: t, typed_config: {\"@type\": "
         "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}]\n";
}

config::ListenerConstSharedPtr listener(const std::string& chains, const std::string& extra = "") {
  auto snap = load(listenerYaml(chains, extra));
  INFO((snap.ok() ? "" : std::string(snap.status().message())));
  REQUIRE(snap.ok());
  REQUIRE((*snap)->listeners.size() == 1);
  return (*snap)->listeners[0];
}

std::string chosen(const config::Listener& l, const network::Address& dst, const network::Address& src,
                   std::string_view transport = {}, std::string_view application = {}, std::string_view sni = {},
                   const std::vector<std::string>* alpn = nullptr) {
  const config::FilterChain* fc = l.match(dst, src, transport, application, sni, alpn);
  return fc == nullptr ? "(none)" : fc->name;
}

const network::Address kPeer = *network::Address::parse("10.1.2.3", 40000);

}  // namespace

TEST_CASE("ListenerAddressMap: exact address first, then the wildcard of the same family and port", "[config][listener]") {
  config::ListenerAddressMap<int> m;
  m.add(addr("10.0.0.5", 8080), 1);
  m.add(addr("0.0.0.0", 8080), 2);
  m.add(addr("::", 8080), 3);
  m.add(addr("0.0.0.0", 9090), 4);
  m.add(addr("10.0.0.5", 8080), 99);  // the first entry for an address stays
  REQUIRE(m.size() == 4);
  REQUIRE(*m.find(addr("10.0.0.5", 8080)) == 1);
  REQUIRE(*m.find(addr("10.0.0.6", 8080)) == 2);   // another IP: the v4 wildcard on that port
  REQUIRE(*m.find(addr("fd00::6", 8080)) == 3);    // IPv6: the v6 wildcard, never the v4 one
  REQUIRE(*m.find(addr("10.0.0.5", 9090)) == 4);
  REQUIRE(m.find(addr("10.0.0.5", 7070)) == nullptr);  // no port match: no hand-off
  REQUIRE(m.find(addr("fd00::6", 9090)) == nullptr);   // only a v4 wildcard on 9090
  m.clear();
  REQUIRE(m.find(addr("10.0.0.5", 8080)) == nullptr);
}

TEST_CASE("Listener: bind_to_port false and use_original_dst are taken", "[config][listener]") {
  auto l = listener(chain("a", "{destination_port: 80}"), "    bind_to_port: false\n    use_original_dst: true\n");
  REQUIRE_FALSE(l->bind_to_port);
  REQUIRE(l->use_original_dst);
  REQUIRE(l->restore_original_dst);
  auto bound = listener(chain("a", "{destination_port: 80}"));
  REQUIRE(bound->bind_to_port);
  REQUIRE_FALSE(bound->use_original_dst);
}

TEST_CASE("Listener match: the destination port decides first and there is no going back", "[config][listener]") {
  // Envoy: a chain naming the port beats every chain that does not, even when a later criterion then
  // rules it out (the default chain answers, not the port-less chain that would have fitted).
  auto l = listener(chain("port_tls", "{destination_port: 8080, transport_protocol: tls}") +
                    chain("any_raw", "{transport_protocol: raw_buffer}"));
  REQUIRE(chosen(*l, addr("10.0.0.1", 8080), kPeer, "tls") == "port_tls");
  REQUIRE(chosen(*l, addr("10.0.0.1", 8080), kPeer, "raw_buffer") == "default");
  REQUIRE(chosen(*l, addr("10.0.0.1", 8080), kPeer) == "default");  // undetected counts as raw_buffer
  REQUIRE(chosen(*l, addr("10.0.0.1", 9090), kPeer) == "any_raw");
  REQUIRE(chosen(*l, addr("10.0.0.1", 9090), kPeer, "tls") == "default");
}

TEST_CASE("Listener match: destination IP by longest prefix, before server names", "[config][listener]") {
  auto l = listener(chain("wide", "{prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}") +
                    chain("narrow", "{prefix_ranges: [{address_prefix: 10.1.0.0, prefix_len: 16}]}") +
                    chain("sni_any_ip", "{server_names: [a.example.com]}"));
  REQUIRE(chosen(*l, addr("10.1.2.3", 80), kPeer) == "narrow");
  REQUIRE(chosen(*l, addr("10.2.2.3", 80), kPeer) == "wide");
  // The IP step keeps only "narrow"; its lack of server names does not bring "sni_any_ip" back.
  REQUIRE(chosen(*l, addr("10.1.2.3", 80), kPeer, "tls", "", "a.example.com") == "narrow");
  REQUIRE(chosen(*l, addr("192.168.0.1", 80), kPeer, "tls", "", "a.example.com") == "sni_any_ip");
  REQUIRE(chosen(*l, addr("192.168.0.1", 80), kPeer) == "default");  // no SNI: a named chain cannot match
  REQUIRE(chosen(*l, addr("fd00::1", 80), kPeer) == "default");       // v4 prefixes never hold a v6 address
}

TEST_CASE("Listener match: exact server name, then the longest wildcard, then none", "[config][listener]") {
  auto l = listener(chain("exact", "{server_names: [www.example.com]}") +
                    chain("wild", "{server_names: ['*.example.com']}") + chain("wider", "{server_names: ['*.com']}") +
                    chain("none", "{transport_protocol: tls}"));
  REQUIRE(chosen(*l, addr("10.0.0.1", 443), kPeer, "tls", "", "www.example.com") == "exact");
  REQUIRE(chosen(*l, addr("10.0.0.1", 443), kPeer, "tls", "", "api.example.com") == "wild");
  REQUIRE(chosen(*l, addr("10.0.0.1", 443), kPeer, "tls", "", "a.b.example.com") == "wild");
  REQUIRE(chosen(*l, addr("10.0.0.1", 443), kPeer, "tls", "", "other.com") == "wider");
  REQUIRE(chosen(*l, addr("10.0.0.1", 443), kPeer, "tls", "", "example.org") == "none");
  REQUIRE(chosen(*l, addr("10.0.0.1", 443), kPeer, "tls") == "none");
}

TEST_CASE("Listener match: transport protocol before application protocols, ALPN in the client's order", "[config][listener]") {
  // virtualInbound as istiod builds it for one port: mTLS chains by ALPN, a plaintext one, and
  // passthrough chains for other ports.
  auto l = listener(
      chain("inbound_8080_mtls_tcp", "{destination_port: 8080, transport_protocol: tls, application_protocols: [istio-peer-exchange, istio]}") +
      chain("inbound_8080_mtls_http", "{destination_port: 8080, transport_protocol: tls, application_protocols: [istio-http/1.0, istio-http/1.1, istio-h2]}") +
      chain("inbound_8080_plain_http", "{destination_port: 8080, transport_protocol: raw_buffer, application_protocols: [http/1.1, http/1.0, h2c]}") +
      chain("inbound_8080_plain_tcp", "{destination_port: 8080, transport_protocol: raw_buffer}") +
      chain("passthrough_tls", "{transport_protocol: tls}") + chain("passthrough_raw", "{transport_protocol: raw_buffer}"));
  const auto dst = addr("10.0.0.1", 8080);
  std::vector<std::string> mx = {"istio-peer-exchange", "istio"};
  std::vector<std::string> h2 = {"istio-h2", "istio", "h2"};
  std::vector<std::string> other = {"h2", "http/1.1"};
  std::vector<std::string> istio_first = {"istio", "istio-http/1.1"};
  REQUIRE(chosen(*l, dst, kPeer, "tls", "", "", &mx) == "inbound_8080_mtls_tcp");
  REQUIRE(chosen(*l, dst, kPeer, "tls", "", "", &h2) == "inbound_8080_mtls_http");
  // The client's first protocol that any chain names decides ("istio" is named by the TCP chain).
  REQUIRE(chosen(*l, dst, kPeer, "tls", "", "", &istio_first) == "inbound_8080_mtls_tcp");
  // TLS on 8080 offering nothing Istio names: no 8080 TLS chain without ALPN, and no going back to the
  // passthrough chains.
  REQUIRE(chosen(*l, dst, kPeer, "tls", "", "", &other) == "default");
  REQUIRE(chosen(*l, dst, kPeer, "raw_buffer", "http/1.1") == "inbound_8080_plain_http");
  REQUIRE(chosen(*l, dst, kPeer, "raw_buffer", "h2c") == "inbound_8080_plain_http");
  REQUIRE(chosen(*l, dst, kPeer, "raw_buffer", "") == "inbound_8080_plain_tcp");
  REQUIRE(chosen(*l, addr("10.0.0.1", 9090), kPeer, "tls", "", "", &mx) == "passthrough_tls");
  REQUIRE(chosen(*l, addr("10.0.0.1", 9090), kPeer, "raw_buffer", "http/1.1") == "passthrough_raw");
}

TEST_CASE("Listener match: direct source IP, source type, source IP, then source port", "[config][listener]") {
  auto l = listener(chain("local", "{source_type: SAME_IP_OR_LOOPBACK}") +
                    chain("external_net", "{source_type: EXTERNAL, source_prefix_ranges: [{address_prefix: 10.1.0.0, prefix_len: 16}]}") +
                    chain("external_port", "{source_type: EXTERNAL, source_prefix_ranges: [{address_prefix: 10.1.0.0, prefix_len: 16}], source_ports: [5000]}") +
                    chain("direct", "{direct_source_prefix_ranges: [{address_prefix: 172.16.0.0, prefix_len: 12}]}"));
  const auto dst = addr("10.0.0.1", 80);
  REQUIRE(chosen(*l, dst, addr("127.0.0.1", 1234)) == "local");
  REQUIRE(chosen(*l, dst, addr("10.0.0.1", 1234)) == "local");  // same IP as the destination
  REQUIRE(chosen(*l, dst, addr("10.1.9.9", 1234)) == "external_net");
  REQUIRE(chosen(*l, dst, addr("10.1.9.9", 5000)) == "external_port");
  // Direct source IP comes before the source type: a 172.16/12 peer gets "direct" although it is external.
  REQUIRE(chosen(*l, dst, addr("172.16.0.9", 5000)) == "direct");
  REQUIRE(chosen(*l, dst, addr("192.168.1.1", 1234)) == "default");  // external, outside 10.1/16
}

TEST_CASE("Listener match: no chains fit and no default chain gives none", "[config][listener]") {
  auto snap = load(R"(
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 0.0.0.0, port_value: 15006}}
    filter_chains:
    - filter_chain_match: {destination_port: 80}
      filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}]
  clusters:
  - name: c
    connect_timeout: 1s
    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]}
)");
  REQUIRE(snap.ok());
  REQUIRE((*snap)->listeners[0]->match(addr("10.0.0.1", 81), kPeer) == nullptr);
  REQUIRE((*snap)->listeners[0]->match(addr("10.0.0.1", 80), kPeer) != nullptr);
}

TEST_CASE("Listener: two chains with the same match are refused, naming both", "[config][listener]") {
  auto snap = load(listenerYaml(chain("a", "{destination_port: 80, server_names: [x.com, y.com]}") +
                                chain("b", "{server_names: [y.com, x.com], destination_port: 80}")));
  REQUIRE_FALSE(snap.ok());
  const std::string msg(snap.status().message());
  INFO(msg);
  REQUIRE(msg.find("filter_chains[1].filter_chain_match") != std::string::npos);
  REQUIRE(msg.find("filter_chains[0]") != std::string::npos);
  auto bad_port = load(listenerYaml(chain("a", "{source_ports: [70000]}")));
  REQUIRE_FALSE(bad_port.ok());
  REQUIRE(std::string(bad_port.status().message()).find("source_ports[0]") != std::string::npos);
}

namespace {

google::protobuf::Any anyOf(const std::string& type, const std::string& value) {
  google::protobuf::Any a;
  a.set_type_url("type.googleapis.com/" + type);
  a.set_value(value);
  return a;
}

std::string lengthDelimited(int field, const std::string& bytes) {
  std::string out(1, static_cast<char>(field << 3 | 2));
  size_t n = bytes.size();
  do {
    uint8_t b = n & 0x7f;
    n >>= 7;
    out.push_back(static_cast<char>(n ? b | 0x80 : b));
  } while (n);
  return out + bytes;
}

std::string typedStruct(const std::string& inner_type, const google::protobuf::Struct& value) {
  return lengthDelimited(1, "type.googleapis.com/" + inner_type) + lengthDelimited(2, value.SerializeAsString());
}

absl::StatusOr<config::NetworkReadFilterConstSharedPtr> create(const google::protobuf::Any& any) {
  static const config::ClusterMap clusters;
  config::TranslationContext ctx{store(), clusters};
  return filters::network::createIstioNoopFilter(any, "f.typed_config", ctx);
}

}  // namespace

TEST_CASE("Istio network filters: recognised forms are inert, others are refused by name", "[config][istio]") {
  google::protobuf::Struct empty;
  google::protobuf::Struct wasm_stats;
  (*(*wasm_stats.mutable_fields())["config"].mutable_struct_value()->mutable_fields())["root_id"].set_string_value(
      "stats_outbound");
  google::protobuf::Struct wasm_other;
  (*(*wasm_other.mutable_fields())["config"].mutable_struct_value()->mutable_fields())["root_id"].set_string_value(
      "my_plugin");
  // Wasm { config (1): PluginConfig { name (1), root_id (2) } }
  const std::string wasm_mx = lengthDelimited(1, lengthDelimited(1, "mx") + lengthDelimited(2, "envoy.wasm.metadata_exchange"));
  const std::string wasm_unknown = lengthDelimited(1, lengthDelimited(2, "my_plugin"));

  for (const auto& any : {anyOf("envoy.tcp.metadataexchange.config.MetadataExchange", lengthDelimited(1, "istio-peer-exchange")),
                          anyOf("stats.PluginConfig", ""), anyOf("io.istio.network.authn.Config", ""),
                          anyOf("udpa.type.v1.TypedStruct", typedStruct("stats.PluginConfig", empty)),
                          anyOf("xds.type.v3.TypedStruct", typedStruct("io.istio.network.authn.Config", empty)),
                          anyOf("udpa.type.v1.TypedStruct",
                                typedStruct("envoy.tcp.metadataexchange.config.MetadataExchange", empty)),
                          anyOf("udpa.type.v1.TypedStruct", typedStruct("envoy.extensions.filters.network.wasm.v3.Wasm", wasm_stats)),
                          anyOf("envoy.extensions.filters.network.wasm.v3.Wasm", wasm_mx)}) {
    INFO(any.type_url());
    auto f = create(any);
    INFO((f.ok() ? "" : std::string(f.status().message())));
    REQUIRE(f.ok());
  }
  auto unknown_inner = create(anyOf("udpa.type.v1.TypedStruct", typedStruct("acme.Filter", empty)));
  REQUIRE_FALSE(unknown_inner.ok());
  REQUIRE(std::string(unknown_inner.status().message()).find("'type.googleapis.com/acme.Filter'") != std::string::npos);
  auto other_wasm = create(anyOf("udpa.type.v1.TypedStruct", typedStruct("envoy.extensions.filters.network.wasm.v3.Wasm", wasm_other)));
  REQUIRE_FALSE(other_wasm.ok());
  REQUIRE(std::string(other_wasm.status().message()).find("my_plugin") != std::string::npos);
  auto other_direct = create(anyOf("envoy.extensions.filters.network.wasm.v3.Wasm", wasm_unknown));
  REQUIRE_FALSE(other_direct.ok());
  REQUIRE(std::string(other_direct.status().message()).find("my_plugin") != std::string::npos);
}

TEST_CASE("Istio network filters: an unknown network filter type is still refused by name", "[config][istio]") {
  auto snap = load(listenerYaml(R"(    - name: x
      filters:
      - name: istio.something_else
        typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/acme.Unknown, value: {}}
      - {name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}
)"));
  REQUIRE_FALSE(snap.ok());
  INFO(std::string(snap.status().message()));
  REQUIRE(std::string(snap.status().message()).find("acme.Unknown") != std::string::npos);
  auto ok = load(listenerYaml(R"(    - name: x
      filters:
      - name: istio_authn
        typed_config: {"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/io.istio.network.authn.Config}
      - name: istio.metadata_exchange
        typed_config: {"@type": type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, protocol: istio-peer-exchange}
      - name: istio.stats
        typed_config: {"@type": type.googleapis.com/stats.PluginConfig}
      - {name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}
)"));
  INFO((ok.ok() ? "" : std::string(ok.status().message())));
  REQUIRE(ok.ok());
  REQUIRE((*ok)->listeners[0]->filter_chains[0].read_filters.size() == 3);
}
