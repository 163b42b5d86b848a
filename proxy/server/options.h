#pragma once

#include <cstdint>
#include <string>

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
