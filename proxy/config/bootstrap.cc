#include "proxy/config/bootstrap.h"

#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "certs/client_hello.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb.h"
#include "envoy/extensions/filters/listener/original_dst/v3/original_dst.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/common/log.h"
#include "proxy/config/default_bootstrap.h"
#include "proxy/http/matchers.h"
#include "proxy/upstream/health_checker.h"
#include "strait/lb/v1/peak_ewma.pb.h"

namespace strait::config {

namespace bootstrap_v3 = envoy::config::bootstrap::v3;
namespace cluster_v3 = envoy::config::cluster::v3;
namespace listener_v3 = envoy::config::listener::v3;
namespace core_v3 = envoy::config::core::v3;
namespace endpoint_v3 = envoy::config::endpoint::v3;
namespace route_v3 = envoy::config::route::v3;

namespace {

std::map<std::string, NetworkFilterFactoryFn>& networkFilterRegistry() {
  static auto* r = new std::map<std::string, NetworkFilterFactoryFn>;
  return *r;
}
std::map<std::string, NetworkReadFilterFactoryFn>& networkReadFilterRegistry() {
  static auto* r = new std::map<std::string, NetworkReadFilterFactoryFn>;
  return *r;
}
std::map<std::string, TransportSocketFactoryFn>& transportSocketRegistry() {
  static auto* r = new std::map<std::string, TransportSocketFactoryFn>;
  return *r;
}
SecretLoaderFn& secretLoader() {
  static auto* f = new SecretLoaderFn;
  return *f;
}

// A transport_socket (filter chain: server side; cluster: client side) as a factory; null = plaintext.
absl::StatusOr<network::TransportSocketFactorySharedPtr> translateTransportSocket(
    const envoy::config::core::v3::TransportSocket& ts, const std::string& path, bool server) {
  if (!ts.has_typed_config()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ".typed_config: is required (transport sockets are chosen by type URL)"));
  }
  auto it = transportSocketRegistry().find(ts.typed_config().type_url());
  if (it == transportSocketRegistry().end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ".typed_config: unsupported transport socket type '", ts.typed_config().type_url(), "'"));
  }
  return it->second(ts.typed_config(), path + ".typed_config", server);
}

absl::Status fieldError(const std::string& path, const std::string& what);

constexpr const char* kOriginalDstType =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
constexpr const char* kTlsInspectorType =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
constexpr const char* kHttpInspectorType =
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";

absl::StatusOr<PortPredicate> translatePredicate(const listener_v3::ListenerFilterChainMatchPredicate& p,
                                                 const std::string& path, int depth) {
  if (depth > 16) return fieldError(path, "nested too deeply");
  PortPredicate out;
  using P = listener_v3::ListenerFilterChainMatchPredicate;
  switch (p.rule_case()) {
    case P::kAnyMatch:
      out.kind = PortPredicate::Kind::Any;
      return out;
    case P::kDestinationPortRange:
      out.kind = PortPredicate::Kind::Range;
      out.start = p.destination_port_range().start();
      out.end = p.destination_port_range().end();
      if (out.start >= out.end) return fieldError(path + ".destination_port_range", "start must be below end");
      return out;
    case P::kNotMatch: {
      out.kind = PortPredicate::Kind::Not;
      auto c = translatePredicate(p.not_match(), path + ".not_match", depth + 1);
      if (!c.ok()) return c.status();
      out.children.push_back(*c);
      return out;
    }
    case P::kOrMatch:
    case P::kAndMatch: {
      bool is_or = p.rule_case() == P::kOrMatch;
      out.kind = is_or ? PortPredicate::Kind::Or : PortPredicate::Kind::And;
      const auto& set = is_or ? p.or_match() : p.and_match();
      const std::string sp = path + (is_or ? ".or_match" : ".and_match");
      if (set.rules_size() < 2) return fieldError(sp + ".rules", "needs at least two rules");
      for (int i = 0; i < set.rules_size(); ++i) {
        auto c = translatePredicate(set.rules(i), absl::StrCat(sp, ".rules[", i, "]"), depth + 1);
        if (!c.ok()) return c.status();
        out.children.push_back(*c);
      }
      return out;
    }
    default:
      return fieldError(path, "a rule is required");
  }
}

absl::Status fieldError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// ---- YAML -> JSON ----------------------------------------------------------------------------------

void mergeYaml(YAML::Node base, const YAML::Node& overlay) {
  for (auto it = overlay.begin(); it != overlay.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    if (base[key] && base[key].IsMap() && it->second.IsMap()) {
      mergeYaml(base[key], it->second);
    } else {
      base[key] = it->second;
    }
  }
}

void jsonString(std::ostringstream& out, const std::string& s) {
  out << '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out << "\\\""; break;
      case '\\': out << "\\\\"; break;
      case '\n': out << "\\n"; break;
      case '\r': out << "\\r"; break;
      case '\t': out << "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out << buf;
        } else {
          out << c;
        }
    }
  }
  out << '"';
}

bool looksNumeric(const std::string& s) {
  if (s.empty()) return false;
  size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i >= s.size()) return false;
  bool digits = false, dot = false, exp = false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c >= '0' && c <= '9') {
      digits = true;
    } else if (c == '.' && !dot && !exp) {
      dot = true;
    } else if ((c == 'e' || c == 'E') && digits && !exp) {
      exp = true;
      if (i + 1 < s.size() && (s[i + 1] == '-' || s[i + 1] == '+')) ++i;
    } else {
      return false;
    }
  }
  // A leading '+' or a leading zero followed by digits is not JSON; keep those as strings.
  if (s[0] == '+') return false;
  if (s.size() > 1 && s[0] == '0' && s[1] != '.') return false;
  return digits;
}

void emitJson(std::ostringstream& out, const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      out << "null";
      break;
    case YAML::NodeType::Scalar: {
      const std::string& v = n.Scalar();
      if (n.Tag() == "!") {  // quoted: always a string
        jsonString(out, v);
      } else if (v == "true" || v == "false") {
        out << v;
      } else if (v == "null" || v == "~") {
        out << "null";
      } else if (looksNumeric(v)) {
        out << v;
      } else {
        jsonString(out, v);
      }
      break;
    }
    case YAML::NodeType::Sequence: {
      out << '[';
      bool first = true;
      for (const auto& e : n) {
        if (!first) out << ',';
        first = false;
        emitJson(out, e);
      }
      out << ']';
      break;
    }
    case YAML::NodeType::Map: {
      out << '{';
      bool first = true;
      for (auto it = n.begin(); it != n.end(); ++it) {
        if (!first) out << ',';
        first = false;
        jsonString(out, it->first.as<std::string>());
        out << ':';
        emitJson(out, it->second);
      }
      out << '}';
      break;
    }
  }
}

// ---- validation and translation ---------------------------------------------------------------------

absl::StatusOr<network::Address> translateAddress(const core_v3::Address& a, const std::string& path) {
  if (!a.has_socket_address()) {
    if (a.has_pipe()) return fieldError(path + ".pipe", "unix socket addresses are not supported here");
    return fieldError(path + ".socket_address", "is required");
  }
  const auto& sa = a.socket_address();
  const std::string sp = path + ".socket_address";
  if (sa.protocol() != core_v3::SocketAddress::TCP) return fieldError(sp + ".protocol", "only TCP is supported");
  if (sa.port_specifier_case() == core_v3::SocketAddress::kNamedPort) {
    return fieldError(sp + ".named_port", "named ports are not supported; use port_value");
  }
  if (sa.port_value() > 65535) {
    return fieldError(sp + ".port_value", absl::StrCat(sa.port_value(), " is not a valid port (0-65535)"));
  }
  if (sa.address().empty()) return fieldError(sp + ".address", "is required");
  auto addr = network::Address::parse(sa.address(), sa.port_value());
  if (!addr) {
    return fieldError(sp + ".address", absl::StrCat("'", sa.address(), "' is not a numeric IPv4 or IPv6 address"));
  }
  return *addr;
}

// Hosts of a ClusterLoadAssignment (EDS or a static load_assignment). Unhealthy and draining endpoints
// are left out. `allow_pipe`: the control-plane cluster may name a unix socket (Istio's bootstrap).
// The transport socket a host gets: the first transport_socket_matches entry whose criteria its
// metadata under "envoy.transport_socket_match" all hold, else the cluster's transport_socket.
struct SocketMatch {
  std::vector<std::pair<std::string, std::string>> criteria;  // key -> serialized google.protobuf.Value
  network::TransportSocketFactorySharedPtr factory;
};
struct SocketChooser {
  std::vector<SocketMatch> matches;
  network::TransportSocketFactorySharedPtr fallback;
  network::TransportSocketFactorySharedPtr choose(const envoy::config::core::v3::Metadata* md) const {
    const google::protobuf::Struct* fields = nullptr;
    if (md != nullptr) {
      auto it = md->filter_metadata().find("envoy.transport_socket_match");
      if (it != md->filter_metadata().end()) fields = &it->second;
    }
    for (const auto& m : matches) {
      bool all = true;
      for (const auto& [key, value] : m.criteria) {
        if (fields == nullptr) {
          all = false;
          break;
        }
        auto f = fields->fields().find(key);
        if (f == fields->fields().end() || f->second.SerializeAsString() != value) {
          all = false;
          break;
        }
      }
      if (all) return m.factory;
    }
    return fallback;
  }
};

