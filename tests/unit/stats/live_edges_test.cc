#include <catch2/catch.hpp>
#include <string>
#include <thread>

#include "google/protobuf/struct.pb.h"
#include "proxy/common/response_flags.h"
#include "proxy/server/live_graph.h"
#include "proxy/stats/live_edges.h"

namespace live = strait::stats::live;

namespace {

std::array<uint64_t, live::kLatencyBuckets> hist(std::initializer_list<std::pair<uint32_t, uint64_t>> counts) {
  std::array<uint64_t, live::kLatencyBuckets> h{};
  for (auto [b, n] : counts) h[b] = n;
  return h;
}

const live::Edge* edge(const live::Snapshot& s, const std::string& peer) {
  for (const auto& e : s.edges) {
    if (e.peer == peer) return &e;
  }
  return nullptr;
}

}  // namespace

TEST_CASE("LiveEdges: latency buckets take a value up to and including their bound", "[live]") {
  CHECK(live::latencyBucket(0) == 0);
  CHECK(live::latencyBucket(250) == 0);
  CHECK(live::latencyBucket(251) == 1);
  CHECK(live::latencyBucket(1000) == 2);
  CHECK(live::latencyBucket(10000000) == live::kLatencyBuckets - 2);
  CHECK(live::latencyBucket(10000001) == live::kLatencyBuckets - 1);
  CHECK(live::latencyBucket(UINT64_MAX) == live::kLatencyBuckets - 1);
}

TEST_CASE("LiveEdges: percentiles interpolate inside the bucket holding the rank", "[live]") {
  CHECK(live::percentileUs(hist({}), 0.5) == 0);
  // 100 values in (250, 500]: the median is rank 50 -> 250 + 250 * 50/100.
  CHECK(live::percentileUs(hist({{1, 100}}), 0.5) == Approx(375));
  CHECK(live::percentileUs(hist({{1, 100}}), 0.99) == Approx(250 + 250 * 0.99));
  // 90 fast (<= 250 us) and 10 slow in (50, 100] ms: p50 in the first bucket, p99 in the slow one.
  const auto h = hist({{0, 90}, {8, 10}});
  CHECK(live::percentileUs(h, 0.5) == Approx(250.0 * 50 / 90));
  CHECK(live::percentileUs(h, 0.99) == Approx(50000 + 50000 * 9.0 / 10));
  CHECK(live::percentileUs(h, 1.0) == Approx(100000));
  // One value: every quantile is in its bucket; the unbounded bucket answers its lower bound.
  CHECK(live::percentileUs(hist({{live::kLatencyBuckets - 1, 1}}), 0.5) == Approx(10000000));
  CHECK(live::percentileUs(hist({{3, 1}}), 0.01) == Approx(2500));
}

TEST_CASE("LiveEdges: a ring sums the last minute and forgets older seconds", "[live]") {
  auto ring = std::make_unique<live::Ring>();
  const uint64_t t0 = 1000000;  // ms
  ring->addRequest(t0, 300, false);
  ring->addRequest(t0 + 10, 300, true);
  ring->addRequest(t0 + 1500, 2000, false);
  ring->addConnection(t0 + 1500, true);
  ring->addBytes(t0 + 30000, 10, 20);
  live::EdgeFigures f;
  ring->sumInto((t0 + 30000) / 1000, f);
  CHECK(f.requests == 3);
  CHECK(f.errors == 2);
  CHECK(f.connections == 1);
  CHECK(f.bytes_in == 10);
  CHECK(f.bytes_out == 20);
  CHECK(f.latency[1] == 2);
  CHECK(f.latency[3] == 1);
  // 60 s after the first second it falls out of the window; the second one is still in.
  live::EdgeFigures later;
  ring->sumInto(t0 / 1000 + 60, later);
  CHECK(later.requests == 1);
  CHECK(later.bytes_in == 10);
  // A bucket reused a minute later starts over rather than adding to the old second.
  ring->addRequest(t0 + 60000, 300, false);
  live::EdgeFigures reused;
  ring->sumInto(t0 / 1000 + 60, reused);
  CHECK(reused.requests == 2);
  CHECK(reused.errors == 1);  // the failed connection of the second second; the first second's error is gone
  CHECK(reused.connections == 1);
  // Nothing from the future (a reader whose clock is behind a worker's) and nothing after a minute idle.
  live::EdgeFigures past;
  ring->sumInto(t0 / 1000 - 1, past);
  CHECK(past.requests == 0);
  live::EdgeFigures idle;
  ring->sumInto(t0 / 1000 + 200, idle);
  CHECK(idle.requests == 0);
}

