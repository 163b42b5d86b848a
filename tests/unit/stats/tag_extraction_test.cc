#include "proxy/stats/tag_extraction.h"

#include <catch2/catch.hpp>

#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "re2/re2.h"

#include "proxy/stats/stats.h"

using namespace strait::stats;

namespace {

std::map<std::string, std::string> tagsOf(const TaggedName& t) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : t.tags) m[k] = v;
  return m;
}

}  // namespace

TEST_CASE("Tag extraction: response codes and classes, cluster names with dots kept whole") {
  auto t = extractTags("cluster.outbound|80||a.ns.svc.cluster.local.upstream_rq_200");
  CHECK(t.name == "cluster.upstream_rq");
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"envoy_cluster_name", "outbound|80||a.ns.svc.cluster.local"},
                                                        {"envoy_response_code", "200"}});
  CHECK(t.pattern == "cluster.{envoy_cluster_name}.upstream_rq_{envoy_response_code}");

  t = extractTags("http.inbound_0.0.0.0_8080.downstream_rq_2xx");
  CHECK(t.name == "http.downstream_rq_xx");
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"envoy_http_conn_manager_prefix", "inbound_0.0.0.0_8080"},
                                                        {"envoy_response_code_class", "2"}});
  CHECK(t.pattern == "http.{envoy_http_conn_manager_prefix}.downstream_rq_{envoy_response_code_class}xx");

  // Without the pattern (the scrape's fast path): the same name and tags.
  const auto fast = extractTags("http.inbound_0.0.0.0_8080.downstream_rq_2xx", false);
  CHECK(fast.name == t.name);
  CHECK(tagsOf(fast) == tagsOf(t));
  CHECK(fast.pattern.empty());

  // Not a code: "_rq_total", "_rq_timeout", a four-digit suffix.
  CHECK(extractTags("cluster.b.upstream_rq_total").name == "cluster.upstream_rq_total");
  CHECK(extractTags("cluster.b.upstream_rq_2000").name == "cluster.upstream_rq_2000");
}

TEST_CASE("Tag extraction: the whole listener address with its port, or a stat_prefix; not admin") {
  auto t = extractTags("listener.0.0.0.0_15001.downstream_cx_total");
  CHECK(t.name == "listener.downstream_cx_total");
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"envoy_listener_address", "0.0.0.0_15001"}});
  t = extractTags("listener.[__1]_15006.http_inspector.http11_found");
  CHECK(t.name == "listener.http_inspector.http11_found");
  CHECK(tagsOf(t)["envoy_listener_address"] == "[__1]_15006");
  t = extractTags("listener.virtualInbound.downstream_cx_active");
  CHECK(tagsOf(t)["envoy_listener_address"] == "virtualInbound");
  CHECK(extractTags("listener.admin.downstream_cx_total").tags.empty());
  t = extractTags("listener.10.0.0.1_80.http.inbound_80.downstream_rq_5xx");
  CHECK(t.name == "listener.http.downstream_rq_xx");
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"envoy_listener_address", "10.0.0.1_80"},
                                                        {"envoy_http_conn_manager_prefix", "inbound_80"},
                                                        {"envoy_response_code_class", "5"}});
}

