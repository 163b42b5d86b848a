#include <google/protobuf/util/json_util.h>
#include <re2/re2.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <unistd.h>

#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "proxy/config/bootstrap.h"
#include "proxy/http/route_table.h"

using namespace strait;
using http::RequestHeaders;
using http::RouteEntry;
using http::RouteTable;
namespace route_v3 = envoy::config::route::v3;

namespace {

using ClusterMap = config::ClusterMap;

ClusterMap makeClusters(std::initializer_list<const char*> names) {
  ClusterMap out;
  uint32_t i = 0;
  for (const char* n : names) {
    auto c = std::make_shared<config::Cluster>();
    c->name = n;
    c->index = i++;
    out.set(n, c);
  }
  return out;
}

const ClusterMap& defaultClusters() {
  static const ClusterMap m = makeClusters({"a", "b", "c", "api_v1", "api_v2", "greeter"});
  return m;
}

// YAML (the bootstrap's own YAML -> JSON conversion) -> RouteConfiguration through protobuf's JSON parser.
absl::StatusOr<route_v3::RouteConfiguration> parse(const std::string& yaml) {
  auto json = config::yamlToJson(yaml, "", "test");
  if (!json.ok()) return json.status();
  route_v3::RouteConfiguration rc;
  auto st = google::protobuf::util::JsonStringToMessage(*json, &rc);
  if (!st.ok()) return absl::InvalidArgumentError(std::string(st.message()));
  return rc;
}

absl::StatusOr<http::RouteTableConstSharedPtr> build(const std::string& yaml, const ClusterMap& clusters,
                                                     RouteTable::Options options = {}) {
  auto rc = parse(yaml);
  if (!rc.ok()) return rc.status();
  return RouteTable::create(*rc, "route_config", clusters, options);
}

http::RouteTableConstSharedPtr table(const std::string& yaml, RouteTable::Options options = {}) {
  auto t = build(yaml, defaultClusters(), options);
  INFO(t.status().ToString());
  REQUIRE(t.ok());
  return *t;
}

std::string error(const std::string& yaml, RouteTable::Options options = {}) {
  auto t = build(yaml, defaultClusters(), options);
  if (t.ok()) return "OK";
  return std::string(t.status().message());
}

RequestHeaders req(const std::string& authority, const std::string& path,
                   std::vector<std::pair<std::string, std::string>> headers = {}) {
  RequestHeaders h;
  h.method = "GET";
  h.scheme = "http";
  h.authority = authority;
  h.path = path;
  for (const auto& [k, v] : headers) h.add(k, v);
  return h;
}

// The matched route's name, "vhost/" + virtual host name when the route has none, or "<none>".
std::string match(const RouteTable& t, const RequestHeaders& h) {
  const RouteEntry* e = t.route(h);
  if (e == nullptr) return "<none>";
  return e->name.empty() ? "vhost/" + e->virtualHostName() : e->name;
}

std::string vhost(const RouteTable& t, const std::string& authority) {
  const RouteEntry* e = t.route(req(authority, "/"));
  return e == nullptr ? "<none>" : e->virtualHostName();
}

// The route_config of /work/shared/examples/http-routes.yaml, verbatim.
const char* kExampleRoutes = R"(
name: local_routes
virtual_hosts:
- name: shop
  domains: ["shop.example", "shop.example:*"]
  routes:
  - match: {prefix: "/helloworld.Greeter/"}
    route: {cluster: greeter, timeout: 2s}
  - match:
      prefix: "/api/"
      headers: [{name: x-canary, string_match: {exact: "1"}}]
    route: {cluster: api_v2}
  - match: {prefix: "/api/"}
    route:
      weighted_clusters:
        clusters: [{name: api_v1, weight: 90}, {name: api_v2, weight: 10}]
      timeout: 3s
      retry_policy: {retry_on: "5xx,reset,connect-failure", num_retries: 2, per_try_timeout: 1s}
  - match: {safe_regex: {regex: "^/static/[a-z0-9/._-]+$"}}
    route: {cluster: api_v1, prefix_rewrite: "/assets/"}
- name: fallback
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    direct_response: {status: 404, body: {inline_string: "no such host\n"}}
)";

}  // namespace

TEST_CASE("RouteTable: the http-routes.yaml example") {
  auto clusters = makeClusters({"api_v1", "api_v2", "greeter"});
  auto built = build(kExampleRoutes, clusters);
  INFO(built.status().ToString());
  REQUIRE(built.ok());
  const RouteTable& t = **built;
  CHECK(t.name() == "local_routes");

  const RouteEntry* e = t.route(req("shop.example", "/helloworld.Greeter/SayHello"));
  REQUIRE(e != nullptr);
  CHECK(e->kind == RouteEntry::Kind::Cluster);
  CHECK(e->cluster_name == "greeter");
  CHECK(e->cluster_index == config::clusterIds().get("greeter"));
  CHECK(e->timeout_ms == 2000);
  CHECK_FALSE(e->retry.enabled);

  e = t.route(req("shop.example:8080", "/api/items", {{"X-Canary", "1"}}));
  REQUIRE(e != nullptr);
  CHECK(e->kind == RouteEntry::Kind::Cluster);
  CHECK(e->cluster_name == "api_v2");
  CHECK(e->timeout_ms == 15000);  // Envoy's default

  e = t.route(req("shop.example", "/api/items", {{"x-canary", "0"}}));
  REQUIRE(e != nullptr);
  CHECK(e->kind == RouteEntry::Kind::WeightedClusters);
  CHECK(e->total_weight == 100);
  CHECK(e->timeout_ms == 3000);
  CHECK(e->retry.enabled);
  CHECK(e->retry.num_retries == 2);
  CHECK(e->retry.on_5xx);
  CHECK(e->retry.on_reset);
  CHECK(e->retry.on_connect_failure);
  CHECK_FALSE(e->retry.on_gateway_error);
  CHECK(e->retry.per_try_timeout_ms == 1000);
  CHECK(e->pickWeighted(0)->name == "api_v1");
  CHECK(e->pickWeighted(89)->name == "api_v1");
  CHECK(e->pickWeighted(90)->name == "api_v2");
  CHECK(e->pickWeighted(199)->name == "api_v2");
  CHECK(e->pickWeighted(90)->cluster_index == config::clusterIds().get("api_v2"));
  int v2 = 0;
  for (uint64_t r = 0; r < 1000; ++r) v2 += e->pickWeighted(r * 7919)->name == "api_v2" ? 1 : 0;
  CHECK(v2 == 100);

  // Regex routes: full match on the path without the query; a prefix_rewrite replaces the whole path
  // (Envoy's rule for regex routes), keeping the query.
  auto h = req("SHOP.example", "/static/css/site.css?v=3");
  e = t.route(h);
  REQUIRE(e != nullptr);
  CHECK(e->cluster_name == "api_v1");
  e->rewrite(h);
  CHECK(h.path == "/assets/?v=3");
  REQUIRE(h.get("x-envoy-original-path") != nullptr);
  CHECK(*h.get("x-envoy-original-path") == "/static/css/site.css?v=3");
  CHECK(t.route(req("shop.example", "/static/CSS")) == nullptr);  // shop has no route for it: 404 NR
  CHECK(t.route(req("shop.example", "/other")) == nullptr);

  for (const char* host : {"other.example", "shop.example.com", "", "10.0.0.1:8080"}) {
    INFO(host);
    e = t.route(req(host, "/anything"));
    REQUIRE(e != nullptr);
    CHECK(e->virtualHostName() == "fallback");
    CHECK(e->kind == RouteEntry::Kind::DirectResponse);
    CHECK(e->direct_status == 404);
    CHECK(e->direct_body == "no such host\n");
  }
}

