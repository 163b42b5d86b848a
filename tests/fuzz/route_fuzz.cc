// The route matcher (proxy/http/route_table) on requests from the fuzzer against a fixed route
// configuration that uses every kind of match the table implements: exact, suffix-wildcard,
// prefix-wildcard and port domains; prefix, path, regex and path-separated-prefix paths, case-insensitive
// ones; header matchers of every kind (exact, prefix, suffix, contains, regex, present, range, inverted,
// missing-as-empty, pseudo-headers); query parameters; gRPC; require_tls; weighted clusters, cluster
// headers, redirects and rewrites. The request's path is normalised first (proxy/http/path_util), as the
// connection manager does before routing; then the route's rewrite and redirect run, as the router does.
//
// Input: byte 0 options (bit 0 https, bits 1-2 normalisation, bit 3 x-envoy-internal), byte 1 the weighted
// pick, then newline-separated :method, :authority, :path and "name:value" header lines.

#include <string>

#include "envoy/config/route/v3/route.pb.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/config/bootstrap.h"
#include "proxy/http/path_util.h"
#include "proxy/http/route_table.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/http_fuzz_streams.h"

using namespace strait;

namespace {

constexpr char kRoutes[] = R"(
name: fuzz_routes
internal_only_headers: [x-internal-secret]
request_headers_to_add: [{header: {key: x-rc, value: rc}}]
virtual_hosts:
- name: exact
  domains: ["api.example.com", "api.example.com:8443"]
  request_headers_to_remove: [x-strip]
  routes:
  - {name: sep, match: {path_separated_prefix: "/sep"}, route: {cluster: a, prefix_rewrite: "/new"}}
  - {name: regex, match: {safe_regex: {regex: "/re/[0-9]+"}}, route: {cluster: a, regex_rewrite: {pattern: {regex: "^/re/([0-9]+)$"}, substitution: "/n/\\1"}}}
  - {name: ci, match: {prefix: "/CaSe", case_sensitive: false}, route: {cluster: b}}
  - {name: path, match: {path: "/exact"}, route: {cluster: a, host_rewrite_literal: "rewritten.example"}}
  - {name: hdr_exact, match: {prefix: "/h/exact", headers: [{name: X-Env, string_match: {exact: prod, ignore_case: true}}]}, route: {cluster: a}}
  - {name: hdr_prefix, match: {prefix: "/h/prefix", headers: [{name: x-v, string_match: {prefix: "v1."}}]}, route: {cluster: a}}
  - {name: hdr_suffix, match: {prefix: "/h/suffix", headers: [{name: x-v, string_match: {suffix: ".BETA", ignore_case: true}}]}, route: {cluster: a}}
  - {name: hdr_contains, match: {prefix: "/h/contains", headers: [{name: user-agent, string_match: {contains: "Mobile"}}]}, route: {cluster: a}}
  - {name: hdr_regex, match: {prefix: "/h/regex", headers: [{name: x-id, string_match: {safe_regex: {regex: "[0-9]{3}"}}}]}, route: {cluster: a}}
  - {name: hdr_present, match: {prefix: "/h/present", headers: [{name: x-debug, present_match: true}]}, route: {cluster: a}}
  - {name: hdr_absent, match: {prefix: "/h/absent", headers: [{name: x-debug, present_match: false}]}, route: {cluster: a}}
  - {name: hdr_range, match: {prefix: "/h/range", headers: [{name: x-n, range_match: {start: -10, end: 20}}]}, route: {cluster: a}}
  - {name: hdr_invert, match: {prefix: "/h/invert", headers: [{name: x-env, string_match: {exact: prod}, invert_match: true}]}, route: {cluster: a}}
  - {name: hdr_missing, match: {prefix: "/h/missing", headers: [{name: x-e, string_match: {exact: ""}, treat_missing_header_as_empty: true}]}, route: {cluster: a}}
  - {name: hdr_method, match: {prefix: "/h/method", headers: [{name: ":method", string_match: {exact: POST}}]}, route: {cluster: a}}
  - {name: hdr_authority, match: {prefix: "/h/authority", headers: [{name: ":authority", string_match: {prefix: "api."}}]}, route: {cluster: a}}
  - {name: q_present, match: {prefix: "/q", query_parameters: [{name: debug, present_match: true}]}, route: {cluster: a}}
  - {name: q_exact, match: {prefix: "/q", query_parameters: [{name: v, string_match: {exact: "2"}}]}, route: {cluster: b}}
  - {name: q_prefix, match: {prefix: "/q", query_parameters: [{name: lang, string_match: {prefix: "EN", ignore_case: true}}]}, route: {cluster: a}}
  - {name: grpc, match: {prefix: "/pkg.Service/", grpc: {}}, route: {cluster: a, timeout: 0s}}
  - {name: weighted, match: {prefix: "/w"}, route: {weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 3}, {name: nope, weight: 2}]}}}
  - {name: by_header, match: {prefix: "/ch"}, route: {cluster_header: x-cluster}}
  - {name: redirect_https, match: {prefix: "/secure"}, redirect: {https_redirect: true}}
  - {name: redirect_port, match: {prefix: "/port"}, redirect: {port_redirect: 8443, scheme_redirect: HTTPS, response_code: PERMANENT_REDIRECT}}
  - {name: redirect_path, match: {prefix: "/pq"}, redirect: {path_redirect: "/landing?from=pq"}}
  - {name: redirect_prefix, match: {prefix: "/old/"}, redirect: {prefix_rewrite: "/new/", strip_query: true}}
  - {name: redirect_regex, match: {prefix: "/rx/"}, redirect: {regex_rewrite: {pattern: {regex: "^/rx/(.*)$"}, substitution: "/r/\\1"}}}
  - {name: gone, match: {prefix: "/gone"}, direct_response: {status: 410, body: {inline_string: "gone"}}}
  - {name: rest, match: {prefix: "/"}, route: {cluster: a, host_rewrite_header: x-host}}
