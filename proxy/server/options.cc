#include "proxy/server/options.h"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace strait::server {

const char* usage() {
  return "usage: strait [-c FILE] [--config-yaml YAML] [--mode serve|validate] [--concurrency N]\n"
         "              [-l|--log-level trace|debug|info|warning|error|critical|off] [--drain-time-s N]\n"
         "              [--drain-strategy gradual|immediate] [--min-drain-time-s N]\n"
         "              [--exit-on-zero-active-connections] [--status-port N]...\n"
         "              [--admin-address-path FILE] [--service-node ID] [--service-cluster NAME]\n"
         "              [--restart-epoch N] [--base-id N] [--parent-shutdown-time-s N]\n"
         "              [--allow-unknown-static-fields] [--reject-unknown-dynamic-fields] [--version] [--help]\n"
         "With no -c, Strait runs its embedded sidecar default: capture listeners 15001 (outbound) and\n"
         "15006 (inbound) forwarding to original destinations, admin on 127.0.0.1:15000.\n"
         "On SIGTERM, INBOUND listeners drain (clients told: GOAWAY, Connection: close) and readiness goes\n"
         "503; OUTBOUND listeners serve the application untold for --min-drain-time-s (default 0); Strait\n"
         "exits after that once no connection is left (a quiet second), or when --drain-time-s ends. After\n"
         "the minimum, outbound connections are told too, unless --exit-on-zero-active-connections: then\n"
         "Strait only waits for the application to close them.\n"
         "--status-port N (repeatable, 0: off): HTTP on 0.0.0.0:N and [::]:N: /healthz/ready (200 when\n"
         "ready and not draining), /stats/prometheus (Strait's, plus the application's), /app-health/...\n"
         "(the application's probes, run by Strait).\n"
         "Hot restart: --restart-epoch N (N > 0) takes the listening sockets and counters of the running\n"
         "Strait of epoch N-1 (same --base-id, same network namespace), and once ready tells it to drain;\n"
         "it exits when its connections are gone or --parent-shutdown-time-s (default 900) after that.\n"
         "Environment: STRAIT_SERVICE_NODE and STRAIT_SERVICE_CLUSTER stand in for the flags.\n"
         "  STRAIT_META_<KEY>=text and STRAIT_METAJSON_<KEY>={json object} are added to node.metadata\n"
         "  (ISTIO_META_ / ISTIO_METAJSON_ too; STRAIT_ wins).\n"
         "  STRAIT_KUBE_APP_PROBERS (or ISTIO_KUBE_APP_PROBERS): {\"/app-health/<c>/readyz\": {\"httpGet\":\n"
         "  {...}} | {\"tcpSocket\": {...}} | {\"grpc\": {...}}, ...}, Kubernetes' probe handlers.\n"
         "  STRAIT_PROMETHEUS_SCRAPE (or ISTIO_PROMETHEUS_ANNOTATIONS): {\"scrape\": \"true\", \"path\":\n"
         "  \"/metrics\", \"port\": \"8080\"}: the application's metrics merged into /stats/prometheus.\n";
}

uint32_t defaultConcurrency() {
  uint32_t n = 1;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) n = static_cast<uint32_t>(CPU_COUNT(&set));
  // A container's CPU limit (cgroup v2 cpu.max: "<quota> <period>" or "max <period>"): a pod limited
  // to 2 CPUs on a 64-core node gets 2 workers, not 64.
  if (FILE* f = std::fopen("/sys/fs/cgroup/cpu.max", "r")) {
    char quota[32] = {0};
    unsigned long period = 0;
    if (std::fscanf(f, "%31s %lu", quota, &period) == 2 && std::string_view(quota) != "max" && period > 0) {
      unsigned long q = std::strtoul(quota, nullptr, 10);
      uint32_t limit = static_cast<uint32_t>(std::max<unsigned long>(1, (q + period - 1) / period));
      n = std::min(n, limit);
    }
    std::fclose(f);
  }
  return n;
}

namespace {
absl::StatusOr<uint32_t> parseUint(std::string_view flag, std::string_view v, uint32_t max) {
  uint32_t out = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (ec != std::errc() || p != v.data() + v.size() || v.empty() || out > max) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(flag), ": '", std::string(v), "' is not a number from 0 to ", max));
  }
  return out;
}
}  // namespace

