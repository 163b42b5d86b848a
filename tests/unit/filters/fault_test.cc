// The fault filter's decisions (percentages, header control, request matching) and, through a filter
// instance on a real dispatcher, max_active_faults and the delay timer.

#include <google/protobuf/any.pb.h>
#include <google/protobuf/util/json_util.h>

#include <catch2/catch.hpp>

#include "tests/unit/support/yaml.h"
#include <memory>
#include <string>
#include <vector>

#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "filters/http/fault.h"
#include "proxy/network/connection.h"
#include "proxy/config/bootstrap.h"
#include "proxy/event/dispatcher.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/filter.h"
#include "proxy/upstream/http_pool.h"
#include "tests/unit/support/filter_fakes.h"
#include "tests/unit/support/loop.h"

using namespace strait;
using strait::testing::testStore;

namespace {

namespace fault_v3 = envoy::extensions::filters::http::fault::v3;
using filters::http::FaultSettings;

using strait::testing::parseYaml;

absl::StatusOr<std::shared_ptr<const FaultSettings>> translate(const std::string& yaml) {
  return filters::http::translateFault(parseYaml<fault_v3::HTTPFault>(yaml), "fault");
}

std::shared_ptr<const FaultSettings> settings(const std::string& yaml) {
  auto s = translate(yaml);
  INFO(s.status().ToString());
  REQUIRE(s.ok());
  return *s;
}

// How many of `n` consecutive random values (0..n-1) delay / abort.
int delays(const FaultSettings& s, const http::RequestHeaders& h, uint64_t n) {
  int hits = 0;
  for (uint64_t r = 0; r < n; ++r) hits += s.delayFor(h, r) ? 1 : 0;
  return hits;
}
int aborts(const FaultSettings& s, const http::RequestHeaders& h, uint64_t n) {
  int hits = 0;
  for (uint64_t r = 0; r < n; ++r) hits += s.abortFor(h, r) ? 1 : 0;
  return hits;
}

}  // namespace

TEST_CASE("Fault: fractional percentages decide delays and aborts", "[fault]") {
  http::RequestHeaders h;
  auto half = settings("{delay: {fixed_delay: 0.25s, percentage: {numerator: 50}}, abort: {http_status: 503, percentage: {numerator: 50}}}");
  CHECK(delays(*half, h, 100) == 50);
  CHECK(aborts(*half, h, 100) == 50);
  REQUIRE(half->delayFor(h, 0).has_value());
  CHECK(*half->delayFor(h, 0) == 250);
  CHECK(half->abortFor(h, 0)->http_status == 503);
  CHECK_FALSE(half->abortFor(h, 0)->grpc_status.has_value());

  auto never = settings("{delay: {fixed_delay: 1s, percentage: {numerator: 0}}, abort: {http_status: 503, percentage: {numerator: 0}}}");
  CHECK(delays(*never, h, 1000) == 0);
  CHECK(aborts(*never, h, 1000) == 0);
  // An unset percentage is 0, as in Envoy.
  auto unset = settings("{delay: {fixed_delay: 1s}, abort: {http_status: 503}}");
  CHECK(delays(*unset, h, 1000) == 0);
  CHECK(aborts(*unset, h, 1000) == 0);

  auto always = settings("{delay: {fixed_delay: 1s, percentage: {numerator: 100}}, abort: {grpc_status: 14, percentage: {numerator: 100}}}");
  CHECK(delays(*always, h, 1000) == 1000);
  CHECK(aborts(*always, h, 1000) == 1000);
  CHECK(*always->abortFor(h, 7)->grpc_status == 14);
  // Above the denominator is 100%.
  auto over = settings("{abort: {http_status: 500, percentage: {numerator: 250}}}");
  CHECK(aborts(*over, h, 1000) == 1000);

  auto ten_thousand = settings("{abort: {http_status: 500, percentage: {numerator: 25, denominator: TEN_THOUSAND}}}");
  CHECK(aborts(*ten_thousand, h, 10000) == 25);
  auto million = settings("{delay: {fixed_delay: 0.001s, percentage: {numerator: 3, denominator: MILLION}}}");
  CHECK(delays(*million, h, 1000000) == 3);
  CHECK(million->delayFor(h, 2).has_value());
  CHECK_FALSE(million->delayFor(h, 3).has_value());
}

