// Load balancer tests. Statistical checks use fixed seeds and state their tolerance next to the
// expectation; the tolerances are several standard deviations wide, so they do not flake with other seeds.
#include "proxy/upstream/load_balancer.h"

#include <catch2/catch.hpp>

#include "tests/unit/support/loop.h"

#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace strait::upstream {
namespace {

std::shared_ptr<const Locality> zone(const std::string& name) {
  auto l = std::make_shared<Locality>();
  l->region = "r";
  l->zone = name;
  return l;
}

HostSharedPtr makeHost(uint32_t i, uint32_t priority = 0, uint32_t weight = 1,
                       std::shared_ptr<const Locality> locality = nullptr) {
  static const auto default_locality = zone("default");
  auto h = std::make_shared<Host>();
  h->address = *network::Address::parse("10.0." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1), 80);
  h->priority = priority;
  h->weight.store(weight);
  h->locality = locality ? std::move(locality) : default_locality;
  return h;
}

std::vector<HostSharedPtr> makeHosts(uint32_t n, uint32_t first = 0, uint32_t priority = 0) {
  std::vector<HostSharedPtr> hosts;
  for (uint32_t i = 0; i < n; ++i) hosts.push_back(makeHost(first + i, priority));
  return hosts;
}

LbConfig policy(LbConfig::Policy p) {
  LbConfig c;
  c.policy = p;
  return c;
}

// Picks per host over `n` choices (a null choice counts under nullptr).
std::map<const Host*, int> countPicks(LoadBalancer& lb, int n, const LbContext& ctx = {}) {
  std::map<const Host*, int> counts;
  for (int i = 0; i < n; ++i) ++counts[lb.chooseHost(ctx)];
  return counts;
}

int picksOf(const std::map<const Host*, int>& counts, const HostSharedPtr& h) {
  auto it = counts.find(h.get());
  return it == counts.end() ? 0 : it->second;
}

// Keys -> host for `count` keys, through a balancer.
std::vector<const Host*> mapKeys(LoadBalancer& lb, int count) {
  std::vector<const Host*> out;
  for (int i = 0; i < count; ++i) {
    LbContext ctx;
    ctx.hash_key = hashKey("key-" + std::to_string(i));
    out.push_back(lb.chooseHost(ctx));
  }
  return out;
}

}  // namespace

