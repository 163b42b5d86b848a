#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "certs/secret_manager.h"
#include "certs/tls_config.h"
#include "filters/http/cors.h"
#include "filters/http/fault.h"
#include "filters/http/inert.h"
#include "filters/http/istio_alpn.h"
#include "filters/http/rbac.h"
#include "filters/http/router.h"
#include "filters/network/rbac.h"
#include "filters/network/istio_noop.h"
#include "filters/network/tcp_proxy.h"
#include "proxy/http/conn_manager.h"
#include "proxy/server/extensions.h"
#include "proxy/server/hot_restart.h"
#include "proxy/config/bootstrap.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "proxy/config/node_metadata.h"
#include "proxy/stats/istio_metrics.h"
#include "proxy/stats/live_edges.h"
#include "proxy/server/options.h"
#include "proxy/server/overload.h"
#include "proxy/server/pod_env.h"
#include "proxy/server/server.h"

extern char** environ;

namespace {

// glibc hands freed memory at the top of a heap back to the kernel once more than 128 KiB is free there,
// and a proxy's buffers come and go faster than that: 64 connections streaming 64 KiB responses took
// 1.6 page faults per request (each one a fresh zeroed page) and about 8% more system time. Up to 8 MiB
// free per heap now stays mapped for reuse; more than that is still returned, and every applied xDS
// update trims fully. GLIBC_TUNABLES=glibc.malloc.trim_threshold=N still decides when it is set.
void keepFreedHeapForReuse() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::strstr(tunables, "trim_threshold") != nullptr) return;
  mallopt(M_TRIM_THRESHOLD, 8 * 1024 * 1024);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace strait;
  keepFreedHeapForReuse();
  auto options = server::parseOptions(argc, argv);
  if (!options.ok()) {
    std::fprintf(stderr, "strait: %s\n%s", std::string(options.status().message()).c_str(), server::usage());
    return 1;
  }
  if (options->show_help) {
    std::fputs(server::usage(), stdout);
    return 0;
  }
  if (options->show_version) {
    std::printf("strait %s\n", STRAIT_VERSION);
    return 0;
  }
  common::setLogLevel(options->log_level);
  // The pod's environment (probes, metrics to merge, node metadata): malformed is refused here,
  // naming the variable, before anything is bound.
  std::vector<std::string_view> env;
  for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  auto pod = server::readPodEnv(env);
  if (!pod.ok()) {
    std::fprintf(stderr, "strait: %s\n", std::string(pod.status().message()).c_str());
    return 1;
  }
  if (!pod->probes.empty() && options->status_ports.empty() && options->mode == server::Mode::Serve) {
    std::fprintf(stderr, "strait: warning: application probes are set but no --status-port serves them\n");
  }
  server::registerExtensions();

  // Shards: main thread, one per worker, and the xDS thread.
  auto store = std::make_unique<stats::Store>(options->concurrency + 2);
  stats::setThreadShard(&store->shard(0));
  certs::SecretManager::get().setStore(store.get());
  config::LoadOptions load;
  load.path = options->config_path;
  load.config_yaml = options->config_yaml;
  load.allow_unknown_static_fields = options->allow_unknown_static_fields;
  load.service_node = options->service_node;
  load.service_cluster = options->service_cluster;
  config::setEnvironmentNodeMetadata(pod->node_metadata_json);
  auto snapshot = config::loadBootstrap(load, *store);
  const std::string source = options->config_path.empty() ? "<embedded default>" : options->config_path;
  if (!snapshot.ok()) {
    std::fprintf(stderr, "strait: %s: %s\n", source.c_str(), std::string(snapshot.status().message()).c_str());
    return 1;
  }
  // Istio's telemetry: this pod's workload and the switch, from the node's metadata (istio_metrics.h).
  const auto& node = static_cast<const envoy::config::bootstrap::v3::Bootstrap&>(*(*snapshot)->bootstrap).node();
  if (auto st = stats::istio::configureFromNode(node.metadata(), node.id(), store.get()); !st.ok()) {
    std::fprintf(stderr, "strait: %s: %s\n", source.c_str(), std::string(st.message()).c_str());
    return 1;
  }
  // The admin's live graph (live_edges.h): on unless STRAIT_LIVE_GRAPH is false.
  if (auto st = stats::live::configureFromNode(node.metadata()); !st.ok()) {
    std::fprintf(stderr, "strait: %s: %s\n", source.c_str(), std::string(st.message()).c_str());
    return 1;
  }
  auto overload = server::translateOverload(*(*snapshot)->bootstrap);
  if (!overload.ok()) {
    std::fprintf(stderr, "strait: %s: %s\n", source.c_str(), std::string(overload.status().message()).c_str());
    return 1;
  }
  if (options->mode == server::Mode::Validate) {
    std::printf("configuration '%s' OK\n", source.c_str());
    return 0;
  }
  // Hot restart (after the config is known good: a child with a bad config never touches its parent).
  std::unique_ptr<server::HotRestart> hot_restart;
  if (options->hot_restart) {
    auto h = server::HotRestart::create(options->base_id, options->restart_epoch);
    if (!h.ok()) {
      std::fprintf(stderr, "strait: %s\n", std::string(h.status().message()).c_str());
      return 1;
    }
    hot_restart = std::move(*h);
  }
  server::Server server(std::move(*options), std::move(*snapshot), std::move(store));
  server.setHotRestart(std::move(hot_restart));
  server.setOverload(*overload);
  server.setPodEnv(std::make_shared<const server::PodEnv>(std::move(*pod)));
  return server.run();
}
