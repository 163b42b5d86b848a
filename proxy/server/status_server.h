#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "proxy/server/app_prober.h"
#include "proxy/server/local_http.h"
#include "proxy/server/pod_env.h"
#include "proxy/stats/stats.h"

namespace strait::server {

class Server;
class MetricsFetch;

// The pod-facing status ports (--status-port; Istio's 15021 and 15020), on the main thread's loop and
// open to the pod's network (the kubelet and Prometheus come from outside; the admin stays on loopback):
//   /healthz/ready      200 when Strait is ready (as the admin's /ready) and not draining, else 503
//   /stats/prometheus   Strait's stats, followed by the application's own (STRAIT_PROMETHEUS_SCRAPE),
//                       fetched from 127.0.0.1 without blocking the loop; a failed fetch still serves
//                       Strait's part and counts in status_server.app_scrape_failure
//   /app-health/...     the application's probe of that path (STRAIT_KUBE_APP_PROBERS): 200 or 503
// Anything else: 404.
class StatusServer {
 public:
  StatusServer(Server& server, std::shared_ptr<const PodEnv> env);
  ~StatusServer();
  // Listens on 0.0.0.0:<port> and, when the host has IPv6, [::]:<port>, for every port.
  bool bind(const std::vector<uint16_t>& ports, std::string* error);
  void stop();
  LocalHttpServer& http() { return http_; }  // hot restart hands its sockets over

 private:
  friend class MetricsFetch;
  void handle(const std::string& method, const std::string& url, LocalHttpServer::Respond respond);
  void serveMetrics(LocalHttpServer::Respond respond);
  void fetchDone(MetricsFetch* f);

  Server& server_;
  std::shared_ptr<const PodEnv> env_;
  LocalHttpServer http_;
  AppProber prober_;
  std::list<std::unique_ptr<MetricsFetch>> fetches_;
  stats::Counter probe_passed_;
  stats::Counter probe_failed_;
  stats::Counter scrape_success_;
  stats::Counter scrape_failure_;
};

}  // namespace strait::server
