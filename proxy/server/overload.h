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

// Envoy's overload manager. Resource monitors report a pressure (0..1, may exceed 1):
//   fixed_heap                        heap in use (mallinfo2) against max_heap_size_bytes
//   global_downstream_max_connections open downstream connections against their ceiling; at the
//                                     ceiling the worker closes new connections as it accepts them
// Each action's triggers turn pressures into a scale 0..1 (the largest of its triggers'):
//   stop_accepting_requests    that share of new requests gets 503 "envoy overloaded"
//   stop_accepting_connections saturated: new connections are closed at accept
//   disable_http_keepalive     that share of responses ends its connection (HTTP/1 Connection: close,
//                              HTTP/2 GOAWAY)
//   reduce_timeouts            the named idle timers shrink toward their floor as the scale rises
//   shrink_heap                saturated: freed heap goes back to the system (every 10 s at most)
// The main thread samples every refresh_interval and publishes atomics (common/overload_state.h) that
// workers read relaxed; nothing is looked up per request.
struct OverloadConfig {
  uint64_t refresh_ms = 1000;

  struct Monitor {
    enum class Kind { FixedHeap, DownstreamConnections };
    Kind kind = Kind::FixedHeap;
    std::string name;
    uint64_t max = 0;  // bytes or connections
  };
  std::vector<Monitor> monitors;

  // threshold { value }: 1 at or above value, else 0. scaled { scaling, saturation }: 0 below scaling,
  // 1 at or above saturation, linear between.
  struct Trigger {
    size_t monitor = 0;  // index into monitors
    bool scaled = false;
    double scaling = 0.0;
    double saturation = 1.0;  // the threshold's value when not scaled
    double scale(double pressure) const;
  };

  struct TimerScale {
    int timer = 0;            // common::OverloadState::Timer
    uint64_t min_ms = 0;      // min_timeout
    double min_scale = -1.0;  // min_scale as a fraction (< 0: min_ms applies)
  };

  struct Action {
    enum class Kind { StopRequests, StopConnections, DisableKeepalive, ReduceTimeouts, ShrinkHeap };
    Kind kind = Kind::StopRequests;
    std::string name;
    std::vector<Trigger> triggers;
    std::vector<TimerScale> timers;  // reduce_timeouts
    // The largest of its triggers' scales for these monitor pressures.
    double scale(const std::vector<double>& pressures) const;
  };
  std::vector<Action> actions;
};

// Translates bootstrap.overload_manager (null: none). Unknown monitors and actions are refused, as Envoy
// does: an action that silently never fires is protection the operator believes they have. Errors
// name the field ("overload_manager.actions[0].triggers[1].scaled: ...").
absl::StatusOr<std::shared_ptr<const OverloadConfig>> translateOverload(const google::protobuf::Message& bootstrap);

class OverloadManager {
 public:
  OverloadManager(std::shared_ptr<const OverloadConfig> config, event::Dispatcher& dispatcher, stats::Store& store);
  // Clears what it published (tests create several).
  ~OverloadManager();
  // Publishes the fixed parts (connection ceiling, timer floors), samples once now and then every
  // refresh interval.
  void start();
  // One refresh: read the monitors, update the actions. Public for tests.
  void sample();

 private:
  double read(const OverloadConfig::Monitor& m) const;
  std::shared_ptr<const OverloadConfig> config_;
  event::Dispatcher& dispatcher_;
  stats::Store& store_;
  event::TimerPtr timer_;
  struct MonitorStats {
    stats::Gauge pressure;  // percent
    stats::Counter failed_updates;
    stats::Counter skipped_updates;
  };
  std::vector<MonitorStats> monitor_stats_;
  struct ActionStats {
    stats::Gauge active;  // 1 when saturated
    stats::Gauge scale_percent;
  };
  std::vector<ActionStats> action_stats_;
  std::vector<double> pressures_;
  std::vector<double> scales_;
  uint64_t last_trim_ms_ = 0;
  bool trimmed_ = false;
};

}  // namespace strait::server