// The endpoints of a ClusterLoadAssignment (or a STATIC cluster's load_assignment) into `out`: hosts kept
// from earlier versions (same address, transport, priority, locality and hostname) are reused from the
// cluster's runtime, so their health and load state carry on; what may change between versions
// (weights, EDS health) goes to `out.host_params` and takes effect when the version is activated.
absl::Status translateEndpoints(const endpoint_v3::ClusterLoadAssignment& la, const std::string& path,
                                const std::string& cluster_name, stats::Store& store, bool allow_pipe, Cluster& out,
                                std::string* pipe_target, const SocketChooser& sockets) {
  std::map<std::string, std::shared_ptr<const upstream::Locality>> localities;
  std::set<std::string> seen;
  for (int i = 0; i < la.endpoints_size(); ++i) {
    const auto& locality = la.endpoints(i);
    const std::string lp = absl::StrCat(path, ".endpoints[", i, "]");
    upstream::Locality where{locality.locality().region(), locality.locality().zone(), locality.locality().sub_zone()};
    auto& shared_locality = localities[absl::StrCat(where.region, "/", where.zone, "/", where.sub_zone)];
    if (!shared_locality) shared_locality = std::make_shared<const upstream::Locality>(where);
    if (locality.has_load_balancing_weight() && locality.load_balancing_weight().value() == 0) {
      return fieldError(lp + ".load_balancing_weight", "must be at least 1");
    }
    for (int j = 0; j < locality.lb_endpoints_size(); ++j) {
      const std::string ep = absl::StrCat(lp, ".lb_endpoints[", j, "]");
      const auto& lbe = locality.lb_endpoints(j);
      if (!lbe.has_endpoint()) return fieldError(ep + ".endpoint", "is required");
      if (allow_pipe && lbe.endpoint().address().has_pipe()) {
        if (pipe_target) *pipe_target = "unix:" + lbe.endpoint().address().pipe().path();
        continue;
      }
      auto addr = translateAddress(lbe.endpoint().address(), ep + ".endpoint.address");
      if (!addr.ok()) return addr.status();
      if (addr->port() == 0) return fieldError(ep + ".endpoint.address.socket_address.port_value", "must not be 0");
      if (lbe.has_load_balancing_weight() && lbe.load_balancing_weight().value() == 0) {
        return fieldError(ep + ".load_balancing_weight", "must be at least 1");
      }
      upstream::ClusterRuntime::HostParams params;
      params.weight = lbe.has_load_balancing_weight() ? lbe.load_balancing_weight().value() : 1;
      params.locality_weight = locality.has_load_balancing_weight() ? locality.load_balancing_weight().value() : 0;
      switch (lbe.health_status()) {
        case envoy::config::core::v3::UNHEALTHY:
        case envoy::config::core::v3::TIMEOUT: params.eds_flags = upstream::kFailedEdsHealth; break;
        case envoy::config::core::v3::DRAINING: params.eds_flags = upstream::kEdsDraining; break;
        case envoy::config::core::v3::DEGRADED: params.eds_flags = upstream::kDegradedEdsHealth; break;
        default: break;
      }
      auto socket = sockets.choose(lbe.has_metadata() ? &lbe.metadata() : nullptr);
      const std::string key = upstream::hostKey(*addr, socket ? socket->hashKey() : 0, locality.priority(), where,
                                                lbe.endpoint().hostname());
      if (!seen.insert(key).second) continue;  // listed twice: one host (Envoy merges duplicates too)
      upstream::HostSharedPtr h = out.runtime->findHost(key);
      if (!h) {
        h = std::make_shared<upstream::Host>();
        h->address = *addr;
        h->hostname = lbe.endpoint().hostname();
        h->transport_socket = socket;
        h->priority = locality.priority();
        h->locality = shared_locality;
        h->stat_scope = std::make_shared<stats::StatScope>(store);
        const std::string hp = absl::StrCat("cluster.", cluster_name, ".host.", addr->asString(), ".");
        h->cx_total = h->stat_scope->counter(hp + "cx_total", true);
        h->cx_active = h->stat_scope->gauge(hp + "cx_active", true);
        h->cx_connect_fail = h->stat_scope->counter(hp + "cx_connect_fail", true);
        h->rq_total = h->stat_scope->counter(hp + "rq_total", true);
        h->rq_error = h->stat_scope->counter(hp + "rq_error", true);
        h->rq_active = h->stat_scope->gauge(hp + "rq_active", true);
        // Not visible to any worker yet: its first values can be set now.
        h->weight.store(params.weight, std::memory_order_relaxed);
        h->locality_weight.store(params.locality_weight, std::memory_order_relaxed);
        h->health_flags.store(params.eds_flags, std::memory_order_relaxed);
        out.runtime->rememberHost(key, h);
      }
      out.hosts.push_back(std::move(h));
      out.host_params.push_back(params);
    }
  }
  if (la.has_policy() && la.policy().has_overprovisioning_factor()) {
    if (la.policy().overprovisioning_factor().value() == 0) {
      return fieldError(path + ".policy.overprovisioning_factor", "must be greater than 0");
    }
    out.lb.overprovisioning_factor = la.policy().overprovisioning_factor().value();
  }
  return absl::OkStatus();
}

// A HealthCheck Payload: hex text or raw bytes.
absl::StatusOr<std::string> healthPayload(const envoy::config::core::v3::HealthCheck::Payload& p, const std::string& path) {
  if (p.has_binary()) return p.binary();
  const std::string& hex = p.text();
  if (hex.size() % 2 != 0) return fieldError(path + ".text", "hex text has an odd length");
  std::string out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    int v = 0;
    for (size_t k = 0; k < 2; ++k) {
      const char c = hex[i + k];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return fieldError(path + ".text", "is not hex");
      v = v * 16 + d;
    }
    out.push_back(static_cast<char>(v));
  }
  return out;
}

// health_checks[i] into the checker's settings.
absl::Status translateHealthCheck(const envoy::config::core::v3::HealthCheck& hc, const std::string& path,
                                  const std::string& cluster_name, upstream::HealthCheckConfig& o) {
  using HC = envoy::config::core::v3::HealthCheck;
  o.cluster_name = cluster_name;
  if (!hc.has_timeout()) return fieldError(path + ".timeout", "is required");
  if (!hc.has_interval()) return fieldError(path + ".interval", "is required");
  if (!hc.has_unhealthy_threshold()) return fieldError(path + ".unhealthy_threshold", "is required");
  if (!hc.has_healthy_threshold()) return fieldError(path + ".healthy_threshold", "is required");
  o.timeout_ms = durationMs(hc.timeout());
  o.interval_ms = durationMs(hc.interval());
  o.unhealthy_threshold = hc.unhealthy_threshold().value();
  o.healthy_threshold = hc.healthy_threshold().value();
  if (hc.has_interval_jitter()) o.interval_jitter_ms = durationMs(hc.interval_jitter());
  o.interval_jitter_percent = hc.interval_jitter_percent();
  if (hc.has_initial_jitter()) o.initial_jitter_ms = durationMs(hc.initial_jitter());
  if (hc.has_no_traffic_interval()) o.no_traffic_interval_ms = durationMs(hc.no_traffic_interval());
  if (hc.has_no_traffic_healthy_interval()) o.no_traffic_healthy_interval_ms = durationMs(hc.no_traffic_healthy_interval());
  if (hc.has_unhealthy_interval()) o.unhealthy_interval_ms = durationMs(hc.unhealthy_interval());
  if (hc.has_unhealthy_edge_interval()) o.unhealthy_edge_interval_ms = durationMs(hc.unhealthy_edge_interval());
  if (hc.has_healthy_edge_interval()) o.healthy_edge_interval_ms = durationMs(hc.healthy_edge_interval());
  if (hc.has_reuse_connection()) o.reuse_connection = hc.reuse_connection().value();
  o.always_log_health_check_failures = hc.always_log_health_check_failures();
  auto ranges = [&](const google::protobuf::RepeatedPtrField<envoy::type::v3::Int64Range>& in, const std::string& p,
                    std::vector<upstream::StatusRange>& out) -> absl::Status {
    for (int i = 0; i < in.size(); ++i) {
      if (in[i].start() < 100 || in[i].end() > 600 || in[i].start() >= in[i].end()) {
        return fieldError(absl::StrCat(p, "[", i, "]"), "must be a non-empty range within [100, 600)");
      }
      out.push_back({static_cast<uint32_t>(in[i].start()), static_cast<uint32_t>(in[i].end())});
    }
    return absl::OkStatus();
  };
  switch (hc.health_checker_case()) {
    case HC::kHttpHealthCheck: {
      const auto& h = hc.http_health_check();
      const std::string hp = path + ".http_health_check";
      o.kind = upstream::HealthCheckConfig::Kind::Http;
      o.http.host = h.host();
      if (h.path().empty()) return fieldError(hp + ".path", "is required");
      o.http.path = h.path();
      if (h.codec_client_type() == envoy::type::v3::HTTP3) return fieldError(hp + ".codec_client_type", "HTTP3 is not supported");
      o.http.http2 = h.codec_client_type() == envoy::type::v3::HTTP2;
      if (auto st = ranges(h.expected_statuses(), hp + ".expected_statuses", o.http.expected_statuses); !st.ok()) return st;
      if (auto st = ranges(h.retriable_statuses(), hp + ".retriable_statuses", o.http.retriable_statuses); !st.ok()) return st;
      for (int i = 0; i < h.receive_size(); ++i) {
        auto p = healthPayload(h.receive(i), absl::StrCat(hp, ".receive[", i, "]"));
        if (!p.ok()) return p.status();
        o.http.receive.push_back(*p);
      }
      if (h.has_response_buffer_size()) o.http.response_buffer_size = h.response_buffer_size().value();
      for (const auto& a : h.request_headers_to_add()) o.http.request_headers_to_add.emplace_back(a.header().key(), a.header().value());
      for (const auto& r : h.request_headers_to_remove()) o.http.request_headers_to_remove.push_back(r);
      if (h.has_service_name_matcher()) {
        http::StringMatch m;
        if (auto st = http::buildStringMatch(h.service_name_matcher(), hp + ".service_name_matcher", m); !st.ok()) return st;
        o.http.service_name_matcher = std::move(m);
      }
      break;
    }
    case HC::kTcpHealthCheck: {
      const auto& t = hc.tcp_health_check();
      const std::string tp = path + ".tcp_health_check";
      o.kind = upstream::HealthCheckConfig::Kind::Tcp;
      if (t.has_send()) {
        auto p = healthPayload(t.send(), tp + ".send");
        if (!p.ok()) return p.status();
        o.tcp.send = *p;
      }
      for (int i = 0; i < t.receive_size(); ++i) {
        auto p = healthPayload(t.receive(i), absl::StrCat(tp, ".receive[", i, "]"));
        if (!p.ok()) return p.status();
        o.tcp.receive.push_back(*p);
      }
      break;
    }
    case HC::kGrpcHealthCheck: {
      const auto& g = hc.grpc_health_check();
      o.kind = upstream::HealthCheckConfig::Kind::Grpc;
      o.grpc.service_name = g.service_name();
      o.grpc.authority = g.authority();
      for (const auto& m : g.initial_metadata()) o.grpc.initial_metadata.emplace_back(m.header().key(), m.header().value());
      break;
    }
    default:
      return fieldError(path, "a health check needs http_health_check, tcp_health_check or grpc_health_check");
  }
  const std::string err = upstream::healthCheckConfigError(o);
  if (!err.empty()) return fieldError(path, err);
  return absl::OkStatus();
}

