#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proxy/common/log.h"

namespace strait::server {

enum class Mode { Serve, Validate };

struct Options {
  std::string config_path;
  std::string config_yaml;
  Mode mode = Mode::Serve;
  uint32_t concurrency = 0;  // 0: CPUs in this process's affinity mask
  common::LogLevel log_level = common::LogLevel::Info;
  uint32_t drain_time_s = 600;  // Envoy's default; set it below the pod's terminationGracePeriodSeconds
  bool drain_gradual = true;    // --drain-strategy gradual (Envoy's default) | immediate
  // SIGTERM in a pod (Istio's MINIMUM_DRAIN_DURATION): Strait stays up at least this long, and its
  // outbound (traffic_direction OUTBOUND) listeners serve the application's own calls untold until
  // then. 0 (the default) keeps the old behaviour: exit once no connection is left.
  uint32_t min_drain_time_s = 0;
  // Istio's EXIT_ON_ZERO_ACTIVE_CONNECTIONS: after the minimum, outbound connections are never told to
  // go; Strait waits until the application has closed them (bounded by --drain-time-s).
  bool exit_on_zero_active_connections = false;
  // --status-port (repeatable): /healthz/ready, /stats/prometheus (merged with the application's) and
  // /app-health/... on 0.0.0.0 (and [::]) on the main thread's loop.
  std::vector<uint16_t> status_ports;
  // Hot restart (Envoy's flags): epoch N > 0 takes the listening sockets and counters of epoch N - 1 of
  // the same base id, then tells it to drain; that parent exits when its connections are gone, or
  // --parent-shutdown-time-s after the drain began.
  bool hot_restart = false;  // --restart-epoch or --base-id given: serve (and, epoch > 0, take over)
  uint32_t restart_epoch = 0;
  uint32_t base_id = 0;
  uint32_t parent_shutdown_time_s = 900;  // Envoy's default
  std::string admin_address_path;
  std::string service_node;
  std::string service_cluster;
  bool allow_unknown_static_fields = false;
  bool reject_unknown_dynamic_fields = false;
  bool show_version = false;
  bool show_help = false;
  std::string command_line;  // as given, for /server_info
};

absl::StatusOr<Options> parseOptions(int argc, char** argv);
const char* usage();
uint32_t defaultConcurrency();

}  // namespace strait::server
