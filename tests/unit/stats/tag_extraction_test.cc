#include "proxy/stats/tag_extraction.h"

#include <catch2/catch.hpp>

#include <map>

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
