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
config::DynamicResource heldAssignment(const std::string& name, int i, int eps, int64_t updated_ms) {
  config::DynamicResource r;
  r.wire = std::make_shared<const std::string>(assignment(name, i, eps)->SerializeAsString());
  r.version = "1";
  r.last_updated_ms = updated_ms;
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
    endpoints.set(name, heldAssignment(name, i, 10, 0));
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

TEST_CASE("Cluster memory: a CDS cluster shares what its resource holds, message or bytes") {
  stats::Store store(2);
  stats::setThreadShard(&store.shard(0));
  config::ResourceMap endpoints;
  endpoints.set("mem-c", heldAssignment("mem-c", 1, 3, 0));
  const auto msg = std::make_shared<const envoy::config::cluster::v3::Cluster>(edsCluster("mem-c"));
  // Held as bytes, as the xDS applier holds CDS resources: the Cluster keeps those very bytes and no
  // decoded message; /config_dump decodes them when asked.
  config::DynamicResource as_bytes;
  as_bytes.wire = std::make_shared<const std::string>(msg->SerializeAsString());
  auto c = config::translateCluster(*msg, "c", 900, store, &endpoints, false, nullptr, nullptr, &as_bytes);
  REQUIRE(c.ok());
  CHECK((*c)->proto == nullptr);
  CHECK((*c)->wire == as_bytes.wire);
  CHECK((*c)->sourceKey() == as_bytes.identityKey());
  REQUIRE((*c)->message() != nullptr);
  CHECK((*c)->message()->SerializeAsString() == msg->SerializeAsString());
  // Held decoded: shared, not copied.
  config::DynamicResource decoded;
  decoded.proto = msg;
  auto d = config::translateCluster(*msg, "c", 900, store, &endpoints, false, nullptr, nullptr, &decoded);
  REQUIRE(d.ok());
  CHECK((*d)->proto.get() == msg.get());
  CHECK((*d)->sourceKey() == decoded.identityKey());
  // Without a resource (a bootstrap cluster), it keeps its own copy.
  auto copy = config::translateCluster(*msg, "c", 900, store, &endpoints, false, nullptr, nullptr);
  REQUIRE(copy.ok());
  CHECK((*copy)->proto.get() != msg.get());
  CHECK((*copy)->message()->SerializeAsString() == msg->SerializeAsString());
}

TEST_CASE("Cluster memory: thresholds are shared unless set; circuit-breaker gauges keep their names") {
  stats::Store store(2);
  stats::setThreadShard(&store.shard(0));
  config::ResourceMap endpoints;
  endpoints.set("mem-d", heldAssignment("mem-d", 1, 2, 0));
  endpoints.set("mem-e", heldAssignment("mem-e", 2, 2, 0));
  const size_t entries0 = store.entryCount();
  auto plain = config::translateCluster(edsCluster("mem-d"), "c", 901, store, &endpoints, false, nullptr, nullptr);
  REQUIRE(plain.ok());
  CHECK((*plain)->breakers == upstream::defaultCircuitBreakerLimits());
  CHECK((*plain)->limits().max_requests == 1024);
  CHECK((*plain)->highLimits().max_connections == 1024);
  // Four store entries for a plaintext cluster, whatever its stat count: its traffic block,
  // membership_total, and one circuit-breaker block per priority (the ten open gauges alone were ten).
  CHECK(store.entryCount() - entries0 == 4);

  auto set = edsCluster("mem-e");
  auto* t = set.mutable_circuit_breakers()->add_thresholds();
  t->set_priority(envoy::config::core::v3::HIGH);
  t->mutable_max_requests()->set_value(7);
  auto own = config::translateCluster(set, "c", 902, store, &endpoints, false, nullptr, nullptr);
  REQUIRE(own.ok());
  CHECK((*own)->breakers != upstream::defaultCircuitBreakerLimits());
  CHECK((*own)->highLimits().max_requests == 7);
  CHECK((*own)->limits().max_requests == 1024);
  CHECK(upstream::defaultCircuitBreakerLimits()->by_priority[1].max_requests == 1024);  // untouched

  // The open gauges are made as one block per priority: each still answers to its own name, and the
  // handle the limit writes is the stat of that name.
  (*own)->runtime->activate((*own)->hosts, (*own)->host_params, (*own)->limits(), nullptr, (*own)->highLimits());
  auto& high = (*own)->runtime->resources(upstream::ResourcePriority::High);
  for (int i = 0; i < 7; ++i) REQUIRE(high.requests.tryAcquire());
  CHECK_FALSE(high.requests.tryAcquire());
  const std::string cb = "cluster.mem-e.circuit_breakers.";
  CHECK(store.value(cb + "high.rq_open") == 1);
  CHECK(store.value(cb + "default.rq_open") == 0);
  CHECK(store.value(cb + "high.cx_open") == 0);
  for (int i = 0; i < 7; ++i) high.requests.release();
  CHECK(store.value(cb + "high.rq_open") == 0);
  bool listed = false;
  for (const auto& v : store.snapshot()) listed = listed || v.name == cb + "default.cx_pool_open";
  CHECK(listed);
}

TEST_CASE("Cluster memory: a host's hostname is kept only when it has one; gRPC targets are made when asked") {
  upstream::Host h;
  CHECK(h.hostname().empty());
  h.setHostname("svc.example");
  CHECK(h.hostname() == "svc.example");
  h.setHostname("");
  CHECK(h.hostname().empty());

  stats::Store store(2);
  stats::setThreadShard(&store.shard(0));
  envoy::config::cluster::v3::Cluster c;
  c.set_name("mem-f");
  c.mutable_connect_timeout()->set_seconds(1);
  auto* sa = c.mutable_load_assignment()->add_endpoints()->add_lb_endpoints()->mutable_endpoint()->mutable_address()
                 ->mutable_socket_address();
  sa->set_address("127.0.0.9");
  sa->set_port_value(15012);
  auto plain = config::translateCluster(c, "c", 903, store, nullptr, false, nullptr, nullptr);
  REQUIRE(plain.ok());
  CHECK((*plain)->pipe_target.empty());
  CHECK((*plain)->grpcTarget() == "ipv4:127.0.0.9:15012");
  c.mutable_load_assignment()->mutable_endpoints(0)->mutable_lb_endpoints(0)->mutable_endpoint()->mutable_address()
      ->mutable_pipe()->set_path("/tmp/mem-f.sock");
  std::string pipe;
  auto piped = config::translateCluster(c, "c", 904, store, nullptr, true, &pipe, nullptr);
  REQUIRE(piped.ok());
  CHECK(pipe == (*piped)->pipe_target);
  CHECK((*piped)->grpcTarget() == (*piped)->pipe_target);
  CHECK((*piped)->grpcTarget().rfind("unix:", 0) == 0);
}

TEST_CASE("Cluster memory: breakdown per EDS cluster of 10 endpoints", "[.memory]") {
  const int n = 1000;
  stats::Store store(4);  // main, two workers, xDS: as `--concurrency 2`
  stats::setThreadShard(&store.shard(0));
  std::printf("sizeof: Cluster %zu, Host %zu, ClusterRuntime %zu, network::Address %zu, ClusterStats %zu\n",
              sizeof(config::Cluster), sizeof(upstream::Host), sizeof(upstream::ClusterRuntime),
              sizeof(network::Address), sizeof(config::ClusterStats));
  const size_t entries0 = store.entryCount();
  size_t h0 = heapInUse();
  // Held as the xDS applier holds them: as bytes, which each translation shares (no decoded copy).
  std::vector<config::DynamicResource> cds(n);
  for (int i = 0; i < n; ++i) {
    cds[i].wire = std::make_shared<const std::string>(
        edsCluster("r1-" + std::to_string(n) + "-c" + std::to_string(i)).SerializeAsString());
  }
  const size_t cds_bytes = heapInUse() - h0;
  h0 = heapInUse();
  config::ResourceMap endpoints;
  for (int i = 0; i < n; ++i) {
    const std::string name = "r1-" + std::to_string(n) + "-c" + std::to_string(i);
    endpoints.set(name, heldAssignment(name, i, 10, 1796590800000));
  }
  const size_t eds_bytes = heapInUse() - h0;
  h0 = heapInUse();
  const size_t meta0 = store.metadataBytes();
  std::vector<config::ClusterConstSharedPtr> clusters;
  for (int i = 0; i < n; ++i) {
    auto c = config::translateCluster(*config::heldAs<envoy::config::cluster::v3::Cluster>(cds[i]), "c", 5000 + i,
                                      store, &endpoints, false, nullptr, nullptr, &cds[i]);
    REQUIRE(c.ok());
    clusters.push_back(*c);
  }
  const size_t translated = heapInUse() - h0;
  const size_t meta = store.metadataBytes() - meta0;
  size_t shared = 0;
  for (int i = 0; i < n; ++i) shared += clusters[i]->sourceKey() == cds[i].identityKey() ? 1 : 0;
  const double per = 1.0 / n;
  std::printf("per cluster (bytes of heap, %d clusters of 10 endpoints):\n", n);
  std::printf("  Cluster held as bytes (CDS resource)             %8.0f\n", cds_bytes * per);
  std::printf("  ClusterLoadAssignment held as bytes + DynamicResource %5.0f\n", eds_bytes * per);
  std::printf("  translated config::Cluster, all included         %8.0f\n", translated * per);
  std::printf("    of which: stat names/bookkeeping (Store)       %8.0f  (%zu stats, %u slots, %zu entries)\n",
              meta * per, store.statCount(), store.slotsInUse(), store.entryCount() - entries0);
  std::printf("    sharing the CDS resource's bytes:              %5zu of %d\n", shared, n);
  std::printf("    of which: 10 Host objects (malloc chunks)      %8.0f\n",
              10.0 * ((sizeof(upstream::Host) + 16 + 8 + 15) / 16 * 16));  // + control block, glibc header
  std::printf("  stat slots, per shard that writes them           %8.0f\n", store.slotsInUse() * 8.0 * per);
}
