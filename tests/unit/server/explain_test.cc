// The admin's /explain (proxy/server/explain.h, proxy/http/route_explain.h): the chosen listener, filter
// chain, virtual host, route and clusters are the data plane's own answers, and each alternative passed
// over says the first thing that did not fit.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "filters/http/router.h"
#include "filters/network/tcp_proxy.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/config/bootstrap.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/route_explain.h"
#include "proxy/http/route_table.h"
#include "proxy/server/explain.h"

using namespace strait;

namespace {

constexpr const char* kBootstrap = R"(
static_resources:
  listeners:
  - name: web
    address: {socket_address: {address: 127.0.0.1, port_value: 18080}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: web
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
          route_config:
            name: web_routes
            virtual_hosts:
            - name: shop
              domains: [shop.example, "*.shop.example"]
              routes:
              - {name: grpc, match: {prefix: /helloworld.Greeter/, grpc: {}}, route: {cluster: a}}
              - name: canary
                match: {prefix: /api/, headers: [{name: x-canary, string_match: {exact: "1"}}]}
                route: {cluster: api_v2}
              - name: by-query
                match: {prefix: /api/, query_parameters: [{name: version, string_match: {exact: "2"}}]}
                route: {cluster: api_v2}
              - name: post
                match: {prefix: /api/, headers: [{name: ":method", string_match: {exact: POST}}]}
                route: {cluster: api_v1}
              - name: split
                match: {prefix: /api/}
                route: {weighted_clusters: {clusters: [{name: api_v1, weight: 90}, {name: api_v2, weight: 10}]}}
              - {name: exact, match: {path: /exact}, route: {cluster: a}}
              - {name: css, match: {safe_regex: {regex: "^/static/[a-z]+\\.css$"}}, route: {cluster: b}}
              - {name: moved, match: {prefix: /moved}, redirect: {host_redirect: new.example, path_redirect: /landing}}
            - name: admin
              domains: [admin.example]
              routes: [{name: ok, match: {prefix: /ok}, route: {cluster: a}}]
            - name: fallback
              domains: ["*"]
              routes: [{match: {prefix: /}, direct_response: {status: 404, body: {inline_string: "no such host"}}}]
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 19000}}
    filter_chains:
    - name: other-port
      filter_chain_match: {destination_port: 9999}
      filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}]
    - name: from-2
      filter_chain_match: {source_prefix_ranges: [{address_prefix: 127.0.0.2, prefix_len: 32}]}
      filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: b}}]
    - name: any
      filters:
      - name: t
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          weighted_clusters: {clusters: [{name: a, weight: 3}, {name: b, weight: 1}]}
  - name: sni
    address: {socket_address: {address: 127.0.0.1, port_value: 19443}}
    listener_filters: [{name: tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}]
    filter_chains:
    - name: exact-sni
      filter_chain_match: {server_names: [a.example], transport_protocol: tls}
      filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: a}}]
    - name: wildcard-sni
      filter_chain_match: {server_names: ["*.example"], transport_protocol: tls}
      filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: b}}]
    - name: h2-tls
      filter_chain_match: {transport_protocol: tls, application_protocols: [h2]}
      filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: api_v2}}]
    - name: plain
      filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}]
  - name: virtual
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    use_original_dst: true
    default_filter_chain:
      name: passthrough
      filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: p, cluster: c}}]
  - name: svc80
    address: {socket_address: {address: 0.0.0.0, port_value: 80}}
    bind_to_port: false
    filter_chains:
    - filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: b}}]
  clusters:
  - {name: a, connect_timeout: 1s, load_assignment: {cluster_name: a, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9001}}}}]}]}}
  - {name: b, connect_timeout: 1s, load_assignment: {cluster_name: b, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9002}}}}]}]}}
  - name: c
    connect_timeout: 1s
    lb_policy: LEAST_REQUEST
    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9003}}}}, {endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9004}}}}]}]}
  - {name: api_v1, connect_timeout: 1s, load_assignment: {cluster_name: api_v1, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9011}}}}]}]}}
  - {name: api_v2, connect_timeout: 1s, load_assignment: {cluster_name: api_v2, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9012}}}}]}]}}
)";