// outlier_detection into the detector's settings (Envoy's defaults for what is unset).
absl::Status translateOutlier(const cluster_v3::OutlierDetection& od, const std::string& path, upstream::OutlierConfig& o) {
  auto u32 = [](const google::protobuf::UInt32Value& v, bool has, uint32_t& out) {
    if (has) out = v.value();
  };
  u32(od.consecutive_5xx(), od.has_consecutive_5xx(), o.consecutive_5xx);
  u32(od.consecutive_gateway_failure(), od.has_consecutive_gateway_failure(), o.consecutive_gateway_failure);
  u32(od.consecutive_local_origin_failure(), od.has_consecutive_local_origin_failure(), o.consecutive_local_origin_failure);
  u32(od.max_ejection_percent(), od.has_max_ejection_percent(), o.max_ejection_percent);
  u32(od.enforcing_consecutive_5xx(), od.has_enforcing_consecutive_5xx(), o.enforcing_consecutive_5xx);
  u32(od.enforcing_consecutive_gateway_failure(), od.has_enforcing_consecutive_gateway_failure(),
      o.enforcing_consecutive_gateway_failure);
  u32(od.enforcing_consecutive_local_origin_failure(), od.has_enforcing_consecutive_local_origin_failure(),
      o.enforcing_consecutive_local_origin_failure);
  u32(od.enforcing_success_rate(), od.has_enforcing_success_rate(), o.enforcing_success_rate);
  u32(od.enforcing_local_origin_success_rate(), od.has_enforcing_local_origin_success_rate(),
      o.enforcing_local_origin_success_rate);
  u32(od.success_rate_minimum_hosts(), od.has_success_rate_minimum_hosts(), o.success_rate_minimum_hosts);
  u32(od.success_rate_request_volume(), od.has_success_rate_request_volume(), o.success_rate_request_volume);
  u32(od.success_rate_stdev_factor(), od.has_success_rate_stdev_factor(), o.success_rate_stdev_factor);
  u32(od.failure_percentage_threshold(), od.has_failure_percentage_threshold(), o.failure_percentage_threshold);
  u32(od.enforcing_failure_percentage(), od.has_enforcing_failure_percentage(), o.enforcing_failure_percentage);
  u32(od.enforcing_failure_percentage_local_origin(), od.has_enforcing_failure_percentage_local_origin(),
      o.enforcing_failure_percentage_local_origin);
  u32(od.failure_percentage_minimum_hosts(), od.has_failure_percentage_minimum_hosts(), o.failure_percentage_minimum_hosts);
  u32(od.failure_percentage_request_volume(), od.has_failure_percentage_request_volume(),
      o.failure_percentage_request_volume);
  o.split_external_local_origin_errors = od.split_external_local_origin_errors();
  if (od.has_max_ejection_time_jitter()) o.max_ejection_time_jitter_ms = durationMs(od.max_ejection_time_jitter());
  if (od.has_successful_active_health_check_uneject_host()) {
    o.successful_active_health_check_uneject_host = od.successful_active_health_check_uneject_host().value();
  }
  if (od.has_always_eject_one_host()) o.always_eject_one_host = od.always_eject_one_host().value();
  if (od.has_interval()) o.interval_ms = durationMs(od.interval());
  if (od.has_base_ejection_time()) o.base_ejection_time_ms = durationMs(od.base_ejection_time());
  if (od.has_max_ejection_time()) {
    o.max_ejection_time_ms = durationMs(od.max_ejection_time());
    if (o.max_ejection_time_ms < o.base_ejection_time_ms) {
      return fieldError(path + ".max_ejection_time", "must not be less than base_ejection_time");
    }
  } else {
    o.max_ejection_time_ms = std::max<uint64_t>(300000, o.base_ejection_time_ms);
  }
  const std::string err = upstream::outlierConfigError(o);
  if (!err.empty()) return fieldError(path, err);
  return absl::OkStatus();
}

// lb_policy with its *_lb_config, common_lb_config, or load_balancing_policy (our PeakEwma extension).
absl::Status translateLoadBalancing(const cluster_v3::Cluster& c, const std::string& path, upstream::LbConfig& lb) {
  using Policy = upstream::LbConfig::Policy;
  switch (c.lb_policy()) {
    case cluster_v3::Cluster::ROUND_ROBIN: lb.policy = Policy::RoundRobin; break;
    case cluster_v3::Cluster::LEAST_REQUEST: lb.policy = Policy::LeastRequest; break;
    case cluster_v3::Cluster::RANDOM: lb.policy = Policy::Random; break;
    case cluster_v3::Cluster::RING_HASH: lb.policy = Policy::RingHash; break;
    case cluster_v3::Cluster::MAGLEV: lb.policy = Policy::Maglev; break;
    case cluster_v3::Cluster::CLUSTER_PROVIDED:
      if (c.type() != cluster_v3::Cluster::ORIGINAL_DST) {
        return fieldError(path + ".lb_policy", "CLUSTER_PROVIDED is for ORIGINAL_DST clusters");
      }
      break;
    case cluster_v3::Cluster::LOAD_BALANCING_POLICY_CONFIG: {
      bool found = false;
      for (int i = 0; i < c.load_balancing_policy().policies_size() && !found; ++i) {
        const auto& tc = c.load_balancing_policy().policies(i).typed_extension_config();
        const std::string& t = tc.typed_config().type_url();
        const std::string pp = absl::StrCat(path, ".load_balancing_policy.policies[", i, "].typed_extension_config");
        if (t == "type.googleapis.com/strait.lb.v1.PeakEwma") {
          strait::lb::v1::PeakEwma pe;
          if (!tc.typed_config().UnpackTo(&pe)) return fieldError(pp, "cannot decode PeakEwma");
          lb.policy = Policy::PeakEwma;
          if (pe.has_decay_time()) lb.ewma_decay_ns = durationMs(pe.decay_time()) * 1000000;
          if (pe.has_error_penalty()) lb.ewma_error_penalty_ns = durationMs(pe.error_penalty()) * 1000000;
          if (lb.ewma_decay_ns == 0) return fieldError(pp + ".typed_config.decay_time", "must be positive");
          found = true;
        } else if (t == "type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin") {
          lb.policy = Policy::RoundRobin;
          found = true;
        } else if (t == "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random") {
          lb.policy = Policy::Random;
          found = true;
        }
      }
      if (!found) {
        return fieldError(path + ".load_balancing_policy",
                          "no policy Strait knows (strait.lb.v1.PeakEwma, round_robin, random)");
      }
      break;
    }
    default:
      return fieldError(path + ".lb_policy", absl::StrCat("load balancing policy ",
                                                          cluster_v3::Cluster::LbPolicy_Name(c.lb_policy()),
                                                          " is not supported"));
  }
  if (c.has_least_request_lb_config()) {
    const auto& l = c.least_request_lb_config();
    if (l.has_choice_count()) {
      if (l.choice_count().value() < 2) return fieldError(path + ".least_request_lb_config.choice_count", "must be at least 2");
      lb.choice_count = l.choice_count().value();
    }
    if (l.has_active_request_bias()) {
      const double b = l.active_request_bias().default_value();
      if (b < 0) return fieldError(path + ".least_request_lb_config.active_request_bias", "must not be negative");
      lb.active_request_bias = b;
    }
  }
  if (c.has_ring_hash_lb_config()) {
    const auto& r = c.ring_hash_lb_config();
    if (r.hash_function() != cluster_v3::Cluster::RingHashLbConfig::XX_HASH) {
      return fieldError(path + ".ring_hash_lb_config.hash_function", "only XX_HASH is supported");
    }
    if (r.has_minimum_ring_size()) lb.ring_min_size = r.minimum_ring_size().value();
    if (r.has_maximum_ring_size()) lb.ring_max_size = r.maximum_ring_size().value();
    if (lb.ring_max_size > 8 * 1024 * 1024) {
      return fieldError(path + ".ring_hash_lb_config.maximum_ring_size", "must be at most 8388608");
    }
    if (lb.ring_min_size == 0 || lb.ring_min_size > lb.ring_max_size) {
      return fieldError(path + ".ring_hash_lb_config.minimum_ring_size", "must be 1..maximum_ring_size");
    }
  }
  if (c.has_maglev_lb_config() && c.maglev_lb_config().has_table_size()) {
    const uint64_t n = c.maglev_lb_config().table_size().value();
    bool prime = n >= 2 && n <= 5000011;
    for (uint64_t d = 2; prime && d * d <= n; ++d) prime = n % d != 0;
    if (!prime) return fieldError(path + ".maglev_lb_config.table_size", "must be a prime up to 5000011");
    lb.maglev_table_size = n;
  }
  if (c.has_common_lb_config()) {
    const auto& cl = c.common_lb_config();
    if (cl.has_healthy_panic_threshold()) {
      const double v = cl.healthy_panic_threshold().value();
      if (v < 0 || v > 100) return fieldError(path + ".common_lb_config.healthy_panic_threshold", "must be 0..100");
      lb.panic_threshold_percent = v;
    }
    lb.locality_weighted = cl.has_locality_weighted_lb_config();
  }
  return absl::OkStatus();
}

