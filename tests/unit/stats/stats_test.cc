#include <catch2/catch.hpp>
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

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

TEST_CASE("Stats: scoped stats live while a scope holds them, then leave and their slots are reused zeroed") {
  Store store(2);
  setThreadShard(&store.shard(1));
  const size_t base = store.statCount();
  uint32_t old_counter_slot;
  {
    auto first = std::make_unique<StatScope>(store);
    Counter rq = first->counter("cluster.a.upstream_rq_total");
    Histogram t = first->histogram("cluster.a.upstream_rq_time");
    Gauge host = first->gauge("cluster.a.host.10.0.0.1:80.cx_active", true);
    old_counter_slot = rq.index;
    inc(rq, 5);
    record(t, 2000);
    add(host, 3);
    REQUIRE(store.statCount() == base + 3);

    // An update of the same cluster: the new scope takes the same stats before the old one goes.
    auto second = std::make_unique<StatScope>(store);
    REQUIRE(second->counter("cluster.a.upstream_rq_total").index == rq.index);
    REQUIRE(second->histogram("cluster.a.upstream_rq_time").index == t.index);
    first.reset();
    REQUIRE(store.value("cluster.a.upstream_rq_total") == 5);  // counts carry on
    REQUIRE(store.statCount() == base + 2);                    // the host the update dropped is gone
    REQUIRE(store.value("cluster.a.host.10.0.0.1:80.cx_active") == 0);
    // The last holder goes: the cluster's stats leave the listing.
  }
  REQUIRE(store.statCount() == base);
  for (const auto& v : store.snapshot()) REQUIRE(v.name.rfind("cluster.a.", 0) != 0);
  REQUIRE(store.slotsInUse() == 0);

  // A new stat of one slot reuses a freed slot, and starts from zero in every shard.
  StatScope next(store);
  Counter fresh = next.counter("cluster.b.upstream_rq_total");
  REQUIRE(store.value(fresh) == 0);
  REQUIRE(store.slotsInUse() == 1);
  (void)old_counter_slot;
  // A histogram's run of slots is reused by a histogram, zeroed too.
  Histogram h = next.histogram("cluster.b.upstream_rq_time");
  for (const auto& v : store.snapshot()) {
    if (v.name == "cluster.b.upstream_rq_time") REQUIRE(v.value == 0);
  }
  (void)h;
}

TEST_CASE("Stats: a block of stats reads, lists and carries on exactly as the stats made one by one") {
  Store store(2);
  setThreadShard(&store.shard(1));
  static const StatBlock layout = [] {
    StatBlock b;
    b.counter("upstream_rq_total");
    b.gauge("upstream_cx_active");
    b.histogram("upstream_rq_time");
    b.counter("upstream_rq_5xx");
    return b;
  }();
  REQUIRE(layout.size() == 4);
  REQUIRE(layout.slots() == 3 + kHistogramBuckets + 1);
  const uint32_t rq = 0, active = 1, time = 2, fivexx = 2 + kHistogramBuckets + 1;
  {
    auto first = std::make_unique<StatScope>(store);
    const uint32_t base = first->block("cluster.a", layout);
    inc(Counter{base + rq}, 5);
    add(Gauge{base + active}, 2);
    record(Histogram{base + time}, 2000);
    inc(Counter{base + fivexx});
    REQUIRE(store.statCount() == 4);
    // By name, as /stats, the tests and hot restart's carry-over ask for them.
    REQUIRE(store.value("cluster.a.upstream_rq_total") == 5);
    REQUIRE(store.value("cluster.a.upstream_cx_active") == 2);
    REQUIRE(store.value("cluster.a.upstream_rq_5xx") == 1);
    REQUIRE(store.value("cluster.a.upstream_rq_retry") == 0);  // not in the layout
    REQUIRE(store.value("cluster.b.upstream_rq_total") == 0);  // no such block
    std::map<std::string, Store::Value> listed;
    for (auto& v : store.snapshot()) listed.emplace(v.name, v);
    REQUIRE(listed.size() == 4);
    REQUIRE(listed.at("cluster.a.upstream_rq_total").type == StatType::Counter);
    REQUIRE(listed.at("cluster.a.upstream_cx_active").type == StatType::Gauge);
    REQUIRE(listed.at("cluster.a.upstream_rq_time").type == StatType::Histogram);
    REQUIRE(listed.at("cluster.a.upstream_rq_time").value == 1);
    REQUIRE(listed.at("cluster.a.upstream_rq_time").sum_us == 2000);
    // A counter asked for by its full name (hot restart) is the block's slot, and holds the block.
    StatScope by_name(store);
    REQUIRE(by_name.counter("cluster.a.upstream_rq_5xx").index == base + fivexx);

    // A new version of the cluster: the same block, the same slots, counts carry on.
    auto second = std::make_unique<StatScope>(store);
    REQUIRE(second->block("cluster.a", layout) == base);
    first.reset();
    REQUIRE(store.value("cluster.a.upstream_rq_total") == 5);
    REQUIRE(store.statCount() == 4);
    // A second cluster has its own block.
    StatScope other(store);
    REQUIRE(other.block("cluster.b", layout) != base);
    REQUIRE(store.statCount() == 8);
    REQUIRE(store.value("cluster.b.upstream_rq_total") == 0);
  }
  // Every holder gone: the names leave the listing and the slots are free.
  REQUIRE(store.statCount() == 0);
  REQUIRE(store.snapshot().empty());
  REQUIRE(store.slotsInUse() == 0);
  // A block made again under the name starts from zero.
  StatScope again(store);
  const uint32_t base = again.block("cluster.a", layout);
  REQUIRE(store.value(Counter{base + rq}) == 0);
  REQUIRE(store.value("cluster.a.upstream_rq_total") == 0);
}