TEST_CASE("RouteTable: the example file's route_config loads") {
  // The example ships outside the repository; skip quietly where it is not present. The whole bootstrap
  // goes through the same YAML -> JSON -> protobuf path as `strait -c`, then the HCM's route_config.
  std::ifstream in("/work/shared/examples/http-routes.yaml");
  if (!in) return;
  std::stringstream text;
  text << in.rdbuf();
  auto json = config::yamlToJson(text.str(), "", "http-routes.yaml");
  REQUIRE(json.ok());
  envoy::config::bootstrap::v3::Bootstrap bootstrap;
  auto st = google::protobuf::util::JsonStringToMessage(*json, &bootstrap);
  INFO(st.ToString());
  REQUIRE(st.ok());
  envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager hcm;
  REQUIRE(bootstrap.static_resources().listeners(0).filter_chains(0).filters(0).typed_config().UnpackTo(&hcm));
  auto t = RouteTable::create(hcm.route_config(), "static_resources.listeners[0]", makeClusters({"api_v1", "api_v2", "greeter"}),
                              {});
  INFO(t.status().ToString());
  REQUIRE(t.ok());
  CHECK(match(**t, req("shop.example", "/api/x", {{"x-canary", "1"}})) == "vhost/shop");
  CHECK((*t)->route(req("shop.example:80", "/api/x"))->kind == RouteEntry::Kind::WeightedClusters);
  CHECK(RouteTable::create(hcm.route_config(), "rc", makeClusters({"api_v1", "greeter"}), {}).status().message() ==
        "rc.virtual_hosts[0].routes[1].route.cluster: unknown cluster 'api_v2'");
}

