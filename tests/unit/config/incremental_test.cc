// buildSnapshot's incremental rule: what did not change between two sets of sources is the very same
// object in the new snapshot (not translated again), and what went is freed.
#include <google/protobuf/util/json_util.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <functional>
#include <unistd.h>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "filters/http/router.h"
#include "filters/network/tcp_proxy.h"
#include "proxy/config/bootstrap.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/route_table.h"

using namespace strait;

namespace {

stats::Store& store() {
  static stats::Store s(1);  // outlives every snapshot the tests keep
  return s;
}

template <class M>
std::shared_ptr<const google::protobuf::Message> parse(const std::string& json) {
  auto m = std::make_shared<M>();
  auto st = google::protobuf::util::JsonStringToMessage(json, m.get());
  INFO(json);
  REQUIRE(st.ok());
  return m;
}

config::DynamicResource res(std::shared_ptr<const google::protobuf::Message> m, const std::string& version = "1") {
  config::DynamicResource r;
  r.proto = std::move(m);
  r.version = version;
  return r;
}

std::shared_ptr<const google::protobuf::Message> edsCluster(const std::string& name) {
  return parse<envoy::config::cluster::v3::Cluster>(
      R"({"name":")" + name + R"(","type":"EDS","connect_timeout":"1s","eds_cluster_config":{"eds_config":{"ads":{}}}})");
}

std::shared_ptr<const google::protobuf::Message> endpoints(const std::string& name, int port) {
  return parse<envoy::config::endpoint::v3::ClusterLoadAssignment>(
      R"({"cluster_name":")" + name + R"(","endpoints":[{"lb_endpoints":[{"endpoint":{"address":{"socket_address":{"address":"127.0.0.1","port_value":)" +
      std::to_string(port) + "}}}}]}]}");
}

// The bootstrap of an ADS sidecar (loaded as the server loads it), and the sources the xDS applier
// builds from it: clusters a, b, c; route configuration r1 -> a; an HTTP listener over RDS r1 and a
// TCP listener -> b.
struct Fixture {
  Fixture() {
    filters::network::registerTcpProxy();
    http::registerHttpConnectionManager();
    filters::http::registerRouter();
    const std::string path = "/tmp/strait_incremental_test_" + std::to_string(getpid()) + ".yaml";
    std::ofstream(path) << R"(
node: {id: n1, cluster: c1}
dynamic_resources:
  ads_config: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  cds_config: {ads: {}}
  lds_config: {ads: {}}
static_resources:
  clusters:
  - name: xds
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18000}}}}]}]
)";
    config::LoadOptions o;
    o.path = path;
    auto boot = config::loadBootstrap(o, store());
    std::remove(path.c_str());
    REQUIRE(boot.ok());
    base = *boot;
    auto s = std::make_shared<config::ConfigSources>();
    s->bootstrap = base->bootstrap;
    for (const char* n : {"a", "b", "c"}) {
      s->clusters.set(n, res(edsCluster(n)));
      s->endpoints.set(n, res(endpoints(n, 9000 + n[0])));
    }
    s->routes.set("r1", res(parse<envoy::config::route::v3::RouteConfiguration>(
        R"({"name":"r1","virtual_hosts":[{"name":"v","domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":"a"}}]}]})")));
    s->listeners.set("http", res(parse<envoy::config::listener::v3::Listener>(R"({
      "name":"http","address":{"socket_address":{"address":"127.0.0.1","port_value":0}},
      "filter_chains":[{"filters":[{"name":"hcm","typed_config":{
        "@type":"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix":"in","rds":{"route_config_name":"r1","config_source":{"ads":{}}},
        "http_filters":[{"name":"envoy.filters.http.router","typed_config":{"@type":"type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]})")));
    s->listeners.set("tcp", res(parse<envoy::config::listener::v3::Listener>(R"({
      "name":"tcp","address":{"socket_address":{"address":"127.0.0.1","port_value":0}},
      "filter_chains":[{"filters":[{"name":"tcp","typed_config":{
        "@type":"type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy","stat_prefix":"t","cluster":"b"}}]}]})")));
    sources = s;
  }
  config::BuildResult build(std::shared_ptr<const config::ConfigSources> s, const config::Snapshot* previous,
                            const config::ChangeHint* hint = nullptr) {
    auto r = config::buildSnapshot(std::move(s), previous, store(), config::clusterIds(), hint);
    REQUIRE(r.ok());
    INFO((r->rejected.empty() ? std::string() : r->rejected[0].error));
    REQUIRE(r->rejected.empty());
    return *std::move(r);
  }
  config::SnapshotConstSharedPtr base;
  std::shared_ptr<const config::ConfigSources> sources;
};

const config::Listener* listener(const config::Snapshot& s, const std::string& name) {
  for (const auto& l : s.listeners) {
    if (l->name == name) return l.get();
  }
  return nullptr;
}

}  // namespace

TEST_CASE("incremental build: an EDS update makes a new version of that cluster only") {
  Fixture f;
  auto first = f.build(f.sources, f.base.get());
  REQUIRE(first.snapshot->clusters_by_name.size() == 4);
  REQUIRE(first.snapshot->listeners.size() == 2);
  CHECK(first.rds_names == std::set<std::string>{"r1"});

  auto next = std::make_shared<config::ConfigSources>(*f.sources);
  next->endpoints.set("c", res(endpoints("c", 9999), "2"));
  auto second = f.build(next, first.snapshot.get());
  const auto& was = first.snapshot->clusters_by_name;
  const auto& now = second.snapshot->clusters_by_name;
  // Untouched clusters are the same objects: their hosts, balancers and pools stay as they are.
  CHECK(now.at("a") == was.at("a"));
  CHECK(now.at("b") == was.at("b"));
  CHECK(now.at("xds") == was.at("xds"));
  CHECK(now.at("a")->hosts[0] == was.at("a")->hosts[0]);
  // The changed one is a new version with the new endpoint.
  REQUIRE(now.at("c") != was.at("c"));
  CHECK(now.at("c")->hosts.size() == 1);
  CHECK(now.at("c")->hosts[0]->address.port() == 9999);
  CHECK(now.at("c")->index == was.at("c")->index);
  // Route tables and listeners name clusters by index: an endpoint update leaves them alone, and the
  // listener's RouteConfiguration stays subscribed.
  CHECK(second.snapshot->route_tables.at("r1") == first.snapshot->route_tables.at("r1"));
  CHECK(listener(*second.snapshot, "http") == listener(*first.snapshot, "http"));
  CHECK(listener(*second.snapshot, "tcp") == listener(*first.snapshot, "tcp"));
  CHECK(second.rds_names == std::set<std::string>{"r1"});
  CHECK(second.eds_names == first.eds_names);
}

TEST_CASE("incremental build: a route configuration update rebuilds that table only") {
  Fixture f;
  auto first = f.build(f.sources, f.base.get());
  auto next = std::make_shared<config::ConfigSources>(*f.sources);
  next->routes.set("r1", res(parse<envoy::config::route::v3::RouteConfiguration>(
      R"({"name":"r1","virtual_hosts":[{"name":"v","domains":["*"],"routes":[{"match":{"prefix":"/"},"route":{"cluster":"b"}}]}]})"), "2"));
  auto second = f.build(next, first.snapshot.get());
  CHECK(second.snapshot->route_tables.at("r1") != first.snapshot->route_tables.at("r1"));
  for (const char* n : {"a", "b", "c"}) CHECK(second.snapshot->clusters_by_name.at(n) == first.snapshot->clusters_by_name.at(n));
  // The HCM finds its table per stream by id, so the listener itself did not change either.
  CHECK(listener(*second.snapshot, "http") == listener(*first.snapshot, "http"));
}

TEST_CASE("incremental build: an RDS table holds the sources' RouteConfiguration, not a copy of it") {
  Fixture f;
  auto first = f.build(f.sources, f.base.get());
  const auto& table = *std::static_pointer_cast<const http::RouteTable>(first.snapshot->route_tables.at("r1"));
  const google::protobuf::Message* held = f.sources->routes.find("r1")->second.proto.get();
  CHECK(static_cast<const google::protobuf::Message*>(&table.proto()) == held);
  CHECK(table.proto().virtual_hosts(0).routes(0).route().cluster() == "a");
}

TEST_CASE("incremental build: a cluster added keeps the others; a cluster removed is freed") {
  Fixture f;
  auto first = f.build(f.sources, f.base.get());
  auto added = std::make_shared<config::ConfigSources>(*f.sources);
  added->clusters.set("d", res(edsCluster("d")));
  added->endpoints.set("d", res(endpoints("d", 9100)));
  auto second = f.build(added, first.snapshot.get());
  REQUIRE(second.snapshot->clusters_by_name.count("d") == 1);
  for (const char* n : {"a", "b", "c"}) CHECK(second.snapshot->clusters_by_name.at(n) == first.snapshot->clusters_by_name.at(n));
  std::weak_ptr<const config::Cluster> d = second.snapshot->clusters_by_name.at("d");

  // Removed again: gone from the snapshot, and freed once nothing holds the old snapshot.
  auto removed = std::make_shared<config::ConfigSources>(*added);
  removed->clusters.erase("d");
  removed->endpoints.erase("d");
  auto third = f.build(removed, second.snapshot.get());
  CHECK(third.snapshot->clusters_by_name.count("d") == 0);
  CHECK(third.snapshot->clusters_by_name.at("a") == first.snapshot->clusters_by_name.at("a"));
  added.reset();
  second = config::BuildResult{};
  CHECK(d.expired());
}

TEST_CASE("incremental build: the same Cluster message resent is not translated again") {
  Fixture f;
  auto first = f.build(f.sources, f.base.get());
  // A new message with the same content (what a SotW push decodes to when the applier could not tell):
  // a new version, because only the message's identity is compared here.
  auto next = std::make_shared<config::ConfigSources>(*f.sources);
  next->clusters.set("a", res(edsCluster("a"), "2"));
  auto second = f.build(next, first.snapshot.get());
  CHECK(second.snapshot->clusters_by_name.at("a") != first.snapshot->clusters_by_name.at("a"));
  // The same message under a new version_info (what the applier keeps for resent bytes): reused.
  auto again = std::make_shared<config::ConfigSources>(*next);
  {
    auto a = *again->clusters.get("a");
    a.version = "3";
    again->clusters.set("a", a);
  }
  auto third = f.build(again, second.snapshot.get());
  CHECK(third.snapshot->clusters_by_name.at("a") == second.snapshot->clusters_by_name.at("a"));
}

namespace {
std::vector<std::string> names(const config::Snapshot& s) {
  std::vector<std::string> out;
  for (const auto& c : s.clusters) out.push_back(c->name);
  return out;
}
std::vector<std::string> mapNames(const config::Snapshot& s) {
  std::vector<std::string> out;
  for (const auto& [name, c] : s.clusters_by_name) out.push_back(name);
  return out;
}
}  // namespace

TEST_CASE("incremental build: a build told what changed equals a full build, and shares the rest") {
  Fixture f;
  auto full = f.build(f.sources, f.base.get());
  auto hinted = full;
  auto sources = f.sources;
  // Each step: what changes in the sources, and the names the applier would hint.
  struct Step {
    const char* what;
    std::function<void(config::ConfigSources&)> change;
    std::set<std::string> names;
    bool names_kept;  // no cluster name goes: route tables and listeners are reused
  };
  const std::vector<Step> steps = {
      {"an endpoint of c changes", [](config::ConfigSources& s) { s.endpoints.set("c", res(endpoints("c", 9999), "2")); }, {"c"}, true},
      {"cluster d is added, waiting for its endpoints", [](config::ConfigSources& s) { s.clusters.set("d", res(edsCluster("d"))); }, {"d"}, true},
      {"d's endpoints arrive", [](config::ConfigSources& s) { s.endpoints.set("d", res(endpoints("d", 9100))); }, {"d"}, true},
      {"cluster b is removed", [](config::ConfigSources& s) { s.clusters.erase("b"); }, {"b"}, false},
      {"a new version of a", [](config::ConfigSources& s) { s.clusters.set("a", res(edsCluster("a"), "2")); }, {"a"}, true},
  };
  for (const auto& step : steps) {
    INFO(step.what);
    auto next = std::make_shared<config::ConfigSources>(*sources);
    step.change(*next);
    config::ChangeHint hint;
    hint.clusters_only = true;
    hint.names = step.names;
    auto by_hint = f.build(next, hinted.snapshot.get(), &hint);
    auto by_full = f.build(next, full.snapshot.get());
    CHECK(names(*by_hint.snapshot) == names(*by_full.snapshot));
    CHECK(mapNames(*by_hint.snapshot) == mapNames(*by_full.snapshot));
    REQUIRE(by_hint.eds_names);
    CHECK(*by_hint.eds_names == *by_full.eds_names);
    CHECK(by_hint.snapshot->same_cluster_names == by_full.snapshot->same_cluster_names);
    CHECK(by_hint.snapshot->cluster_names_kept == step.names_kept);
    CHECK(by_full.snapshot->cluster_names_kept == step.names_kept);
    if (step.names_kept) {
      // Names kept (a cluster added or changed): the listeners are the previous snapshot's objects.
      REQUIRE(by_hint.snapshot->listeners.size() == hinted.snapshot->listeners.size());
      for (size_t i = 0; i < by_hint.snapshot->listeners.size(); ++i) {
        CHECK(by_hint.snapshot->listeners[i] == hinted.snapshot->listeners[i]);
      }
    }
    CHECK(by_hint.rds_names == by_full.rds_names);
    CHECK(by_hint.snapshot->listeners.size() == by_full.snapshot->listeners.size());
    // What the hint did not name is the previous snapshot's very object.
    for (const auto& [name, c] : by_hint.snapshot->clusters_by_name) {
      if (step.names.count(name) != 0) continue;
      CHECK(c == hinted.snapshot->clusters_by_name.at(name));
    }
    sources = next;
    hinted = by_hint;
    full = by_full;
  }
  CHECK(hinted.snapshot->clusters_by_name.count("b") == 0);
  CHECK(hinted.snapshot->clusters_by_name.at("d")->hosts.size() == 1);
}