TEST_CASE("Tag extraction: cluster sub-scopes, ssl, workers, tcp and HTTP sub-scopes") {
  auto t = extractTags("cluster.a.b.circuit_breakers.default.cx_open");
  CHECK(t.name == "cluster.circuit_breakers.default.cx_open");
  CHECK(tagsOf(t)["envoy_cluster_name"] == "a.b");
  CHECK(extractTags("cluster.x.outlier_detection.ejections_active").name == "cluster.outlier_detection.ejections_active");
  CHECK(tagsOf(extractTags("cluster.x.y.health_check.healthy"))["envoy_cluster_name"] == "x.y");

  t = extractTags("cluster.c1.ssl.ciphers.ECDHE-RSA-AES128-GCM-SHA256");
  CHECK(t.name == "cluster.ssl.ciphers");
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"envoy_cluster_name", "c1"},
                                                        {"envoy_ssl_cipher_suite", "ECDHE-RSA-AES128-GCM-SHA256"}});
  t = extractTags("listener.0.0.0.0_443.ssl.versions.TLSv1.3");
  CHECK(t.name == "listener.ssl.versions");
  CHECK(tagsOf(t)["envoy_ssl_version"] == "TLSv1.3");
  t = extractTags("cluster.c1.ssl.peer.spiffe_//cluster.local/ns/default/sa/web.handshake");
  CHECK(t.name == "cluster.ssl.peer.handshake");
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"envoy_cluster_name", "c1"},
                                                        {"ssl_peer", "spiffe_//cluster.local/ns/default/sa/web"}});

  t = extractTags("server.worker_1.loop_max_iteration_usec");
  CHECK(t.name == "server.worker_loop_max_iteration_usec");
  CHECK(tagsOf(t)["envoy_worker_id"] == "1");

  t = extractTags("tcp.outbound|9000||echo.default.svc.cluster.local.downstream_cx_total");
  CHECK(t.name == "tcp.downstream_cx_total");
  CHECK(tagsOf(t)["envoy_tcp_prefix"] == "outbound|9000||echo.default.svc.cluster.local");

  t = extractTags("http.in.bound.rbac.allowed");
  CHECK(t.name == "http.rbac.allowed");
  CHECK(tagsOf(t)["envoy_http_conn_manager_prefix"] == "in.bound");
  t = extractTags("http.ingress.fault.web.aborts_injected");
  CHECK(t.name == "http.fault.aborts_injected");
  CHECK(tagsOf(t)["envoy_fault_downstream_cluster"] == "web");
  CHECK(extractTags("http.ingress.fault.delays_injected").name == "http.fault.delays_injected");

  // Names no extractor knows keep themselves.
  t = extractTags("cluster_manager.cds.update_success");
  CHECK(t.name == "cluster_manager.cds.update_success");
  CHECK(t.tags.empty());
}

TEST_CASE("Tag extraction: Prometheus families carry HELP and one TYPE each") {
  Store store(1);
  setThreadShard(&store.shard(0));
  inc(store.counter("cluster.a.upstream_rq_200"), 2);
  inc(store.counter("cluster.b.upstream_rq_503"));
  inc(store.counter("http.in.downstream_rq_2xx"), 4);
  std::string out = renderPrometheus(store.snapshot());
  CHECK(out.find("# HELP envoy_cluster_upstream_rq counter cluster.{envoy_cluster_name}.upstream_rq_{envoy_response_code}\n"
                 "# TYPE envoy_cluster_upstream_rq counter\n") != std::string::npos);
  CHECK(out.find("envoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"a\"} 2\n") != std::string::npos);
  CHECK(out.find("envoy_cluster_upstream_rq{envoy_response_code=\"503\",envoy_cluster_name=\"b\"} 1\n") != std::string::npos);
  CHECK(out.find("envoy_http_downstream_rq_xx{envoy_response_code_class=\"2\",envoy_http_conn_manager_prefix=\"in\"} 4\n") !=
        std::string::npos);
  size_t types = 0;
  for (size_t at = out.find("# TYPE envoy_cluster_upstream_rq "); at != std::string::npos;
       at = out.find("# TYPE envoy_cluster_upstream_rq ", at + 1)) {
    ++types;
  }
  CHECK(types == 1);
}

namespace {

TagRules::Specifier regexTag(const std::string& name, const std::string& regex) {
  TagRules::Specifier s;
  s.label = tagLabel(name);
  auto re = std::make_shared<re2::RE2>(regex, re2::RE2::Quiet);
  if (re->ok()) {
    s.regex = std::move(re);
  } else {
    s.ecma = std::make_shared<std::regex>(regex, std::regex::ECMAScript);
  }
  return s;
}

// Istio's bootstrap: its own tag names and regexes, the built-in ones off.
TagRules istioRules() {
  TagRules r;
  r.use_defaults = false;
  for (const auto& [name, regex] : std::vector<std::pair<std::string, std::string>>{
           {"cluster_name", R"(^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.))"},
           {"tcp_prefix", R"(^tcp\.((.*?)\.)\w+?$)"},
           {"response_code", R"(_rq(_(\d{3}))$)"},
           {"response_code_class", R"(_rq(_(\dxx))$)"},
           // A look-ahead: RE2 refuses it, so it runs as ECMAScript.
           {"http_conn_manager_listener_prefix",
            R"(^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.))"},
           {"listener_address", R"(^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.))"}}) {
    r.specifiers.push_back(regexTag(name, regex));
    r.given.insert(r.specifiers.back().label);
  }
  return r;
}

}  // namespace