stats::Store& store() {
  static stats::Store s(1);
  return s;
}

// Loaded once and never destroyed: at exit it would outlive singletons that other tests create later.
const config::Snapshot& snapshot() {
  static const auto* snap = new config::SnapshotConstSharedPtr([] {
    filters::network::registerTcpProxy();
    http::registerHttpConnectionManager();
    filters::http::registerRouter();
    config::LoadOptions o;
    o.path = "/tmp/strait_explain_test_" + std::to_string(getpid()) + ".yaml";
    std::ofstream(o.path) << kBootstrap;
    auto r = config::loadBootstrap(o, store());
    std::remove(o.path.c_str());
    INFO((r.ok() ? "" : std::string(r.status().message())));
    REQUIRE(r.ok());
    return *r;
  }());
  return **snap;
}

struct Answer {
  int status = 0;
  std::string body;
  google::protobuf::Struct json;
};

Answer ask(const server::QueryParams& params) {
  const auto r = server::explain(snapshot(), {}, params);
  Answer a{r.status, r.body, {}};
  if (r.status == 200 && r.content_type == "application/json") {
    auto st = google::protobuf::util::JsonStringToMessage(r.body, &a.json);
    INFO(r.body);
    REQUIRE(st.ok());
  }
  return a;
}

// The value at a dotted path ("route.chosen", "clusters.1.name"); a null Value when absent.
google::protobuf::Value at(const google::protobuf::Struct& root, const std::string& path) {
  google::protobuf::Value v;
  *v.mutable_struct_value() = root;
  size_t start = 0;
  while (start <= path.size()) {
    const size_t dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    google::protobuf::Value next;
    if (v.has_struct_value() && v.struct_value().fields().count(key)) {
      next = v.struct_value().fields().at(key);
    } else if (v.has_list_value() && !key.empty() && std::isdigit(static_cast<unsigned char>(key[0])) &&
               std::stoul(key) < static_cast<size_t>(v.list_value().values_size())) {
      next = v.list_value().values(static_cast<int>(std::stoul(key)));
    } else {
      return google::protobuf::Value();
    }
    v = next;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return v;
}

std::string str(const Answer& a, const std::string& path) { return at(a.json, path).string_value(); }

// The `failed` of the alternative named `name` in `level` (e.g. "route"); "" if it was not passed over.
std::string failedFor(const Answer& a, const std::string& level, const std::string& name) {
  const auto list = at(a.json, level + ".rejected");
  for (const auto& r : list.list_value().values()) {
    if (r.struct_value().fields().at("name").string_value() == name) {
      return r.struct_value().fields().at("failed").string_value();
    }
  }
  return "";
}

server::QueryParams webRequest(const std::string& host, const std::string& path,
                         std::vector<std::pair<std::string, std::string>> extra = {}) {
  server::QueryParams p{{"listener", "web"}, {"host", host}, {"path", path}};
  for (auto& e : extra) p.push_back(std::move(e));
  return p;
}

}  // namespace

TEST_CASE("Explain: a header-matched canary route is chosen; earlier routes say what failed", "[explain]") {
  auto a = ask(webRequest("shop.example", "/api/items", {{"header", "x-canary: 1"}}));
  REQUIRE(a.status == 200);
  CHECK(str(a, "listener.chosen") == "web");
  CHECK(str(a, "filter_chain.terminal") == "http_connection_manager");
  CHECK(str(a, "virtual_host.chosen") == "shop");
  CHECK(str(a, "virtual_host.why").find("\"shop.example\" (exact)") != std::string::npos);
  CHECK(failedFor(a, "virtual_host", "admin") == "domains [admin.example] do not match host \"shop.example\"");
  CHECK(failedFor(a, "virtual_host", "fallback").find("domain \"*\" (any host) matches too") != std::string::npos);
  CHECK(str(a, "route.chosen") == "#1 canary");
  CHECK(str(a, "route.match") == "prefix /api/, header x-canary: exact \"1\"");
  CHECK(failedFor(a, "route", "#0 grpc") == "path \"/api/items\" does not start with \"/helloworld.Greeter/\"");
  CHECK(at(a.json, "route.not_tried").number_value() == 6);
  CHECK(str(a, "action.kind") == "cluster");
  CHECK(str(a, "cluster.name") == "api_v2");
  CHECK(str(a, "cluster.type") == "STATIC");
  CHECK(str(a, "cluster.hosts.0.address") == "127.0.0.1:9012");
  CHECK(str(a, "cluster.hosts.0.health") == "healthy");
}