namespace {
// A block of a counter (offset 0) and a histogram (offset 1).
StatBlock totalAndTime() {
  StatBlock b;
  b.counter("upstream_rq_total");
  b.histogram("upstream_rq_time");
  return b;
}
}  // namespace

TEST_CASE("Stats: a filtered snapshot lists only what the filter keeps, with the same values and order") {
  Store store(2);
  setThreadShard(&store.shard(0));
  static const StatBlock& layout = *new StatBlock(totalAndTime());  // layouts live for the process
  StatScope scope(store);
  const uint32_t a = scope.block("cluster.a", layout);
  const uint32_t b = scope.block("cluster.b", layout);
  inc(Counter{a}, 3);
  inc(Counter{b}, 4);
  record(Histogram{b + 1}, 1500);
  inc(store.counter("server.alone"), 7);
  std::vector<std::string> asked;
  const auto kept = store.snapshot([&](std::string_view name) {
    asked.emplace_back(name);
    return name.find("cluster.b.") == 0 || name == "server.alone";
  });
  // Every stat was looked at once, by its full name; only the kept ones came out, sorted.
  CHECK(asked.size() == store.statCount());
  REQUIRE(kept.size() == 3);
  CHECK(kept[0].name == "cluster.b.upstream_rq_time");
  CHECK(kept[0].type == StatType::Histogram);
  CHECK(kept[0].value == 1);
  CHECK(kept[0].sum_us == 1500);
  CHECK(kept[1].name == "cluster.b.upstream_rq_total");
  CHECK(kept[1].value == 4);
  CHECK(kept[2].name == "server.alone");
  CHECK(kept[2].value == 7);
  // The same entries as the full snapshot gives for those names.
  size_t same = 0;
  for (const auto& v : store.snapshot()) {
    for (const auto& k : kept) same += (k.name == v.name && k.value == v.value) ? 1 : 0;
  }
  CHECK(same == kept.size());
  CHECK(store.snapshot([](std::string_view) { return false; }).empty());
}

TEST_CASE("Stats: a stat also made outside any scope is never released") {
  Store store(1);
  setThreadShard(&store.shard(0));
  Counter permanent = store.counter("listener.x.downstream_cx_total");
  {
    StatScope scope(store);
    REQUIRE(scope.counter("listener.x.downstream_cx_total").index == permanent.index);
    inc(permanent, 2);
  }
  REQUIRE(store.value("listener.x.downstream_cx_total") == 2);
  REQUIRE(store.statCount() == 1);
}

TEST_CASE("Stats: churning scopes with new names does not grow the slot space") {
  // xDS churn: every round brings clusters under new names and drops the previous round's. Slots must be
  // recycled, or the store would grow without bound (and reach its hard limit).
  Store store(2);
  uint32_t peak = 0;
  uint32_t high_water_after_first_round = 0;
  uint32_t high_water = 0;
  for (int round = 0; round < 50; ++round) {
    std::vector<std::unique_ptr<StatScope>> scopes;
    for (int c = 0; c < 100; ++c) {
      auto s = std::make_unique<StatScope>(store);
      const std::string p = "cluster.r" + std::to_string(round) + "-c" + std::to_string(c) + ".";
      s->counter(p + "upstream_rq_total");
      s->gauge(p + "upstream_cx_active");
      s->histogram(p + "upstream_rq_time");
      scopes.push_back(std::move(s));
    }
    peak = std::max(peak, store.slotsInUse());
    high_water = std::max(high_water, store.slotHighWater());
    if (round == 0) high_water_after_first_round = store.slotHighWater();
  }
  // Each round's scopes go at the end of the round, so every later round fits in the slots the first took,
  // and once they are all gone the slot space shrinks back to nothing.
  REQUIRE(high_water == high_water_after_first_round);
  REQUIRE(store.slotHighWater() == 0);
  REQUIRE(store.slotsInUse() == 0);
  REQUIRE(store.statCount() == 0);
  REQUIRE(peak == 100 * (2 + kHistogramBuckets + 1));
}