absl::StatusOr<ClusterConstSharedPtr> translateCluster(const cluster_v3::Cluster& c, const std::string& path,
                                                     uint32_t index, stats::Store& store,
                                                     const std::map<std::string, DynamicResource>* endpoints,
                                                     bool allow_pipe, std::string* pipe_target, bool* warming) {
  auto out = std::make_shared<Cluster>();
  // The cluster's stats (its hosts' too) live as long as this Cluster object.
  out->stat_scope = std::make_unique<stats::StatScope>(store);
  stats::StatScope& scope = *out->stat_scope;
  if (c.name().empty()) return fieldError(path + ".name", "is required");
  out->name = c.name();
  out->index = index;
  static std::atomic<uint64_t> next_version{1};
  out->version_id = next_version.fetch_add(1, std::memory_order_relaxed);
  out->runtime = upstream::clusterRuntime(store, c.name(), c.alt_stat_name().empty() ? c.name() : c.alt_stat_name());
  {
    auto st = translateLoadBalancing(c, path, out->lb);
    if (!st.ok()) return st;
  }
  // Transport sockets first: hosts pick theirs by metadata as they are translated.
  SocketChooser sockets;
  if (c.has_transport_socket()) {
    auto ts = translateTransportSocket(c.transport_socket(), path + ".transport_socket", false);
    if (!ts.ok()) return ts.status();
    sockets.fallback = *ts;
  }
  for (int i = 0; i < c.transport_socket_matches_size(); ++i) {
    const auto& m = c.transport_socket_matches(i);
    const std::string mp = absl::StrCat(path, ".transport_socket_matches[", i, "]");
    if (!m.has_transport_socket()) return fieldError(mp + ".transport_socket", "is required");
    auto ts = translateTransportSocket(m.transport_socket(), mp + ".transport_socket", false);
    if (!ts.ok()) return ts.status();
    SocketMatch sm;
    sm.factory = *ts;
    for (const auto& [key, value] : m.match().fields()) sm.criteria.emplace_back(key, value.SerializeAsString());
    sockets.matches.push_back(std::move(sm));
  }
  // A host without a match (ORIGINAL_DST destinations have no metadata) takes the cluster's socket, or
  // the first match-all entry, as in Envoy.
  out->transport_socket = sockets.choose(nullptr);
  switch (c.type()) {
    case cluster_v3::Cluster::STATIC:
      out->type = Cluster::Type::Static;
      break;
    case cluster_v3::Cluster::EDS: {
      out->type = Cluster::Type::Eds;
      if (c.has_eds_cluster_config() && c.eds_cluster_config().has_eds_config() &&
          !c.eds_cluster_config().eds_config().has_ads()) {
        return fieldError(path + ".eds_cluster_config.eds_config", "only ads: {} is supported as the EDS source");
      }
      const std::string service =
          c.eds_cluster_config().service_name().empty() ? c.name() : c.eds_cluster_config().service_name();
      out->eds_service_name = service;
      const DynamicResource* cla = nullptr;
      if (endpoints != nullptr) {
        auto it = endpoints->find(service);
        if (it != endpoints->end()) cla = &it->second;
      }
      if (cla == nullptr) {
        if (warming) *warming = true;  // waits for its ClusterLoadAssignment
      } else {
        auto st = translateEndpoints(static_cast<const endpoint_v3::ClusterLoadAssignment&>(*cla->proto),
                                     absl::StrCat("ClusterLoadAssignment '", service, "'"), c.name(), store, false,
                                     *out, nullptr, sockets);
        if (!st.ok()) return st;
        out->eds_version = cla->version;
      }
      break;
    }
    case cluster_v3::Cluster::ORIGINAL_DST:
      out->type = Cluster::Type::OriginalDst;
      if (c.lb_policy() != cluster_v3::Cluster::CLUSTER_PROVIDED && c.lb_policy() != cluster_v3::Cluster::ROUND_ROBIN) {
        return fieldError(path + ".lb_policy", "an ORIGINAL_DST cluster takes CLUSTER_PROVIDED");
      }
      if (c.has_load_assignment() && c.load_assignment().endpoints_size() > 0) {
        return fieldError(path + ".load_assignment", "an ORIGINAL_DST cluster has no static endpoints");
      }
      break;
    default:
      return fieldError(path + ".type", absl::StrCat("discovery type ", cluster_v3::Cluster::DiscoveryType_Name(c.type()),
                                                      " is not supported yet (STATIC, EDS, ORIGINAL_DST)"));
  }
  if (c.has_connect_timeout()) {
    if (c.connect_timeout().seconds() < 0 || c.connect_timeout().nanos() < 0) {
      return fieldError(path + ".connect_timeout", "must not be negative");
    }
    out->connect_timeout_ms = durationMs(c.connect_timeout());
  }
  if (c.has_per_connection_buffer_limit_bytes()) out->buffer_limit = c.per_connection_buffer_limit_bytes().value();
  for (const auto& [key, any] : c.typed_extension_protocol_options()) {
    const std::string op = absl::StrCat(path, ".typed_extension_protocol_options[\"", key, "\"]");
    if (any.type_url() != "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions") {
      return fieldError(op, absl::StrCat("unsupported protocol options type '", any.type_url(), "'"));
    }
    envoy::extensions::upstreams::http::v3::HttpProtocolOptions hpo;
    if (!any.UnpackTo(&hpo)) return fieldError(op, "cannot decode HttpProtocolOptions");
    const envoy::config::core::v3::Http2ProtocolOptions* h2 = nullptr;
    if (hpo.has_explicit_http_config()) {
      if (hpo.explicit_http_config().has_http2_protocol_options()) {
        out->http_protocol = Cluster::HttpProtocol::Http2;
        h2 = &hpo.explicit_http_config().http2_protocol_options();
      }
    } else if (hpo.has_use_downstream_protocol_config()) {
      out->http_protocol = Cluster::HttpProtocol::UseDownstream;
      if (hpo.use_downstream_protocol_config().has_http2_protocol_options()) {
        h2 = &hpo.use_downstream_protocol_config().http2_protocol_options();
      }
    }
    // auto_config picks by ALPN, which needs TLS: over plaintext it is HTTP/1.1, as in Envoy.
    if (h2 != nullptr) {
      if (h2->has_max_concurrent_streams()) {
        if (h2->max_concurrent_streams().value() == 0) {
          return fieldError(op + ".http2_protocol_options.max_concurrent_streams", "must be at least 1");
        }
        out->http2_max_concurrent_streams = h2->max_concurrent_streams().value();
      }
      if (h2->has_initial_stream_window_size()) {
        uint32_t v = h2->initial_stream_window_size().value();
        if (v < 65535 || v > 2147483647) {
          return fieldError(op + ".http2_protocol_options.initial_stream_window_size", "must be 65535..2147483647");
        }
        out->http2_initial_stream_window = v;
      }
      if (h2->has_initial_connection_window_size()) {
        uint32_t v = h2->initial_connection_window_size().value();
        if (v < 65535 || v > 2147483647) {
          return fieldError(op + ".http2_protocol_options.initial_connection_window_size", "must be 65535..2147483647");
        }
        out->http2_initial_connection_window = v;
      }
    }
    if (hpo.has_common_http_protocol_options() && hpo.common_http_protocol_options().has_idle_timeout()) {
      out->idle_timeout_ms = durationMs(hpo.common_http_protocol_options().idle_timeout());
    }
  }
  if (c.health_checks_size() > 1) {
    return fieldError(path + ".health_checks", "Strait runs one health check per cluster");
  }
  if (c.health_checks_size() == 1) {
    upstream::HealthCheckConfig hc;
    auto st = translateHealthCheck(c.health_checks(0), path + ".health_checks[0]", c.name(), hc);
    if (!st.ok()) return st;
    out->health_check = std::move(hc);
    out->health_check_hash = std::hash<std::string>{}(c.health_checks(0).SerializeAsString());
  }
  if (c.has_outlier_detection()) {
    upstream::OutlierConfig o;
    auto st = translateOutlier(c.outlier_detection(), path + ".outlier_detection", o);
    if (!st.ok()) return st;
    out->outlier = o;
  }
  if (c.has_circuit_breakers()) {
    for (int i = 0; i < c.circuit_breakers().thresholds_size(); ++i) {
      const auto& t = c.circuit_breakers().thresholds(i);
      // Requests are all DEFAULT priority (route priority is not read yet): HIGH limits are accepted and inert.
      if (t.priority() != envoy::config::core::v3::DEFAULT) continue;
      auto& l = out->limits;
      if (t.has_max_connections()) l.max_connections = t.max_connections().value();
      if (t.has_max_pending_requests()) l.max_pending_requests = t.max_pending_requests().value();
      if (t.has_max_requests()) l.max_requests = t.max_requests().value();
      if (t.has_max_retries()) l.max_retries = t.max_retries().value();
      if (t.has_max_connection_pools()) l.max_connection_pools = t.max_connection_pools().value();
      l.track_remaining = t.track_remaining();
      if (t.has_retry_budget()) {
        const std::string bp = absl::StrCat(path, ".circuit_breakers.thresholds[", i, "].retry_budget");
        l.has_retry_budget = true;
        if (t.retry_budget().has_budget_percent()) {
          const double v = t.retry_budget().budget_percent().value();
          if (v < 0 || v > 100) return fieldError(bp + ".budget_percent", "must be 0..100");
          l.budget_percent = v;
        }
        if (t.retry_budget().has_min_retry_concurrency()) {
          l.min_retry_concurrency = t.retry_budget().min_retry_concurrency().value();
        }
      }
    }
  }
  if (c.has_load_assignment() && out->type != Cluster::Type::Eds) {
    std::string pipe;
    auto st = translateEndpoints(c.load_assignment(), path + ".load_assignment", c.name(), store, allow_pipe, *out,
                                 &pipe, sockets);
    if (!st.ok()) return st;
    if (pipe_target != nullptr) *pipe_target = pipe;
    out->grpc_target = pipe;
  }
  const std::string p = "cluster." + (c.alt_stat_name().empty() ? c.name() : c.alt_stat_name()) + ".";
  out->stats.upstream_cx_total = scope.counter(p + "upstream_cx_total");
  out->stats.upstream_cx_active = scope.gauge(p + "upstream_cx_active");
  out->stats.upstream_cx_connect_fail = scope.counter(p + "upstream_cx_connect_fail");
  out->stats.upstream_cx_connect_timeout = scope.counter(p + "upstream_cx_connect_timeout");
  out->stats.upstream_cx_destroy = scope.counter(p + "upstream_cx_destroy");
  out->stats.upstream_cx_rx_bytes_total = scope.counter(p + "upstream_cx_rx_bytes_total");
  out->stats.upstream_cx_tx_bytes_total = scope.counter(p + "upstream_cx_tx_bytes_total");
  out->stats.upstream_cx_none_healthy = scope.counter(p + "upstream_cx_none_healthy");
  out->stats.membership_total = scope.gauge(p + "membership_total");
  out->stats.upstream_cx_http1_total = scope.counter(p + "upstream_cx_http1_total");
  out->stats.upstream_cx_http2_total = scope.counter(p + "upstream_cx_http2_total");
  out->stats.upstream_rq_total = scope.counter(p + "upstream_rq_total");
  out->stats.upstream_rq_active = scope.gauge(p + "upstream_rq_active");
  out->stats.upstream_rq_1xx = scope.counter(p + "upstream_rq_1xx");
  out->stats.upstream_rq_2xx = scope.counter(p + "upstream_rq_2xx");
  out->stats.upstream_rq_3xx = scope.counter(p + "upstream_rq_3xx");
  out->stats.upstream_rq_4xx = scope.counter(p + "upstream_rq_4xx");
  out->stats.upstream_rq_5xx = scope.counter(p + "upstream_rq_5xx");
  out->stats.upstream_rq_timeout = scope.counter(p + "upstream_rq_timeout");
  out->stats.upstream_rq_per_try_timeout = scope.counter(p + "upstream_rq_per_try_timeout");
  out->stats.upstream_rq_per_try_idle_timeout = scope.counter(p + "upstream_rq_per_try_idle_timeout");
  out->stats.upstream_rq_max_duration_reached = scope.counter(p + "upstream_rq_max_duration_reached");
  out->stats.upstream_rq_retry = scope.counter(p + "upstream_rq_retry");
  out->stats.upstream_rq_retry_success = scope.counter(p + "upstream_rq_retry_success");
  out->stats.upstream_rq_pending_total = scope.counter(p + "upstream_rq_pending_total");
  out->stats.upstream_rq_pending_overflow = scope.counter(p + "upstream_rq_pending_overflow");
  out->stats.upstream_rq_rx_reset = scope.counter(p + "upstream_rq_rx_reset");
  out->stats.upstream_rq_tx_reset = scope.counter(p + "upstream_rq_tx_reset");
  out->stats.retry_or_shadow_abandoned = scope.counter(p + "retry_or_shadow_abandoned");
  out->stats.upstream_cx_overflow = scope.counter(p + "upstream_cx_overflow");
  out->stats.upstream_rq_retry_overflow = scope.counter(p + "upstream_rq_retry_overflow");
  out->stats.upstream_cx_pool_overflow = scope.counter(p + "upstream_cx_pool_overflow");
  out->stats.upstream_rq_retry_limit_exceeded = scope.counter(p + "upstream_rq_retry_limit_exceeded");
  out->stats.upstream_rq_time = scope.histogram(p + "upstream_rq_time");
  bool tls = out->transport_socket != nullptr;
  for (const auto& h : out->hosts) tls = tls || h->transport_socket != nullptr;
  if (tls) out->stats.ssl = network::makeSslStats(scope, p);
  if (out->grpc_target.empty() && !out->hosts.empty()) {
    const auto& a = out->hosts.front()->address;
    out->grpc_target = (a.isV6() ? "ipv6:" : "ipv4:") + a.asString();
  }
  stats::set(store, out->stats.membership_total, static_cast<int64_t>(out->hosts.size()));
  out->proto = std::make_shared<cluster_v3::Cluster>(c);
  return ClusterConstSharedPtr(out);
}