TEST_CASE("Explain: without the canary header the weighted route is chosen, each earlier matcher named", "[explain]") {
  auto a = ask(webRequest("shop.example", "/api/items", {{"header", "x-canary: 10"}}));
  REQUIRE(a.status == 200);
  CHECK(str(a, "route.chosen") == "#4 split");
  CHECK(failedFor(a, "route", "#1 canary") == "header x-canary: exact \"1\": the request has \"10\"");
  CHECK(failedFor(a, "route", "#2 by-query") == "query parameter version: exact \"2\": the request has none");
  CHECK(failedFor(a, "route", "#3 post") == "header :method: exact \"POST\": the request has \"GET\"");
  CHECK(str(a, "action.kind") == "weighted_clusters");
  CHECK(str(a, "clusters.0.name") == "api_v1");
  CHECK(at(a.json, "clusters.0.weight").number_value() == 90);
  CHECK(str(a, "clusters.1.name") == "api_v2");
  CHECK(at(a.json, "clusters.1.weight").number_value() == 10);
  // No canary header at all.
  auto none = ask(webRequest("shop.example", "/api/items"));
  CHECK(failedFor(none, "route", "#1 canary") == "header x-canary: exact \"1\": the request has none");
}

TEST_CASE("Explain: query parameter, :method, exact path and regex routes", "[explain]") {
  CHECK(str(ask(webRequest("shop.example", "/api/items?version=2")), "route.chosen") == "#2 by-query");
  auto q3 = ask(webRequest("shop.example", "/api/items?version=3"));
  CHECK(failedFor(q3, "route", "#2 by-query") == "query parameter version: exact \"2\": the request has \"3\"");
  CHECK(str(ask(webRequest("shop.example", "/api/items", {{"method", "POST"}})), "route.chosen") == "#3 post");
  auto exact = ask(webRequest("shop.example", "/exact?x=1"));
  CHECK(str(exact, "route.chosen") == "#5 exact");
  CHECK(str(ask(webRequest("shop.example", "/static/site.css")), "route.chosen") == "#6 css");
  auto more = ask(webRequest("shop.example", "/exact/more"));
  CHECK(failedFor(more, "route", "#5 exact") == "path \"/exact/more\" is not \"/exact\"");
}

TEST_CASE("Explain: gRPC route needs the gRPC content-type", "[explain]") {
  auto plain = ask(webRequest("shop.example", "/helloworld.Greeter/SayHello"));
  CHECK(failedFor(plain, "route", "#0 grpc") == "grpc: not a gRPC request (content-type absent)");
  auto grpc = ask(webRequest("shop.example", "/helloworld.Greeter/SayHello", {{"header", "content-type:application/grpc"}}));
  CHECK(str(grpc, "route.chosen") == "#0 grpc");
}

TEST_CASE("Explain: the path is normalised as the connection manager does before routing", "[explain]") {
  auto a = ask(webRequest("shop.example", "/api/../exact"));
  CHECK(str(a, "request.normalized_path") == "/exact");
  CHECK(str(a, "route.chosen") == "#5 exact");
  auto bad = ask(webRequest("shop.example", "/a%zz"));
  CHECK(str(bad, "action.kind") == "local_reply");
  CHECK(at(bad.json, "action.status").number_value() == 400);
}