TEST_CASE("Fault: header-controlled delays and aborts", "[fault]") {
  auto s = settings("{delay: {header_delay: {}, percentage: {numerator: 100}}, abort: {header_abort: {}, percentage: {numerator: 100}}}");
  http::RequestHeaders h;
  CHECK_FALSE(s->delayFor(h, 0).has_value());  // no header: no fault
  CHECK_FALSE(s->abortFor(h, 0).has_value());
  h.add("x-envoy-fault-delay-request", "120");
  REQUIRE(s->delayFor(h, 0).has_value());
  CHECK(*s->delayFor(h, 0) == 120);
  h.set("x-envoy-fault-delay-request", "12x");
  CHECK_FALSE(s->delayFor(h, 0).has_value());
  h.set("x-envoy-fault-delay-request", "40");
  // The percentage header lowers the configured percentage (numerator over the configured denominator).
  h.add("x-envoy-fault-delay-request-percentage", "30");
  CHECK(delays(*s, h, 100) == 30);

  h.add("x-envoy-fault-abort-request", "429");
  REQUIRE(s->abortFor(h, 0).has_value());
  CHECK(s->abortFor(h, 0)->http_status == 429);
  // An HTTP status out of 200..599 is ignored; the gRPC header is read then.
  h.set("x-envoy-fault-abort-request", "99");
  CHECK_FALSE(s->abortFor(h, 0).has_value());
  h.add("x-envoy-fault-abort-grpc-request", "8");
  REQUIRE(s->abortFor(h, 0).has_value());
  CHECK(*s->abortFor(h, 0)->grpc_status == 8);
  h.add("x-envoy-fault-abort-request-percentage", "0");
  CHECK(aborts(*s, h, 100) == 0);

  // The header cannot raise a configured percentage.
  auto low = settings("{abort: {header_abort: {}, percentage: {numerator: 10}}}");
  http::RequestHeaders h2;
  h2.add("x-envoy-fault-abort-request", "503");
  h2.add("x-envoy-fault-abort-request-percentage", "90");
  CHECK(aborts(*low, h2, 100) == 10);
}

TEST_CASE("Fault: only matching requests are faulted", "[fault]") {
  auto s = settings(R"({
    abort: {http_status: 503, percentage: {numerator: 100}},
    headers: [{name: x-user, string_match: {exact: tester}}, {name: ':method', string_match: {exact: GET}}],
    downstream_nodes: [node-a, node-b],
    upstream_cluster: backend})");
  http::RouteEntry route;
  route.kind = http::RouteEntry::Kind::Cluster;
  route.cluster_name = "backend";
  http::RequestHeaders h;
  h.method = "GET";
  h.add("x-user", "tester");
  h.add("x-envoy-downstream-service-node", "node-b");
  CHECK(s->applies(h, &route));
  h.method = "POST";
  CHECK_FALSE(s->applies(h, &route));  // every header matcher must match
  h.method = "GET";
  h.set("x-user", "someone");
  CHECK_FALSE(s->applies(h, &route));
  h.set("x-user", "tester");
  h.set("x-envoy-downstream-service-node", "node-c");
  CHECK_FALSE(s->applies(h, &route));
  h.remove("x-envoy-downstream-service-node");
  CHECK_FALSE(s->applies(h, &route));  // no node header: not among the nodes
  h.add("x-envoy-downstream-service-node", "node-a");
  CHECK(s->applies(h, &route));
  route.cluster_name = "other";
  CHECK_FALSE(s->applies(h, &route));
  CHECK_FALSE(s->applies(h, nullptr));
  route.kind = http::RouteEntry::Kind::WeightedClusters;
  route.weighted.push_back(http::WeightedTarget{"backend", UINT32_MAX, 1, {}, {}});
  CHECK(s->applies(h, &route));

  auto open = settings("{abort: {http_status: 503, percentage: {numerator: 100}}}");
  CHECK(open->applies(http::RequestHeaders{}, nullptr));
}

TEST_CASE("Fault: configuration errors name the field", "[fault]") {
  auto err = [](const std::string& yaml) {
    auto s = translate(yaml);
    REQUIRE_FALSE(s.ok());
    return std::string(s.status().message());
  };
  CHECK(err("{response_rate_limit: {fixed_limit: {limit_kbps: 10}}}") == "fault.response_rate_limit: not implemented");
  CHECK(err("{abort: {http_status: 600}}") == "fault.abort.http_status: 600 is not in 200..599");
  CHECK(err("{abort: {percentage: {numerator: 5}}}") == "fault.abort: needs http_status, grpc_status or header_abort");
  CHECK(err("{delay: {percentage: {numerator: 5}}}") == "fault.delay: needs fixed_delay or header_delay");
  CHECK(err("{delay: {fixed_delay: 0s}}") == "fault.delay.fixed_delay: must be greater than 0");
  CHECK_THAT(err("{headers: [{name: x, safe_regex_match: {regex: '+'}}]}"),
             Catch::StartsWith("fault.headers[0].safe_regex_match.regex: invalid regex"));
  // Runtime keys are accepted (inert).
  CHECK(translate("{delay_percent_runtime: a, abort_percent_runtime: b, max_active_faults_runtime: c}").ok());
}