absl::StatusOr<FilterChain> translateFilterChain(const listener_v3::FilterChain& fc, const std::string& path,
                                                 TranslationContext& ctx) {
  FilterChain out;
  out.name = fc.name();
  out.hash = std::hash<std::string>{}(fc.SerializeAsString());
  if (fc.has_transport_socket()) {
    auto ts = translateTransportSocket(fc.transport_socket(), path + ".transport_socket", true);
    if (!ts.ok()) return ts.status();
    out.transport_socket = *ts;
  }
  if (fc.has_transport_socket_connect_timeout()) {
    out.transport_socket_connect_timeout_ms = durationMs(fc.transport_socket_connect_timeout());
  }
  if (fc.has_filter_chain_match()) {
    const auto& m = fc.filter_chain_match();
    const std::string mp = path + ".filter_chain_match";
    if (m.has_destination_port()) {
      if (m.destination_port().value() > 65535) return fieldError(mp + ".destination_port", "is not a valid port");
      out.destination_port = m.destination_port().value();
    }
    for (int i = 0; i < m.prefix_ranges_size(); ++i) {
      const auto& r = m.prefix_ranges(i);
      auto a = network::Address::parse(r.address_prefix(), 0);
      if (!a) return fieldError(absl::StrCat(mp, ".prefix_ranges[", i, "].address_prefix"), "is not an IP address");
      uint32_t len = r.has_prefix_len() ? r.prefix_len().value() : (a->isV6() ? 128 : 32);
      if (len > (a->isV6() ? 128u : 32u)) return fieldError(absl::StrCat(mp, ".prefix_ranges[", i, "].prefix_len"), "is too long");
      out.prefix_ranges.push_back(CidrRange{*a, len});
    }
    out.transport_protocol = m.transport_protocol();
    for (const auto& ap : m.application_protocols()) out.application_protocols.push_back(ap);
    for (const auto& sn : m.server_names()) {
      if (sn.empty()) return fieldError(mp + ".server_names", "must not hold an empty name");
      out.server_names.push_back(absl::AsciiStrToLower(sn));
    }
    if (m.source_prefix_ranges_size() > 0 || m.source_ports_size() > 0 || m.direct_source_prefix_ranges_size() > 0) {
      return fieldError(mp, "source matching is not supported yet (destination_port, prefix_ranges, "
                            "transport_protocol, application_protocols are)");
    }
  }
  if (fc.filters_size() == 0) return fieldError(path + ".filters", "needs a terminal network filter");
  for (int i = 0; i < fc.filters_size(); ++i) {
    const auto& f = fc.filters(i);
    const std::string fp = absl::StrCat(path, ".filters[", i, "]");
    if (!f.has_typed_config()) return fieldError(fp + ".typed_config", "is required (extensions are chosen by type URL)");
    const std::string& type_url = f.typed_config().type_url();
    if (i != fc.filters_size() - 1) {
      auto rit = networkReadFilterRegistry().find(type_url);
      if (rit == networkReadFilterRegistry().end()) {
        if (networkFilterRegistry().count(type_url)) return fieldError(fp, "a terminal network filter must be the last one");
        return fieldError(fp + ".typed_config", absl::StrCat("unsupported network filter type '", type_url, "'"));
      }
      auto rf = rit->second(f.typed_config(), fp + ".typed_config", ctx);
      if (!rf.ok()) return rf.status();
      out.read_filters.push_back(*rf);
      continue;
    }
    auto it = networkFilterRegistry().find(type_url);
    if (it == networkFilterRegistry().end()) {
      return fieldError(fp + ".typed_config", absl::StrCat("unsupported network filter type '", type_url, "'"));
    }
    auto factory = it->second(f.typed_config(), fp + ".typed_config", ctx);
    if (!factory.ok()) return factory.status();
    out.terminal = *factory;
  }
  return out;
}

// One open-connection count per listener name for the life of the process (see Listener::max_connections).
std::shared_ptr<std::atomic<int64_t>> listenerConnectionCount(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<std::atomic<int64_t>>> counts;
  std::lock_guard<std::mutex> lock(mu);
  auto& c = counts[name];
  if (!c) c = std::make_shared<std::atomic<int64_t>>(0);
  return c;
}

void flattenRuntime(const google::protobuf::Struct& s, const std::string& prefix, std::map<std::string, std::string>& out) {
  for (const auto& [key, value] : s.fields()) {
    const std::string k = prefix.empty() ? key : prefix + "." + key;
    switch (value.kind_case()) {
      case google::protobuf::Value::kStructValue: flattenRuntime(value.struct_value(), k, out); break;
      case google::protobuf::Value::kNumberValue: {
        const double d = value.number_value();
        out[k] = d == static_cast<double>(static_cast<int64_t>(d)) ? absl::StrCat(static_cast<int64_t>(d)) : absl::StrCat(d);
        break;
      }
      case google::protobuf::Value::kBoolValue: out[k] = value.bool_value() ? "true" : "false"; break;
      case google::protobuf::Value::kStringValue: out[k] = value.string_value(); break;
      default: break;
    }
  }
}