TEST_CASE("Explain: no route matches: 404, the virtual host named and every route's failing matcher", "[explain]") {
  auto a = ask(webRequest("shop.example", "/static/UP.css"));
  CHECK(str(a, "virtual_host.chosen") == "shop");
  CHECK(at(a.json, "route.chosen").has_null_value());
  CHECK(str(a, "route.why") == "no route of virtual host shop matches");
  CHECK(at(a.json, "route.rejected").list_value().values_size() == 8);
  CHECK(failedFor(a, "route", "#6 css") == "path \"/static/UP.css\" does not fully match \"^/static/[a-z]+\\.css$\"");
  CHECK(failedFor(a, "route", "#7 moved") == "path \"/static/UP.css\" does not start with \"/moved\"");
  CHECK(at(a.json, "action.status").number_value() == 404);
  CHECK(str(a, "action.detail") == "route_not_found (NR)");
}

TEST_CASE("Explain: wildcard domains, direct responses and redirects", "[explain]") {
  auto sub = ask(webRequest("a.shop.example:8080", "/exact"));
  CHECK(str(sub, "virtual_host.chosen") == "shop");
  CHECK(str(sub, "virtual_host.why").find("(suffix wildcard)") != std::string::npos);
  CHECK(str(sub, "virtual_host.why").find("port is dropped") != std::string::npos);
  auto unknown = ask(webRequest("unknown.example", "/x"));
  CHECK(str(unknown, "virtual_host.chosen") == "fallback");
  CHECK(str(unknown, "action.kind") == "direct_response");
  CHECK(at(unknown.json, "action.status").number_value() == 404);
  auto moved = ask(webRequest("shop.example", "/moved"));
  CHECK(str(moved, "action.kind") == "redirect");
  CHECK(str(moved, "action.detail") == "Location http://new.example/landing");
}

TEST_CASE("Explain: TCP filter chains by destination port and source, with weighted tcp_proxy clusters", "[explain]") {
  auto a = ask({{"listener", "tcp"}});
  REQUIRE(a.status == 200);
  CHECK(str(a, "connection.destination") == "127.0.0.1:19000");
  CHECK(str(a, "filter_chain.chosen") == "any");
  CHECK(str(a, "filter_chain.terminal") == "tcp_proxy");
  CHECK(failedFor(a, "filter_chain", "other-port") == "destination_port 9999 != 19000");
  CHECK(failedFor(a, "filter_chain", "from-2") == "source_prefix_ranges [127.0.0.2/32] do not contain 127.0.0.1");
  CHECK(str(a, "action.kind") == "weighted_clusters");
  CHECK(str(a, "clusters.0.name") == "a");
  CHECK(at(a.json, "clusters.0.weight").number_value() == 3);
  auto from2 = ask({{"port", "19000"}, {"source", "127.0.0.2:5555"}});
  CHECK(str(from2, "listener.chosen") == "tcp");
  CHECK(str(from2, "filter_chain.chosen") == "from-2");
  CHECK(failedFor(from2, "filter_chain", "any").find("names no source_prefix_ranges") != std::string::npos);
  CHECK(str(from2, "cluster.name") == "b");
}

TEST_CASE("Explain: chains by SNI, transport and ALPN as tls_inspector reports them", "[explain]") {
  auto exact = ask({{"listener", "sni"}, {"transport", "tls"}, {"sni", "a.example"}});
  REQUIRE(exact.status == 200);
  CHECK(str(exact, "connection.transport") == "tls");
  CHECK(str(exact, "filter_chain.chosen") == "exact-sni");
  CHECK(failedFor(exact, "filter_chain", "wildcard-sni") ==
        "server_names [*.example] match \"a.example\" less specifically than another chain's");
  CHECK(failedFor(exact, "filter_chain", "h2-tls") == "names no server_names; a chain naming \"a.example\" is more specific");
  CHECK(str(exact, "cluster.name") == "a");
  auto wild = ask({{"listener", "sni"}, {"transport", "tls"}, {"sni", "x.example"}});
  CHECK(str(wild, "filter_chain.chosen") == "wildcard-sni");
  CHECK(failedFor(wild, "filter_chain", "exact-sni") == "server_names [a.example] do not match \"x.example\"");
  auto h2 = ask({{"listener", "sni"}, {"transport", "tls"}, {"alpn", "h2,http/1.1"}});
  CHECK(str(h2, "filter_chain.chosen") == "h2-tls");
  CHECK(failedFor(h2, "filter_chain", "exact-sni") == "server_names [a.example] but the connection has no SNI");
  CHECK(failedFor(h2, "filter_chain", "plain") == "names no transport_protocol; a chain naming tls is more specific");
  auto raw = ask({{"listener", "sni"}});
  CHECK(str(raw, "connection.transport") == "raw_buffer");
  CHECK(str(raw, "filter_chain.chosen") == "plain");
  CHECK(failedFor(raw, "filter_chain", "h2-tls") == "transport_protocol tls != raw_buffer");
  // Without tls_inspector on the listener, transport=tls is not what the chains would see.
  auto no_inspector = ask({{"listener", "tcp"}, {"transport", "tls"}});
  CHECK(str(no_inspector, "notes.0").starts_with("tls_inspector does not run on tcp"));
}

