#include <catch2/catch.hpp>

#include <string>
#include <thread>
#include <vector>

#include "proxy/stats/stats.h"
#include "proxy/upstream/cluster_runtime.h"

using namespace strait;

TEST_CASE("ClusterRuntime: a counter per response code, made on first sight, found after") {
  stats::Store store(3);
  stats::setThreadShard(&store.shard(0));
  const size_t before = store.statCount();
  {
    auto rt = upstream::clusterRuntime(store, "codes", "codes-alt");
    stats::Counter c200, again, c503;
    REQUIRE(rt->responseCodeCounter(200, &c200));
    stats::inc(c200);
    REQUIRE(rt->responseCodeCounter(200, &again));
    CHECK(again.index == c200.index);
    stats::inc(again);
    REQUIRE(rt->responseCodeCounter(503, &c503));
    CHECK(c503.index != c200.index);
    stats::inc(c503);
    // Named as Envoy names them, under the cluster's stat prefix (alt_stat_name when given).
    CHECK(store.value("cluster.codes-alt.upstream_rq_200") == 2);
    CHECK(store.value("cluster.codes-alt.upstream_rq_503") == 1);
    // Codes outside 100-599 get none.
    stats::Counter none;
    CHECK_FALSE(rt->responseCodeCounter(99, &none));
    CHECK_FALSE(rt->responseCodeCounter(600, &none));

    // Workers racing on new codes: each code gets one counter, and every increment lands on it.
    std::vector<std::thread> threads;
    for (uint32_t w = 1; w <= 2; ++w) {
      threads.emplace_back([&store, &rt, w] {
        stats::setThreadShard(&store.shard(w));
        for (int round = 0; round < 200; ++round) {
          for (uint32_t code : {201u, 202u, 404u, 500u}) {
            stats::Counter c;
            if (rt->responseCodeCounter(code, &c)) stats::inc(c);
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const char* code : {"201", "202", "404", "500"}) {
      CHECK(store.value(std::string("cluster.codes-alt.upstream_rq_") + code) == 400);
    }

    // A bounded table: past kMaxResponseCodes distinct codes, no new counter (the class counters
    // still count them).
    uint32_t made = 6;  // 200, 503, 201, 202, 404, 500
    for (uint32_t code = 100; code < 600 && made < upstream::ClusterRuntime::kMaxResponseCodes + 3; ++code) {
      stats::Counter c;
      if (rt->responseCodeCounter(code, &c)) ++made;
      else break;
    }
    CHECK(made == upstream::ClusterRuntime::kMaxResponseCodes);
  }
  // They belong to the cluster: gone with its runtime.
  CHECK(store.statCount() == before);
}