absl::StatusOr<ListenerConstSharedPtr> translateListener(const listener_v3::Listener& l, const std::string& path,
                                                       TranslationContext& ctx) {
  auto out = std::make_shared<Listener>();
  if (l.name().empty()) return fieldError(path + ".name", "is required");
  out->name = l.name();
  auto addr = translateAddress(l.address(), path + ".address");
  if (!addr.ok()) return addr.status();
  out->address = *addr;
  if (l.has_bind_to_port() && !l.bind_to_port().value()) {
    return fieldError(path + ".bind_to_port", "listeners that do not bind are not supported yet");
  }
  if (l.has_per_connection_buffer_limit_bytes()) out->buffer_limit = l.per_connection_buffer_limit_bytes().value();
  if (ctx.runtime != nullptr) {
    const std::string key = absl::StrCat("envoy.resource_limits.listener.", l.name(), ".connection_limit");
    auto it = ctx.runtime->find(key);
    if (it != ctx.runtime->end()) {
      uint64_t v = 0;
      if (!absl::SimpleAtoi(it->second, &v)) {
        return fieldError("layered_runtime." + key, absl::StrCat("'", it->second, "' is not a connection count"));
      }
      out->max_connections = v;
    }
  }
  out->open_connections = listenerConnectionCount(l.name());
  out->inbound = l.traffic_direction() == core_v3::INBOUND;
  // Both forms recover the pre-NAT destination; listener hand-off by original destination comes later.
  out->restore_original_dst = l.has_use_original_dst() && l.use_original_dst().value();
  for (int i = 0; i < l.listener_filters_size(); ++i) {
    const auto& lf = l.listener_filters(i);
    const std::string lp = absl::StrCat(path, ".listener_filters[", i, "]");
    if (!lf.has_typed_config()) return fieldError(lp + ".typed_config", "is required");
    const std::string& t = lf.typed_config().type_url();
    Inspector* inspector = t == kTlsInspectorType ? &out->tls_inspector : t == kHttpInspectorType ? &out->http_inspector : nullptr;
    if (t == kOriginalDstType) {
      out->restore_original_dst = true;
    } else if (inspector != nullptr) {
      inspector->enabled = true;
      if (lf.has_filter_disabled()) {
        auto pred = translatePredicate(lf.filter_disabled(), lp + ".filter_disabled", 0);
        if (!pred.ok()) return pred.status();
        inspector->disabled = *pred;
      }
    } else {
      return fieldError(lp + ".typed_config",
                        absl::StrCat("unsupported listener filter type '", lf.typed_config().type_url(), "'"));
    }
  }
  if (l.has_listener_filters_timeout()) out->listener_filters_timeout_ms = durationMs(l.listener_filters_timeout());
  out->continue_on_listener_filters_timeout = l.continue_on_listener_filters_timeout();
  if (l.filter_chains_size() == 0 && !l.has_default_filter_chain()) {
    return fieldError(path + ".filter_chains", "a listener needs at least one filter chain");
  }
  for (int i = 0; i < l.filter_chains_size(); ++i) {
    auto fc = translateFilterChain(l.filter_chains(i), absl::StrCat(path, ".filter_chains[", i, "]"), ctx);
    if (!fc.ok()) return fc.status();
    out->filter_chains.push_back(std::move(*fc));
  }
  if (l.has_default_filter_chain()) {
    auto fc = translateFilterChain(l.default_filter_chain(), path + ".default_filter_chain", ctx);
    if (!fc.ok()) return fc.status();
    out->default_filter_chain = std::move(*fc);
  }
  out->stat_prefix = l.stat_prefix();
  // A listener on port 0 gets its stats once bound (named after the real port), see createListenerStats.
  if (out->address.port() != 0 || !out->stat_prefix.empty()) createListenerStats(*out, out->address, ctx.store);
  out->proto = std::make_shared<listener_v3::Listener>(l);
  out->proto_hash = l.SerializeAsString();
  return ListenerConstSharedPtr(out);
}

std::string formatNowRfc3339() {
  auto now = std::chrono::system_clock::now();
  std::time_t t = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

}  // namespace

std::map<std::string, std::string> runtimeValues(const google::protobuf::Message& bootstrap) {
  std::map<std::string, std::string> out;
  const auto& b = static_cast<const bootstrap_v3::Bootstrap&>(bootstrap);
  for (const auto& layer : b.layered_runtime().layers()) {
    if (layer.has_static_layer()) flattenRuntime(layer.static_layer(), "", out);
  }
  return out;
}

void createListenerStats(Listener& l, const network::Address& bound, stats::Store& store) {
  const std::string p = "listener." + (l.stat_prefix.empty() ? bound.statName() : l.stat_prefix) + ".";
  l.stats.downstream_cx_total = store.counter(p + "downstream_cx_total");
  l.stats.downstream_cx_active = store.gauge(p + "downstream_cx_active");
  l.stats.downstream_cx_destroy = store.counter(p + "downstream_cx_destroy");
  l.stats.no_filter_chain_match = store.counter(p + "no_filter_chain_match");
  l.stats.downstream_pre_cx_timeout = store.counter(p + "downstream_pre_cx_timeout");
  l.stats.downstream_cx_overload_reject = store.counter(p + "downstream_cx_overload_reject");
  l.stats.downstream_cx_overflow = store.counter(p + "downstream_cx_overflow");
  if (l.http_inspector.enabled) {
    l.stats.http1_found = store.counter(p + "http_inspector.http1_found");
    l.stats.http2_found = store.counter(p + "http_inspector.http2_found");
    l.stats.http_not_found = store.counter(p + "http_inspector.http_not_found");
  }
  if (l.tls_inspector.enabled) {
    l.stats.tls_found = store.counter(p + "tls_inspector.tls_found");
    l.stats.tls_not_found = store.counter(p + "tls_inspector.tls_not_found");
    l.stats.tls_client_hello_too_large = store.counter(p + "tls_inspector.client_hello_too_large");
  }
  bool tls = false;
  for (const auto& fc : l.filter_chains) tls = tls || fc.transport_socket != nullptr;
  if (l.default_filter_chain) tls = tls || l.default_filter_chain->transport_socket != nullptr;
  if (tls) {
    l.stats.ssl = network::makeSslStats(store, p);
    l.stats.downstream_cx_transport_socket_connect_timeout = store.counter(p + "downstream_cx_transport_socket_connect_timeout");
    l.stats.downstream_cx_no_certificate = store.counter(p + "downstream_cx_no_certificate");
  }
  l.stats_ready = true;
}

void registerNetworkFilter(const std::string& type_url, NetworkFilterFactoryFn fn) {
  networkFilterRegistry()[type_url] = std::move(fn);
}

void registerNetworkReadFilter(const std::string& type_url, NetworkReadFilterFactoryFn fn) {
  networkReadFilterRegistry()[type_url] = std::move(fn);
}

void registerTransportSocket(const std::string& type_url, TransportSocketFactoryFn fn) {
  transportSocketRegistry()[type_url] = std::move(fn);
}

void registerSecretLoader(SecretLoaderFn fn) { secretLoader() = std::move(fn); }

uint64_t durationMs(const google::protobuf::Duration& d) {
  return static_cast<uint64_t>(d.seconds()) * 1000 + static_cast<uint64_t>(d.nanos()) / 1000000;
}

absl::StatusOr<std::string> yamlToJson(const std::string& yaml, const std::string& overlay, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg));
  }
  if (!overlay.empty()) {
    YAML::Node over;
    try {
      over = YAML::Load(overlay);
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("--config-yaml: line ", e.mark.line + 1, ": ", e.msg));
    }
    if (!over.IsMap()) return absl::InvalidArgumentError("--config-yaml: must be a mapping");
    if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    mergeYaml(root, over);
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat(source, " is not a mapping of bootstrap fields"));
  std::ostringstream out;
  emitJson(out, root);
  return out.str();
}

