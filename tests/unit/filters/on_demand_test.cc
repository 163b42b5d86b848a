// The on-demand cluster discovery filter (envoy.filters.http.on_demand with odcds): its configuration
// errors, and a filter instance on a real dispatcher against a worker whose clusters the test controls:
// a request whose cluster is there goes on untouched; one whose cluster is missing is held (body too)
// until the worker has it, the control plane says it does not exist, or the timeout; a client that
// goes away unregisters; a route's PerRouteConfig turns discovery off.

#include <google/protobuf/any.pb.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "envoy/extensions/filters/http/on_demand/v3/on_demand.pb.h"
#include "filters/http/on_demand.h"
#include "proxy/config/bootstrap.h"
#include "proxy/event/dispatcher.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/filter.h"
#include "proxy/network/connection.h"
#include "proxy/upstream/http_pool.h"
#include "tests/unit/support/filter_fakes.h"
#include "tests/unit/support/loop.h"
#include "tests/unit/support/yaml.h"

using namespace strait;
using strait::testing::parseYaml;
using strait::testing::testStore;

namespace {

namespace od_v3 = envoy::extensions::filters::http::on_demand::v3;

// A worker whose clusters (by index) the test sets, recording what the filter asks for.
class Worker : public strait::testing::FakeWorker {
 public:
  using FakeWorker::FakeWorker;
  const config::ClusterConstSharedPtr& cluster(uint32_t index) override {
    static const config::ClusterConstSharedPtr kNone;
    return index < clusters.size() ? clusters[index] : kNone;
  }
  bool requestCluster(uint32_t, const std::string& name) override {
    if (!can_request) return false;
    requested.push_back(name);
    return true;
  }
  void addClusterWaiter(config::ClusterWaiter& w) override { waiters.push_back(&w); }
  void cancelClusterWait(config::ClusterWaiter& w) override {
    waiters.erase(std::remove(waiters.begin(), waiters.end(), &w), waiters.end());
  }
  bool clusterKnownMissing(uint32_t index) const override { return missing.count(index) != 0; }

  // What the real worker does after taking a config or a does-not-exist notice.
  void notify() {
    const auto copy = waiters;
    for (auto* w : copy) w->onClusterDiscoveryUpdate();
  }
  void add(uint32_t index) {
    if (clusters.size() <= index) clusters.resize(index + 1);
    auto c = std::make_shared<config::Cluster>();
    c->index = index;
    clusters[index] = std::move(c);
  }

  std::vector<config::ClusterConstSharedPtr> clusters;
  std::vector<std::string> requested;
  std::vector<config::ClusterWaiter*> waiters;
  std::set<uint32_t> missing;
  bool can_request = true;
};

using Callbacks = strait::testing::FakeDecoderCallbacks;
using Builder = strait::testing::FakeFilterChain;

constexpr const char* kFilterName = "envoy.filters.http.on_demand";

absl::StatusOr<http::HttpFilterFactorySharedPtr> make(const std::string& yaml, const std::string& prefix) {
  static config::ClusterMap clusters;
  static std::string stat_prefix;
  stat_prefix = prefix;
  http::HttpFilterContext ctx{testStore(), clusters, stat_prefix, kFilterName};
  google::protobuf::Any any;
  any.PackFrom(parseYaml<od_v3::OnDemand>(yaml));
  return filters::http::createOnDemand(any, "typed_config", ctx);
}

std::string err(const std::string& yaml) {
  auto f = make(yaml, "od_err");
  return f.ok() ? "ok" : std::string(f.status().message());
}

// One stream through the filter.
struct Stream {
  Builder b;
  Callbacks cb;
  Stream(const http::HttpFilterFactory& factory, Worker& w, network::Connection& conn, const http::RouteEntry& route) {
    factory.createFilters(b);
    REQUIRE(b.decoders.size() == 1);
    cb.w = &w;
    cb.conn = &conn;
    cb.route_entry = &route;
    cb.headers.method = "POST";
    b.decoders[0]->setDecoderFilterCallbacks(cb);
  }
  http::StreamDecoderFilter& f() { return *b.decoders[0]; }
};

http::RouteEntry routeTo(uint32_t index, const std::string& name) {
  http::RouteEntry r;
  r.kind = http::RouteEntry::Kind::Cluster;
  r.cluster_index = index;
  r.cluster_name = name;
  return r;
}

}  // namespace

TEST_CASE("OnDemand: configuration errors name the field", "[on_demand]") {
  CHECK(err("{}") == "ok");  // no odcds: does nothing
  CHECK(err("{odcds: {source: {ads: {}}}}") == "ok");
  CHECK(err("{odcds: {source: {ads: {}}, timeout: 0.25s}}") == "ok");
  CHECK(err("{odcds: {}}") == "typed_config.odcds.source: is required");
  CHECK(err("{odcds: {source: {api_config_source: {api_type: GRPC}}}}") ==
        "typed_config.odcds.source: only ads: {} is supported (clusters come over the ADS stream)");
  CHECK(err("{odcds: {source: {ads: {}}, resources_locator: 'xdstp://cp/envoy.config.cluster.v3.Cluster/*'}}") ==
        "typed_config.odcds.resources_locator: xdstp:// collection locators are not supported");
  CHECK(err("{odcds: {source: {ads: {}}, timeout: 0s}}") == "typed_config.odcds.timeout: must be at least 1 ms");
}

