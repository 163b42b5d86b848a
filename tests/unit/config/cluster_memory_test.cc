// What an EDS cluster of 10 endpoints costs in heap, by component, and that its memory goes when it
// does (perf/results/2026-12-06-cluster-memory.md). The breakdown test is tagged [.memory]: it prints
// figures and is run by hand (`strait_unit_tests "[.memory]" -s`); the others run with the suite.
#include <catch2/catch.hpp>
#include <malloc.h>

#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "proxy/config/bootstrap.h"
#include "proxy/config/translate_internal.h"
#include "proxy/upstream/cluster_runtime.h"

using namespace strait;

namespace {

size_t heapInUse() { return mallinfo2().uordblks; }

// The resources perf/xds_scale.py sends: an EDS cluster over ADS, and its assignment of `eps` endpoints.
envoy::config::cluster::v3::Cluster edsCluster(const std::string& name) {
  envoy::config::cluster::v3::Cluster c;
  c.set_name(name);
  c.set_type(envoy::config::cluster::v3::Cluster::EDS);
  c.mutable_connect_timeout()->set_seconds(1);
  c.mutable_eds_cluster_config()->mutable_eds_config()->mutable_ads();
  c.mutable_eds_cluster_config()->mutable_eds_config()->set_resource_api_version(envoy::config::core::v3::V3);
  return c;
}

std::shared_ptr<envoy::config::endpoint::v3::ClusterLoadAssignment> assignment(const std::string& name, int i,
                                                                                  int eps) {
  auto la = std::make_shared<envoy::config::endpoint::v3::ClusterLoadAssignment>();
  la->set_cluster_name(name);
  auto* locality = la->add_endpoints();
  for (int j = 0; j < eps; ++j) {
    auto* sa = locality->add_lb_endpoints()->mutable_endpoint()->mutable_address()->mutable_socket_address();
    sa->set_address("127.0.0." + std::to_string(1 + i % 250));
    sa->set_port_value(static_cast<uint32_t>(20000 + (i * eps + j) % 40000));
  }
  return la;
}

// An assignment as the xDS applier holds it: as bytes (DynamicResource::wire).
config::DynamicResource heldAssignment(const std::string& name, int i, int eps, const std::string& updated) {
  config::DynamicResource r;
  r.wire = std::make_shared<const std::string>(assignment(name, i, eps)->SerializeAsString());
  r.version = "1";
  r.last_updated = updated;
  return r;
}

}  // namespace

TEST_CASE("Cluster memory: a host keeps its object across versions, found by its identity") {
  stats::Store store(2);
  stats::setThreadShard(&store.shard(0));
  auto rt = upstream::clusterRuntime(store, "mem-a", "mem-a");
  auto h = std::make_shared<upstream::Host>();
  h->address = *network::Address::parse("10.0.0.1", 80);
  h->locality = std::make_shared<const upstream::Locality>();
  const std::string key = upstream::hostKey(h->address, 0, 0, upstream::Locality(), "");
  rt->rememberHost(key, h);
  REQUIRE(rt->findHost(key) == h);
  // Another identity of the same address (priority 1) is another host.
  REQUIRE(rt->findHost(upstream::hostKey(h->address, 0, 1, upstream::Locality(), "")) == nullptr);
  REQUIRE(rt->findHost(upstream::hostKey(h->address, 0, 0, upstream::Locality(), "name")) == nullptr);
  h.reset();
  REQUIRE(rt->findHost(key) == nullptr);  // no version holds it any more
}

