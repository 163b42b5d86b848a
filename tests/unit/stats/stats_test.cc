#include <catch2/catch.hpp>
#include <thread>

#include "proxy/stats/stats.h"

using namespace strait::stats;

TEST_CASE("Stats: shards are summed on scrape") {
  Store store(3);
  Counter c = store.counter("cluster.a.upstream_cx_total");
  std::thread workers[2];
  for (int w = 0; w < 2; ++w) {
    workers[w] = std::thread([&, w] {
      setThreadShard(&store.shard(w + 1));
      for (int i = 0; i < 1000; ++i) inc(c);
    });
  }
  for (auto& t : workers) t.join();
  REQUIRE(store.value("cluster.a.upstream_cx_total") == 2000);
}

TEST_CASE("Stats: the same name gives the same stat") {
  Store store(1);
  REQUIRE(store.counter("x").index == store.counter("x").index);
  REQUIRE(store.counter("x").index != store.counter("y").index);
}

TEST_CASE("Stats: hidden stats are summed but not listed") {
  Store store(1);
  setThreadShard(&store.shard(0));
  Counter h = store.counter("cluster.a.host.1.cx_total", true);
  inc(h, 5);
  REQUIRE(store.value(h) == 5);
  for (const auto& v : store.snapshot()) REQUIRE(v.name != "cluster.a.host.1.cx_total");
}

TEST_CASE("Stats: Prometheus output extracts Envoy's tags") {
  Store store(1);
  setThreadShard(&store.shard(0));
  inc(store.counter("cluster.back.end.upstream_cx_total"), 3);
  add(store.gauge("listener.127.0.0.1_80.downstream_cx_active"), 2);
  inc(store.counter("server.live"));
  std::string out = renderPrometheus(store.snapshot());
  REQUIRE(out.find("# TYPE envoy_cluster_upstream_cx_total counter\n") != std::string::npos);
  REQUIRE(out.find("envoy_cluster_upstream_cx_total{envoy_cluster_name=\"back.end\"} 3\n") != std::string::npos);
  REQUIRE(out.find("envoy_listener_downstream_cx_active{envoy_listener_address=\"127.0.0.1_80\"} 2\n") !=
          std::string::npos);
  REQUIRE(out.find("envoy_server_live 1\n") != std::string::npos);
}

TEST_CASE("Stats: histograms bucket samples and render cumulative Prometheus buckets") {
  Store store(1);
  setThreadShard(&store.shard(0));
  Histogram h = store.histogram("http.in.downstream_rq_time");
  Counter after = store.counter("http.in.downstream_rq_total");
  record(h, 300);      // 0.3 ms -> le 0.5
  record(h, 3000);     // 3 ms -> le 5
  record(h, 3000);
  inc(after);          // a stat created after a histogram must not overlap its slots
  auto values = store.snapshot();
  const Store::Value* hv = nullptr;
  for (const auto& v : values) {
    if (v.name == "http.in.downstream_rq_time") hv = &v;
  }
  REQUIRE(hv != nullptr);
  REQUIRE(hv->value == 3);
  REQUIRE(hv->sum_us == 6300);
  REQUIRE(store.value("http.in.downstream_rq_total") == 1);
  std::string out = renderPrometheus(values);
  REQUIRE(out.find("# TYPE envoy_http_downstream_rq_time histogram\n") != std::string::npos);
  REQUIRE(out.find("envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"0.5\"} 1\n") !=
          std::string::npos);
  REQUIRE(out.find("envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"in\",le=\"5\"} 3\n") !=
          std::string::npos);
  REQUIRE(out.find("envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix=\"in\"} 3\n") !=
          std::string::npos);
  REQUIRE(histogramSummary(*hv).find("P50(<=5ms)") != std::string::npos);
}