TEST_CASE("Explain: a redirected connection is handed to the listener on its original destination", "[explain]") {
  auto a = ask({{"listener", "virtual"}, {"address", "10.1.2.3:80"}});
  REQUIRE(a.status == 200);
  CHECK(str(a, "listener.chosen") == "svc80");
  CHECK(failedFor(a, "listener", "virtual").find("hands the connection to the listener on 0.0.0.0:80") != std::string::npos);
  CHECK(str(a, "cluster.name") == "b");
  // Nothing bound there and no listener on it: the capturing listener keeps it.
  auto keep = ask({{"address", "10.9.9.9:443"}});
  REQUIRE(keep.status == 200);
  CHECK(str(keep, "listener.chosen") == "virtual");
  CHECK(str(keep, "filter_chain.chosen") == "passthrough");
  CHECK(str(keep, "cluster.lb_policy") == "LEAST_REQUEST");
  CHECK(at(keep.json, "cluster.healthy_hosts").number_value() == 2);
}

TEST_CASE("Explain: a bad query is a 400 naming the parameter", "[explain]") {
  auto no_host = ask({{"listener", "web"}, {"path", "/x"}});
  CHECK(no_host.status == 400);
  CHECK(no_host.body.starts_with("host:"));
  auto unknown = ask({{"listener", "nope"}});
  CHECK(unknown.status == 400);
  CHECK(unknown.body.starts_with("listener: no listener named 'nope'"));
  CHECK(ask({{"address", "nonsense"}}).body.starts_with("address:"));
  CHECK(ask({{"listener", "web"}, {"hots", "x"}}).body.starts_with("unknown parameter 'hots'"));
  CHECK(ask({{"listener", "web"}, {"host", "a"}, {"header", "novalue"}}).body.starts_with("header:"));
  CHECK(ask({}).body.starts_with("listener:"));  // several listeners: say which
}

TEST_CASE("Explain: the text form names each level", "[explain]") {
  auto a = ask(webRequest("shop.example", "/api/items", {{"format", "text"}}));
  REQUIRE(a.status == 200);
  CHECK(a.body.find("vhost       shop") != std::string::npos);
  CHECK(a.body.find("route       #4 split") != std::string::npos);
  CHECK(a.body.find("passed    #1 canary: header x-canary: exact \"1\": the request has none") != std::string::npos);
  CHECK(a.body.find("cluster     api_v1 (weight 90)") != std::string::npos);
}

TEST_CASE("Explain: RouteTable::explain gives route()'s own answer", "[explain]") {
  const auto& l = *snapshot().listeners[0];
  const http::HcmConfig* hcm = l.filter_chains[0].terminal->httpConnectionManager();
  REQUIRE(hcm != nullptr);
  for (const char* path : {"/api/x", "/exact", "/static/a.css", "/nothing", "/moved/x"}) {
    http::RequestHeaders h;
    h.method = "GET";
    h.path = path;
    h.authority = "shop.example";
    h.scheme = "http";
    http::RouteExplanation rx;
    hcm->routes->explain(h, rx);
    CHECK(rx.route == hcm->routes->route(h));
    CHECK(rx.virtual_host == "shop");
  }
}