TEST_CASE("Cluster memory: translated clusters give back their heap and stats when they go") {
  stats::Store store(4);
  stats::setThreadShard(&store.shard(0));
  config::ResourceMap endpoints;
  for (int i = 0; i < 200; ++i) {
    const std::string name = "mem-b-" + std::to_string(i);
    endpoints.set(name, heldAssignment(name, i, 10, ""));
  }
  const size_t stats_before = store.statCount();
  const size_t heap_before = heapInUse();
  {
    std::vector<config::ClusterConstSharedPtr> clusters;
    for (int i = 0; i < 200; ++i) {
      auto c = config::translateCluster(edsCluster("mem-b-" + std::to_string(i)), "c", 1000 + i, store, &endpoints,
                                        false, nullptr, nullptr);
      REQUIRE(c.ok());
      REQUIRE((*c)->hosts.size() == 10);
      clusters.push_back(*c);
    }
    REQUIRE(store.statCount() > stats_before);
    // Host stats are the host's own: /clusters reads them there.
    stats::inc(clusters[0]->hosts[0]->rq_total);
    REQUIRE(store.value(clusters[0]->hosts[0]->rq_total) == 1);
  }
  REQUIRE(store.statCount() == stats_before);
  REQUIRE(store.slotsInUse() == 0);
  // Everything translation made is gone (a few KiB of slack for allocator bookkeeping).
  INFO("heap left: " << static_cast<long>(heapInUse()) - static_cast<long>(heap_before));
  REQUIRE(heapInUse() < heap_before + 64 * 1024);
  for (const auto& rt : upstream::liveClusterRuntimes()) REQUIRE(rt->name().rfind("mem-b-", 0) != 0);
}

TEST_CASE("Cluster memory: breakdown per EDS cluster of 10 endpoints", "[.memory]") {
  const int n = 1000;
  stats::Store store(4);  // main, two workers, xDS: as `--concurrency 2`
  stats::setThreadShard(&store.shard(0));
  std::printf("sizeof: Cluster %zu, Host %zu, ClusterRuntime %zu, network::Address %zu, ClusterStats %zu\n",
              sizeof(config::Cluster), sizeof(upstream::Host), sizeof(upstream::ClusterRuntime),
              sizeof(network::Address), sizeof(config::ClusterStats));
  size_t h0 = heapInUse();
  std::vector<envoy::config::cluster::v3::Cluster> cds;
  for (int i = 0; i < n; ++i) cds.push_back(edsCluster("r1-" + std::to_string(n) + "-c" + std::to_string(i)));
  const size_t cds_bytes = heapInUse() - h0;
  h0 = heapInUse();
  config::ResourceMap endpoints;
  for (int i = 0; i < n; ++i) {
    const std::string name = cds[i].name();
    endpoints.set(name, heldAssignment(name, i, 10, "2026-12-06T21:00:00.000Z"));
  }
  const size_t eds_bytes = heapInUse() - h0;
  h0 = heapInUse();
  const size_t meta0 = store.metadataBytes();
  std::vector<config::ClusterConstSharedPtr> clusters;
  for (int i = 0; i < n; ++i) {
    auto c = config::translateCluster(cds[i], "c", 5000 + i, store, &endpoints, false, nullptr, nullptr);
    REQUIRE(c.ok());
    clusters.push_back(*c);
  }
  const size_t translated = heapInUse() - h0;
  const size_t meta = store.metadataBytes() - meta0;
  size_t proto_copy = 0;
  for (const auto& c : clusters) proto_copy += c->proto ? c->proto->SpaceUsedLong() : 0;
  const double per = 1.0 / n;
  std::printf("per cluster (bytes of heap, %d clusters of 10 endpoints):\n", n);
  std::printf("  decoded Cluster proto (CDS resource held)        %8.0f\n", cds_bytes * per);
  std::printf("  ClusterLoadAssignment held as bytes + DynamicResource %5.0f\n", eds_bytes * per);
  std::printf("  translated config::Cluster, all included         %8.0f\n", translated * per);
  std::printf("    of which: stat names/bookkeeping (Store)       %8.0f  (%zu stats, %u slots)\n", meta * per,
              store.statCount(), store.slotsInUse());
  std::printf("    of which: Cluster::proto copy (SpaceUsedLong)  %8.0f\n", proto_copy * per);
  std::printf("    of which: 10 Host objects (sizeof + control)   %8.0f\n", 10.0 * (sizeof(upstream::Host) + 16));
  std::printf("  stat slots, per shard that writes them           %8.0f\n", store.slotsInUse() * 8.0 * per);
}