TEST_CASE("Tag extraction: the bootstrap's stats_tags, Istio's among them") {
  const TagRules rules = istioRules();
  REQUIRE(rules.specifiers[4].ecma != nullptr);  // the look-ahead one
  REQUIRE(rules.specifiers[0].regex != nullptr);

  // The first group leaves the name; the value is the second group.
  auto t = extractTags("cluster.outbound|80||reviews.bookinfo.svc.cluster.local.upstream_rq_200", &rules, true);
  CHECK(t.name == "cluster.upstream_rq");
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"cluster_name", "outbound|80||reviews.bookinfo.svc.cluster.local"},
                                                        {"response_code", "200"}});
  CHECK(t.pattern == "cluster.{cluster_name}.upstream_rq_{response_code}");

  // Built-in tags are off (use_all_default_tags: false): a worker id stays in the name.
  t = extractTags("server.worker_0.loop_max_iteration_usec", &rules, false);
  CHECK(t.name == "server.worker_0.loop_max_iteration_usec");
  CHECK(t.tags.empty());

  // The ECMAScript one: listener.<address>.http.<prefix>.<stat>.
  t = extractTags("listener.10.1.2.3_8080.http.10.1.2.3_8080.downstream_rq_2xx", &rules, false);
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"http_conn_manager_listener_prefix", "10.1.2.3_8080"},
                                                        {"listener_address", "10.1.2.3_8080"},
                                                        {"response_code_class", "2xx"}});  // Istio's regex keeps "xx"
  CHECK(t.name == "listener.http.downstream_rq");

  // A fixed value on every stat, and a specifier that replaces a built-in tag: the built-in one does not
  // also run for it, the others do.
  TagRules mixed;
  TagRules::Specifier fixed;
  fixed.label = tagLabel("mesh.id");
  fixed.fixed = true;
  fixed.fixed_value = "m1";
  mixed.specifiers.push_back(fixed);
  mixed.given.insert(fixed.label);
  mixed.specifiers.push_back(regexTag("envoy.cluster_name", R"(^cluster\.((\w+)\.))"));
  mixed.given.insert("envoy_cluster_name");
  t = extractTags("cluster.web.ssl.handshake", &mixed, true);
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"mesh_id", "m1"}, {"envoy_cluster_name", "web"}});
  CHECK(t.name == "cluster.ssl.handshake");
  t = extractTags("http.in.downstream_rq_5xx", &mixed, false);
  CHECK(tagsOf(t) == std::map<std::string, std::string>{
                         {"mesh_id", "m1"}, {"envoy_http_conn_manager_prefix", "in"}, {"envoy_response_code_class", "5"}});

  // A built-in asked for by name runs alone when the defaults are off.
  TagRules named;
  named.use_defaults = false;
  named.builtins.insert("envoy_response_code");
  t = extractTags("cluster.web.upstream_rq_503", &named, false);
  CHECK(tagsOf(t) == std::map<std::string, std::string>{{"envoy_response_code", "503"}});
  CHECK(t.name == "cluster.web.upstream_rq");

  // Rendering with the rules: the labels are the specifiers' names.
  Store store(1);
  setThreadShard(&store.shard(0));
  inc(store.counter("cluster.outbound|80||reviews.bookinfo.svc.cluster.local.upstream_rq_200"), 3);
  const std::string out = renderPrometheus(store.snapshot(), &rules);
  CHECK(out.find("envoy_cluster_upstream_rq{cluster_name=\"outbound|80||reviews.bookinfo.svc.cluster.local\","
                 "response_code=\"200\"} 3\n") != std::string::npos);
}