- name: suffix
  domains: ["*.example.com", "*-svc.example.org"]
  routes: [{match: {prefix: "/"}, route: {cluster: b, prefix_rewrite: "/s/"}}]
- name: prefix
  domains: ["www.*", "host:*"]
  routes: [{match: {prefix: "/"}, route: {cluster: c, auto_host_rewrite: true}}]
- name: tls
  domains: ["secure.example.net"]
  require_tls: EXTERNAL_ONLY
  routes: [{match: {prefix: "/"}, route: {cluster: a}}]
- name: default
  domains: ["*"]
  routes: [{match: {prefix: "/"}, route: {cluster: c}}]
)";

const http::RouteTable& table() {
  static const http::RouteTableConstSharedPtr* t = [] {
    fuzz::init();
    auto json = config::yamlToJson(kRoutes, "", "fuzz");
    envoy::config::route::v3::RouteConfiguration rc;
    if (!json.ok() || !google::protobuf::util::JsonStringToMessage(*json, &rc).ok()) {
      std::fprintf(stderr, "route_fuzz: the fixed route configuration does not parse\n");
      std::abort();
    }
    config::ClusterMap clusters;  // none: validate_clusters is off
    http::RouteTable::Options options;
    options.validate_clusters = false;
    auto made = http::RouteTable::create(rc, "route_config", clusters, options);
    if (!made.ok()) {
      std::fprintf(stderr, "route_fuzz: %s\n", std::string(made.status().message()).c_str());
      std::abort();
    }
    return new http::RouteTableConstSharedPtr(*made);
  }();
  return **t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const http::RouteTable& routes = table();
  fuzz::Input in(data, size);
  const uint8_t flags = in.byte();
  const uint8_t pick = in.byte();
  http::RequestHeaders h;
  h.scheme = (flags & 1) != 0 ? "https" : "http";
  h.method = std::string(in.take(64, '\n'));
  h.authority = std::string(in.take(256, '\n'));
  h.path = std::string(in.take(2048, '\n'));
  if ((flags & 8) != 0) h.add("x-envoy-internal", "true");
  for (int i = 0; i < 32 && !in.rest().empty(); ++i) {
    const std::string_view line = in.take(512, '\n');
    const size_t colon = line.find(':', 1);  // a leading ':' is part of a pseudo-header-like name
    if (colon == std::string_view::npos) {
      h.add(line, "");
    } else {
      h.add(line.substr(0, colon), line.substr(colon + 1));
    }
  }
  // Normalised before routing, as the connection manager does (a rejected or redirected path is not
  // routed).
  const bool merge = (flags & 2) != 0;
  const auto action = (flags & 4) != 0 ? http::PathEscapedSlashesAction::UnescapeAndForward
                                       : http::PathEscapedSlashesAction::Keep;
  if (h.method != "CONNECT" && http::normalizePath(h.path, merge, action) != http::PathNormalizeResult::Ok) return 0;

  const http::RouteEntry* e = routes.route(h);
  for (const auto& entry : h.entries()) (void)routes.isInternalOnlyHeader(entry.name);
  if (e == nullptr) return 0;
  FUZZ_CHECK(e->kind != http::RouteEntry::Kind::WeightedClusters || e->total_weight > 0, "weighted route without weight");
  if (e->kind == http::RouteEntry::Kind::Redirect) {
    const std::string location = e->redirectLocation(h);
    FUZZ_CHECK(!location.empty(), "an empty redirect location");
    return 0;
  }
  if (e->kind == http::RouteEntry::Kind::WeightedClusters) {
    const http::WeightedTarget* w = e->pickWeighted(pick * 2654435761u);
    FUZZ_CHECK(w != nullptr, "no weighted cluster picked");
    w->request_headers.applyTo(h);
  } else {
    e->request_headers.applyTo(h);
  }
  e->rewrite(h);
  return 0;
}
