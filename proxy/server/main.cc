#include <cstdio>

#include "filters/http/router.h"
#include "filters/network/tcp_proxy.h"
#include "proxy/http/conn_manager.h"
#include "proxy/config/bootstrap.h"
#include "proxy/server/options.h"
#include "proxy/server/server.h"

int main(int argc, char** argv) {
  using namespace strait;
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
  filters::network::registerTcpProxy();
  http::registerHttpConnectionManager();
  filters::http::registerRouter();

  // Shards: main thread, one per worker, and the xDS thread.
  auto store = std::make_unique<stats::Store>(options->concurrency + 2);
  stats::setThreadShard(&store->shard(0));
  config::LoadOptions load;
  load.path = options->config_path;
  load.config_yaml = options->config_yaml;
  load.allow_unknown_static_fields = options->allow_unknown_static_fields;
  load.service_node = options->service_node;
  load.service_cluster = options->service_cluster;
  auto snapshot = config::loadBootstrap(load, *store);
  const std::string source = options->config_path.empty() ? "<embedded default>" : options->config_path;
  if (!snapshot.ok()) {
    std::fprintf(stderr, "strait: %s: %s\n", source.c_str(), std::string(snapshot.status().message()).c_str());
    return 1;
  }
  if (options->mode == server::Mode::Validate) {
    std::printf("configuration '%s' OK\n", source.c_str());
    return 0;
  }
  server::Server server(std::move(*options), std::move(*snapshot), std::move(store));
  return server.run();
}