TEST_CASE("xxHash64 matches the published algorithm's vectors", "[lb]") {
  // Seed 0 (hashKey), checked against the reference implementation (libxxhash 0.8.1).
  CHECK(hashKey("") == 0xEF46DB3751D8E999ULL);
  CHECK(hashKey("a") == 0xD24EC4F1A98C6E5BULL);
  CHECK(hashKey("abc") == 0x44BC2CF5AD770999ULL);
  CHECK(hashKey("Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1ULL);  // 39 bytes: one stripe
  CHECK(hashKey("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdefXYZ12") ==
        0x3CA13E265EDF13BCULL);  // two stripes, then 8-, 4- and 1-byte tails
  CHECK(hashKey("10.0.0.1:80_0") == 0x75041381E7371A08ULL);
  // Seed 1 (Maglev's skips).
  CHECK(xxHash64("", 1) == 0xD5AFBA1336A3BE4BULL);
  CHECK(xxHash64("abc", 1) == 0xBEA9CA8199328908ULL);
  CHECK(xxHash64("Nobody inspects the spammish repetition", 1) == 0x43F425448D954DB6ULL);
  CHECK(xxHash64("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdefXYZ12", 1) ==
        0x859E64820C5EC6D7ULL);
}

TEST_CASE("No hosts, or only draining ones: no choice", "[lb]") {
  for (auto p : {LbConfig::Policy::RoundRobin, LbConfig::Policy::LeastRequest, LbConfig::Policy::Random,
                 LbConfig::Policy::RingHash, LbConfig::Policy::Maglev, LbConfig::Policy::PeakEwma}) {
    CHECK(createLoadBalancer(policy(p), {}, nullptr, 1)->chooseHost({}) == nullptr);
    auto hosts = makeHosts(3);
    for (auto& h : hosts) h->health_flags = kEdsDraining;
    auto lb = createLoadBalancer(policy(p), hosts, nullptr, 1);
    CHECK(lb->chooseHost({}) == nullptr);
  }
}

TEST_CASE("Round robin with equal weights rotates, from a seed-dependent start", "[lb]") {
  auto hosts = makeHosts(3);
  auto lb = createLoadBalancer(policy(LbConfig::Policy::RoundRobin), hosts, nullptr, 7);
  std::vector<const Host*> seq;
  for (int i = 0; i < 3000; ++i) seq.push_back(lb->chooseHost({}));
  for (size_t i = 1; i < seq.size(); ++i) REQUIRE(seq[i] != seq[i - 1]);  // never twice in a row
  for (size_t i = 3; i < seq.size(); ++i) REQUIRE(seq[i] == seq[i - 3]);  // a strict rotation
  auto counts = countPicks(*lb, 3000);
  for (auto& h : hosts) CHECK(picksOf(counts, h) == 1000);

  // Workers (seeds) do not all start on the same host.
  std::map<const Host*, int> firsts;
  for (uint64_t seed = 0; seed < 30; ++seed) {
    ++firsts[createLoadBalancer(policy(LbConfig::Policy::RoundRobin), hosts, nullptr, seed)->chooseHost({})];
  }
  CHECK(firsts.size() == 3);
}

TEST_CASE("Weighted round robin gives exact proportions over every cycle", "[lb]") {
  const std::vector<std::vector<uint32_t>> weight_sets = {
      {5, 3, 1, 1}, {2, 1, 1}, {1, 2, 3, 4, 5}, {7, 1}, {100, 1, 1, 37, 3}, {3, 3, 2}};
  for (const auto& weights : weight_sets) {
    std::vector<HostSharedPtr> hosts;
    uint32_t total = 0;
    for (uint32_t i = 0; i < weights.size(); ++i) {
      hosts.push_back(makeHost(i, 0, weights[i]));
      total += weights[i];
    }
    for (uint64_t seed : {1, 2, 3}) {
      auto lb = createLoadBalancer(policy(LbConfig::Policy::RoundRobin), hosts, nullptr, seed);
      std::vector<const Host*> seq;
      for (uint32_t i = 0; i < 4 * total; ++i) seq.push_back(lb->chooseHost({}));
      // The schedule has period W = sum of weights, so any W consecutive picks hold each host w times.
      for (uint32_t start : {0u, 1u, total / 2, total + 3}) {
        std::map<const Host*, uint32_t> counts;
        for (uint32_t i = start; i < start + total; ++i) ++counts[seq[i]];
        for (uint32_t i = 0; i < hosts.size(); ++i) {
          INFO("weights set " << weights.size() << " host " << i << " start " << start);
          CHECK(counts[hosts[i].get()] == weights[i]);
        }
      }
    }
  }
}

TEST_CASE("Weighted round robin interleaves (2:1:1 alternates the heavy host)", "[lb]") {
  auto a = makeHost(0, 0, 2), b = makeHost(1), c = makeHost(2);
  for (uint64_t seed : {1, 2, 3, 4}) {
    auto lb = createLoadBalancer(policy(LbConfig::Policy::RoundRobin), {a, b, c}, nullptr, seed);
    std::vector<const Host*> seq;
    for (int i = 0; i < 400; ++i) seq.push_back(lb->chooseHost({}));
    // A x A y A x ...: the heavy host every other pick, the light ones never back to back.
    for (size_t i = 1; i < seq.size(); ++i) {
      REQUIRE(seq[i] != seq[i - 1]);
      REQUIRE((seq[i] == a.get()) != (seq[i - 1] == a.get()));
    }
    for (size_t i = 2; i < seq.size(); ++i) {
      if (seq[i] != a.get()) REQUIRE(seq[i] != seq[i - 2]);  // b and c take turns between a's
    }
  }
}

TEST_CASE("Least request prefers idle hosts", "[lb]") {
  LbConfig config = policy(LbConfig::Policy::LeastRequest);
  config.choice_count = 2;

  SECTION("two hosts, choice_count 2: the busy one is never chosen") {
    auto hosts = makeHosts(2);
    hosts[0]->active_requests = 10;
    auto lb = createLoadBalancer(config, hosts, nullptr, 3);
    auto counts = countPicks(*lb, 10000);
    CHECK(picksOf(counts, hosts[0]) == 0);
    CHECK(picksOf(counts, hosts[1]) == 10000);
  }

  SECTION("ten hosts: shares follow the power of two distinct choices") {
    // Host i has i requests in flight: it wins when drawn with a busier host, P = (9 - i) / C(10, 2).
    auto hosts = makeHosts(10);
    for (uint32_t i = 0; i < 10; ++i) hosts[i]->active_requests = i;
    auto lb = createLoadBalancer(config, hosts, nullptr, 4);
    const int n = 100000;
    auto counts = countPicks(*lb, n);
    for (uint32_t i = 0; i < 10; ++i) {
      const double expected = (9.0 - i) / 45.0;
      INFO("host " << i);
      CHECK(std::abs(picksOf(counts, hosts[i]) / double(n) - expected) < 0.01);  // sd < 0.0013
    }
    CHECK(picksOf(counts, hosts[9]) == 0);  // the busiest host never wins
  }

  SECTION("choice_count >= hosts compares all of them") {
    config.choice_count = 5;
    auto hosts = makeHosts(3);
    hosts[0]->active_requests = 2;
    hosts[2]->active_requests = 1;
    auto lb = createLoadBalancer(config, hosts, nullptr, 5);
    auto counts = countPicks(*lb, 1000);
    CHECK(picksOf(counts, hosts[1]) == 1000);
  }

  SECTION("unequal weights: EDF on weight / (active + 1)^bias") {
    auto light = makeHost(0, 0, 1), heavy = makeHost(1, 0, 3);
    auto lb = createLoadBalancer(config, {light, heavy}, nullptr, 6);
    auto counts = countPicks(*lb, 4000);
    CHECK(std::abs(picksOf(counts, heavy) - 3000) <= 2);  // deterministic 1:3 schedule
    heavy->active_requests = 2;  // effective weights 1/1 and 3/3
    counts = countPicks(*lb, 4000);
    CHECK(std::abs(picksOf(counts, heavy) - 2000) <= 5);
    config.active_request_bias = 0.0;  // bias 0: plain weights
    auto lb0 = createLoadBalancer(config, {light, heavy}, nullptr, 6);
    counts = countPicks(*lb0, 4000);
    CHECK(std::abs(picksOf(counts, heavy) - 3000) <= 2);
  }
}

TEST_CASE("Random is uniform", "[lb]") {
  auto hosts = makeHosts(10);
  auto lb = createLoadBalancer(policy(LbConfig::Policy::Random), hosts, nullptr, 11);
  auto counts = countPicks(*lb, 100000);
  for (auto& h : hosts) {
    // Expected 10,000 each; +-5% = +-500 (sd ~95).
    CHECK(std::abs(picksOf(counts, h) - 10000) <= 500);
  }
}

TEST_CASE("Ring hash: sticky, shared by workers, minimal disruption", "[lb]") {
  LbConfig config = policy(LbConfig::Policy::RingHash);
  auto hosts = makeHosts(5);
  std::vector<HostSharedPtr> four(hosts.begin(), hosts.begin() + 4);
  auto lb4 = createLoadBalancer(config, four, nullptr, 1);
  auto lb4_other_worker = createLoadBalancer(config, {four.rbegin(), four.rend()}, nullptr, 99);
  const int keys = 20000;
  auto before = mapKeys(*lb4, keys);
  CHECK(mapKeys(*lb4, keys) == before);             // the same key, the same host
  CHECK(mapKeys(*lb4_other_worker, keys) == before);  // any seed and host order agree
  std::map<const Host*, int> spread;
  for (auto* h : before) ++spread[h];
  CHECK(spread.size() == 4);
  for (auto& [h, n] : spread) CHECK(std::abs(n / double(keys) - 0.25) < 0.08);  // arcs of ~256 points

  auto lb5 = createLoadBalancer(config, hosts, nullptr, 1);
  auto after = mapKeys(*lb5, keys);
  int moved = 0, moved_elsewhere = 0;
  for (int i = 0; i < keys; ++i) {
    if (after[i] != before[i]) {
      ++moved;
      if (after[i] != hosts[4].get()) ++moved_elsewhere;
    }
  }
  const double fraction = moved / double(keys);
  CHECK(fraction >= 0.1);  // expected ~0.2: the new host's share
  CHECK(fraction <= 0.3);
  CHECK(moved_elsewhere == 0);  // old hosts keep their points, so keys only move to the new host

  SECTION("weights and no key") {
    auto light = makeHost(0, 0, 1), heavy = makeHost(1, 0, 3);
    auto lb = createLoadBalancer(config, {light, heavy}, nullptr, 2);
    std::map<const Host*, int> c;
    for (auto* h : mapKeys(*lb, keys)) ++c[h];
    CHECK(std::abs(c[heavy.get()] / double(keys) - 0.75) < 0.08);
    auto random = countPicks(*lb, 4000);  // no hash key: random points
    CHECK(picksOf(random, light) > 500);
    CHECK(picksOf(random, heavy) > 2000);
  }
}

TEST_CASE("Maglev: sticky, shared by workers, minimal disruption, weighted table", "[lb]") {
  LbConfig config = policy(LbConfig::Policy::Maglev);
  auto hosts = makeHosts(5);
  std::vector<HostSharedPtr> four(hosts.begin(), hosts.begin() + 4);
  auto lb4 = createLoadBalancer(config, four, nullptr, 1);
  auto lb4_other_worker = createLoadBalancer(config, {four.rbegin(), four.rend()}, nullptr, 42);
  const int keys = 20000;
  auto before = mapKeys(*lb4, keys);
  CHECK(mapKeys(*lb4, keys) == before);
  CHECK(mapKeys(*lb4_other_worker, keys) == before);

  auto lb5 = createLoadBalancer(config, hosts, nullptr, 1);
  auto after = mapKeys(*lb5, keys);
  int moved = 0;
  for (int i = 0; i < keys; ++i) moved += after[i] != before[i];
  const double fraction = moved / double(keys);
  CHECK(fraction >= 0.1);  // expected ~0.2 plus Maglev's small reshuffle
  CHECK(fraction <= 0.3);

  SECTION("table shares follow the weights") {
    std::vector<HostSharedPtr> weighted;
    for (uint32_t i = 0; i < 4; ++i) weighted.push_back(makeHost(i, 0, i + 1));
    auto lb = createLoadBalancer(config, weighted, nullptr, 3);
    // Hash keys 0..M-1 visit every slot of the 65537-entry table exactly once.
    std::map<const Host*, int> slots;
    for (uint64_t k = 0; k < config.maglev_table_size; ++k) {
      LbContext ctx;
      ctx.hash_key = k;
      ++slots[lb->chooseHost(ctx)];
    }
    for (uint32_t i = 0; i < 4; ++i) {
      const double share = slots[weighted[i].get()] / double(config.maglev_table_size);
      INFO("host " << i << " share " << share);
      CHECK(std::abs(share - (i + 1) / 10.0) < 0.005);
    }
  }

  SECTION("a non-prime table size is rounded up to a prime") {
    config.maglev_table_size = 1000;
    auto lb = createLoadBalancer(config, four, nullptr, 3);
    std::map<const Host*, int> c;
    for (auto* h : mapKeys(*lb, 4000)) ++c[h];
    CHECK(c.size() == 4);
    CHECK(c.count(nullptr) == 0);
  }
}

TEST_CASE("Priority levels: failover and overprovisioning", "[lb]") {
  auto p0 = makeHosts(10, 0, 0);
  auto p1 = makeHosts(10, 100, 1);
  std::vector<HostSharedPtr> all(p0);
  all.insert(all.end(), p1.begin(), p1.end());
  auto share = [&](const std::map<const Host*, int>& counts, const std::vector<HostSharedPtr>& level, int n) {
    int sum = 0;
    for (auto& h : level) sum += picksOf(counts, h);
    return sum / double(n);
  };

  SECTION("P0 all unhealthy: everything to P1") {
    for (auto& h : p0) h->health_flags = kFailedActiveHc;
    for (auto p : {LbConfig::Policy::RoundRobin, LbConfig::Policy::Random, LbConfig::Policy::RingHash,
                   LbConfig::Policy::Maglev}) {
      auto lb = createLoadBalancer(policy(p), all, nullptr, 1);
      CHECK(share(countPicks(*lb, 2000), p1, 2000) == 1.0);
    }
  }

  SECTION("P0 half healthy, overprovisioning 1.4: P0 takes 70%") {
    for (int i = 0; i < 5; ++i) p0[i]->health_flags = kFailedOutlierCheck;
    auto lb = createLoadBalancer(policy(LbConfig::Policy::RoundRobin), all, nullptr, 2);
    const int n = 100000;
    auto counts = countPicks(*lb, n);
    CHECK(std::abs(share(counts, p0, n) - 0.70) < 0.01);  // sd 0.0015
    for (int i = 0; i < 5; ++i) CHECK(picksOf(counts, p0[i]) == 0);
  }

  SECTION("overprovisioning 1.0: P0 takes exactly its healthy share") {
    for (int i = 0; i < 2; ++i) p0[i]->health_flags = kFailedOutlierCheck;
    LbConfig config = policy(LbConfig::Policy::Random);
    config.overprovisioning_factor = 100;
    auto lb = createLoadBalancer(config, all, nullptr, 2);
    const int n = 100000;
    CHECK(std::abs(share(countPicks(*lb, n), p0, n) - 0.80) < 0.01);
  }

  SECTION("every level in panic: load by host count over all non-draining hosts") {
    // P0 20% healthy, P1 none: availability 28% < 100 and both levels below the 50% threshold.
    for (int i = 0; i < 8; ++i) p0[i]->health_flags = kFailedActiveHc;
    for (auto& h : p1) h->health_flags = kFailedActiveHc;
    auto lb = createLoadBalancer(policy(LbConfig::Policy::Random), all, nullptr, 3);
    const int n = 100000;
    auto counts = countPicks(*lb, n);
    CHECK(std::abs(share(counts, p0, n) - 0.5) < 0.01);
    for (auto& h : all) CHECK(picksOf(counts, h) > 0);
  }
}

TEST_CASE("Panic mode, draining and degraded hosts", "[lb]") {
  auto hosts = makeHosts(10);

  SECTION("below the threshold: all non-draining hosts, never the draining ones") {
    for (int i = 0; i < 6; ++i) hosts[i]->health_flags = kFailedActiveHc;  // 40% healthy < 50%
    hosts[0]->health_flags = kFailedActiveHc | kEdsDraining;
    hosts[9]->health_flags = kEdsDraining;
    for (auto p : {LbConfig::Policy::RoundRobin, LbConfig::Policy::LeastRequest, LbConfig::Policy::Random,
                   LbConfig::Policy::RingHash, LbConfig::Policy::Maglev, LbConfig::Policy::PeakEwma}) {
      auto lb = createLoadBalancer(policy(p), hosts, nullptr, 4);
      auto counts = countPicks(*lb, 8000);
      CHECK(picksOf(counts, hosts[0]) == 0);
      CHECK(picksOf(counts, hosts[9]) == 0);
      for (int i = 1; i < 9; ++i) CHECK(picksOf(counts, hosts[i]) > 0);  // unhealthy ones too
    }
  }

  SECTION("at or above the threshold: healthy hosts only") {
    for (int i = 0; i < 5; ++i) hosts[i]->health_flags = kFailedActiveHc;  // 50% healthy
    auto lb = createLoadBalancer(policy(LbConfig::Policy::RoundRobin), hosts, nullptr, 4);
    auto counts = countPicks(*lb, 1000);
    for (int i = 0; i < 5; ++i) CHECK(picksOf(counts, hosts[i]) == 0);
  }

  SECTION("threshold 0 disables panic") {
    LbConfig config = policy(LbConfig::Policy::RoundRobin);
    config.panic_threshold_percent = 0;
    for (int i = 0; i < 8; ++i) hosts[i]->health_flags = kFailedActiveHc;
    auto lb = createLoadBalancer(config, hosts, nullptr, 4);
    auto counts = countPicks(*lb, 1000);
    CHECK(picksOf(counts, hosts[8]) + picksOf(counts, hosts[9]) == 1000);
    for (auto& h : hosts) h->health_flags = kFailedActiveHc;
    CHECK(createLoadBalancer(config, hosts, nullptr, 4)->chooseHost({}) == nullptr);
  }

  SECTION("degraded hosts only take what the healthy ones cannot") {
    for (int i = 0; i < 2; ++i) hosts[i]->health_flags = kDegradedEdsHealth;  // 80% healthy x 1.4 >= 100
    auto lb = createLoadBalancer(policy(LbConfig::Policy::Random), hosts, nullptr, 5);
    auto counts = countPicks(*lb, 20000);
    CHECK(picksOf(counts, hosts[0]) + picksOf(counts, hosts[1]) == 0);

    for (int i = 0; i < 5; ++i) hosts[i]->health_flags = kDegradedEdsHealth;  // 50% healthy: 70% load
    lb = createLoadBalancer(policy(LbConfig::Policy::Random), hosts, nullptr, 5);
    const int n = 100000;
    counts = countPicks(*lb, n);
    int degraded = 0;
    for (int i = 0; i < 5; ++i) degraded += picksOf(counts, hosts[i]);
    CHECK(std::abs(degraded / double(n) - 0.30) < 0.01);
  }
}

TEST_CASE("Locality-weighted balancing", "[lb]") {
  LbConfig config = policy(LbConfig::Policy::RoundRobin);
  config.locality_weighted = true;
  auto a = zone("a"), b = zone("b"), c = zone("c");
  std::vector<HostSharedPtr> in_a, in_b, in_c, all;
  for (uint32_t i = 0; i < 2; ++i) {
    in_a.push_back(makeHost(i, 0, 1, a));
    in_b.push_back(makeHost(10 + i, 0, 1, b));
    in_c.push_back(makeHost(20 + i, 0, 1, c));
  }
  for (auto& h : in_a) h->locality_weight = 1;
  for (auto& h : in_b) h->locality_weight = 3;
  for (auto& h : in_c) h->locality_weight = 0;  // no weight: no traffic
  for (auto* v : {&in_a, &in_b, &in_c}) all.insert(all.end(), v->begin(), v->end());
  auto share = [](const std::map<const Host*, int>& counts, const std::vector<HostSharedPtr>& hs, int n) {
    int sum = 0;
    for (auto& h : hs) sum += picksOf(counts, h);
    return sum / double(n);
  };

  SECTION("proportional to the locality weights") {
    auto lb = createLoadBalancer(config, all, nullptr, 1);
    const int n = 40000;
    auto counts = countPicks(*lb, n);
    CHECK(std::abs(share(counts, in_a, n) - 0.25) < 0.005);  // the locality schedule is deterministic
    CHECK(share(counts, in_c, n) == 0);
    // Within a locality the policy (round robin) splits evenly.
    CHECK(std::abs(picksOf(counts, in_b[0]) - picksOf(counts, in_b[1])) <= 1);
  }

  SECTION("scaled by each locality's healthy share x overprovisioning") {
    in_b[0]->health_flags = kFailedOutlierCheck;  // b: 3 x min(1, 1.4 x 0.5) = 2.1 against a's 1
    auto lb = createLoadBalancer(config, all, nullptr, 1);
    const int n = 40000;
    auto counts = countPicks(*lb, n);
    CHECK(std::abs(share(counts, in_a, n) - 1 / 3.1) < 0.005);
    CHECK(picksOf(counts, in_b[0]) == 0);
  }

  SECTION("hash policies fold locality weights into the table") {
    config.policy = LbConfig::Policy::Maglev;
    auto lb = createLoadBalancer(config, all, nullptr, 1);
    std::map<const Host*, int> c_keys;
    for (auto* h : mapKeys(*lb, 20000)) ++c_keys[h];
    CHECK(std::abs(share(c_keys, in_a, 20000) - 0.25) < 0.02);
    CHECK(share(c_keys, in_c, 20000) == 0);
  }
}

TEST_CASE("A health generation bump is picked up on the next choice", "[lb]") {
  std::atomic<uint64_t> generation{1};
  auto hosts = makeHosts(3);
  for (auto p : {LbConfig::Policy::RoundRobin, LbConfig::Policy::LeastRequest, LbConfig::Policy::Random,
                 LbConfig::Policy::RingHash, LbConfig::Policy::Maglev, LbConfig::Policy::PeakEwma}) {
    hosts[1]->health_flags = 0;
    auto lb = createLoadBalancer(policy(p), hosts, &generation, 8);
    CHECK(picksOf(countPicks(*lb, 3000), hosts[1]) > 0);
    hosts[1]->health_flags = kFailedOutlierCheck;  // ejected
    generation.fetch_add(1);
    CHECK(picksOf(countPicks(*lb, 3000), hosts[1]) == 0);
    hosts[1]->health_flags = 0;  // back
    generation.fetch_add(1);
    CHECK(picksOf(countPicks(*lb, 3000), hosts[1]) > 0);
  }
}

TEST_CASE("previous_hosts: avoided hosts are re-picked around", "[lb]") {
  auto hosts = makeHosts(3);
  const Host* avoid[] = {hosts[0].get(), hosts[1].get()};
  LbContext ctx;
  ctx.avoid = avoid;
  ctx.avoid_count = 2;
  ctx.host_selection_retry_max_attempts = 2;

  SECTION("round robin reaches the other host within the attempts") {
    auto lb = createLoadBalancer(policy(LbConfig::Policy::RoundRobin), hosts, nullptr, 1);
    CHECK(picksOf(countPicks(*lb, 300, ctx), hosts[2]) == 300);
  }

  SECTION("random: avoided only when every attempt drew an avoided host") {
    ctx.host_selection_retry_max_attempts = 10;
    auto lb = createLoadBalancer(policy(LbConfig::Policy::Random), hosts, nullptr, 1);
    const int n = 20000;
    auto counts = countPicks(*lb, n, ctx);
    // 11 draws, each avoided with P 2/3: the avoided hosts still get (2/3)^11 = 1.16% (sd 0.08%).
    CHECK(std::abs(1 - picksOf(counts, hosts[2]) / double(n) - std::pow(2.0 / 3, 11)) < 0.005);
  }

  SECTION("ring hash looks up another point, still determined by the key") {
    ctx.host_selection_retry_max_attempts = 40;  // all 41 lookups avoided: (2/3)^41 < 1e-7 per key
    auto lb = createLoadBalancer(policy(LbConfig::Policy::RingHash), hosts, nullptr, 1);
    for (int k = 0; k < 50; ++k) {
      ctx.hash_key = hashKey("k" + std::to_string(k));
      const Host* h = lb->chooseHost(ctx);
      CHECK(h == hosts[2].get());
      CHECK(lb->chooseHost(ctx) == h);
    }
  }

  SECTION("everything avoided: the last pick is taken") {
    const Host* everyone[] = {hosts[0].get(), hosts[1].get(), hosts[2].get()};
    ctx.avoid = everyone;
    ctx.avoid_count = 3;
    auto lb = createLoadBalancer(policy(LbConfig::Policy::Random), hosts, nullptr, 1);
    CHECK(countPicks(*lb, 100, ctx).count(nullptr) == 0);
  }
}

TEST_CASE("Peak EWMA", "[lb]") {
  LbConfig config = policy(LbConfig::Policy::PeakEwma);
  const uint64_t ms = 1000 * 1000;
  const uint64_t t0 = 1000 * config.ewma_decay_ns;

  SECTION("samples: a peak replaces the average, lower samples decay into it") {
    Host h;
    recordLatency(h, 1 * ms, false, t0, config);
    CHECK(h.passive().ewma_latency_ns.load() == 1 * ms);
    recordLatency(h, 5 * ms, false, t0 + 1, config);
    CHECK(h.passive().ewma_latency_ns.load() == 5 * ms);
    recordLatency(h, 1 * ms, false, t0 + 1 + config.ewma_decay_ns, config);  // keep exp(-1) of the old
    const double expected = 5 * ms * std::exp(-1.0) + 1 * ms * (1 - std::exp(-1.0));
    CHECK(std::abs(double(h.passive().ewma_latency_ns.load()) - expected) < 2);
    recordLatency(h, 1 * ms, true, t0 + 2 + config.ewma_decay_ns, config);  // an error: the penalty
    CHECK(h.passive().ewma_latency_ns.load() == config.ewma_error_penalty_ns);
  }

  auto hosts = makeHosts(2);
  LbContext ctx;
  ctx.now_ns = t0 + 1000;

  SECTION("prefers the faster host, penalises errors, weighs in active requests") {
    recordLatency(*hosts[0], 10 * ms, false, t0, config);
    recordLatency(*hosts[1], 1 * ms, false, t0, config);
    auto lb = createLoadBalancer(config, hosts, nullptr, 1);
    CHECK(picksOf(countPicks(*lb, 1000, ctx), hosts[1]) == 1000);

    recordLatency(*hosts[1], 1 * ms, true, t0, config);  // failed: counts as 1 s
    CHECK(picksOf(countPicks(*lb, 1000, ctx), hosts[0]) == 1000);

    ctx.now_ns = t0 + 20 * config.ewma_decay_ns;
    recordLatency(*hosts[1], 1 * ms, false, ctx.now_ns, config);  // recovered: the 1 s peak has decayed
    recordLatency(*hosts[0], 10 * ms, false, ctx.now_ns, config);
    CHECK(picksOf(countPicks(*lb, 1000, ctx), hosts[1]) == 1000);
    hosts[1]->active_requests = 20;  // 1 ms x 21 > 10 ms x 1
    CHECK(picksOf(countPicks(*lb, 1000, ctx), hosts[0]) == 1000);
  }

  SECTION("an unmeasured host is probed") {
    auto three = makeHosts(3);
    recordLatency(*three[0], 1 * ms, false, t0, config);
    recordLatency(*three[1], 1 * ms, false, t0, config);
    auto lb = createLoadBalancer(config, three, nullptr, 1);
    const int n = 30000;
    // Drawn in 2 of the 3 pairs, and it always wins them: 2/3.
    CHECK(std::abs(picksOf(countPicks(*lb, n, ctx), three[2]) / double(n) - 2.0 / 3) < 0.015);
  }

  SECTION("the steady clock is used when the context has no time") {
    recordLatency(*hosts[0], 10 * ms, false, 1, config);  // stamped long ago: fully decayed by now
    recordLatency(*hosts[1], 1 * ms, false, 1, config);
    auto lb = createLoadBalancer(config, hosts, nullptr, 1);
    auto counts = countPicks(*lb, 1000);
    CHECK(counts.count(nullptr) == 0);
  }
}


// ---- zone-aware routing ----

namespace {

// Upstream and local clusters for zone-aware routing: `upstream[z]` hosts in zone z of the upstream
// cluster, `local[z]` in the local one; this proxy runs in zone "a".
struct Zones {
  std::map<std::string, std::shared_ptr<const Locality>> localities;
  std::map<std::string, std::vector<HostSharedPtr>> upstream_by_zone;
  std::vector<HostSharedPtr> upstream, local;
  std::atomic<uint64_t> local_generation{1};
  LocalCluster view{*zone("a")};
  ZoneStats stats;

  Zones(const std::map<std::string, int>& up, const std::map<std::string, int>& lo) {
    static int n = 0;
    const std::string p = "lbtest.zones" + std::to_string(n++) + ".";
    auto& st = testing::testStore();
    stats = {st.counter(p + "all_directly"), st.counter(p + "sampled"), st.counter(p + "cross_zone"),
             st.counter(p + "too_small"), st.counter(p + "not_ok")};
    uint32_t i = 0;
    for (const auto& [z, count] : up) {
      for (int k = 0; k < count; ++k) {
        auto h = makeHost(i++, 0, 1, loc(z));
        upstream_by_zone[z].push_back(h);
        upstream.push_back(h);
      }
    }
    for (const auto& [z, count] : lo) {
      for (int k = 0; k < count; ++k) local.push_back(makeHost(500 + i++, 0, 1, loc(z)));
    }
    refresh();
  }
  std::shared_ptr<const Locality> loc(const std::string& z) {
    auto& l = localities[z];
    if (!l) l = zone(z);
    return l;
  }
  void refresh(uint64_t version = 1, bool known = true) {
    view.refresh(version, known ? &local : nullptr, &local_generation, 50.0);
  }
  LoadBalancerPtr balancer(LbConfig config = policy(LbConfig::Policy::RoundRobin), uint64_t seed = 7) {
    return createLoadBalancer(config, upstream, nullptr, seed, kRandomRotation, &view, &stats);
  }
  // The share of `n` picks that went to zone `z`.
  double share(const std::map<const Host*, int>& counts, const std::string& z, int n) {
    int sum = 0;
    for (const auto& h : upstream_by_zone[z]) sum += picksOf(counts, h);
    return sum / double(n);
  }
  int64_t value(stats::Counter c) const { return testing::testStore().value(c); }
};

}  // namespace

TEST_CASE("Zone-aware: upstream's local share >= the local cluster's keeps every request in the zone", "[lb]") {
  testing::ShardGuard shard;
  // Upstream a:b = 50:50, local 50:50: all directly.
  Zones z({{"a", 4}, {"b", 4}}, {{"a", 1}, {"b", 1}});
  for (auto p : {LbConfig::Policy::RoundRobin, LbConfig::Policy::LeastRequest, LbConfig::Policy::Random,
                 LbConfig::Policy::PeakEwma}) {
    auto lb = z.balancer(policy(p));
    auto counts = countPicks(*lb, 1000);
    CHECK(z.share(counts, "a", 1000) == 1.0);
    for (const auto& h : z.upstream_by_zone["a"]) CHECK(picksOf(counts, h) > 0);  // the policy spreads within it
  }
  CHECK(z.value(z.stats.routing_all_directly) == 4000);
  CHECK(z.value(z.stats.routing_sampled) == 0);
  CHECK(z.value(z.stats.routing_cross_zone) == 0);
}

TEST_CASE("Zone-aware: a smaller local share is sampled, the rest goes by residual capacity", "[lb]") {
  testing::ShardGuard shard;
  // Upstream a:b:c = 20:60:20 (10 hosts), local 80:20:0. Kept local: 20/80 = 25%. Residual capacity:
  // b 60-20 = 40, c 20-0 = 20, so the other 75% splits 2:1: b 50%, c 25%.
  Zones z({{"a", 2}, {"b", 6}, {"c", 2}}, {{"a", 4}, {"b", 1}});
  auto lb = z.balancer(policy(LbConfig::Policy::Random), 11);
  const int n = 40000;
  auto counts = countPicks(*lb, n);
  // Binomial standard deviation at n = 40000 is at most 0.0025: 0.015 is six of them.
  CHECK(std::abs(z.share(counts, "a", n) - 0.25) < 0.015);
  CHECK(std::abs(z.share(counts, "b", n) - 0.50) < 0.015);
  CHECK(std::abs(z.share(counts, "c", n) - 0.25) < 0.015);
  CHECK(z.value(z.stats.routing_sampled) + z.value(z.stats.routing_cross_zone) == n);
  CHECK(std::abs(z.value(z.stats.routing_sampled) / double(n) - 0.25) < 0.015);
  CHECK(z.value(z.stats.routing_all_directly) == 0);

  SECTION("routing_enabled 0 turns it off: the cluster's own split (20:60:20)") {
    LbConfig config = policy(LbConfig::Policy::Random);
    config.zone_routing_enabled_percent = 0;
    auto off = z.balancer(config, 12);
    auto c2 = countPicks(*off, n);
    CHECK(std::abs(z.share(c2, "a", n) - 0.20) < 0.015);
    CHECK(std::abs(z.share(c2, "b", n) - 0.60) < 0.015);
    CHECK(z.value(z.stats.routing_sampled) + z.value(z.stats.routing_cross_zone) == n);  // unchanged
  }

  SECTION("a change in the local cluster's health re-plans on the next choice") {
    // The local host in b fails: local is 100% in a, so only 20/100 = 20% stays local now.
    z.local.back()->health_flags = kFailedActiveHc;
    z.local_generation.fetch_add(1);
    z.refresh();
    auto c2 = countPicks(*lb, n);
    CHECK(std::abs(z.share(c2, "a", n) - 0.20) < 0.015);
    // And when the local cluster is 50:50 in a and b... a's 20% upstream share is below 50%: 40% local.
    z.local.back()->health_flags = 0;
    z.local.push_back(makeHost(900, 0, 1, z.loc("b")));
    z.local.push_back(makeHost(901, 0, 1, z.loc("b")));
    z.local.push_back(makeHost(902, 0, 1, z.loc("b")));
    z.refresh(2);  // a new version of the local cluster
    auto c3 = countPicks(*lb, n);
    CHECK(std::abs(z.share(c3, "a", n) - 0.40) < 0.015);
  }
}

TEST_CASE("Zone-aware: off for small clusters, an unknown local cluster, panic, locality weights, hashing",
          "[lb]") {
  testing::ShardGuard shard;
  const int n = 6000;
  SECTION("fewer than min_cluster_size (6) healthy hosts: counted, plain round robin") {
    Zones z({{"a", 1}, {"b", 4}}, {{"a", 1}, {"b", 4}});
    auto lb = z.balancer();
    auto counts = countPicks(*lb, 5 * 1000);
    for (const auto& h : z.upstream) CHECK(picksOf(counts, h) == 1000);  // exact rotation over all 5
    CHECK(z.value(z.stats.cluster_too_small) == 1);  // once per plan, not per choice
    CHECK(z.value(z.stats.routing_all_directly) == 0);
    LbConfig config = policy(LbConfig::Policy::RoundRobin);
    config.zone_min_cluster_size = 5;
    auto small_ok = z.balancer(config);
    CHECK(z.share(countPicks(*small_ok, n), "a", n) == 1.0);  // 20:80 against 20:80: all directly
    CHECK(z.value(z.stats.routing_all_directly) == n);
  }
  SECTION("the local cluster unknown, or without a healthy host in our zone: counted as not ok") {
    Zones z({{"a", 3}, {"b", 3}}, {{"a", 1}, {"b", 1}});
    z.refresh(1, false);
    auto lb = z.balancer();
    CHECK(std::abs(z.share(countPicks(*lb, n), "a", n) - 0.5) < 0.01);
    CHECK(z.value(z.stats.local_cluster_not_ok) == 1);
    z.local.front()->health_flags = kFailedOutlierCheck;  // the one local host in a
    z.refresh(2);
    CHECK(std::abs(z.share(countPicks(*lb, n), "a", n) - 0.5) < 0.01);
    CHECK(z.value(z.stats.local_cluster_not_ok) == 2);
    z.local.front()->health_flags = 0;
    z.refresh(3);
    CHECK(z.share(countPicks(*lb, n), "a", n) == 1.0);  // ok again: 50:50 against 50:50, all direct
  }
  SECTION("in panic: every host, no zone routing; fail_traffic_on_panic: no host at all") {
    Zones z({{"a", 5}, {"b", 5}}, {{"a", 1}, {"b", 1}});
    for (int i = 0; i < 6; ++i) z.upstream[i]->health_flags = kFailedActiveHc;  // 40% healthy < 50%
    auto lb = z.balancer();
    auto counts = countPicks(*lb, n);
    for (const auto& h : z.upstream) CHECK(picksOf(counts, h) > 0);
    CHECK(z.value(z.stats.routing_all_directly) + z.value(z.stats.routing_sampled) +
              z.value(z.stats.routing_cross_zone) == 0);
    LbConfig config = policy(LbConfig::Policy::RoundRobin);
    config.zone_fail_traffic_on_panic = true;
    CHECK(z.balancer(config)->chooseHost({}) == nullptr);
  }
  SECTION("locality-weighted or hashing balancers do not route by zone") {
    // Upstream a:b:c = 1/3 each, local a:b = 50:50. Zone routing would keep 2/3 in a and send the rest to
    // c (b has no residual capacity); without it each zone gets a third.
    Zones z({{"a", 3}, {"b", 3}, {"c", 3}}, {{"a", 1}, {"b", 1}});
    for (const auto& h : z.upstream) h->locality_weight = 1;
    LbConfig weighted = policy(LbConfig::Policy::RoundRobin);
    weighted.locality_weighted = true;
    CHECK(std::abs(z.share(countPicks(*z.balancer(weighted), n), "a", n) - 1 / 3.0) < 0.02);
    CHECK(std::abs(z.share(countPicks(*z.balancer(policy(LbConfig::Policy::RingHash)), n), "a", n) - 1 / 3.0) < 0.05);
    CHECK(z.value(z.stats.routing_sampled) + z.value(z.stats.routing_cross_zone) == 0);
    // The same hosts with plain round robin: zone routing.
    const int m = 30000;
    auto plain = countPicks(*z.balancer(), m);
    CHECK(std::abs(z.share(plain, "a", m) - 2 / 3.0) < 0.02);  // sd at most 0.003
    CHECK(z.share(plain, "b", m) == 0);
    CHECK(std::abs(z.share(plain, "c", m) - 1 / 3.0) < 0.02);
    CHECK(z.value(z.stats.routing_sampled) + z.value(z.stats.routing_cross_zone) == m);
  }
  SECTION("only priority 0 takes part") {
    Zones z({{"a", 3}, {"b", 3}}, {{"a", 1}, {"b", 1}});  // at priority 0: all directly
    for (const auto& h : z.upstream) h->priority = 1;
    auto lb = z.balancer();
    CHECK(std::abs(z.share(countPicks(*lb, n), "a", n) - 0.5) < 0.01);
    CHECK(z.value(z.stats.routing_all_directly) + z.value(z.stats.routing_sampled) == 0);
  }
}

}  // namespace strait::upstream
