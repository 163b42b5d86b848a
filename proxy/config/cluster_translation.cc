// Clusters: endpoints, health checks, outlier detection, load balancing, circuit breakers, TLS.
#include "proxy/config/translate_internal.h"


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
#include "proxy/config/dns_cluster_translation.h"
#include "proxy/config/typed_struct.h"
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
  size_t listed = 0;
  for (const auto& locality : la.endpoints()) listed += static_cast<size_t>(locality.lb_endpoints_size());
  out.hosts.reserve(out.hosts.size() + listed);  // exact: these vectors live as long as the version
  out.host_params.reserve(out.host_params.size() + listed);
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
        h->setHostname(lbe.endpoint().hostname());
        h->transport_socket = socket;
        h->priority = locality.priority();
        h->locality = shared_locality;
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
  // As in Envoy, load_balancing_policy, when set, takes precedence over lb_policy (which then need not
  // say LOAD_BALANCING_POLICY_CONFIG).
  switch (c.has_load_balancing_policy() ? cluster_v3::Cluster::LOAD_BALANCING_POLICY_CONFIG : c.lb_policy()) {
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
    if (cl.has_zone_aware_lb_config()) {
      const auto& z = cl.zone_aware_lb_config();
      const std::string zp = path + ".common_lb_config.zone_aware_lb_config";
      if (z.has_routing_enabled()) {
        const double v = z.routing_enabled().value();
        if (v < 0 || v > 100) return fieldError(zp + ".routing_enabled", "must be 0..100");
        lb.zone_routing_enabled_percent = v;
      }
      if (z.has_min_cluster_size()) lb.zone_min_cluster_size = z.min_cluster_size().value();
      lb.zone_fail_traffic_on_panic = z.fail_traffic_on_panic();
    }
  }
  return absl::OkStatus();
}

// A cluster's fixed traffic stats (Envoy's names), made as one StatBlock: the layout and, per stat, where
// its handle goes in ClusterStats. Only traffic writes them, so the shard pages of a cluster that gets
// none stay untouched.
struct ClusterStatBlock {
  struct Field {
    uint32_t offset;
    void (*set)(ClusterStats&, uint32_t slot);
  };
  stats::StatBlock layout;
  std::vector<Field> fields;
};

const ClusterStatBlock& clusterStatBlock() {
  static const ClusterStatBlock* block = [] {
    auto* b = new ClusterStatBlock;
    auto c = [b](const char* leaf, void (*set)(ClusterStats&, uint32_t)) { b->fields.push_back({b->layout.counter(leaf), set}); };
    auto g = [b](const char* leaf, void (*set)(ClusterStats&, uint32_t)) { b->fields.push_back({b->layout.gauge(leaf), set}); };
#define STRAIT_CS(kind, field) kind(#field, [](ClusterStats& s, uint32_t i) { s.field = {i}; })
    STRAIT_CS(c, upstream_cx_total);
    STRAIT_CS(g, upstream_cx_active);
    STRAIT_CS(c, upstream_cx_connect_fail);
    STRAIT_CS(c, upstream_cx_connect_timeout);
    STRAIT_CS(c, upstream_cx_destroy);
    STRAIT_CS(c, upstream_cx_rx_bytes_total);
    STRAIT_CS(c, upstream_cx_tx_bytes_total);
    STRAIT_CS(c, upstream_cx_none_healthy);
    STRAIT_CS(c, upstream_cx_http1_total);
    STRAIT_CS(c, upstream_cx_http2_total);
    STRAIT_CS(c, upstream_rq_total);
    STRAIT_CS(g, upstream_rq_active);
    STRAIT_CS(c, upstream_rq_1xx);
    STRAIT_CS(c, upstream_rq_2xx);
    STRAIT_CS(c, upstream_rq_3xx);
    STRAIT_CS(c, upstream_rq_4xx);
    STRAIT_CS(c, upstream_rq_5xx);
    STRAIT_CS(c, upstream_rq_timeout);
    STRAIT_CS(c, upstream_rq_per_try_timeout);
    STRAIT_CS(c, upstream_rq_per_try_idle_timeout);
    STRAIT_CS(c, upstream_rq_max_duration_reached);
    STRAIT_CS(c, upstream_rq_retry);
    STRAIT_CS(c, upstream_rq_retry_success);
    STRAIT_CS(c, upstream_rq_pending_total);
    STRAIT_CS(c, upstream_rq_pending_overflow);
    STRAIT_CS(c, upstream_rq_rx_reset);
    STRAIT_CS(c, upstream_rq_tx_reset);
    STRAIT_CS(c, retry_or_shadow_abandoned);
    STRAIT_CS(c, upstream_cx_overflow);
    STRAIT_CS(c, upstream_rq_retry_overflow);
    STRAIT_CS(c, upstream_cx_pool_overflow);
    STRAIT_CS(c, upstream_rq_retry_limit_exceeded);
#undef STRAIT_CS
    // Zone-aware routing's (their ZoneStats names differ from Envoy's leaves).
    c("lb_zone_routing_all_directly", [](ClusterStats& s, uint32_t i) { s.lb_zone.routing_all_directly = {i}; });
    c("lb_zone_routing_sampled", [](ClusterStats& s, uint32_t i) { s.lb_zone.routing_sampled = {i}; });
    c("lb_zone_routing_cross_zone", [](ClusterStats& s, uint32_t i) { s.lb_zone.routing_cross_zone = {i}; });
    c("lb_zone_cluster_too_small", [](ClusterStats& s, uint32_t i) { s.lb_zone.cluster_too_small = {i}; });
    c("lb_local_cluster_not_ok", [](ClusterStats& s, uint32_t i) { s.lb_zone.local_cluster_not_ok = {i}; });
    b->fields.push_back({b->layout.histogram("upstream_rq_time"),
                         [](ClusterStats& s, uint32_t i) { s.upstream_rq_time = {i}; }});
    return b;
  }();
  return *block;
}

