#pragma once

#include <list>
#include <memory>
#include <string>

#include "proxy/server/live_graph.h"
#include "proxy/server/local_http.h"

namespace strait::server {

class Server;

// Strait's stats in Prometheus text, as the admin's /stats/prometheus serves them (the bootstrap's
// stats_matcher applied); the status port's /stats/prometheus starts with the same. Main thread.
std::string prometheusStats(Server& server);

// Envoy-compatible admin endpoint on the main thread. One request per connection (Connection: close):
// the admin is for people and scrapers, not for throughput.
class AdminServer {
 public:
  explicit AdminServer(Server& server);
  ~AdminServer();
  bool bind(const network::Address& address, std::string* error);
  const network::Address& address() const { return http_.addresses().front(); }
  void stop() {
    live_.stop();
    http_.stop();
  }
  LocalHttpServer& http() { return http_; }  // hot restart hands its socket over

  using Response = LocalHttpResponse;
  Response handle(const std::string& method, const std::string& url);

 private:
  Server& server_;
  LocalHttpServer http_;  // the connections (shared with the status ports)
  LiveGraph live_;        // "/", /graph, /graph/events
};

}  // namespace strait::server
