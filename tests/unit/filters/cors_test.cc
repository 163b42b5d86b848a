// CORS: policies from the route configuration (typed_per_filter_config and the older VirtualHost.cors /
// RouteAction.cors) and the verdicts for preflights and other requests.

#include <google/protobuf/util/json_util.h>

#include <catch2/catch.hpp>

#include "tests/unit/support/yaml.h"
#include <string>
#include <vector>

#include "envoy/config/route/v3/route.pb.h"
#include "filters/http/cors.h"
#include "proxy/config/bootstrap.h"
#include "proxy/http/route_table.h"

using namespace strait;
using filters::http::CorsPolicySettings;
using filters::http::CorsVerdict;

namespace {

using strait::testing::parseYaml;

const char* kRoutes = R"(
name: local
virtual_hosts:
- name: web
  domains: ["*"]
  cors:
    allow_origin_string_match: [{exact: "https://vh.example"}]
    allow_methods: "GET,PUT"
    max_age: "600"
  routes:
  - match: {prefix: /typed}
    direct_response: {status: 200}
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
        allow_origin_string_match: [{prefix: "https://app."}, {safe_regex: {regex: "https://[a-z]+\\.test"}}]
        allow_methods: "GET,POST"
        allow_headers: "x-token"
        expose_headers: "x-trace"
        max_age: "60"
        allow_credentials: true
        allow_private_network_access: true
  - match: {prefix: /legacy}
    route:
      cluster: backend
      cors:
        allow_origin_string_match: [{exact: "https://route.example"}]
        expose_headers: "x-route"
  - match: {prefix: /shadow}
    direct_response: {status: 200}
    typed_per_filter_config:
      envoy.filters.http.cors:
        "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
        allow_origin_string_match: [{exact: "https://app.example"}]
        filter_enabled: {default_value: {numerator: 0}}
        shadow_enabled: {default_value: {numerator: 100}}
        forward_not_matching_preflights: false
  - match: {prefix: /}
    direct_response: {status: 200}
)";

// The policies the filter would use for `path` (its typed entry, else the route's and the virtual
// host's older ones).
std::vector<const CorsPolicySettings*> policiesFor(const http::RouteTable& table, const std::string& path) {
  http::RequestHeaders h;
  h.method = "GET";
  h.path = path;
  h.authority = "svc";
  const http::RouteEntry* e = table.route(h);
  REQUIRE(e != nullptr);
  std::vector<const CorsPolicySettings*> out;
  if (const auto* p = dynamic_cast<const CorsPolicySettings*>(e->perFilterConfig("envoy.filters.http.cors"))) {
    out.push_back(p);
    return out;
  }
  for (std::string_view key : {http::kRouteCorsPolicyKey, http::kVirtualHostCorsPolicyKey}) {
    if (const auto* p = dynamic_cast<const CorsPolicySettings*>(e->perFilterConfig(key))) out.push_back(p);
  }
  return out;
}

http::RequestHeaders request(const std::string& method, const std::string& origin, bool preflight = false) {
  http::RequestHeaders h;
  h.method = method;
  h.path = std::string(1, '/');  // (GCC 12 -O3 warns, wrongly, on assigning "/")
  if (!origin.empty()) h.add("origin", origin);
  if (preflight) h.add("access-control-request-method", "POST");
  return h;
}

std::string header(const CorsVerdict& v, const std::string& name) {
  for (const auto& [n, value] : v.headers) {
    if (n == name) return value;
  }
  return "<none>";
}

}  // namespace