namespace {

RouteTableFactory& routeTableFactory() {
  static auto* f = new RouteTableFactory;
  return *f;
}

// The bootstrap's ADS settings, and the name of the static cluster that reaches the control plane.
// The xDS channel's TLS from its envoy_grpc cluster's UpstreamTlsContext (gRPC runs its own TLS: the
// settings are handed over as PEM sources; SDS is not possible for the channel that brings SDS).
absl::StatusOr<AdsSettings::Tls> adsTlsFromCluster(const core_v3::TransportSocket& ts, const std::string& path) {
  envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext u;
  if (!ts.has_typed_config() || !ts.typed_config().UnpackTo(&u)) {
    return fieldError(path + ".typed_config", "the xDS cluster takes an UpstreamTlsContext");
  }
  AdsSettings::Tls tls;
  tls.sni = u.sni();
  const auto& c = u.common_tls_context();
  const std::string cp = path + ".typed_config.common_tls_context";
  auto pem = [&](const core_v3::DataSource& ds, const std::string& f, AdsSettings::PemSource& out) -> absl::Status {
    if (ds.has_filename()) {
      out.filename = ds.filename();
    } else if (ds.has_inline_string() || ds.has_inline_bytes()) {
      out.inline_data = ds.has_inline_string() ? ds.inline_string() : ds.inline_bytes();
    } else {
      return fieldError(cp + "." + f, "the xDS channel needs a filename or inline data");
    }
    return absl::OkStatus();
  };
  if (c.tls_certificate_sds_secret_configs_size() > 0 || c.has_validation_context_sds_secret_config() ||
      c.has_combined_validation_context()) {
    return fieldError(cp, "the xDS channel's certificates cannot come over SDS: name files or inline data");
  }
  if (c.tls_certificates_size() > 1) return fieldError(cp + ".tls_certificates", "the xDS channel takes one certificate");
  if (c.tls_certificates_size() == 1) {
    if (auto st = pem(c.tls_certificates(0).certificate_chain(), "tls_certificates[0].certificate_chain", tls.cert_chain); !st.ok()) return st;
    if (auto st = pem(c.tls_certificates(0).private_key(), "tls_certificates[0].private_key", tls.private_key); !st.ok()) return st;
  }
  if (c.has_validation_context() && c.validation_context().has_trusted_ca()) {
    if (auto st = pem(c.validation_context().trusted_ca(), "validation_context.trusted_ca", tls.root_certs); !st.ok()) return st;
  }
  return tls;
}

absl::StatusOr<std::optional<AdsSettings>> translateAds(const bootstrap_v3::Bootstrap& b, std::string* xds_cluster) {
  if (!b.has_dynamic_resources()) return std::optional<AdsSettings>();
  const auto& dr = b.dynamic_resources();
  const std::string p = "dynamic_resources";
  if (!dr.has_ads_config()) {
    return fieldError(p + ".ads_config", "is required: Strait takes LDS and CDS over ADS only");
  }
  for (const auto* cs : {&dr.lds_config(), &dr.cds_config()}) {
    const bool lds = cs == &dr.lds_config();
    const bool present = lds ? dr.has_lds_config() : dr.has_cds_config();
    if (present && !cs->has_ads()) {
      return fieldError(p + (lds ? ".lds_config" : ".cds_config"), "only ads: {} is supported");
    }
  }
  AdsSettings ads;
  const auto& ac = dr.ads_config();
  switch (ac.api_type()) {
    case core_v3::ApiConfigSource::GRPC:
    case core_v3::ApiConfigSource::AGGREGATED_GRPC: ads.delta = false; break;
    case core_v3::ApiConfigSource::DELTA_GRPC:
    case core_v3::ApiConfigSource::AGGREGATED_DELTA_GRPC: ads.delta = true; break;
    default: return fieldError(p + ".ads_config.api_type", "must be GRPC or DELTA_GRPC");
  }
  if (ac.grpc_services_size() != 1) return fieldError(p + ".ads_config.grpc_services", "needs exactly one entry");
  const auto& gs = ac.grpc_services(0);
  if (gs.has_envoy_grpc()) {
    if (gs.envoy_grpc().cluster_name().empty()) {
      return fieldError(p + ".ads_config.grpc_services[0].envoy_grpc.cluster_name", "is required");
    }
    *xds_cluster = gs.envoy_grpc().cluster_name();
  } else if (gs.has_google_grpc()) {
    const std::string gp = p + ".ads_config.grpc_services[0].google_grpc";
    if (gs.google_grpc().target_uri().empty()) return fieldError(gp + ".target_uri", "is required");
    ads.target = gs.google_grpc().target_uri();
    if (gs.google_grpc().has_channel_credentials()) {
      const auto& cc = gs.google_grpc().channel_credentials();
      if (!cc.has_ssl_credentials()) {
        return fieldError(gp + ".channel_credentials", "only ssl_credentials is supported");
      }
      const auto& ssl = cc.ssl_credentials();
      AdsSettings::Tls tls;
      auto pem = [&](const core_v3::DataSource& ds, const std::string& f, AdsSettings::PemSource& out) -> absl::Status {
        if (ds.has_filename()) {
          out.filename = ds.filename();
        } else if (ds.has_inline_string() || ds.has_inline_bytes()) {
          out.inline_data = ds.has_inline_string() ? ds.inline_string() : ds.inline_bytes();
        } else if (ds.specifier_case() != core_v3::DataSource::SPECIFIER_NOT_SET) {
          return fieldError(gp + ".channel_credentials.ssl_credentials." + f, "only filename and inline data are supported");
        }
        return absl::OkStatus();
      };
      for (auto st : {pem(ssl.root_certs(), "root_certs", tls.root_certs), pem(ssl.private_key(), "private_key", tls.private_key),
                      pem(ssl.cert_chain(), "cert_chain", tls.cert_chain)}) {
        if (!st.ok()) return st;
      }
      ads.tls = tls;
    }
  } else {
    return fieldError(p + ".ads_config.grpc_services[0]", "needs envoy_grpc or google_grpc");
  }
  // The longer of the two initial fetch timeouts bounds how long /ready waits (Envoy's default: 15 s).
  std::optional<uint64_t> timeout;
  for (const auto* cs : {&dr.lds_config(), &dr.cds_config()}) {
    if (cs->has_initial_fetch_timeout()) timeout = std::max(timeout.value_or(0), durationMs(cs->initial_fetch_timeout()));
  }
  ads.initial_fetch_timeout_ms = timeout.value_or(15000);
  return std::optional<AdsSettings>(ads);
}

}  // namespace

uint32_t ClusterIds::get(const std::string& name) {
  auto it = ids_.find(name);
  if (it != ids_.end()) return it->second;
  uint32_t id = static_cast<uint32_t>(ids_.size());
  ids_.emplace(name, id);
  return id;
}

void setRouteTableFactory(RouteTableFactory f) { routeTableFactory() = std::move(f); }

