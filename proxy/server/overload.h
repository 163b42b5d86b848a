#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proxy/event/dispatcher.h"
#include "proxy/stats/stats.h"

namespace google::protobuf {
class Message;
}

namespace strait::server {

// Envoy's overload manager, the part a sidecar needs: the fixed_heap resource monitor (heap in use
// against a ceiling) driving stop_accepting_requests (new requests get 503 "envoy overloaded"),
// stop_accepting_connections (new connections are closed) and shrink_heap (freed heap goes back to
// the system). The main thread samples every refresh_interval; workers read two atomics (relaxed) per
// new connection or request.
struct OverloadConfig {
  uint64_t refresh_ms = 1000;
  uint64_t max_heap_bytes = 0;  // fixed_heap; 0: no monitor
  std::string monitor_name;
  struct Action {
    enum class Kind { StopRequests, StopConnections, ShrinkHeap, Inert };
    Kind kind = Kind::Inert;
    std::string name;
    double threshold = 1.0;
  };
  std::vector<Action> actions;
};

// Translates bootstrap.overload_manager; errors name the field ("overload_manager.actions[0]...").
absl::StatusOr<std::shared_ptr<const OverloadConfig>> translateOverload(const google::protobuf::Message& bootstrap);

class OverloadManager {
 public:
  OverloadManager(std::shared_ptr<const OverloadConfig> config, event::Dispatcher& dispatcher, stats::Store& store);
  // Samples once now (tests and start-up) and then every refresh interval.
  void start();

 private:
  void sample();
  std::shared_ptr<const OverloadConfig> config_;
  event::Dispatcher& dispatcher_;
  stats::Store& store_;
  event::TimerPtr timer_;
  stats::Gauge pressure_;
  std::vector<stats::Gauge> active_;
};

}  // namespace strait::server
