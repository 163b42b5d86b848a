#include <catch2/catch.hpp>
#include <fstream>
#include <unistd.h>
#include <cstdio>

#include "filters/http/router.h"
#include "filters/network/tcp_proxy.h"
#include "proxy/http/conn_manager.h"
#include "proxy/config/bootstrap.h"

using namespace strait;

namespace {

void registerAll() {
  filters::network::registerTcpProxy();
  http::registerHttpConnectionManager();
  filters::http::registerRouter();
}

std::string writeTemp(const std::string& text) {
  static int n = 0;
  std::string path = "/tmp/strait_bootstrap_test_" + std::to_string(getpid()) + "_" + std::to_string(n++) + ".yaml";
  std::ofstream(path) << text;
  return path;
}

absl::StatusOr<config::SnapshotConstSharedPtr> load(const std::string& yaml) {
  registerAll();
  // Outlives every snapshot the tests keep: clusters release their stats into it when destroyed.
  static stats::Store store(1);
  config::LoadOptions o;
  o.path = writeTemp(yaml);
  auto r = config::loadBootstrap(o, store);
  std::remove(o.path.c_str());
  return r;
}

const char* kGood = R"(
node: {id: n1, cluster: c1}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: l1
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: tcp
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: backend
  clusters:
  - name: backend
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: backend
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9001}}}}]}]
)";

std::string replace(std::string s, const std::string& from, const std::string& to) {
  size_t p = s.find(from);
  REQUIRE(p != std::string::npos);
  return s.replace(p, from.size(), to);
}

}  // namespace

TEST_CASE("Bootstrap: a valid file becomes a snapshot") {
  auto snap = load(kGood);
  REQUIRE(snap.ok());
  REQUIRE((*snap)->node_id == "n1");
  REQUIRE((*snap)->listeners.size() == 1);
  REQUIRE((*snap)->clusters.size() == 1);
  REQUIRE((*snap)->clusters[0]->connect_timeout_ms == 250);
  REQUIRE((*snap)->clusters[0]->hosts.size() == 1);
  REQUIRE((*snap)->clusters[0]->hosts[0]->address.asString() == "127.0.0.1:9001");
}

TEST_CASE("Bootstrap: the embedded default loads") {
  registerAll();
  static stats::Store store(1);
  auto snap = config::loadBootstrap(config::LoadOptions{}, store);
  REQUIRE(snap.ok());
  REQUIRE((*snap)->listeners.size() == 2);
  REQUIRE((*snap)->listeners[0]->restore_original_dst);
  REQUIRE((*snap)->listeners[0]->http_inspector.enabled);
  // Server-first ports skip detection; others wait for the first bytes.
  REQUIRE_FALSE((*snap)->listeners[0]->http_inspector.activeFor(3306));
  REQUIRE((*snap)->listeners[0]->http_inspector.activeFor(8080));
  REQUIRE((*snap)->admin_address->asString() == "127.0.0.1:15000");
}

TEST_CASE("Bootstrap: errors name the field at fault") {
  SECTION("unknown field") {
    auto r = load(replace(kGood, "static_resources:", "static_resourcez:"));
    REQUIRE_FALSE(r.ok());
    REQUIRE_THAT(std::string(r.status().message()), Catch::Contains("static_resourcez"));
  }
  SECTION("port out of range") {
    auto r = load(replace(kGood, "port_value: 10000", "port_value: 70000"));
    REQUIRE_FALSE(r.ok());
    REQUIRE_THAT(std::string(r.status().message()),
                 Catch::Contains("static_resources.listeners[0].address.socket_address.port_value"));
  }
  SECTION("unknown cluster") {
    auto r = load(replace(kGood, "cluster: backend", "cluster: nowhere"));
    REQUIRE_FALSE(r.ok());
    REQUIRE_THAT(std::string(r.status().message()), Catch::Contains("nowhere"));
    REQUIRE_THAT(std::string(r.status().message()), Catch::Contains("filters[0].typed_config.cluster"));
  }
  SECTION("bad address") {
    auto r = load(replace(kGood, "address: 127.0.0.1, port_value: 9001", "address: backend.local, port_value: 9001"));
    REQUIRE_FALSE(r.ok());
    REQUIRE_THAT(std::string(r.status().message()), Catch::Contains("lb_endpoints[0].endpoint.address"));
  }
  SECTION("unsupported filter type") {
    auto r = load(replace(kGood, "tcp_proxy.v3.TcpProxy", "tcp_proxy.v3.Nope"));
    REQUIRE_FALSE(r.ok());
  }
  SECTION("malformed YAML names the line") {
    auto r = load("node: {id: n1\nadmin: [\n");
    REQUIRE_FALSE(r.ok());
    REQUIRE_THAT(std::string(r.status().message()), Catch::Contains("line"));
  }
}

TEST_CASE("Bootstrap: YAML scalars become the right JSON types") {
  auto j = config::yamlToJson("a: 1\nb: '1'\nc: true\nd: 0.5s\ne: 007\nf: [x, 2]\n", "", "t");
  REQUIRE(j.ok());
  REQUIRE(*j == R"({"a":1,"b":"1","c":true,"d":"0.5s","e":"007","f":["x",2]})");
}

TEST_CASE("Bootstrap: --config-yaml merges over the file") {
  auto j = config::yamlToJson("node: {id: a, cluster: c}\n", "node: {id: b}", "t");
  REQUIRE(j.ok());
  REQUIRE(*j == R"({"node":{"id":"b","cluster":"c"}})");
}

TEST_CASE("Bootstrap: /config_dump's timestamps are RFC 3339 UTC with milliseconds") {
  CHECK(config::formatRfc3339(0) == "1970-01-01T00:00:00.000Z");
  CHECK(config::formatRfc3339(1796590800123) == "2026-12-06T21:00:00.123Z");
  const int64_t now = config::nowUnixMs();
  CHECK(now > 1796590800000);  // after this test was written
  CHECK(config::formatRfc3339(now).size() == 24);
}