// ---- compact names and sparse shards (perf/results/2026-12-06-cluster-memory.md) ----

#include <sys/mman.h>
#include <unistd.h>

namespace {
// Whether the shard page holding `slot` is resident (mincore).
bool resident(Shard& shard, uint32_t slot) {
  const long page = sysconf(_SC_PAGESIZE);
  auto addr = reinterpret_cast<uintptr_t>(&shard.slot(slot)) & ~static_cast<uintptr_t>(page - 1);
  unsigned char vec = 0;
  REQUIRE(mincore(reinterpret_cast<void*>(addr), static_cast<size_t>(page), &vec) == 0);
  return (vec & 1) != 0;
}
}  // namespace

TEST_CASE("Stats: names are spelled back exactly from their interned prefix and leaf") {
  Store store(1);
  setThreadShard(&store.shard(0));
  const std::vector<std::string> names = {"server.live", "nodots", "cluster.a.b.c.upstream_rq_total",
                                          "cluster.a.b.c.upstream_cx_total", "trailing.", "cluster..x"};
  int64_t n = 1;
  for (const auto& name : names) inc(store.counter(name), n++);
  auto snap = store.snapshot();
  std::vector<std::string> got;
  for (const auto& v : snap) got.push_back(v.name);
  std::vector<std::string> want = names;
  std::sort(want.begin(), want.end());
  REQUIRE(got == want);
  n = 1;
  for (const auto& name : names) REQUIRE(store.value(name) == n++);
  REQUIRE(store.value("cluster.a.b.c.nothing") == 0);
  REQUIRE(store.value("cluster.zz.upstream_rq_total") == 0);
}

TEST_CASE("Stats: a cluster's stats cost a few dozen bytes each, and give it all back when released") {
  Store store(4);
  setThreadShard(&store.shard(0));
  const size_t base = store.metadataBytes();
  const char* leaves[] = {"upstream_cx_total", "upstream_cx_active", "upstream_rq_total", "upstream_rq_2xx",
                          "upstream_rq_5xx", "membership_total", "upstream_rq_retry", "upstream_cx_none_healthy"};
  std::vector<std::unique_ptr<StatScope>> scopes;
  for (int c = 0; c < 2000; ++c) {
    auto s = std::make_unique<StatScope>(store);
    const std::string p = "cluster.outbound|8080||svc-" + std::to_string(c) + ".ns.svc.cluster.local.";
    for (const char* l : leaves) s->counter(p + l);
    s->histogram(p + "upstream_rq_time");
    scopes.push_back(std::move(s));
  }
  const size_t stats_made = 2000 * 9;
  REQUIRE(store.statCount() == stats_made);
  const size_t per_stat = (store.metadataBytes() - base) / stats_made;
  INFO("bookkeeping bytes per stat: " << per_stat);
  REQUIRE(per_stat < 80);  // was ~230 with two std::maps keyed by the full name
  scopes.clear();
  REQUIRE(store.statCount() == 0);
  REQUIRE(store.slotsInUse() == 0);
  REQUIRE(store.slotHighWater() == 0);
  REQUIRE(store.metadataBytes() < base + 4096);
}

TEST_CASE("Stats: shard pages are materialised by writes only, and given back when their stats go") {
  Store store(3);
  setThreadShard(&store.shard(1));
  auto scope = std::make_unique<StatScope>(store);
  std::vector<Counter> counters;
  for (int i = 0; i < 3 * 512; ++i) counters.push_back(scope->counter("cluster.c" + std::to_string(i) + ".rq"));
  // Nothing written yet: no shard has the pages (reading does not make them resident).
  REQUIRE(store.value(counters[0]) == 0);
  REQUIRE_FALSE(resident(store.shard(0), counters[0].index));
  REQUIRE_FALSE(resident(store.shard(1), counters[0].index));
  inc(counters[0]);
  REQUIRE(resident(store.shard(1), counters[0].index));
  REQUIRE_FALSE(resident(store.shard(0), counters[0].index));
  REQUIRE_FALSE(resident(store.shard(2), counters[0].index));
  REQUIRE(store.value(counters[0]) == 1);
  const uint32_t slot = counters[0].index;
  scope.reset();
  REQUIRE_FALSE(resident(store.shard(1), slot));
  // The slot space is reused from the bottom, starting from zero.
  StatScope next(store);
  Counter again = next.counter("cluster.new.rq");
  REQUIRE(again.index == 0);
  REQUIRE(store.value(again) == 0);
}

TEST_CASE("Stats: primitive per-object stats are written like store stats and read directly") {
  PrimitiveCounter c;
  PrimitiveGauge g;
  inc(c);
  inc(c, 4);
  inc(g);
  inc(g);
  dec(g);
  REQUIRE(Store::value(c) == 5);
  REQUIRE(Store::value(g) == 1);
}