TEST_CASE("CORS: origins, preflights and simple requests", "[cors]") {
  filters::http::registerHttpCors();  // the policy parsers
  config::ClusterMap clusters;
  http::RouteTable::Options o;
  o.validate_clusters = false;
  auto table = http::RouteTable::create(parseYaml<envoy::config::route::v3::RouteConfiguration>(kRoutes), "route_config",
                                        clusters, o);
  INFO(table.status().ToString());
  REQUIRE(table.ok());

  auto typed = policiesFor(**table, "/typed");
  REQUIRE(typed.size() == 1);
  // A preflight from an allowed origin is answered with the allow headers.
  auto pre = request("OPTIONS", "https://app.example", true);
  pre.add("access-control-request-private-network", "true");
  CorsVerdict v = filters::http::evaluateCors(typed, pre, 0);
  CHECK(v.action == CorsVerdict::Action::Preflight);
  CHECK(v.counted);
  CHECK(v.valid);
  CHECK(header(v, "access-control-allow-origin") == "https://app.example");
  CHECK(header(v, "access-control-allow-methods") == "GET,POST");
  CHECK(header(v, "access-control-allow-headers") == "x-token");
  CHECK(header(v, "access-control-max-age") == "60");
  CHECK(header(v, "access-control-allow-credentials") == "true");
  CHECK(header(v, "access-control-allow-private-network") == "true");
  // The regex matcher allows another origin; a simple request gets origin, credentials, expose headers.
  v = filters::http::evaluateCors(typed, request("GET", "https://shop.test"), 0);
  CHECK(v.action == CorsVerdict::Action::Simple);
  CHECK(header(v, "access-control-allow-origin") == "https://shop.test");
  CHECK(header(v, "access-control-expose-headers") == "x-trace");
  CHECK(header(v, "access-control-allow-methods") == "<none>");
  // OPTIONS without Access-Control-Request-Method is not a preflight.
  v = filters::http::evaluateCors(typed, request("OPTIONS", "https://app.example"), 0);
  CHECK(v.action == CorsVerdict::Action::Simple);
  // An origin that is not allowed: counted invalid, no headers, the request (preflight too) goes on.
  v = filters::http::evaluateCors(typed, request("OPTIONS", "https://evil.example", true), 0);
  CHECK(v.action == CorsVerdict::Action::OriginInvalid);
  CHECK(v.counted);
  CHECK_FALSE(v.valid);
  CHECK(v.headers.empty());
  // No Origin: not a CORS request.
  v = filters::http::evaluateCors(typed, request("GET", ""), 0);
  CHECK(v.action == CorsVerdict::Action::None);
  CHECK_FALSE(v.counted);

  // The older fields: the route's value where it has one, else the virtual host's, field by field.
  auto legacy = policiesFor(**table, "/legacy");
  REQUIRE(legacy.size() == 2);
  v = filters::http::evaluateCors(legacy, request("OPTIONS", "https://route.example", true), 0);
  CHECK(v.action == CorsVerdict::Action::Preflight);
  CHECK(header(v, "access-control-allow-methods") == "GET,PUT");
  CHECK(header(v, "access-control-max-age") == "600");
  CHECK(header(v, "access-control-allow-credentials") == "<none>");
  v = filters::http::evaluateCors(legacy, request("GET", "https://vh.example"), 0);
  CHECK(v.action == CorsVerdict::Action::OriginInvalid);  // the route's origins replace the host's
  v = filters::http::evaluateCors(legacy, request("GET", "https://route.example"), 0);
  CHECK(header(v, "access-control-expose-headers") == "x-route");
  auto vh_only = policiesFor(**table, "/other");
  REQUIRE(vh_only.size() == 1);
  v = filters::http::evaluateCors(vh_only, request("GET", "https://vh.example"), 0);
  CHECK(v.action == CorsVerdict::Action::Simple);

  // Shadow only: counted, nothing applied.
  auto shadow = policiesFor(**table, "/shadow");
  v = filters::http::evaluateCors(shadow, request("OPTIONS", "https://app.example", true), 0);
  CHECK(v.action == CorsVerdict::Action::None);
  CHECK(v.counted);
  CHECK(v.valid);
}

TEST_CASE("CORS: a preflight from a refused origin is answered when not forwarded", "[cors]") {
  filters::http::registerHttpCors();
  auto rc = parseYaml<envoy::config::route::v3::RouteConfiguration>(R"(
virtual_hosts:
- name: web
  domains: ["*"]
  typed_per_filter_config:
    cors:
      "@type": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy
      allow_origin_string_match: [{exact: "https://ok.example"}]
      forward_not_matching_preflights: false
  routes: [{match: {prefix: /}, direct_response: {status: 200}}]
)");
  auto table = http::RouteTable::create(rc, "route_config", {}, {});
  REQUIRE(table.ok());
  http::RequestHeaders h;
  h.method = "GET";
  h.path = std::string(1, '/');  // (GCC 12 -O3 warns, wrongly, on assigning "/")
  h.authority = "svc";
  const http::RouteEntry* e = (*table)->route(h);
  REQUIRE(e != nullptr);
  const auto* p = dynamic_cast<const CorsPolicySettings*>(e->perFilterConfig("cors"));
  REQUIRE(p != nullptr);
  CorsVerdict v = filters::http::evaluateCors({p}, request("OPTIONS", "https://no.example", true), 0);
  CHECK(v.action == CorsVerdict::Action::RejectPreflight);
  CHECK(v.headers.empty());
  v = filters::http::evaluateCors({p}, request("GET", "https://no.example"), 0);
  CHECK(v.action == CorsVerdict::Action::OriginInvalid);

  // A bad matcher is refused, naming the field.
  auto bad = parseYaml<envoy::config::route::v3::RouteConfiguration>(R"(
virtual_hosts:
- name: web
  domains: ["*"]
  cors: {allow_origin_string_match: [{safe_regex: {regex: "("}}]}
  routes: [{match: {prefix: /}, direct_response: {status: 200}}]
)");
  auto t2 = http::RouteTable::create(bad, "route_config", {}, {});
  REQUIRE_FALSE(t2.ok());
  CHECK_THAT(std::string(t2.status().message()),
             Catch::StartsWith("route_config.virtual_hosts[0].cors.allow_origin_string_match[0].safe_regex.regex"));
}