namespace {

using Worker = strait::testing::FakeWorker;
using Callbacks = strait::testing::FakeDecoderCallbacks;
using Builder = strait::testing::FakeFilterChain;

}  // namespace

TEST_CASE("Fault: max_active_faults, delay timer and cancellation", "[fault]") {
  strait::testing::ShardGuard shard;
  auto& store = testStore();
  config::ClusterMap clusters;
  const std::string prefix = "fault_test";
  http::HttpFilterContext ctx{store, clusters, prefix, "envoy.filters.http.fault"};
  google::protobuf::Any any;
  any.PackFrom(parseYaml<fault_v3::HTTPFault>(
      "{delay: {fixed_delay: 0.02s, percentage: {numerator: 100}}, max_active_faults: 2}"));
  auto factory = filters::http::createHttpFault(any, "typed_config", ctx);
  INFO(factory.status().ToString());
  REQUIRE(factory.ok());

  event::Dispatcher d("test");
  Worker w(d);
  network::Connection conn(d, *network::Address::parse("127.0.0.1", 5555));
  constexpr int kStreams = 3;
  Builder b[kStreams];
  Callbacks cb[kStreams];
  std::vector<http::FilterHeadersStatus> results;
  for (int i = 0; i < kStreams; ++i) {
    (*factory)->createFilters(b[i]);
    REQUIRE(b[i].decoders.size() == 1);
    cb[i].w = &w;
    cb[i].conn = &conn;
    cb[i].headers.method = "GET";
    cb[i].headers.path = std::string(1, '/');  // (GCC 12 -O3 warns, wrongly, on assigning "/")
    b[i].decoders[0]->setDecoderFilterCallbacks(cb[i]);
    results.push_back(b[i].decoders[0]->decodeHeaders(cb[i].headers, false));
  }
  // Two are held; the third would be one too many and goes on untouched.
  CHECK(results[0] == http::FilterHeadersStatus::StopIteration);
  CHECK(results[1] == http::FilterHeadersStatus::StopIteration);
  CHECK(results[2] == http::FilterHeadersStatus::Continue);
  CHECK(store.value("http.fault_test.fault.delays_injected") == 2);
  CHECK(store.value("http.fault_test.fault.faults_overflow") == 1);
  CHECK(store.value("http.fault_test.fault.active_faults") == 2);
  // Body arriving during the delay is held.
  common::Buffer body;
  body.add("abc");
  CHECK(b[0].decoders[0]->decodeData(body, true) == http::FilterDataStatus::StopIterationAndBuffer);

  // The client of stream 1 goes away: its delay is cancelled (never continues) and its place freed.
  b[1].decoders[0]->onDestroy();
  CHECK(store.value("http.fault_test.fault.active_faults") == 1);
  REQUIRE(strait::testing::runUntil(d, [&] { return cb[0].continued == 1; }, 2000));
  strait::testing::runFor(d, 40);
  CHECK(cb[1].continued == 0);
  CHECK(cb[2].continued == 0);
  CHECK(cb[0].status == 0);
  // After the delay the body goes on.
  CHECK(b[0].decoders[0]->decodeData(body, true) == http::FilterDataStatus::Continue);
  b[0].decoders[0]->onDestroy();
  b[2].decoders[0]->onDestroy();
  CHECK(store.value("http.fault_test.fault.active_faults") == 0);
}

TEST_CASE("Fault: gRPC abort is a trailers-only response", "[fault]") {
  strait::testing::ShardGuard shard;
  auto& store = testStore();
  config::ClusterMap clusters;
  const std::string prefix = "fault_grpc_test";
  http::HttpFilterContext ctx{store, clusters, prefix, "envoy.filters.http.fault"};
  google::protobuf::Any any;
  any.PackFrom(parseYaml<fault_v3::HTTPFault>("{abort: {grpc_status: 14, percentage: {numerator: 100}}}"));
  auto factory = filters::http::createHttpFault(any, "typed_config", ctx);
  REQUIRE(factory.ok());
  event::Dispatcher d("test");
  Worker w(d);
  network::Connection conn(d, *network::Address::parse("127.0.0.1", 5555));
  Builder b;
  Callbacks cb;
  (*factory)->createFilters(b);
  cb.w = &w;
  cb.conn = &conn;
  b.decoders[0]->setDecoderFilterCallbacks(cb);
  CHECK(b.decoders[0]->decodeHeaders(cb.headers, true) == http::FilterHeadersStatus::StopIteration);
  REQUIRE(cb.encoded != nullptr);
  CHECK(cb.encoded->status == 200);
  CHECK(*cb.encoded->get("grpc-status") == "14");
  CHECK(*cb.encoded->get("content-type") == "application/grpc");
  CHECK(cb.status == 0);
  CHECK(store.value("http.fault_grpc_test.fault.aborts_injected") == 1);
  b.decoders[0]->onDestroy();
}