TEST_CASE("RouteTable: virtual host selection order") {
  auto t = table(R"(
virtual_hosts:
- {name: exact, domains: ["api.foo.com", "[::1]"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: suffix_foo, domains: ["*.foo.com"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: suffix_bar_foo, domains: ["*.bar.foo.com"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: suffix_com, domains: ["*.com"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: suffix_dash, domains: ["*-svc.org"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: prefix_api, domains: ["api.*"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: prefix_api_foo, domains: ["API.foo.*"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: any, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
)");
  CHECK(vhost(*t, "api.foo.com") == "exact");
  CHECK(vhost(*t, "API.Foo.COM") == "exact");
  CHECK(vhost(*t, "api.foo.com:8080") == "exact");  // no domain names a port: ports are ignored
  CHECK(vhost(*t, "[::1]:15001") == "exact");
  CHECK(vhost(*t, "[::1]") == "exact");
  CHECK(vhost(*t, "x.bar.foo.com") == "suffix_bar_foo");  // longest suffix first
  CHECK(vhost(*t, "bar.foo.com") == "suffix_foo");        // a wildcard stands for at least one character
  CHECK(vhost(*t, "a.b.foo.com") == "suffix_foo");
  CHECK(vhost(*t, "x.com") == "suffix_com");
  CHECK(vhost(*t, "api.com") == "suffix_com");  // suffixes before prefixes
  CHECK(vhost(*t, "my-svc.org") == "suffix_dash");
  CHECK(vhost(*t, "api.foo.org") == "prefix_api_foo");  // longest prefix first
  CHECK(vhost(*t, "api.x.org") == "prefix_api");
  CHECK(vhost(*t, "api.") == "any");
  CHECK(vhost(*t, ".com") == "any");
  CHECK(vhost(*t, "other") == "any");
  CHECK(vhost(*t, "") == "any");
}

TEST_CASE("RouteTable: a domain naming a port keeps ports in host matching") {
  auto t = table(R"(
virtual_hosts:
- {name: with_port, domains: ["a.example:8080"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: no_port, domains: ["a.example"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: any_port, domains: ["b.example:*"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
- {name: port_suffix, domains: ["*:9999"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
)");
  CHECK(vhost(*t, "a.example:8080") == "with_port");
  CHECK(vhost(*t, "a.example") == "no_port");
  CHECK(vhost(*t, "a.example:9090") == "<none>");
  CHECK(vhost(*t, "b.example:1") == "any_port");
  CHECK(vhost(*t, "b.example") == "<none>");
  CHECK(vhost(*t, "c.example:9999") == "port_suffix");

  // Without a catch-all and without a match: no route.
  auto t2 = table(R"(
virtual_hosts:
- {name: only, domains: ["only.example"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}
)");
  CHECK(t2->route(req("other.example", "/")) == nullptr);
  CHECK(vhost(*t2, "only.example:80") == "only");
}

TEST_CASE("RouteTable: path matching") {
  auto t = table(R"(
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {name: exact, match: {path: "/exact"}, route: {cluster: a}}
  - {name: exact_ci, match: {path: "/Exact-CI", case_sensitive: false}, route: {cluster: a}}
  - {name: sep, match: {path_separated_prefix: "/sep"}, route: {cluster: a}}
  - {name: regex, match: {safe_regex: {regex: "/re/[0-9]+"}}, route: {cluster: a}}
  - {name: prefix_ci, match: {prefix: "/CI/", case_sensitive: false}, route: {cluster: a}}
  - {name: regex_cs, match: {safe_regex: {regex: "/rx/[a-z]+"}, case_sensitive: false}, route: {cluster: a}}
  - {name: prefix, match: {prefix: "/p"}, route: {cluster: a}}
  - {name: query_prefix, match: {prefix: "/q?x"}, route: {cluster: a}}
  - {name: root, match: {prefix: "/"}, route: {cluster: a}}
)");
  CHECK(match(*t, req("h", "/exact")) == "exact");
  CHECK(match(*t, req("h", "/exact?a=b")) == "exact");
  CHECK(match(*t, req("h", "/exact/")) == "root");
  CHECK(match(*t, req("h", "/EXACT")) == "root");
  CHECK(match(*t, req("h", "/exact-ci")) == "exact_ci");
  CHECK(match(*t, req("h", "/EXACT-CI?q")) == "exact_ci");
  CHECK(match(*t, req("h", "/sep")) == "sep");
  CHECK(match(*t, req("h", "/sep/x")) == "sep");
  CHECK(match(*t, req("h", "/sep?x")) == "sep");
  CHECK(match(*t, req("h", "/separate")) == "root");
  CHECK(match(*t, req("h", "/re/123")) == "regex");
  CHECK(match(*t, req("h", "/re/123?z=1")) == "regex");
  CHECK(match(*t, req("h", "/re/123/x")) == "root");  // full match, not a search
  CHECK(match(*t, req("h", "/x/re/123")) == "root");
  CHECK(match(*t, req("h", "/ci/x")) == "prefix_ci");
  CHECK(match(*t, req("h", "/Ci/x")) == "prefix_ci");
  CHECK(match(*t, req("h", "/rx/abc")) == "regex_cs");
  CHECK(match(*t, req("h", "/rx/ABC")) == "root");  // case_sensitive does not apply to regexes
  CHECK(match(*t, req("h", "/p")) == "prefix");
  CHECK(match(*t, req("h", "/pq/r")) == "prefix");
  CHECK(match(*t, req("h", "/P")) == "root");
  CHECK(match(*t, req("h", "/q?x=1")) == "query_prefix");  // prefixes see the whole :path, as in Envoy
  CHECK(match(*t, req("h", "/")) == "root");
}

TEST_CASE("RouteTable: header matching") {
  auto t = table(R"(
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {name: exact, match: {prefix: "/exact", headers: [{name: X-Env, string_match: {exact: prod}}]}, route: {cluster: a}}
  - {name: exact_ic, match: {prefix: "/ic", headers: [{name: x-env, string_match: {exact: Prod, ignore_case: true}}]}, route: {cluster: a}}
  - {name: prefix, match: {prefix: "/prefix", headers: [{name: x-v, string_match: {prefix: "v1."}}]}, route: {cluster: a}}
  - {name: suffix_ic, match: {prefix: "/suffix", headers: [{name: x-v, string_match: {suffix: ".BETA", ignore_case: true}}]}, route: {cluster: a}}
  - {name: contains, match: {prefix: "/contains", headers: [{name: user-agent, string_match: {contains: "Mobile"}}]}, route: {cluster: a}}
  - {name: regex, match: {prefix: "/regex", headers: [{name: x-id, string_match: {safe_regex: {regex: "[0-9]{3}"}}}]}, route: {cluster: a}}
  - {name: present, match: {prefix: "/present", headers: [{name: x-debug, present_match: true}]}, route: {cluster: a}}
  - {name: absent, match: {prefix: "/absent", headers: [{name: x-debug, present_match: false}]}, route: {cluster: a}}
  - {name: bare, match: {prefix: "/bare", headers: [{name: x-debug}]}, route: {cluster: a}}
  - {name: range, match: {prefix: "/range", headers: [{name: x-n, range_match: {start: 10, end: 20}}]}, route: {cluster: a}}
  - {name: invert, match: {prefix: "/invert", headers: [{name: x-env, string_match: {exact: prod}, invert_match: true}]}, route: {cluster: a}}
  - {name: invert_present, match: {prefix: "/invpresent", headers: [{name: x-debug, present_match: true, invert_match: true}]}, route: {cluster: a}}
  - {name: missing_empty, match: {prefix: "/missing", headers: [{name: x-e, string_match: {exact: ""}, treat_missing_header_as_empty: true}]}, route: {cluster: a}}
  - {name: joined, match: {prefix: "/joined", headers: [{name: x-m, string_match: {exact: "a,b"}}]}, route: {cluster: a}}
  - {name: method, match: {prefix: "/method", headers: [{name: ":method", string_match: {exact: POST}}]}, route: {cluster: a}}
  - {name: authority, match: {prefix: "/authority", headers: [{name: ":authority", string_match: {prefix: "api."}}]}, route: {cluster: a}}
  - {name: legacy, match: {prefix: "/legacy", headers: [{name: x-v, prefix_match: "v2"}]}, route: {cluster: a}}
  - {name: two, match: {prefix: "/two", headers: [{name: x-a, string_match: {exact: "1"}}, {name: x-b, string_match: {exact: "2"}}]}, route: {cluster: a}}
  - {name: root, match: {prefix: "/"}, route: {cluster: a}}
)");
  CHECK(match(*t, req("h", "/exact", {{"x-env", "prod"}})) == "exact");
  CHECK(match(*t, req("h", "/exact", {{"X-ENV", "prod"}})) == "exact");  // names ignore case
  CHECK(match(*t, req("h", "/exact", {{"x-env", "Prod"}})) == "root");
  CHECK(match(*t, req("h", "/exact")) == "root");
  CHECK(match(*t, req("h", "/ic", {{"x-env", "PROD"}})) == "exact_ic");
  CHECK(match(*t, req("h", "/prefix", {{"x-v", "v1.2"}})) == "prefix");
  CHECK(match(*t, req("h", "/prefix", {{"x-v", "v2.1"}})) == "root");
  CHECK(match(*t, req("h", "/suffix", {{"x-v", "2.0.beta"}})) == "suffix_ic");
  CHECK(match(*t, req("h", "/contains", {{"user-agent", "x Mobile y"}})) == "contains");
  CHECK(match(*t, req("h", "/contains", {{"user-agent", "mobile"}})) == "root");
  CHECK(match(*t, req("h", "/regex", {{"x-id", "123"}})) == "regex");
  CHECK(match(*t, req("h", "/regex", {{"x-id", "1234"}})) == "root");
  CHECK(match(*t, req("h", "/present", {{"x-debug", ""}})) == "present");
  CHECK(match(*t, req("h", "/present")) == "root");
  CHECK(match(*t, req("h", "/absent")) == "absent");
  CHECK(match(*t, req("h", "/absent", {{"x-debug", "1"}})) == "root");
  CHECK(match(*t, req("h", "/bare", {{"x-debug", "1"}})) == "bare");
  CHECK(match(*t, req("h", "/bare")) == "root");
  CHECK(match(*t, req("h", "/range", {{"x-n", "10"}})) == "range");
  CHECK(match(*t, req("h", "/range", {{"x-n", "19"}})) == "range");
  CHECK(match(*t, req("h", "/range", {{"x-n", "20"}})) == "root");
  CHECK(match(*t, req("h", "/range", {{"x-n", "abc"}})) == "root");
  CHECK(match(*t, req("h", "/invert", {{"x-env", "dev"}})) == "invert");
  CHECK(match(*t, req("h", "/invert", {{"x-env", "prod"}})) == "root");
  CHECK(match(*t, req("h", "/invert")) == "root");  // Envoy: a missing header never satisfies an inverted value match
  CHECK(match(*t, req("h", "/invpresent")) == "invert_present");
  CHECK(match(*t, req("h", "/invpresent", {{"x-debug", "1"}})) == "root");
  CHECK(match(*t, req("h", "/missing")) == "missing_empty");
  CHECK(match(*t, req("h", "/missing", {{"x-e", "x"}})) == "root");
  CHECK(match(*t, req("h", "/joined", {{"x-m", "a"}, {"x-m", "b"}})) == "joined");
  CHECK(match(*t, req("h", "/joined", {{"x-m", "a"}})) == "root");
  auto post = req("h", "/method");
  post.method = "POST";
  CHECK(match(*t, post) == "method");
  CHECK(match(*t, req("h", "/method")) == "root");
  CHECK(match(*t, req("api.example", "/authority")) == "authority");
  CHECK(match(*t, req("www.example", "/authority")) == "root");
  CHECK(match(*t, req("h", "/legacy", {{"x-v", "v2.0"}})) == "legacy");
  CHECK(match(*t, req("h", "/two", {{"x-a", "1"}, {"x-b", "2"}})) == "two");
  CHECK(match(*t, req("h", "/two", {{"x-a", "1"}})) == "root");
}

TEST_CASE("RouteTable: query parameter and gRPC matching") {
  auto t = table(R"(
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {name: debug, match: {prefix: "/", query_parameters: [{name: debug, present_match: true}]}, route: {cluster: a}}
  - {name: version, match: {prefix: "/", query_parameters: [{name: v, string_match: {exact: "2"}}]}, route: {cluster: a}}
  - {name: lang, match: {prefix: "/", query_parameters: [{name: lang, string_match: {prefix: "EN", ignore_case: true}}]}, route: {cluster: a}}
  - {name: grpc, match: {prefix: "/", grpc: {}}, route: {cluster: a}}
  - {name: root, match: {prefix: "/"}, route: {cluster: a}}
)");
  CHECK(match(*t, req("h", "/x?debug")) == "debug");
  CHECK(match(*t, req("h", "/x?a=1&debug=0")) == "debug");
  CHECK(match(*t, req("h", "/x?debugger=1")) == "root");
  CHECK(match(*t, req("h", "/x?v=2")) == "version");
  CHECK(match(*t, req("h", "/x?a=b&v=2&c")) == "version");
  CHECK(match(*t, req("h", "/x?v=3&v=2")) == "root");  // the first occurrence decides
  CHECK(match(*t, req("h", "/x?v=2#frag")) == "version");
  CHECK(match(*t, req("h", "/v=2")) == "root");
  CHECK(match(*t, req("h", "/x?lang=en-US")) == "lang");
  CHECK(match(*t, req("h", "/pkg.Svc/Call", {{"content-type", "application/grpc"}})) == "grpc");
  CHECK(match(*t, req("h", "/pkg.Svc/Call", {{"content-type", "application/grpc+proto"}})) == "grpc");
  CHECK(match(*t, req("h", "/pkg.Svc/Call", {{"content-type", "application/grpc-web"}})) == "root");
  CHECK(match(*t, req("h", "/pkg.Svc/Call", {{"content-type", "application/json"}})) == "root");
}

TEST_CASE("RouteTable: weighted clusters pick deterministically by weight") {
  auto t = table(R"(
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    route:
      weighted_clusters:
        clusters: [{name: a, weight: 1}, {name: b, weight: 2}, {name: c, weight: 0}, {name: api_v1, weight: 3}]
)");
  const RouteEntry* e = t->route(req("h", "/"));
  REQUIRE(e != nullptr);
  REQUIRE(e->kind == RouteEntry::Kind::WeightedClusters);
  CHECK(e->total_weight == 6);
  std::map<std::string, int> counts;
  for (uint64_t r = 0; r < 6000; ++r) counts[e->pickWeighted(r)->name]++;
  CHECK(counts["a"] == 1000);
  CHECK(counts["b"] == 2000);
  CHECK(counts["c"] == 0);
  CHECK(counts["api_v1"] == 3000);
  CHECK(e->pickWeighted(0)->name == "a");
  CHECK(e->pickWeighted(1)->name == "b");
  CHECK(e->pickWeighted(3)->name == "api_v1");
  CHECK(e->pickWeighted(UINT64_MAX)->name == "api_v1");  // UINT64_MAX % 6 == 3
  CHECK(e->pickWeighted(5)->cluster_index == config::clusterIds().get("api_v1"));

  auto plain_table = table(R"(
virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: a}}]}]
)");
  const RouteEntry* plain = plain_table->route(req("h", "/"));
  CHECK(plain->pickWeighted(1) == nullptr);
}

TEST_CASE("RouteTable: unknown clusters when validation is off") {
  const char* yaml = R"(
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {name: missing, match: {prefix: "/m"}, route: {cluster: nope, cluster_not_found_response_code: NOT_FOUND}}
  - {name: weighted, match: {prefix: "/w"}, route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: nope, weight: 1}]}}}
  - {name: header, match: {prefix: "/h"}, route: {cluster_header: X-Cluster}}
)";
  RouteTable::Options o;
  o.validate_clusters = false;
  auto t = table(yaml, o);
  const RouteEntry* e = t->route(req("h", "/m"));
  REQUIRE(e != nullptr);
  CHECK(e->cluster_name == "nope");
  CHECK(e->cluster_index == config::clusterIds().get("nope"));  // resolves to no cluster at run time
  CHECK(e->cluster_not_found_status == 404);
  e = t->route(req("h", "/w"));
  CHECK(e->pickWeighted(0)->cluster_index == config::clusterIds().get("a"));
  CHECK(e->pickWeighted(1)->cluster_index == config::clusterIds().get("nope"));
  CHECK(e->cluster_not_found_status == 503);
  e = t->route(req("h", "/h"));
  CHECK(e->kind == RouteEntry::Kind::ClusterHeader);
  CHECK(e->cluster_header == "x-cluster");

  CHECK(error(yaml) == "route_config.virtual_hosts[0].routes[0].route.cluster: unknown cluster 'nope'");
  // The proto's own validate_clusters wins over the option.
  CHECK(error(std::string("validate_clusters: false\n") + yaml) == "OK");
  CHECK(error(std::string("validate_clusters: true\n") + yaml, o) ==
        "route_config.virtual_hosts[0].routes[0].route.cluster: unknown cluster 'nope'");
}

TEST_CASE("RouteTable: path and host rewrites") {
  auto t = table(R"(
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {name: prefix, match: {prefix: "/api/"}, route: {cluster: a, prefix_rewrite: "/v2/", host_rewrite_literal: "backend.internal"}}
  - {name: prefix_ci, match: {prefix: "/ci/", case_sensitive: false}, route: {cluster: a, prefix_rewrite: "/"}}
  - {name: sep, match: {path_separated_prefix: "/old"}, route: {cluster: a, prefix_rewrite: "/new"}}
  - {name: path, match: {path: "/exact"}, route: {cluster: a, prefix_rewrite: "/replaced"}}
  - name: regex
    match: {prefix: "/service/"}
    route:
      cluster: a
      regex_rewrite: {pattern: {regex: "^/service/([^/]+)(/.*)$"}, substitution: "\\2/instance/\\1"}
      host_rewrite_header: x-host
  - {name: none, match: {prefix: "/"}, route: {cluster: a, auto_host_rewrite: true}}
)");
  auto h = req("front", "/api/users?id=7");
  const RouteEntry* e = t->route(h);
  REQUIRE(e != nullptr);
  CHECK(e->name == "prefix");
  e->rewrite(h);
  CHECK(h.path == "/v2/users?id=7");
  CHECK(h.authority == "backend.internal");
  CHECK(*h.get("x-envoy-original-path") == "/api/users?id=7");

  h = req("front", "/CI/x/y");
  e = t->route(h);
  CHECK(e->name == "prefix_ci");
  e->rewrite(h, /*insert_original_path=*/false);
  CHECK(h.path == "/x/y");
  CHECK(h.get("x-envoy-original-path") == nullptr);
  CHECK(h.authority == "front");

  h = req("front", "/old/a?b");
  t->route(h)->rewrite(h);
  CHECK(h.path == "/new/a?b");
  h = req("front", "/old");
  t->route(h)->rewrite(h);
  CHECK(h.path == "/new");

  h = req("front", "/exact?q=1");
  t->route(h)->rewrite(h);
  CHECK(h.path == "/replaced?q=1");

  h = req("front", "/service/foo/v1/api?x=1", {{"x-host", "svc.local"}});
  e = t->route(h);
  CHECK(e->name == "regex");
  e->rewrite(h);
  CHECK(h.path == "/v1/api/instance/foo?x=1");
  CHECK(h.authority == "svc.local");
  h = req("front", "/service/nomatch");  // the pattern does not match: path unchanged, no header added
  t->route(h)->rewrite(h);
  CHECK(h.path == "/service/nomatch");
  CHECK(h.get("x-envoy-original-path") == nullptr);
  CHECK(h.authority == "front");  // x-host absent

  h = req("front", "/other");
  e = t->route(h);
  CHECK(e->auto_host_rewrite);
  CHECK(e->rewrites == nullptr);  // auto_host_rewrite is a flag: nothing held out of line
  e->rewrite(h);
  CHECK(h.path == "/other");
  CHECK(h.authority == "front");  // the router sets it once a host is chosen
}

TEST_CASE("RouteTable: a plain cluster route holds no rewrites, redirect or name copies of its own") {
  auto t = table(R"(
virtual_hosts:
- name: svc.ns.svc.cluster.local:80
  domains: ["*"]
  routes:
  - {name: plain, match: {prefix: "/"}, route: {cluster: a}, decorator: {operation: "svc/*"}}
)");
  const RouteEntry* e = t->route(req("x", "/"));
  REQUIRE(e != nullptr);
  CHECK(e->rewrites == nullptr);
  CHECK(e->redirect == nullptr);
  // Read from the protos the table keeps, not copied into every route.
  CHECK(e->virtualHostName() == "svc.ns.svc.cluster.local:80");
  CHECK(&e->virtualHostName() == &e->virtual_host_proto->name());
  CHECK(e->decoratorOperation() == "svc/*");
  RouteEntry bare;  // one made by hand (filter tests) reads as empty
  CHECK(bare.virtualHostName().empty());
  CHECK(bare.decoratorOperation().empty());
}

TEST_CASE("RouteTable: header mutations merge route, virtual host, route configuration in Envoy's order") {
  auto t = table(R"(
request_headers_to_add:
- {header: {key: x-level, value: config}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}
- {header: {key: x-only-if-absent, value: config}, append_action: ADD_IF_ABSENT}
- {header: {key: x-tmp-cfg, value: "1"}}
request_headers_to_remove: [x-vh-added]
response_headers_to_add:
- {header: {key: server, value: strait}, append: false}
response_headers_to_remove: [x-internal]
virtual_hosts:
- name: v
  domains: ["*"]
  request_headers_to_add:
  - {header: {key: x-level, value: vhost}}
  - {header: {key: x-vh-added, value: "1"}}
  - {header: {key: x-if-exists, value: vhost}, append_action: OVERWRITE_IF_EXISTS}
  request_headers_to_remove: [x-route-tmp]
  response_headers_to_add:
  - {header: {key: x-vh, value: "100%% sure"}}
  routes:
  - match: {prefix: "/w"}
    request_headers_to_add:
    - {header: {key: x-route, value: w}}
    route:
      weighted_clusters:
        clusters:
        - name: a
          weight: 1
          request_headers_to_add: [{header: {key: x-target, value: a}}]
          response_headers_to_add: [{header: {key: x-served-by, value: a}}]
        - {name: b, weight: 1}
  - match: {prefix: "/"}
    request_headers_to_add:
    - {header: {key: X-Level, value: route}}
    - {header: {key: x-route-tmp, value: gone}}
    - {header: {key: x-empty, value: ""}}
    - {header: {key: x-kept-empty, value: ""}, keep_empty_value: true}
    request_headers_to_remove: [x-remove-me]
    route: {cluster: a}
)");
  auto h = req("h", "/", {{"x-remove-me", "1"}, {"x-only-if-absent", "client"}, {"x-if-exists", "client"}});
  const RouteEntry* e = t->route(h);
  REQUIRE(e != nullptr);
  e->request_headers.applyTo(h);
  CHECK(h.get("x-remove-me") == nullptr);
  CHECK(h.getJoined("x-level") == "config");            // the least specific level applies last
  CHECK(h.get("x-route-tmp") == nullptr);                // added by the route, removed by the virtual host
  CHECK(h.get("x-vh-added") == nullptr);                 // added by the virtual host, removed by the config
  CHECK(*h.get("x-only-if-absent") == "client");
  CHECK(h.count("x-only-if-absent") == 1);
  CHECK(*h.get("x-if-exists") == "vhost");
  CHECK(h.get("x-empty") == nullptr);                    // empty values are skipped...
  REQUIRE(h.get("x-kept-empty") != nullptr);             // ...unless keep_empty_value
  CHECK(h.get("x-kept-empty")->empty());
  CHECK(*h.get("x-tmp-cfg") == "1");

  // Without the header the OVERWRITE_IF_EXISTS does nothing and ADD_IF_ABSENT adds.
  auto h2 = req("h", "/");
  e->request_headers.applyTo(h2);
  CHECK(h2.get("x-if-exists") == nullptr);
  CHECK(*h2.get("x-only-if-absent") == "config");

  // The operation list itself: route (removals, then additions), virtual host, configuration.
  std::vector<std::string> names;
  for (const auto& op : e->request_headers.ops) names.push_back(op.name);
  CHECK(names == std::vector<std::string>{"x-remove-me", "x-level", "x-route-tmp", "x-kept-empty", "x-route-tmp",
                                          "x-level", "x-vh-added", "x-if-exists", "x-vh-added", "x-level",
                                          "x-only-if-absent", "x-tmp-cfg"});

  http::ResponseHeaders resp;
  resp.add("x-internal", "secret");
  resp.add("server", "upstream");
  e->response_headers.applyTo(resp);
  CHECK(resp.get("x-internal") == nullptr);
  CHECK(resp.getJoined("server") == "strait");
  CHECK(*resp.get("x-vh") == "100% sure");

  // Weighted targets carry their own level first, then the route's whole chain.
  e = t->route(req("h", "/w"));
  REQUIRE(e->kind == RouteEntry::Kind::WeightedClusters);
  const http::WeightedTarget* ta = e->pickWeighted(0);
  const http::WeightedTarget* tb = e->pickWeighted(1);
  REQUIRE(ta->name == "a");
  REQUIRE(tb->name == "b");
  CHECK(ta->request_headers.ops.front().name == "x-target");
  CHECK(ta->request_headers.ops.size() == e->request_headers.ops.size() + 1);
  CHECK(tb->request_headers.ops.size() == e->request_headers.ops.size());
  CHECK(e->request_headers.ops.front().name == "x-route");
  CHECK(ta->response_headers.ops.front().name == "x-served-by");
  auto hw = req("h", "/w");
  ta->request_headers.applyTo(hw);
  CHECK(*hw.get("x-target") == "a");
  CHECK(*hw.get("x-route") == "w");
  CHECK(hw.getJoined("x-level") == "config");
}

TEST_CASE("RouteTable: retry policies, timeouts and upgrades") {
  RouteTable::Options o;
  o.hcm_websocket_upgrade = true;
  auto t = table(R"(
virtual_hosts:
- name: v
  domains: ["*"]
  retry_policy: {retry_on: "gateway-error", num_retries: 5}
  routes:
  - name: own
    match: {prefix: "/own"}
    route:
      cluster: a
      timeout: 0s
      idle_timeout: 30s
      max_stream_duration: {max_stream_duration: 60s, grpc_timeout_header_max: 0s}
      retry_policy:
        retry_on: "connect-failure, refused-stream,unavailable,cancelled,retriable-status-codes,retriable-4xx,reset-before-request,deadline-exceeded,internal,resource-exhausted,envoy-ratelimited,retriable-headers"
        retriable_status_codes: [503, 429]
        per_try_idle_timeout: 0.5s
        retry_back_off: {base_interval: 0.1s}
      upgrade_configs: [{upgrade_type: websocket, enabled: false}]
      hash_policy: [{header: {header_name: x-user}}]
  - name: inherited
    match: {prefix: "/"}
    route: {cluster: a, timeout: 0.0005s}
)",
                 o);
  const RouteEntry* e = t->route(req("h", "/own"));
  REQUIRE(e != nullptr);
  CHECK(e->timeout_ms == 0);
  CHECK(e->idle_timeout_ms == 30000);
  CHECK(e->max_stream_duration_ms == 60000);
  CHECK(e->grpc_timeout_header_max_ms == 0);
  CHECK(e->retry.enabled);
  CHECK(e->retry.num_retries == 1);  // Envoy's default when a policy exists
  CHECK(e->retry.on_connect_failure);
  CHECK(e->retry.on_refused_stream);
  CHECK(e->retry.on_grpc_unavailable);
  CHECK(e->retry.on_grpc_cancelled);
  CHECK(e->retry.on_grpc_deadline_exceeded);
  CHECK(e->retry.on_grpc_internal);
  CHECK(e->retry.on_grpc_resource_exhausted);
  CHECK(e->retry.on_retriable_status_codes);
  CHECK(e->retry.on_retriable_4xx);
  CHECK(e->retry.on_reset_before_request);
  CHECK(e->retry.on_envoy_ratelimited);
  CHECK_FALSE(e->retry.on_gateway_error);  // the route's policy replaces the virtual host's
  CHECK(e->retry.retriable_status_codes == std::vector<uint32_t>{503, 429});
  CHECK(e->retry.per_try_idle_timeout_ms == 500);
  CHECK(e->retry.base_interval_ms == 100);
  CHECK(e->retry.max_interval_ms == 1000);  // 10 x base
  CHECK_FALSE(e->websocket_upgrade);
  REQUIRE(e->proto != nullptr);
  CHECK(e->proto->route().hash_policy_size() == 1);

  e = t->route(req("h", "/x"));
  CHECK(e->name == "inherited");
  CHECK(e->timeout_ms == 1);  // below 1 ms rounds up, never to "none"
  CHECK(e->retry.enabled);
  CHECK(e->retry.on_gateway_error);
  CHECK(e->retry.num_retries == 5);
  CHECK(e->retry.base_interval_ms == 25);
  CHECK(e->retry.max_interval_ms == 250);
  CHECK(e->websocket_upgrade);  // the HCM default
  CHECK_FALSE(e->max_stream_duration_ms.has_value());
}

TEST_CASE("RouteTable: redirects and direct responses") {
  auto t = table(R"(
virtual_hosts:
- name: v
  domains: ["*"]
  routes:
  - {name: https, match: {prefix: "/secure"}, redirect: {https_redirect: true}}
  - {name: host, match: {prefix: "/host"}, redirect: {host_redirect: "new.example", response_code: FOUND}}
  - {name: port, match: {prefix: "/port"}, redirect: {port_redirect: 8443, scheme_redirect: HTTPS, response_code: PERMANENT_REDIRECT}}
  - {name: path, match: {prefix: "/path"}, redirect: {path_redirect: "/landing", response_code: SEE_OTHER}}
  - {name: path_query, match: {prefix: "/pq"}, redirect: {path_redirect: "/landing?from=pq"}}
  - {name: prefix, match: {prefix: "/old/"}, redirect: {prefix_rewrite: "/new/", strip_query: true, response_code: TEMPORARY_REDIRECT}}
  - {name: regex, match: {prefix: "/rx/"}, redirect: {regex_rewrite: {pattern: {regex: "^/rx/(.*)$"}, substitution: "/r/\\1"}}}
  - {name: gone, match: {prefix: "/gone"}, direct_response: {status: 410}}
  - {name: ok, match: {prefix: "/ok"}, direct_response: {status: 200, body: {inline_bytes: "b2s="}}}
)");
  auto loc = [&](const std::string& authority, const std::string& path, uint32_t code) {
    auto h = req(authority, path);
    const RouteEntry* e = t->route(h);
    REQUIRE(e != nullptr);
    REQUIRE(e->kind == RouteEntry::Kind::Redirect);
    CHECK(e->redirect->response_code == code);
    return e->redirectLocation(h);
  };
  CHECK(loc("a.example", "/secure/x?y=1", 301) == "https://a.example/secure/x?y=1");
  CHECK(loc("a.example:80", "/secure", 301) == "https://a.example/secure");
  CHECK(loc("a.example:8080", "/secure", 301) == "https://a.example:8080/secure");
  CHECK(loc("a.example:8080", "/host/1?q", 302) == "http://new.example/host/1?q");
  CHECK(loc("a.example:8080", "/port", 308) == "https://a.example:8443/port");
  CHECK(loc("[::1]:80", "/port", 308) == "https://[::1]:8443/port");
  CHECK(loc("a.example", "/path/x?keep=1", 303) == "http://a.example/landing?keep=1");
  CHECK(loc("a.example", "/pq?dropped=1", 301) == "http://a.example/landing?from=pq");
  CHECK(loc("a.example", "/old/page?q=1", 307) == "http://a.example/new/page");
  CHECK(loc("a.example", "/rx/a/b?z", 301) == "http://a.example/r/a/b?z");
  auto xfp = req("a.example", "/path");
  xfp.add("x-forwarded-proto", "https");
  CHECK(t->route(xfp)->redirectLocation(xfp) == "https://a.example/landing");

  const RouteEntry* e = t->route(req("h", "/gone"));
  CHECK(e->kind == RouteEntry::Kind::DirectResponse);
  CHECK(e->direct_status == 410);
  CHECK(e->direct_body.empty());
  e = t->route(req("h", "/ok"));
  CHECK(e->direct_status == 200);
  CHECK(e->direct_body == "ok");
}

TEST_CASE("RouteTable: require_tls redirects plain-text requests") {
  auto t = table(R"(
virtual_hosts:
- {name: all, domains: ["all.example"], require_tls: ALL, routes: [{name: r1, match: {prefix: "/"}, route: {cluster: a}}]}
- {name: ext, domains: ["ext.example"], require_tls: EXTERNAL_ONLY, routes: [{name: r2, match: {prefix: "/"}, route: {cluster: a}}]}
)");
  auto h = req("all.example", "/x?y");
  const RouteEntry* e = t->route(h);
  REQUIRE(e != nullptr);
  CHECK(e->kind == RouteEntry::Kind::Redirect);
  CHECK(e->redirect->response_code == 301);
  CHECK(e->redirectLocation(h) == "https://all.example/x?y");
  h.scheme = "https";
  CHECK(match(*t, h) == "r1");
  auto h2 = req("all.example", "/", {{"x-forwarded-proto", "https"}});
  CHECK(match(*t, h2) == "r1");

  CHECK(t->route(req("ext.example", "/"))->kind == RouteEntry::Kind::Redirect);
  CHECK(match(*t, req("ext.example", "/", {{"x-envoy-internal", "true"}})) == "r2");
}

TEST_CASE("RouteTable: route() does not depend on the proto after create") {
  auto rc = parse(R"(
virtual_hosts: [{name: v, domains: ["x.example"], routes: [{name: r, match: {prefix: "/"}, route: {cluster: a}}]}]
)");
  REQUIRE(rc.ok());
  auto t = RouteTable::create(*rc, "rc", defaultClusters(), {});
  REQUIRE(t.ok());
  rc->Clear();
  CHECK(match(**t, req("x.example", "/")) == "r");
  CHECK((*t)->route(req("x.example", "/"))->virtual_host_proto->name() == "v");
  CHECK((*t)->proto().virtual_hosts_size() == 1);
}

TEST_CASE("RouteTable: validation errors name the field") {
  const std::string vh = "virtual_hosts:\n- name: v\n  domains: [\"*\"]\n  routes:\n";
  auto routeErr = [&](const std::string& route) { return error(vh + "  - " + route + "\n"); };
  const std::string r0 = "route_config.virtual_hosts[0].routes[0]";

  CHECK(error(R"(
virtual_hosts:
- {name: a, domains: ["a.example"]}
- {name: a, domains: ["b.example"]}
)") == "route_config.virtual_hosts[1].name: duplicate virtual host name 'a'");
  CHECK(error(R"(
virtual_hosts:
- {name: a, domains: ["a.example"]}
- {name: b, domains: ["x.example", "A.example"]}
)") == "route_config.virtual_hosts[1].domains[1]: domain 'A.example' is also a domain of virtual host 'a'");
  CHECK(error(R"(
virtual_hosts:
- {name: a, domains: ["*"]}
- {name: b, domains: ["*"]}
)") == "route_config.virtual_hosts[1].domains[0]: domain '*' is also a domain of virtual host 'a'");
  CHECK(error("virtual_hosts: [{name: a, domains: [\"x.example\", \"X.example\"]}]") ==
        "route_config.virtual_hosts[0].domains[1]: duplicate domain 'X.example'");
  CHECK(error("virtual_hosts: [{name: a, domains: [\"*.foo.*\"]}]") ==
        "route_config.virtual_hosts[0].domains[0]: domain '*.foo.*' has more than one wildcard");
  CHECK(error("virtual_hosts: [{name: a, domains: [\"foo.*.com\"]}]") ==
        "route_config.virtual_hosts[0].domains[0]: domain 'foo.*.com' has a wildcard that is neither first nor last");
  CHECK(error("virtual_hosts: [{name: a, domains: [\"**\"]}]") ==
        "route_config.virtual_hosts[0].domains[0]: domain '**' has more than one wildcard");
  CHECK(error("virtual_hosts: [{name: a, domains: []}]") == "route_config.virtual_hosts[0].domains: must not be empty");
  CHECK(error("virtual_hosts: [{name: a, domains: [\"\"]}]") ==
        "route_config.virtual_hosts[0].domains[0]: domain must not be empty");
  CHECK(error("virtual_hosts: [{domains: [\"*\"]}]") == "route_config.virtual_hosts[0].name: must not be empty");

  // Regexes (RE2, compiled at config time).
  CHECK(routeErr("{match: {safe_regex: {regex: \"/(a\"}}, route: {cluster: a}}")
            .starts_with(r0 + ".match.safe_regex.regex: invalid regex: missing )"));
  CHECK(routeErr("{match: {safe_regex: {regex: \"\"}}, route: {cluster: a}}") ==
        r0 + ".match.safe_regex.regex: regex must not be empty");
  CHECK(routeErr("{match: {prefix: /, headers: [{name: x, string_match: {safe_regex: {regex: \"[\"}}}]}, route: {cluster: a}}")
            .starts_with(r0 + ".match.headers[0].string_match.safe_regex.regex: invalid regex:"));
  CHECK(routeErr("{match: {prefix: /, headers: [{name: x, safe_regex_match: {regex: \"(\"}}]}, route: {cluster: a}}")
            .starts_with(r0 + ".match.headers[0].safe_regex_match.regex: invalid regex:"));
  CHECK(routeErr("{match: {prefix: /, query_parameters: [{name: q, string_match: {safe_regex: {regex: \"*\"}}}]}, route: {cluster: a}}")
            .starts_with(r0 + ".match.query_parameters[0].string_match.safe_regex.regex: invalid regex:"));
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, regex_rewrite: {pattern: {regex: \"(\"}, substitution: x}}}")
            .starts_with(r0 + ".route.regex_rewrite.pattern.regex: invalid regex:"));
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, regex_rewrite: {pattern: {regex: \"(a)\"}, substitution: \"\\\\2\"}}}")
            .starts_with(r0 + ".route.regex_rewrite.substitution: invalid substitution:"));
  CHECK(routeErr("{match: {prefix: /}, redirect: {regex_rewrite: {pattern: {regex: \"a)\"}, substitution: x}}}")
            .starts_with(r0 + ".redirect.regex_rewrite.pattern.regex: invalid regex:"));

  // Matches.
  CHECK(routeErr("{match: {}, route: {cluster: a}}") ==
        r0 + ".match: one of prefix, path, safe_regex, path_separated_prefix is required");
  CHECK(routeErr("{route: {cluster: a}}") == r0 + ".match: is required");
  CHECK(routeErr("{match: {path_separated_prefix: \"/a/\"}, route: {cluster: a}}") ==
        r0 + ".match.path_separated_prefix: must not end with '/'");
  CHECK(routeErr("{match: {path_separated_prefix: \"/a?b\"}, route: {cluster: a}}") ==
        r0 + ".match.path_separated_prefix: must not contain '?' or '#'");
  CHECK(routeErr("{match: {prefix: /, headers: [{name: \"\"}]}, route: {cluster: a}}") ==
        r0 + ".match.headers[0].name: '' is not a valid header name");
  CHECK(routeErr("{match: {prefix: /, headers: [{name: x, string_match: {}}]}, route: {cluster: a}}") ==
        r0 + ".match.headers[0].string_match: one of exact, prefix, suffix, contains, safe_regex is required");
  CHECK(routeErr("{match: {prefix: /, headers: [{name: x, string_match: {prefix: \"\"}}]}, route: {cluster: a}}") ==
        r0 + ".match.headers[0].string_match.prefix: must not be empty");
  CHECK(routeErr("{match: {prefix: /, headers: [{name: \":bogus\"}]}, route: {cluster: a}}") ==
        r0 + ".match.headers[0].name: unknown pseudo-header ':bogus'");
  CHECK(routeErr("{match: {prefix: /, query_parameters: [{name: \"\"}]}, route: {cluster: a}}") ==
        r0 + ".match.query_parameters[0].name: must not be empty");

  // Actions.
  CHECK(routeErr("{match: {prefix: /}}") == r0 + ": one of route, redirect, direct_response is required");
  CHECK(routeErr("{match: {prefix: /}, route: {timeout: 1s}}") ==
        r0 + ".route: one of cluster, cluster_header, weighted_clusters is required");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: nope}}") == r0 + ".route.cluster: unknown cluster 'nope'");
  CHECK(routeErr("{match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: nope, weight: 1}]}}}") ==
        r0 + ".route.weighted_clusters.clusters[1].name: unknown cluster 'nope'");
  CHECK(routeErr("{match: {prefix: /}, route: {weighted_clusters: {clusters: [{name: a, weight: 0}, {name: b}]}}}") ==
        r0 + ".route.weighted_clusters: the total weight of the clusters must be greater than 0");
  CHECK(routeErr("{match: {prefix: /}, route: {weighted_clusters: {clusters: []}}}") ==
        r0 + ".route.weighted_clusters.clusters: must not be empty");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, prefix_rewrite: /x, regex_rewrite: {pattern: {regex: a}, substitution: b}}}") ==
        r0 + ".route.regex_rewrite: cannot be set together with prefix_rewrite");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, timeout: -1s}}") == r0 + ".route.timeout: must not be negative");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, retry_policy: {retry_on: \"5xx,bogus\"}}}") ==
        r0 + ".route.retry_policy.retry_on: unknown retry condition 'bogus'");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, retry_policy: {retriable_status_codes: [700]}}}") ==
        r0 + ".route.retry_policy.retriable_status_codes[0]: 700 is not an HTTP status code");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, retry_policy: {retry_back_off: {base_interval: 1s, max_interval: 0.5s}}}}") ==
        r0 + ".route.retry_policy.retry_back_off.max_interval: must not be less than base_interval");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, upgrade_configs: [{upgrade_type: CONNECT}]}}") ==
        r0 + ".route.upgrade_configs[0].upgrade_type: unsupported upgrade type 'CONNECT' (Strait supports websocket)");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, upgrade_configs: [{upgrade_type: CONNECT, enabled: false}]}}") == "OK");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster_header: \":authority\"}}") ==
        r0 + ".route.cluster_header: ':authority' is not a valid header name");
  CHECK(routeErr("{match: {prefix: /}, direct_response: {status: 600}}") == r0 + ".direct_response.status: 600 is not in 200-599");
  CHECK(routeErr("{match: {prefix: /}, direct_response: {status: 199}}") == r0 + ".direct_response.status: 199 is not in 200-599");
  CHECK(routeErr("{match: {prefix: /}, direct_response: {status: 200, body: {filename: /nonexistent/file}}}") ==
        r0 + ".direct_response.body.filename: cannot read '/nonexistent/file'");
  CHECK(error("max_direct_response_body_size_bytes: 3\n" + vh +
              "  - {match: {prefix: /}, direct_response: {status: 200, body: {inline_string: \"four\"}}}\n") ==
        r0 + ".direct_response.body: body is 4 bytes, over max_direct_response_body_size_bytes (3)");
  CHECK(routeErr("{match: {prefix: /}, redirect: {port_redirect: 70000}}") == r0 + ".redirect.port_redirect: 70000 is not a valid port");
  CHECK(routeErr("{match: {prefix: /}, redirect: {path_redirect: \"no-slash\"}}") == r0 + ".redirect.path_redirect: must start with '/'");
  // path_redirect and prefix_rewrite share a oneof: the JSON parser already refuses both.
  CHECK(routeErr("{match: {prefix: /}, redirect: {path_redirect: /a, prefix_rewrite: /b}}").find("oneof") != std::string::npos);

  // Header mutations.
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a}, request_headers_to_add: [{header: {key: \":path\", value: x}}]}") ==
        r0 + ".request_headers_to_add[0].header.key: header ':path' cannot be modified");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a}, request_headers_to_remove: [Host]}") ==
        r0 + ".request_headers_to_remove[0]: header 'Host' cannot be modified");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a}, response_headers_to_add: [{header: {key: \"bad name\", value: x}}]}") ==
        r0 + ".response_headers_to_add[0].header.key: 'bad name' is not a valid header name");
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a}, request_headers_to_add: [{header: {key: x-ip, value: \"%DOWNSTREAM_REMOTE_ADDRESS%\"}}]}")
            .starts_with(r0 + ".request_headers_to_add[0].header.value: header formatters ('%...%') are not supported"));
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a}, request_headers_to_add: [{header: {key: x, value: y}, append: true, append_action: ADD_IF_ABSENT}]}") ==
        r0 + ".request_headers_to_add[0].append: append and append_action cannot both be set");
  CHECK(error("request_headers_to_add: [{header: {key: x, value: \"a\\nb\"}}]\n" + vh +
              "  - {match: {prefix: /}, route: {cluster: a}}\n") ==
        "route_config.request_headers_to_add[0].header.value: header value must not contain NUL, CR or LF");
  CHECK(error("internal_only_headers: [\":method\"]\nvirtual_hosts: []\n") ==
        "route_config.internal_only_headers[0]: header ':method' cannot be modified");
  CHECK(error(R"(
virtual_hosts:
- {name: a, domains: ["*"], retry_policy: {retry_on: "nope"}}
)") == "route_config.virtual_hosts[0].retry_policy.retry_on: unknown retry condition 'nope'");

  // Accepted as is: hash_policy (the load balancer reads it), typed_per_filter_config (the filters do).
  CHECK(routeErr("{match: {prefix: /}, route: {cluster: a, hash_policy: [{header: {header_name: x}}, {connection_properties: {source_ip: true}}]}}") == "OK");
}

TEST_CASE("RouteTable: internal_only_headers are kept lower case") {
  auto t = table("internal_only_headers: [X-Internal-Token]\nvirtual_hosts: []\n");
  CHECK(t->internalOnlyHeaders() == std::vector<std::string>{"x-internal-token"});
  CHECK(t->route(req("a", "/")) == nullptr);
}