TEST_CASE("OnDemand: a missing cluster holds the request until the worker has it", "[on_demand]") {
  strait::testing::ShardGuard shard;
  auto& store = testStore();
  auto factory = make("{odcds: {source: {ads: {}}, timeout: 5s}}", "od_found");
  REQUIRE(factory.ok());
  event::Dispatcher d("test");
  Worker w(d);
  network::Connection conn(d, *network::Address::parse("127.0.0.1", 5555));

  // Present: goes on, nothing asked.
  w.add(1);
  const auto present = routeTo(1, "here");
  Stream s0(**factory, w, conn, present);
  CHECK(s0.f().decodeHeaders(s0.cb.headers, true) == http::FilterHeadersStatus::Continue);
  CHECK(w.requested.empty());
  s0.f().onDestroy();

  // Missing: held, asked for by name, the body held too.
  const auto absent = routeTo(4, "later");
  Stream s1(**factory, w, conn, absent);
  Stream s2(**factory, w, conn, absent);
  CHECK(s1.f().decodeHeaders(s1.cb.headers, false) == http::FilterHeadersStatus::StopIteration);
  CHECK(s2.f().decodeHeaders(s2.cb.headers, false) == http::FilterHeadersStatus::StopIteration);
  CHECK(w.requested == std::vector<std::string>{"later", "later"});  // the worker asks the control plane once
  CHECK(w.waiters.size() == 2);
  common::Buffer body;
  body.add("abc");
  CHECK(s1.f().decodeData(body, true) == http::FilterDataStatus::StopIterationAndBuffer);
  // A config without it changes nothing.
  w.notify();
  CHECK(s1.cb.continued == 0);
  // The second client goes away: it is no longer registered.
  s2.f().onDestroy();
  CHECK(w.waiters.size() == 1);
  // The worker takes a config with it: the request goes on once, and the body after it.
  w.add(4);
  w.notify();
  CHECK(s1.cb.continued == 1);
  CHECK(w.waiters.empty());
  CHECK(s1.f().decodeData(body, true) == http::FilterDataStatus::Continue);
  strait::testing::runFor(d, 20);
  CHECK(s1.cb.continued == 1);
  s1.f().onDestroy();
  CHECK(s2.cb.continued == 0);
  CHECK(store.value("http.od_found.on_demand.cluster_wait") == 2);
  CHECK(store.value("http.od_found.on_demand.cluster_found") == 1);
  CHECK(store.value("http.od_found.on_demand.cluster_timeout") == 0);
}

TEST_CASE("OnDemand: does not exist, timeout, weighted targets, per-route off, no discovery", "[on_demand]") {
  strait::testing::ShardGuard shard;
  auto& store = testStore();
  auto factory = make("{odcds: {source: {ads: {}}, timeout: 0.05s}}", "od_more");
  REQUIRE(factory.ok());
  event::Dispatcher d("test");
  Worker w(d);
  network::Connection conn(d, *network::Address::parse("127.0.0.1", 5555));

  SECTION("the control plane says it does not exist: the request goes on, later ones do not wait") {
    const auto r = routeTo(7, "ghost");
    Stream s(**factory, w, conn, r);
    CHECK(s.f().decodeHeaders(s.cb.headers, true) == http::FilterHeadersStatus::StopIteration);
    w.missing.insert(7);
    w.notify();
    CHECK(s.cb.continued == 1);
    CHECK(store.value("http.od_more.on_demand.cluster_missing") == 1);
    Stream later(**factory, w, conn, r);
    CHECK(later.f().decodeHeaders(later.cb.headers, true) == http::FilterHeadersStatus::Continue);
    CHECK(w.requested.size() == 1);
    s.f().onDestroy();
    later.f().onDestroy();
  }
  SECTION("the timeout lets the request go on (to cluster_not_found)") {
    const auto r = routeTo(8, "slow");
    Stream s(**factory, w, conn, r);
    CHECK(s.f().decodeHeaders(s.cb.headers, true) == http::FilterHeadersStatus::StopIteration);
    REQUIRE(strait::testing::runUntil(d, [&] { return s.cb.continued == 1; }, 2000));
    CHECK(w.waiters.empty());
    CHECK(store.value("http.od_more.on_demand.cluster_timeout") == 1);
    s.f().onDestroy();
  }
  SECTION("weighted clusters: held until every missing target is there") {
    http::RouteEntry r;
    r.kind = http::RouteEntry::Kind::WeightedClusters;
    w.add(2);
    for (auto [index, name] : {std::pair<uint32_t, const char*>{2, "have"}, {10, "w1"}, {11, "w2"}}) {
      http::WeightedTarget t;
      t.name = name;
      t.cluster_index = index;
      t.weight = 1;
      r.weighted.push_back(std::move(t));
    }
    Stream s(**factory, w, conn, r);
    CHECK(s.f().decodeHeaders(s.cb.headers, true) == http::FilterHeadersStatus::StopIteration);
    CHECK(w.requested == std::vector<std::string>{"w1", "w2"});
    w.add(10);
    w.notify();
    CHECK(s.cb.continued == 0);
    w.add(11);
    w.notify();
    CHECK(s.cb.continued == 1);
    s.f().onDestroy();
  }
  SECTION("a route's PerRouteConfig without odcds turns discovery off") {
    auto r = routeTo(9, "off");
    r.per_filter_configs.emplace_back(kFilterName, std::make_shared<filters::http::OdcdsSettings>());
    Stream s(**factory, w, conn, r);
    CHECK(s.f().decodeHeaders(s.cb.headers, true) == http::FilterHeadersStatus::Continue);
    CHECK(w.requested.empty());
    s.f().onDestroy();
  }
  SECTION("a process that cannot discover clusters lets the request through at once") {
    w.can_request = false;
    const auto r = routeTo(12, "nowhere");
    Stream s(**factory, w, conn, r);
    CHECK(s.f().decodeHeaders(s.cb.headers, true) == http::FilterHeadersStatus::Continue);
    CHECK(w.waiters.empty());
    CHECK(store.value("http.od_more.on_demand.cluster_unavailable") >= 1);
    s.f().onDestroy();
  }
}