absl::StatusOr<BuildResult> buildSnapshot(std::shared_ptr<const ConfigSources> sources, const Snapshot* previous,
                                          stats::Store& store, ClusterIds& ids) {
  const auto& bootstrap = static_cast<const bootstrap_v3::Bootstrap&>(*sources->bootstrap);
  BuildResult result;
  auto snap = std::make_shared<Snapshot>();
  snap->node_id = bootstrap.node().id();
  snap->node_cluster = bootstrap.node().cluster();
  if (bootstrap.has_admin() && bootstrap.admin().has_address()) {
    auto a = translateAddress(bootstrap.admin().address(), "admin.address");
    if (!a.ok()) return a.status();
    snap->admin_address = *a;
  }
  std::string xds_cluster;
  auto ads = translateAds(bootstrap, &xds_cluster);
  if (!ads.ok()) return ads.status();
  snap->ads = *ads;
  const auto& sr = bootstrap.static_resources();
  for (int i = 0; i < sr.secrets_size(); ++i) {
    const std::string path = absl::StrCat("static_resources.secrets[", i, "]");
    if (!secretLoader()) return fieldError(path, "secrets are not supported in this build");
    auto st = secretLoader()(sr.secrets(i), path);
    if (!st.ok()) return st;
  }

  // Clusters: static ones, then CDS ones (a CDS cluster may not replace a static one).
  auto addCluster = [&](ClusterConstSharedPtr c, const std::string& path) -> absl::Status {
    if (snap->clusters_by_name.count(c->name)) {
      return fieldError(path + ".name", absl::StrCat("duplicate cluster name '", c->name, "'"));
    }
    snap->clusters_by_name[c->name] = c;
    snap->clusters.push_back(c);
    return absl::OkStatus();
  };
  for (int i = 0; i < sr.clusters_size(); ++i) {
    const std::string path = absl::StrCat("static_resources.clusters[", i, "]");
    const auto& cp = sr.clusters(i);
    std::string pipe;
    bool warming = false;
    // Static clusters may name a unix socket: a gRPC service there (Istio's xds-grpc and sds-grpc).
    auto c = translateCluster(cp, path, ids.get(cp.name()), store, &sources->endpoints, true, &pipe, &warming);
    if (!c.ok()) return c.status();
    if (cp.name() == xds_cluster && snap->ads && cp.has_transport_socket()) {
      auto tls = adsTlsFromCluster(cp.transport_socket(), path + ".transport_socket");
      if (!tls.ok()) return tls.status();
      snap->ads->tls = *tls;
    }
    if (cp.name() == xds_cluster && snap->ads) {
      if (!pipe.empty()) {
        snap->ads->target = pipe;
      } else if (!(*c)->hosts.empty()) {
        snap->ads->target = (*c)->hosts[0]->address.asString();
      } else {
        return fieldError(path + ".load_assignment", "the xDS cluster needs an endpoint");
      }
    }
    if (cp.type() == cluster_v3::Cluster::EDS) {
      result.eds_names.insert((*c)->eds_service_name);
      if (warming) continue;
    }
    auto st = addCluster(*c, path);
    if (!st.ok()) return st;
  }
  if (!xds_cluster.empty() && snap->ads && snap->ads->target.empty()) {
    return fieldError("dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                      absl::StrCat("no static cluster named '", xds_cluster, "'"));
  }
  for (const auto& [name, res] : sources->clusters) {
    const auto& cp = static_cast<const cluster_v3::Cluster&>(*res.proto);
    const std::string path = absl::StrCat("Cluster '", name, "'");
    bool warming = false;
    auto c = translateCluster(cp, path, ids.get(name), store, &sources->endpoints, false, nullptr, &warming);
    if (!c.ok()) return c.status();
    auto* mc = const_cast<Cluster*>(c->get());
    mc->dynamic = true;
    mc->version_info = res.version;
    if (mc->type == Cluster::Type::Eds) result.eds_names.insert(mc->eds_service_name);
    if (warming) {
      // Keeps serving the version it had, if any, until its endpoints arrive.
      result.warming.push_back(path);
      if (previous) {
        auto it = previous->clusters_by_name.find(name);
        if (it != previous->clusters_by_name.end()) {
          auto st = addCluster(it->second, path);
          if (!st.ok()) return st;
        }
      }
      continue;
    }
    auto st = addCluster(*c, path);
    if (!st.ok()) return st;
  }

  // RDS route tables, against the clusters just built (unknown clusters answer 503 at run time).
  std::map<std::string, std::shared_ptr<const void>> tables;
  for (const auto& [name, res] : sources->routes) {
    if (!routeTableFactory()) return absl::InternalError("no route table factory registered");
    auto t = routeTableFactory()(*res.proto, absl::StrCat("RouteConfiguration '", name, "'"), snap->clusters_by_name);
    if (!t.ok()) return t.status();
    tables[name] = *t;
    snap->route_tables_by_id[routeIds().get(name)] = *t;
  }
  snap->route_tables = tables;

  std::set<std::string> rds_names;
  TranslationContext ctx{store, snap->clusters_by_name, &snap->route_tables, &rds_names};
  const std::map<std::string, std::string> runtime = runtimeValues(bootstrap);
  ctx.runtime = &runtime;
  std::set<std::string> listener_names;
  auto addListener = [&](ListenerConstSharedPtr l, const std::string& path) -> absl::Status {
    if (!listener_names.insert(l->name).second) {
      return fieldError(path + ".name", absl::StrCat("duplicate listener name '", l->name, "'"));
    }
    for (const auto& other : snap->listeners) {
      if (other->address == l->address && l->address.port() != 0) {
        return fieldError(path + ".address", absl::StrCat("listener '", l->name, "' and '", other->name,
                                                          "' both use ", l->address.asString()));
      }
    }
    snap->listeners.push_back(std::move(l));
    return absl::OkStatus();
  };
  for (int i = 0; i < sr.listeners_size(); ++i) {
    const std::string path = absl::StrCat("static_resources.listeners[", i, "]");
    auto l = translateListener(sr.listeners(i), path, ctx);
    if (!l.ok()) {
      if (absl::IsUnavailable(l.status())) {
        result.warming.push_back(path);
        continue;
      }
      return l.status();
    }
    auto st = addListener(*l, path);
    if (!st.ok()) return st;
  }
  ctx.dynamic = true;  // LDS listeners may name clusters CDS has removed (see TranslationContext)
  for (const auto& [name, res] : sources->listeners) {
    const auto& lp = static_cast<const listener_v3::Listener&>(*res.proto);
    const std::string path = absl::StrCat("Listener '", name, "'");
    auto l = translateListener(lp, path, ctx);
    if (!l.ok()) {
      if (!absl::IsUnavailable(l.status())) return l.status();
      // Waiting for its RouteConfiguration: the previous version keeps serving.
      result.warming.push_back(path + ": " + std::string(l.status().message()));
      if (previous) {
        for (const auto& old : previous->listeners) {
          if (old->name == name) {
            auto st = addListener(old, path);
            if (!st.ok()) return st;
          }
        }
      }
      continue;
    }
    auto* ml = const_cast<Listener*>(l->get());
    ml->dynamic = true;
    ml->version_info = res.version;
    auto st = addListener(*l, path);
    if (!st.ok()) return st;
  }
  result.rds_names = rds_names;
  snap->sources = sources;
  snap->bootstrap = sources->bootstrap;
  snap->loaded_at = formatNowRfc3339();
  result.snapshot = snap;
  return result;
}

absl::StatusOr<SnapshotConstSharedPtr> loadBootstrap(const LoadOptions& options, stats::Store& store) {
  auto b = parseBootstrap(options);
  if (!b.ok()) return b.status();
  auto sources = std::make_shared<ConfigSources>();
  sources->bootstrap = *b;
  auto r = buildSnapshot(sources, nullptr, store, clusterIds());
  if (!r.ok()) return r.status();
  return r->snapshot;
}

absl::StatusOr<std::shared_ptr<const google::protobuf::Message>> parseBootstrap(const LoadOptions& options) {
  std::string text;
  if (options.path.empty()) {
    text = kDefaultBootstrapYaml;
  } else {
    std::ifstream in(options.path, std::ios::binary);
    if (!in) return absl::NotFoundError("cannot open the file");
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  auto json = yamlToJson(text, options.config_yaml, options.path.empty() ? "default" : options.path);
  if (!json.ok()) return json.status();

  auto bootstrap = std::make_shared<bootstrap_v3::Bootstrap>();
  google::protobuf::util::JsonParseOptions parse_options;
  parse_options.ignore_unknown_fields = false;
  auto st = google::protobuf::util::JsonStringToMessage(*json, bootstrap.get(), parse_options);
  if (!st.ok()) {
    if (!options.allow_unknown_static_fields) return absl::InvalidArgumentError(std::string(st.message()));
    bootstrap->Clear();
    parse_options.ignore_unknown_fields = true;
    auto st2 = google::protobuf::util::JsonStringToMessage(*json, bootstrap.get(), parse_options);
    if (!st2.ok()) return absl::InvalidArgumentError(std::string(st2.message()));
    LOG_WARN("ignoring unknown fields (--allow-unknown-static-fields): %s", std::string(st.message()).c_str());
  }
  if (!options.service_node.empty()) bootstrap->mutable_node()->set_id(options.service_node);
  if (!options.service_cluster.empty()) bootstrap->mutable_node()->set_cluster(options.service_cluster);
  if (auto neg = rejectNegativeDurations(*bootstrap, ""); !neg.ok()) return neg;
  return std::shared_ptr<const google::protobuf::Message>(bootstrap);
}

absl::Status rejectNegativeDurations(const google::protobuf::Message& m, const std::string& path) {
  using google::protobuf::FieldDescriptor;
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  if (d->full_name() == "google.protobuf.Duration") {
    const int64_t secs = r->GetInt64(m, d->FindFieldByName("seconds"));
    const int32_t nanos = r->GetInt32(m, d->FindFieldByName("nanos"));
    if (secs < 0 || nanos < 0) return fieldError(path, "must not be negative");
    return absl::OkStatus();
  }
  if (d->full_name() == "google.protobuf.Any") {
    // Typed configs (filters, transport sockets) are checked too, by their own type.
    const std::string url = r->GetString(m, d->FindFieldByName("type_url"));
    const auto* inner_d = google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(url.substr(url.rfind('/') + 1));
    if (inner_d == nullptr) return absl::OkStatus();
    std::unique_ptr<google::protobuf::Message> inner(google::protobuf::MessageFactory::generated_factory()->GetPrototype(inner_d)->New());
    if (!inner->ParseFromString(r->GetString(m, d->FindFieldByName("value")))) return absl::OkStatus();
    return rejectNegativeDurations(*inner, path);
  }
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const auto* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE || f->is_map()) continue;
    const std::string fp = path.empty() ? f->name() : path + "." + f->name();
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(m, f); ++i) {
        if (auto st = rejectNegativeDurations(r->GetRepeatedMessage(m, f, i), absl::StrCat(fp, "[", i, "]")); !st.ok()) return st;
      }
    } else if (auto st = rejectNegativeDurations(r->GetMessage(m, f), fp); !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

ClusterIds& clusterIds() {
  static auto* ids = new ClusterIds;
  return *ids;
}

std::string nowRfc3339() { return formatNowRfc3339(); }

ClusterIds& routeIds() {
  static auto* ids = new ClusterIds;
  return *ids;
}

bool CidrRange::contains(const network::Address& a) const {
  if (a.family() != prefix.family()) return false;
  const uint8_t* x;
  const uint8_t* y;
  if (a.isV6()) {
    x = reinterpret_cast<const sockaddr_in6*>(a.sockAddr())->sin6_addr.s6_addr;
    y = reinterpret_cast<const sockaddr_in6*>(prefix.sockAddr())->sin6_addr.s6_addr;
  } else {
    x = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(a.sockAddr())->sin_addr);
    y = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(prefix.sockAddr())->sin_addr);
  }
  uint32_t bits = len;
  for (uint32_t i = 0; bits > 0; ++i) {
    uint32_t take = bits >= 8 ? 8 : bits;
    uint8_t mask = static_cast<uint8_t>(0xff00 >> take);
    if ((x[i] & mask) != (y[i] & mask)) return false;
    bits -= take;
  }
  return true;
}

bool PortPredicate::matches(uint32_t port) const {
  switch (kind) {
    case Kind::Any: return true;
    case Kind::Range: return static_cast<int64_t>(port) >= start && static_cast<int64_t>(port) < end;
    case Kind::Not: return !children[0].matches(port);
    case Kind::Or:
      for (const auto& c : children) {
        if (c.matches(port)) return true;
      }
      return false;
    case Kind::And:
      for (const auto& c : children) {
        if (!c.matches(port)) return false;
      }
      return true;
  }
  return false;
}

const FilterChain* Listener::match(const network::Address& dst, std::string_view transport,
                                   std::string_view application, std::string_view server_name,
                                   const std::vector<std::string>* alpn) const {
  // Every criterion a chain names must hold; among the chains that fit, the most specific wins (a port
  // beats an IP range beats a server name beats a transport protocol beats application protocols), the
  // first on a tie. An exact server name beats a wildcard one.
  const FilterChain* best = nullptr;
  int best_rank = -1;
  for (const auto& fc : filter_chains) {
    int rank = 0;
    if (fc.destination_port) {
      if (*fc.destination_port != dst.port()) continue;
      rank += 64;
    }
    if (!fc.prefix_ranges.empty()) {
      bool ip_ok = false;
      for (const auto& r : fc.prefix_ranges) ip_ok = ip_ok || r.contains(dst);
      if (!ip_ok) continue;
      rank += 32;
    }
    if (!fc.server_names.empty()) {
      int sn_rank = 0;
      for (const auto& sn : fc.server_names) {
        if (sn == server_name) sn_rank = std::max(sn_rank, 16);
        else if (certs::serverNameMatches(sn, server_name)) sn_rank = std::max(sn_rank, 8);
      }
      if (sn_rank == 0) continue;
      rank += sn_rank;
    }
    if (!fc.transport_protocol.empty()) {
      std::string_view t = transport.empty() ? std::string_view("raw_buffer") : transport;
      if (fc.transport_protocol != t) continue;
      rank += 2;
    }
    if (!fc.application_protocols.empty()) {
      bool found = false;
      for (const auto& ap : fc.application_protocols) {
        found = found || ap == application;
        if (alpn != nullptr) {
          for (const auto& offered : *alpn) found = found || ap == offered;
        }
      }
      if (!found) continue;
      rank += 1;
    }
    if (rank > best_rank) {
      best = &fc;
      best_rank = rank;
    }
  }
  if (best) return best;
  return default_filter_chain ? &*default_filter_chain : nullptr;
}

}  // namespace strait::config