// Set once at start-up (registerUpstreamPeerExchange), before any translation.
UpstreamPeerExchangeFn& upstreamPeerExchange() {
  static auto* fn = new UpstreamPeerExchangeFn;
  return *fn;
}

}  // namespace

void registerUpstreamPeerExchange(UpstreamPeerExchangeFn fn) { upstreamPeerExchange() = std::move(fn); }

absl::StatusOr<ClusterConstSharedPtr> translateCluster(const cluster_v3::Cluster& c, const std::string& path,
                                                     uint32_t index, stats::Store& store,
                                                     const ResourceMap* endpoints,
                                                     bool allow_pipe, std::string* pipe_target, bool* warming,
                                                     const DynamicResource* held) {
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
  // Upstream network filters: Istio puts its metadata exchange on every mesh cluster (directly typed or
  // in a TypedStruct); Strait runs it on tcp_proxy connections (filters/network/metadata_exchange.h).
  // Any other would change what the cluster does and is refused.
  for (int i = 0; i < c.filters_size(); ++i) {
    const auto& f = c.filters(i);
    std::string type = f.typed_config().type_url();
    if (auto ts = readTypedStruct(f.typed_config())) type = ts->type_url;
    const std::string fp = absl::StrCat(path, ".filters[", i, "]");
    if (type != "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange") {
      return fieldError(fp, absl::StrCat("upstream network filter '", f.name(), "' (", type.empty() ? "no typed_config" : type,
                                         ") is not supported; only Istio's metadata exchange is accepted"));
    }
    if (const auto& make = upstreamPeerExchange()) {
      auto px = make(f.typed_config(), fp + ".typed_config", store);
      if (!px.ok()) return px.status();
      out->peer_exchange = std::move(*px);
    }
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
        auto st = translateEndpoints(*heldAs<endpoint_v3::ClusterLoadAssignment>(*cla),
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
    case cluster_v3::Cluster::STRICT_DNS:
    case cluster_v3::Cluster::LOGICAL_DNS: {
      out->type = c.type() == cluster_v3::Cluster::STRICT_DNS ? Cluster::Type::StrictDns : Cluster::Type::LogicalDns;
      auto dns = translateDnsCluster(c, path, [&](const envoy::config::core::v3::Metadata* md) { return sockets.choose(md); });
      if (!dns.ok()) return dns.status();
      out->dns = *dns;
      // Hosts come from the resolver (server/dns_clusters.cc), published through the runtime: this
      // version starts with the newest set, or none before the first resolution (requests get 503
      // meanwhile; the rest of the config does not wait).
      if (auto set = out->runtime->dns_hosts.current().first) out->hosts = *set;
      break;
    }
    default:
      return fieldError(path + ".type", absl::StrCat("discovery type ", cluster_v3::Cluster::DiscoveryType_Name(c.type()),
                                                      " is not supported"));
  }
  if (c.has_connect_timeout()) {
    if (c.connect_timeout().seconds() < 0 || c.connect_timeout().nanos() < 0) {
      return fieldError(path + ".connect_timeout", "must not be negative");
    }
    out->connect_timeout_ms = durationMs(c.connect_timeout());
  }
  if (c.has_upstream_bind_config()) {
    const auto& sa = c.upstream_bind_config().source_address();
    const std::string bp = path + ".upstream_bind_config.source_address";
    if (sa.port_specifier_case() == envoy::config::core::v3::SocketAddress::kNamedPort || sa.port_value() > 65535) {
      return fieldError(bp + ".port_value", "must be a port number (0: any)");
    }
    auto a = network::Address::parse(sa.address(), sa.port_value());
    if (!a) return fieldError(bp + ".address", absl::StrCat("'", sa.address(), "' is not a numeric IPv4 or IPv6 address"));
    out->upstream_bind = *a;
  }
  if (c.has_per_connection_buffer_limit_bytes()) out->buffer_limit = c.per_connection_buffer_limit_bytes().value();
  if (c.has_max_requests_per_connection()) out->max_requests_per_connection = c.max_requests_per_connection().value();
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
    if (hpo.common_http_protocol_options().has_max_requests_per_connection()) {
      out->max_requests_per_connection = hpo.common_http_protocol_options().max_requests_per_connection().value();
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
    out->health_check = std::make_shared<const upstream::HealthCheckConfig>(std::move(hc));
    out->health_check_hash = std::hash<std::string>{}(c.health_checks(0).SerializeAsString());
  }
  if (c.has_outlier_detection()) {
    upstream::OutlierConfig o;
    auto st = translateOutlier(c.outlier_detection(), path + ".outlier_detection", o);
    if (!st.ok()) return st;
    out->outlier = std::make_shared<const upstream::OutlierConfig>(o);
  }
  if (c.has_circuit_breakers()) {
    auto breakers = std::make_shared<upstream::CircuitBreakerLimits>();
    out->breakers = breakers;
    for (int i = 0; i < c.circuit_breakers().thresholds_size(); ++i) {
      const auto& t = c.circuit_breakers().thresholds(i);
      // One threshold set per routing priority; routes choose theirs (RouteAction.priority).
      auto& l = breakers->by_priority[t.priority() == envoy::config::core::v3::HIGH ? 1 : 0];
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
  if (c.has_load_assignment() && out->type != Cluster::Type::Eds && !out->isDns()) {
    std::string pipe;
    auto st = translateEndpoints(c.load_assignment(), path + ".load_assignment", c.name(), store, allow_pipe, *out,
                                 &pipe, sockets);
    if (!st.ok()) return st;
    if (pipe_target != nullptr) *pipe_target = pipe;
    out->pipe_target = pipe;
  }
  // Validated, and waiting for its ClusterLoadAssignment: the caller drops it (buildSnapshot keeps the
  // version it had until the endpoints come), so its stats would be made and released at once (a third
  // of a 10,000-cluster CDS push went on that).
  if (warming != nullptr && *warming) return ClusterConstSharedPtr(out);  // dropped by the caller, never shown
  const std::string p = "cluster." + (c.alt_stat_name().empty() ? c.name() : c.alt_stat_name()) + ".";
  // One block of the store for the whole fixed set (stats.h, StatBlock): one entry per cluster instead
  // of one per stat.
  const uint32_t first = scope.block(std::string_view(p).substr(0, p.size() - 1), clusterStatBlock().layout);
  for (const auto& f : clusterStatBlock().fields) f.set(out->stats, first + f.offset);
  // Set here, at config time, for every cluster: kept out of the block so these gauges share shard
  // pages (512 to a page) instead of each making its block's page resident in the main thread's shard.
  out->stats.membership_total = scope.gauge(p + "membership_total");
  bool tls = out->transport_socket != nullptr;
  for (const auto& h : out->hosts) tls = tls || h->transport_socket != nullptr;
  if (out->dns) {
    for (const auto& t : out->dns->targets) tls = tls || t.socket != nullptr;  // hosts resolved later
  }
  if (tls) out->stats.ssl = network::makeSslStats(scope, p);
  stats::set(store, out->stats.membership_total, static_cast<int64_t>(out->hosts.size()));
  if (held != nullptr && (held->proto || held->wire)) {
    out->proto = held->proto;
    out->wire = held->wire;
  } else {
    out->proto = std::make_shared<cluster_v3::Cluster>(c);
  }
  return ClusterConstSharedPtr(out);
}

std::shared_ptr<const google::protobuf::Message> Cluster::message() const {
  if (proto || !wire) return proto;
  DynamicResource r;
  r.wire = wire;
  return heldAs<cluster_v3::Cluster>(r);
}

}  // namespace strait::config
