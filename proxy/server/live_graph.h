#pragma once

#include <memory>
#include <string>
#include <vector>

#include "proxy/event/dispatcher.h"
#include "proxy/server/local_http.h"
#include "proxy/stats/live_edges.h"

namespace strait::server {

class Server;

// The admin's live picture of this pod's traffic (figures from stats/live_edges.h):
//   /graph?format=json   nodes (callers, this workload, callees) and edges with the last minute's figures
//   /graph/events        server-sent events: that JSON once a second while the client stays
//   /                    the page (live_graph_page.h) drawing it from /graph/events
// Main thread only.
class LiveGraph {
 public:
  static constexpr size_t kMaxStreams = 8;                 // concurrent /graph/events clients
  static constexpr size_t kMaxUnsentBytes = 256 * 1024;  // a client further behind is dropped
  static constexpr uint64_t kIntervalMs = 1000;

  explicit LiveGraph(Server& server);
  ~LiveGraph();

  std::string json();
  // The page: the graph, then the clusters, listeners, certificates and recent errors (fetched by the
  // page from the admin's own endpoints) and `paths` (the admin's endpoint list, as "path\tdescription"
  // lines).
  std::string page(const std::vector<std::pair<std::string, std::string>>& paths);
  // /graph/events: a streaming response, or 503 when kMaxStreams clients are already there or the
  // server is draining. `count` > 0 ends the stream after that many events (scripts, a headless browser).
  LocalHttpResponse events(uint32_t count);
  // Ends every stream (admin shutdown).
  void stop();
  size_t streams() const { return streams_.size(); }

 private:
  void tick();

  Server& server_;
  struct Client {
    LocalHttpStream stream;
    uint32_t left = 0;  // events still to send; 0: until the client leaves
  };
  std::vector<Client> streams_;
  event::TimerPtr timer_;
};

// The JSON for a snapshot (tests build it without a server). `self` names this workload.
std::string liveGraphJson(const stats::live::Snapshot& snap, const std::string& self);

}  // namespace strait::server