absl::StatusOr<Options> parseOptions(int argc, char** argv) {
  Options o;
  for (int i = 0; i < argc; ++i) {
    if (i) o.command_line += ' ';
    o.command_line += argv[i];
  }
  if (const char* e = std::getenv("STRAIT_SERVICE_NODE")) o.service_node = e;
  if (const char* e = std::getenv("STRAIT_SERVICE_CLUSTER")) o.service_cluster = e;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    std::string_view value;
    bool has_inline = false;
    if (a.substr(0, 2) == "--") {
      size_t eq = a.find('=');
      if (eq != std::string_view::npos) {
        value = a.substr(eq + 1);
        a = a.substr(0, eq);
        has_inline = true;
      }
    }
    auto next = [&]() -> absl::StatusOr<std::string_view> {
      if (has_inline) return value;
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(std::string(a), " needs a value"));
      return std::string_view(argv[++i]);
    };
    if (a == "-h" || a == "--help") {
      o.show_help = true;
    } else if (a == "--version") {
      o.show_version = true;
    } else if (a == "--allow-unknown-static-fields") {
      o.allow_unknown_static_fields = true;
    } else if (a == "--reject-unknown-dynamic-fields") {
      o.reject_unknown_dynamic_fields = true;
    } else if (a == "-c" || a == "--config-path") {
      auto v = next();
      if (!v.ok()) return v.status();
      o.config_path = std::string(*v);
    } else if (a == "--config-yaml") {
      auto v = next();
      if (!v.ok()) return v.status();
      o.config_yaml = std::string(*v);
    } else if (a == "--mode") {
      auto v = next();
      if (!v.ok()) return v.status();
      if (*v == "serve") {
        o.mode = Mode::Serve;
      } else if (*v == "validate") {
        o.mode = Mode::Validate;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--mode: '", std::string(*v), "' is not serve or validate"));
      }
    } else if (a == "--concurrency") {
      auto v = next();
      if (!v.ok()) return v.status();
      auto n = parseUint(a, *v, 256);
      if (!n.ok()) return n.status();
      o.concurrency = *n;
    } else if (a == "-l" || a == "--log-level") {
      auto v = next();
      if (!v.ok()) return v.status();
      if (!common::parseLogLevel(*v, o.log_level)) {
        return absl::InvalidArgumentError(absl::StrCat("--log-level: unknown level '", std::string(*v), "'"));
      }
    } else if (a == "--drain-time-s") {
      auto v = next();
      if (!v.ok()) return v.status();
      auto n = parseUint(a, *v, 86400);
      if (!n.ok()) return n.status();
      o.drain_time_s = *n;
    } else if (a == "--drain-strategy") {
      auto v = next();
      if (!v.ok()) return v.status();
      if (*v == "gradual") {
        o.drain_gradual = true;
      } else if (*v == "immediate") {
        o.drain_gradual = false;
      } else {
        return absl::InvalidArgumentError(absl::StrCat("--drain-strategy: '", std::string(*v), "' is not gradual or immediate"));
      }
    } else if (a == "--min-drain-time-s") {
      auto v = next();
      if (!v.ok()) return v.status();
      auto n = parseUint(a, *v, 86400);
      if (!n.ok()) return n.status();
      o.min_drain_time_s = *n;
    } else if (a == "--exit-on-zero-active-connections") {
      o.exit_on_zero_active_connections = true;
    } else if (a == "--status-port") {
      auto v = next();
      if (!v.ok()) return v.status();
      auto n = parseUint(a, *v, 65535);
      if (!n.ok()) return n.status();
      if (*n != 0) o.status_ports.push_back(static_cast<uint16_t>(*n));
    } else if (a == "--restart-epoch" || a == "--base-id") {
      auto v = next();
      if (!v.ok()) return v.status();
      auto n = parseUint(a, *v, 1000000);
      if (!n.ok()) return n.status();
      (a == "--base-id" ? o.base_id : o.restart_epoch) = *n;
      o.hot_restart = true;
    } else if (a == "--parent-shutdown-time-s") {
      auto v = next();
      if (!v.ok()) return v.status();
      auto n = parseUint(a, *v, 86400);
      if (!n.ok()) return n.status();
      if (*n == 0) return absl::InvalidArgumentError("--parent-shutdown-time-s: must be at least 1");
      o.parent_shutdown_time_s = *n;
    } else if (a == "--admin-address-path") {
      auto v = next();
      if (!v.ok()) return v.status();
      o.admin_address_path = std::string(*v);
    } else if (a == "--service-node") {
      auto v = next();
      if (!v.ok()) return v.status();
      o.service_node = std::string(*v);
    } else if (a == "--service-cluster") {
      auto v = next();
      if (!v.ok()) return v.status();
      o.service_cluster = std::string(*v);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option '", std::string(a), "'"));
    }
  }
  if (o.concurrency == 0) o.concurrency = defaultConcurrency();
  if (o.min_drain_time_s > o.drain_time_s) {
    return absl::InvalidArgumentError(absl::StrCat("--min-drain-time-s (", o.min_drain_time_s,
                                                   ") must not exceed --drain-time-s (", o.drain_time_s, ")"));
  }
  return o;
}

}  // namespace strait::server