TEST_CASE("LiveEdges: workers' figures are summed by edge; errors are 5xx and no response", "[live]") {
  live::resetForTest();
  const uint16_t a = live::slotFor(live::Direction::Inbound, live::Kind::Http, "spiffe://td/ns/a/sa/a", "");
  const uint16_t b = live::slotFor(live::Direction::Outbound, live::Kind::Tcp, "db", "spiffe://td/ns/d/sa/db");
  CHECK(a != b);
  CHECK(live::slotFor(live::Direction::Inbound, live::Kind::Http, "spiffe://td/ns/a/sa/a", "") == a);
  const uint64_t now = live::nowMs();
  auto work = [&] {
    for (int i = 0; i < 10; ++i) live::recordRequest(a, now, 1000, i < 3 ? 503 : 200, 0);
    live::recordRequest(a, now, 1000, 0, 0);  // reset before any response
    live::recordRequest(a, now, 1000, 404, 0);  // a 4xx is the caller's error, not the edge's
    live::recordRequest(a, now, 1000, 200, strait::common::kUpstreamRemoteReset);  // cut short
    live::recordConnection(b, now, false, 0);
    live::recordBytes(b, now, 7, 9);
  };
  std::thread t1(work), t2(work);
  t1.join();
  t2.join();
  const live::Snapshot s = live::snapshot();
  const live::Edge* in = edge(s, "spiffe://td/ns/a/sa/a");
  REQUIRE(in != nullptr);
  CHECK(in->figures.requests == 26);
  CHECK(in->figures.errors == 10);
  CHECK(in->figures.latency[2] == 26);
  const live::Edge* out = edge(s, "db");
  REQUIRE(out != nullptr);
  CHECK(out->identity == "spiffe://td/ns/d/sa/db");
  CHECK(out->figures.connections == 2);
  CHECK(out->figures.bytes_in == 14);
  CHECK(out->figures.bytes_out == 18);
  CHECK(s.errors.size() == 10);
  CHECK(s.errors.front().slot == a);

  const std::string json = strait::server::liveGraphJson(s, "me");
  CHECK(json.find("\"requests\":26,\"errors\":10,\"rps\":0.433,\"error_rate\":0.385,\"p50_ms\":0.75,\"p99_ms\":1") !=
        std::string::npos);
  CHECK(json.find("\"from\":\"caller:spiffe://td/ns/a/sa/a\",\"to\":\"self\"") != std::string::npos);
  CHECK(json.find("\"from\":\"self\",\"to\":\"callee:db|spiffe://td/ns/d/sa/db\"") != std::string::npos);
  CHECK(json.find("\"connections\":2,\"bytes_in\":14,\"bytes_out\":18") != std::string::npos);
  live::resetForTest();
  CHECK(live::snapshot().edges.empty());
}

TEST_CASE("LiveEdges: past the cap new edges go to their direction's overflow edge", "[live]") {
  live::resetForTest();
  for (uint32_t i = 0; i < live::kMaxEdges; ++i) {
    CHECK(live::slotFor(live::Direction::Inbound, live::Kind::Http, "10.0.0." + std::to_string(i), "") >= live::kFirstSlot);
  }
  CHECK(live::slotFor(live::Direction::Inbound, live::Kind::Http, "10.9.9.9", "") == live::kOverflowInbound);
  CHECK(live::slotFor(live::Direction::Outbound, live::Kind::Http, "c", "") == live::kOverflowOutbound);
  CHECK(live::slotFor(live::Direction::Inbound, live::Kind::Http, "10.0.0.1", "") >= live::kFirstSlot);
  live::recordRequest(live::kOverflowInbound, live::nowMs(), 10, 200, 0);
  const auto s = live::snapshot();
  REQUIRE(s.edges.size() == 1);
  CHECK(s.edges[0].overflow);
  CHECK(s.edges[0].peer == "overflow");
  live::resetForTest();
}

TEST_CASE("LiveEdges: STRAIT_LIVE_GRAPH switches recording and names the field when malformed", "[live]") {
  google::protobuf::Struct md;
  REQUIRE(live::configureFromNode(md).ok());
  CHECK(live::enabled());
  (*md.mutable_fields())["STRAIT_LIVE_GRAPH"].set_string_value("false");
  REQUIRE(live::configureFromNode(md).ok());
  CHECK_FALSE(live::enabled());
  (*md.mutable_fields())["STRAIT_LIVE_GRAPH"].set_string_value("maybe");
  auto st = live::configureFromNode(md);
  CHECK_FALSE(st.ok());
  CHECK(std::string(st.message()).find("node.metadata.STRAIT_LIVE_GRAPH") != std::string::npos);
  live::setEnabled(true);
}
