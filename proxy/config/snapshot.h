#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "proxy/config/name_map.h"
#include "proxy/event/dispatcher.h"
#include "proxy/http/matchers.h"
#include "proxy/network/address.h"
#include "proxy/network/transport_socket.h"
#include "proxy/stats/stats.h"
#include "proxy/upstream/cluster_runtime.h"
#include "proxy/upstream/dns_cluster.h"
#include "proxy/upstream/health_checker.h"
#include "proxy/upstream/host.h"
#include "proxy/upstream/load_balancer.h"

namespace google::protobuf {
class Message;
}

namespace strait::network {
class Connection;
}
namespace strait::upstream {
class HttpPoolManager;
}
namespace strait::accesslog {
struct AccessLog;
}
namespace strait::http {
struct HcmConfig;
}


namespace strait::config {

// The immutable, validated configuration that workers run on. A new Snapshot replaces the old one as a
// whole; connections keep the one they started with through shared_ptr.

struct ClusterStats {
  stats::Counter upstream_cx_total;
  stats::Gauge upstream_cx_active;
  stats::Counter upstream_cx_connect_fail;
  stats::Counter upstream_cx_connect_timeout;
  stats::Counter upstream_cx_destroy;
  stats::Counter upstream_cx_rx_bytes_total;
  stats::Counter upstream_cx_tx_bytes_total;
  stats::Counter upstream_cx_none_healthy;
  stats::Gauge membership_total;
  // HTTP
  stats::Counter upstream_cx_http1_total;
  stats::Counter upstream_cx_http2_total;
  stats::Counter upstream_rq_total;
  stats::Gauge upstream_rq_active;
  stats::Counter upstream_rq_1xx;
  stats::Counter upstream_rq_2xx;
  stats::Counter upstream_rq_3xx;
  stats::Counter upstream_rq_4xx;
  stats::Counter upstream_rq_5xx;
  stats::Counter upstream_rq_timeout;
  stats::Counter upstream_rq_per_try_timeout;
  stats::Counter upstream_rq_per_try_idle_timeout;
  stats::Counter upstream_rq_max_duration_reached;
  stats::Counter upstream_rq_retry;
  stats::Counter upstream_rq_retry_success;
  stats::Counter upstream_rq_pending_total;
  stats::Counter upstream_rq_pending_overflow;
  stats::Counter upstream_rq_rx_reset;
  stats::Counter upstream_rq_tx_reset;
  stats::Counter retry_or_shadow_abandoned;  // the body outgrew the retry buffer
  stats::Counter upstream_cx_overflow;       // max_connections reached
  stats::Counter upstream_rq_retry_overflow;  // max_retries / retry budget reached: not retried
  stats::Counter upstream_cx_pool_overflow;  // max_connection_pools reached
  stats::Counter upstream_rq_retry_limit_exceeded;  // num_retries used up
  upstream::ZoneStats lb_zone;  // zone-aware routing (lb_zone_*, lb_local_cluster_not_ok)
  stats::Histogram upstream_rq_time;
  network::SslStats ssl;  // cluster.<name>.ssl.*
};

// Istio's TCP metadata exchange (istio.metadata_exchange, on a filter chain or in Cluster.filters), as
// configured; run by filters/network/metadata_exchange.h.
struct PeerExchangeConfig {
  std::string protocol;  // the ALPN that turns the exchange on ("istio-peer-exchange")
  stats::Counter alpn_protocol_found, alpn_protocol_not_found, initial_header_not_found, header_not_found,
      metadata_added;
};

// A cluster member: shared by the workers, kept across updates that keep its endpoint
// (proxy/upstream/host.h).
using Host = upstream::Host;

// What a load balancer picked: an address, and the configured host when there is one
// (an ORIGINAL_DST destination has none).
struct HostChoice {
  network::Address address;
  const Host* host = nullptr;
};

// The transport socket for connections to `host` (null: plaintext).
inline const network::TransportSocketFactorySharedPtr& transportFor(const struct Cluster& cluster, const Host* host);

struct Cluster {
  enum class Type { Static, OriginalDst, Eds, StrictDns, LogicalDns };
  std::string name;
  uint32_t index = 0;  // stable per name for the life of the process: per-worker state (balancers, pools)
  uint64_t version_id = 0;  // unique per translated version, process-wide (workers rebuild balancers on change)
  bool dynamic = false;     // from CDS
  std::string version_info;  // of the CDS resource
  std::string eds_service_name;  // EDS: the ClusterLoadAssignment it takes its hosts from
  std::string eds_version;
  // EDS: the ClusterLoadAssignment message this version was built from. With `proto` (the Cluster
  // message itself, shared with the ConfigSources it came from) it is what buildSnapshot compares to
  // reuse this version when neither changed.
  std::shared_ptr<const void> from_endpoints;
  Type type = Type::Static;
  // STRICT_DNS / LOGICAL_DNS: what to resolve and how often (null otherwise). Their hosts come from the
  // resolver (runtime->dns_hosts, see hostsInForce()); `hosts` holds the set in force at translation.
  upstream::DnsClusterConfigConstSharedPtr dns;
  bool isDns() const { return type == Type::StrictDns || type == Type::LogicalDns; }
  uint64_t connect_timeout_ms = 5000;
  // upstream_bind_config.source_address: upstream connections of the same family bind to it before
  // connecting (Istio's inbound clusters use 127.0.0.6, which its capture rules let through).
  std::optional<network::Address> upstream_bind;
  uint32_t buffer_limit = 1024 * 1024;
  // The hosts of this version, in config order, and what each should be while it is in force (weight,
  // EDS health); ClusterRuntime::activate() applies host_params when the version is accepted.
  std::vector<upstream::HostSharedPtr> hosts;
  std::vector<upstream::ClusterRuntime::HostParams> host_params;
  upstream::LbConfig lb;
  // State that outlives versions (hosts by identity, circuit breakers, health generation, outlier
  // detection, health checks); shared by every version of this cluster name.
  upstream::ClusterRuntimeSharedPtr runtime;
  // "unix:/path" for a static cluster with a pipe endpoint, else empty (see grpcTarget()).
  std::string pipe_target;
  // Where a gRPC client of ours (SDS on its own stream) connects when a config names this cluster:
  // its pipe, else its first host ("ipv4:1.2.3.4:15012"); empty when it has neither. Made when asked
  // (once per SDS stream), not held by each of the mesh's clusters.
  std::string grpcTarget() const {
    if (!pipe_target.empty() || hosts.empty()) return pipe_target;
    const auto& a = hosts.front()->address;
    return (a.isV6() ? "ipv6:" : "ipv4:") + a.asString();
  }
  // TLS to hosts without one of their own (ORIGINAL_DST destinations): the cluster's transport_socket
  // or its first match-all transport_socket_matches entry; null for plaintext. Listed hosts carry
  // theirs (Host::transport_socket). A host that asks for TLS never gets a plaintext connection: when
  // the factory cannot make a socket the attempt fails.
  network::TransportSocketFactorySharedPtr transport_socket;
  // Cluster.filters' istio.metadata_exchange: Istio's TCP metadata exchange on tcp_proxy connections to
  // this cluster whose TLS negotiated its protocol (filters/network/metadata_exchange.h); null: none.
  std::shared_ptr<const PeerExchangeConfig> peer_exchange;
  // HTTP to this cluster: the protocol (typed_extension_protocol_options HttpProtocolOptions), HTTP/2
  // settings, idle timeout and circuit-breaker limits (Envoy's defaults).
  enum class HttpProtocol { Http1, Http2, UseDownstream };
  HttpProtocol http_protocol = HttpProtocol::Http1;
  uint32_t http2_max_concurrent_streams = 100;
  uint32_t http2_initial_stream_window = 1024 * 1024;
  uint32_t http2_initial_connection_window = 16 * 1024 * 1024;
  uint64_t idle_timeout_ms = 3600 * 1000;
  // Requests one upstream connection carries before it is closed (0: no limit). Cluster field 9, or
  // common_http_protocol_options.max_requests_per_connection (which wins).
  uint32_t max_requests_per_connection = 0;
  // circuit_breakers thresholds, applied to runtime->resources(priority) when this version is activated;
  // never null (shared defaults for a cluster that sets none).
  std::shared_ptr<const upstream::CircuitBreakerLimits> breakers = upstream::defaultCircuitBreakerLimits();
  const upstream::ResourceLimits& limits() const { return breakers->by_priority[0]; }       // DEFAULT
  const upstream::ResourceLimits& highLimits() const { return breakers->by_priority[1]; }   // HIGH
  // outlier_detection, run by runtime->outlierDetector(); null without one. This and health_check are
  // held apart (not inline) since most clusters of a mesh have neither: inline they were most of
  // a Cluster's 1.5 KB.
  std::shared_ptr<const upstream::OutlierConfig> outlier;
  // health_checks[0], run on the main thread by the server (server/active_health_checks.cc); or null.
  std::shared_ptr<const upstream::HealthCheckConfig> health_check;
  uint64_t health_check_hash = 0;  // of its proto: a checker is rebuilt only when it changes
  // Owns the references behind `stats` and the hosts' stat handles: when the last holder of this Cluster
  // (snapshots, route tables, pools, requests in flight) lets go, stats no newer Cluster of the same name
  // holds leave /stats and their slots are reused.
  std::unique_ptr<stats::StatScope> stat_scope;
  ClusterStats stats;
  // The Cluster message this version was built from, for /config_dump (message()) and for reuse
  // (sourceKey()): `proto` (a bootstrap cluster's own, shared with the bootstrap), or, for a CDS
  // cluster, the bytes the xDS applier holds it as (`wire`; proto null). Shared, never copied: at
  // 10,000 clusters a decoded Cluster message held for each took 0.7 KiB, its bytes about 0.1.
  std::shared_ptr<const google::protobuf::Message> proto;
  std::shared_ptr<const std::string> wire;
  const void* sourceKey() const { return proto ? static_cast<const void*>(proto.get()) : wire.get(); }
  // `proto`, or the message decoded from `wire` (admin and tests only: never on the data path).
  std::shared_ptr<const google::protobuf::Message> message() const;
};
using ClusterConstSharedPtr = std::shared_ptr<const Cluster>;
// Clusters by name: a NameMap, so a snapshot built after another shares its table and copies only
// what changed (10,000 clusters, one endpoint changed: no 10,000-entry copy).
using ClusterMap = NameMap<ClusterConstSharedPtr>;

inline const network::TransportSocketFactorySharedPtr& transportFor(const Cluster& cluster, const Host* host) {
  return host != nullptr ? host->transport_socket : cluster.transport_socket;
}

// The hosts in force for `cluster`: a DNS cluster's newest resolution (published through its runtime
// between config versions), else the version's own `hosts`. The caller keeps `cluster` alive meanwhile.
inline upstream::ResolvedHosts::SetConstSharedPtr hostsInForce(const Cluster& cluster) {
  if (cluster.isDns() && cluster.runtime) {
    auto set = cluster.runtime->dns_hosts.current().first;
    if (set) return set;
  }
  return upstream::ResolvedHosts::SetConstSharedPtr(std::shared_ptr<const void>(), &cluster.hosts);
}

struct Listener;
struct ListenerStats;

// A downstream connection's processing (a tcp_proxy session, an HTTP connection) owned by its worker.
// It pins the listener config it was accepted on, so config changes never pull state from under it.
class ActiveSession : public event::DeferredDeletable {
 public:
  explicit ActiveSession(std::shared_ptr<const Listener> listener) : listener_(std::move(listener)) {}
  // Drain expired: close now.
  virtual void forceClose() = 0;
  // A drain began (SIGTERM, /drain_listeners, its listener or filter chain changed or went): tell the
  // client so it moves on by itself (HTTP/2 GOAWAY, HTTP/1 Connection: close); requests in flight
  // finish. Called at most once. Raw TCP has nothing to tell: it is closed when the drain time ends.
  virtual void startDrain() {}
  // The filter chain (its config's hash) the session was accepted on: a listener update that keeps
  // this chain keeps the session.
  uint64_t chain_hash = 0;
  bool drain_started = false;
  const std::shared_ptr<const Listener>& listener() const { return listener_; }
  // Position in the worker's list, for O(1) removal.
  std::list<ActiveSession*>::iterator list_position;

 private:
  std::shared_ptr<const Listener> listener_;
};

using ActiveSessionPtr = std::unique_ptr<ActiveSession>;

// Per-worker services a network filter may use; implemented by the worker.
// A stream waiting for clusters its worker's config lacks (on-demand cluster discovery,
// envoy.filters.http.on_demand). Registered with WorkerContext::addClusterWaiter(); the worker calls
// onClusterDiscoveryUpdate() on its own thread after it takes a new config and after the control plane
// says a cluster asked for does not exist, and the waiter looks again at what it waits for (it may be
// called when nothing it waits for changed). The waiter unregisters itself (cancelClusterWait) before
// it goes away.
class ClusterWaiter {
 public:
  virtual ~ClusterWaiter() = default;
  virtual void onClusterDiscoveryUpdate() = 0;
};

class WorkerContext {
 public:
  virtual ~WorkerContext() = default;
  virtual event::Dispatcher& dispatcher() = 0;
  // Picks an upstream address for `cluster` (round robin, or the downstream's original destination).
  // `context` (may be null): the request's hash key and the hosts its earlier attempts used.
  virtual std::optional<HostChoice> chooseHost(const Cluster& cluster, const network::Connection& downstream,
                                               const upstream::LbContext* context = nullptr) = 0;
  // The worker owns sessions; a session calls removeSession() once both its sides are closed.
  virtual void addSession(std::unique_ptr<ActiveSession> session) = 0;
  virtual void removeSession(ActiveSession& session) = 0;
  // Random numbers for weighted choices (per worker, not shared).
  virtual uint64_t random() = 0;
  // This worker's HTTP connection pools (created on first use).
  virtual upstream::HttpPoolManager& httpPools() = 0;
  // The current RDS route table with this routeIds() index (null if none): streams on connections
  // accepted before an RDS update still route with the newest table, as in Envoy.
  virtual std::shared_ptr<const void> routeTable(uint32_t id) = 0;
  // The current version of the cluster with this clusterIds() index (a null pointer when the config has
  // no such cluster). Routes and tcp_proxy hold a cluster's index, not a version of it, and resolve it
  // here for each request or connection (one vector load): a cluster or endpoint update therefore
  // leaves the route tables and listeners that name the cluster untouched.
  virtual const ClusterConstSharedPtr& cluster(uint32_t index) = 0;
  // The current version of the cluster named `name` (a null pointer when there is none): for routes
  // whose cluster a request header names (cluster_header), where no index is known at config time.
  virtual const ClusterConstSharedPtr& clusterByName(std::string_view name) {
    (void)name;
    static const ClusterConstSharedPtr kNone;
    return kNone;
  }

  // On-demand cluster discovery. Asks the control plane for the cluster `name` (clusterIds() index
  // `index`); each name is asked for once, then stays subscribed. False: this process cannot discover
  // clusters on demand (no ADS stream, or CDS subscribed as a wildcard, where everything the control
  // plane has comes anyway).
  virtual bool requestCluster(uint32_t index, const std::string& name) {
    (void)index;
    (void)name;
    return false;
  }
  // Registers `waiter` (once) until cancelClusterWait().
  virtual void addClusterWaiter(ClusterWaiter& waiter) { (void)waiter; }
  virtual void cancelClusterWait(ClusterWaiter& waiter) { (void)waiter; }
  // The control plane said the cluster `index` does not exist (does-not-exist timer, or a delta removal),
  // and no config since has it: a request for it gets cluster_not_found at once instead of waiting.
  virtual bool clusterKnownMissing(uint32_t index) const {
    (void)index;
    return false;
  }
};

struct FilterChain;

// A terminal network filter's factory (tcp_proxy, the HTTP connection manager). It takes the accepted
// connection and owns it from then on; the session it makes records `chain_hash` (the chain's hash), so
// a listener update keeps it when that chain is unchanged.
class NetworkFilterFactory {
 public:
  virtual ~NetworkFilterFactory() = default;
  virtual void onAccept(WorkerContext& worker, std::unique_ptr<network::Connection> conn,
                        const std::shared_ptr<const Listener>& listener, uint64_t chain_hash) const = 0;

  // For the admin's /explain only (main thread, never per connection): what the filter would do.
  // The HTTP connection manager's configuration, or null when this is not one.
  virtual const http::HcmConfig* httpConnectionManager() const { return nullptr; }
  // tcp_proxy's clusters (one, or the weighted ones), or empty when this is not tcp_proxy.
  struct UpstreamTarget {
    std::string cluster;
    uint32_t cluster_index = UINT32_MAX;  // clusterIds(); resolved per connection
    uint32_t weight = 1;
  };
  virtual std::vector<UpstreamTarget> tcpProxyTargets() const { return {}; }
};

// A network filter that runs before the terminal one (RBAC). It sees the connection once its transport
// is up (after the TLS handshake, so the peer identity is known) and before the terminal filter sees a
// byte, and decides whether it goes on. Made at config time, shared by the workers, so it must be
// thread-safe (read-only state; stats through the per-thread shards).
class NetworkReadFilter {
 public:
  virtual ~NetworkReadFilter() = default;
  // false: the connection is closed and nothing of it is forwarded.
  virtual bool admit(const network::Connection& conn) const = 0;
};
using NetworkReadFilterConstSharedPtr = std::shared_ptr<const NetworkReadFilter>;

struct CidrRange {
  network::Address prefix;
  uint32_t len = 0;
  bool contains(const network::Address& a) const;
};

struct FilterChain {
  std::string name;
  // FilterChainMatch, in Envoy's order of precedence (see Listener::match).
  std::optional<uint32_t> destination_port;
  std::vector<CidrRange> prefix_ranges;            // destination IP
  std::vector<std::string> server_names;           // SNI (tls_inspector); "*.example.com" wildcards
  std::string transport_protocol;                 // "raw_buffer" / "tls" (tls_inspector)
  std::vector<std::string> application_protocols;  // "http/1.1", "h2c", ... (http_inspector / ALPN)
  std::vector<CidrRange> direct_source_prefix_ranges;  // the peer (no PROXY protocol: the source)
  enum class SourceType { Any, SameIpOrLoopback, External };
  SourceType source_type = SourceType::Any;
  std::vector<CidrRange> source_prefix_ranges;
  std::vector<uint32_t> source_ports;
  // TLS (DownstreamTlsContext) or none (plaintext); set on the connection once the chain is chosen.
  network::TransportSocketFactorySharedPtr transport_socket;
  uint64_t transport_socket_connect_timeout_ms = 10000;  // the handshake must finish in this time
  std::vector<NetworkReadFilterConstSharedPtr> read_filters;  // in order, before the terminal filter
  uint64_t hash = 0;  // of the chain's config: a listener update keeps the connections of unchanged chains
  std::shared_ptr<const NetworkFilterFactory> terminal;
};

// Listener::match's criteria, in the order it applies them (for /explain).
enum class ChainMatchStep {
  DestinationPort, DestinationIp, ServerName, TransportProtocol, ApplicationProtocols, DirectSourceIp, SourceType,
  SourceIp, SourcePort
};
// Told of a chain a step of Listener::matchExplained dropped: its score at that step (-1: it does not
// fit the connection; else lower than `best`, the score of the more specific chains kept) and, for the
// server name, transport and application protocol steps, the value compared (empty: none).
using ChainRuledOut = std::function<void(const FilterChain& chain, ChainMatchStep step, int score, int best,
                                         std::string_view compared)>;

struct ListenerStats {
  stats::Counter downstream_cx_total;
  stats::Gauge downstream_cx_active;
  stats::Counter downstream_cx_destroy;
  stats::Counter no_filter_chain_match;
  stats::Counter downstream_pre_cx_timeout;  // listener filters did not decide in time
  stats::Counter http10_found;               // listener.<addr>.http_inspector.* (Envoy's names)
  stats::Counter http11_found;
  stats::Counter http2_found;
  stats::Counter http_not_found;
  stats::Counter tls_found;  // listener.<addr>.tls_inspector.*
  stats::Counter tls_not_found;
  stats::Counter tls_client_hello_too_large;
  stats::Counter downstream_cx_transport_socket_connect_timeout;
  stats::Counter downstream_cx_no_certificate;  // a TLS chain had no certificate yet: refused
  stats::Counter downstream_cx_overload_reject;  // refused by the overload manager
  stats::Counter downstream_cx_overflow;         // refused: the listener's connection limit
  stats::Counter downstream_global_cx_overflow;  // refused: the process-wide connection limit
  network::SslStats ssl;  // listener.<addr>.ssl.*
};

// ListenerFilterChainMatchPredicate, for filter_disabled: which connections skip a listener filter.
struct PortPredicate {
  enum class Kind { Any, Range, Or, And, Not };
  Kind kind = Kind::Any;
  int32_t start = 0, end = 0;  // [start, end)
  std::vector<PortPredicate> children;
  bool matches(uint32_t port) const;
};

// Protocol detection on a listener (Envoy's tls_inspector and http_inspector listener filters).
struct Inspector {
  bool enabled = false;
  std::optional<PortPredicate> disabled;  // skip for these destinations (opaque / server-first ports)
  bool activeFor(uint32_t port) const { return enabled && !(disabled && disabled->matches(port)); }
};

struct Listener {
  std::string name;
  bool dynamic = false;       // from LDS
  std::string version_info;   // of the LDS resource
  std::string proto_hash;     // serialized proto: equal means the listener did not change
  std::vector<std::string> rds_names;  // the RouteConfigurations its HCMs take over RDS
  network::Address address;
  // bind_to_port: false opens no socket: the listener only gets connections handed off to it by a
  // use_original_dst listener (Istio's per-service outbound listeners behind virtualOutbound).
  bool bind_to_port = true;
  bool restore_original_dst = false;  // use_original_dst or the original_dst listener filter
  // use_original_dst: a connection whose original destination differs from this listener's address
  // goes to the listener of the same snapshot on exactly that address, else on the wildcard address
  // of its family and port (ListenerAddressMap), before this listener does anything with it.
  bool use_original_dst = false;
  bool inbound = false;  // traffic_direction INBOUND (/drain_listeners?inboundonly)
  bool outbound = false;  // traffic_direction OUTBOUND (tracing: CLIENT spans)
  Inspector tls_inspector;
  Inspector http_inspector;
  uint64_t listener_filters_timeout_ms = 15000;  // Envoy's default
  // access_log: a line for each connection no filter chain takes (accesslog::AccessLogList).
  std::vector<std::shared_ptr<const accesslog::AccessLog>> access_logs;
  bool continue_on_listener_filters_timeout = false;
  uint32_t buffer_limit = 1024 * 1024;
  // Envoy's runtime key envoy.resource_limits.listener.<name>.connection_limit (0: no limit). The count
  // is per listener name across all workers and survives updates of the listener, so connections
  // accepted before an LDS change still count against the new version.
  uint64_t max_connections = 0;
  std::shared_ptr<std::atomic<int64_t>> open_connections;
  // Envoy's runtime key overload.global_downstream_max_connections (Istio sets it): all listeners'
  // connections together, one process-wide count (0: no limit; a listener with ignore_global_conn_limit
  // is not counted).
  uint64_t global_max_connections = 0;
  std::shared_ptr<std::atomic<int64_t>> global_connections;
  std::vector<FilterChain> filter_chains;
  std::optional<FilterChain> default_filter_chain;
  std::string stat_prefix;
  ListenerStats stats;
  bool stats_ready = false;
  std::shared_ptr<const google::protobuf::Message> proto;
  // The chain for a connection from `src` to `dst` (its original destination when recovered) with the
  // detected transport / application protocol (empty when not detected), or the default chain, or
  // nullptr. `alpn`: the protocols a TLS client offered (tls_inspector), in its order.
  // Envoy's rules: the criteria narrow the chains one after the other (destination port, destination
  // IP, server name, transport protocol, application protocols, direct source IP, source type, source
  // IP, source port); at each step only the chains with the most specific value that fits stay (a
  // chain that does not name the criterion fits everything, least specifically). There is no going
  // back: when a step leaves nothing, the default chain is used.
  const FilterChain* match(const network::Address& dst, const network::Address& src, std::string_view transport = {},
                           std::string_view application = {}, std::string_view server_name = {},
                           const std::vector<std::string>* alpn = nullptr) const;
  // match() itself (the same narrowing code), telling `ruled_out` of every chain a step drops. Admin only.
  const FilterChain* matchExplained(const network::Address& dst, const network::Address& src,
                                   std::string_view transport, std::string_view application,
                                   std::string_view server_name, const std::vector<std::string>* alpn,
                                   const ChainRuledOut& ruled_out) const;
};
using ListenerConstSharedPtr = std::shared_ptr<const Listener>;

// Listeners by address for the use_original_dst hand-off: a destination finds the entry on exactly its
// IP and port, else the one on its family's wildcard address (0.0.0.0 / [::]) and its port. Built when
// the configuration changes; find() is a hash lookup per connection. The first entry for an address
// stays (the snapshot builder refuses two listeners on one address anyway).
template <class T>
class ListenerAddressMap {
 public:
  void add(const network::Address& a, T value) { map_.try_emplace(key(a), std::move(value)); }
  const T* find(const network::Address& dst) const {
    auto it = map_.find(key(dst));
    if (it != map_.end()) return &it->second;
    Key any{};
    any.family = static_cast<uint8_t>(dst.family());
    any.port = static_cast<uint16_t>(dst.port());
    it = map_.find(any);
    return it != map_.end() ? &it->second : nullptr;
  }
  void clear() { map_.clear(); }
  size_t size() const { return map_.size(); }

 private:
  struct Key {
    uint8_t family = 0;
    uint16_t port = 0;
    uint8_t ip[16] = {};
    bool operator==(const Key& o) const {
      return family == o.family && port == o.port && std::memcmp(ip, o.ip, sizeof(ip)) == 0;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      uint64_t h = 1469598103934665603ull ^ (uint64_t(k.family) << 16 | k.port);
      for (uint8_t b : k.ip) h = (h ^ b) * 1099511628211ull;
      return static_cast<size_t>(h);
    }
  };
  static Key key(const network::Address& a) {
    Key k;
    k.family = static_cast<uint8_t>(a.family());
    k.port = static_cast<uint16_t>(a.port());
    if (a.isV6()) {
      std::memcpy(k.ip, &reinterpret_cast<const sockaddr_in6*>(a.sockAddr())->sin6_addr, 16);
    } else {
      std::memcpy(k.ip, &reinterpret_cast<const sockaddr_in*>(a.sockAddr())->sin_addr, 4);
    }
    return k;
  }
  std::unordered_map<Key, T, KeyHash> map_;
};

// Where the xDS client connects (from the bootstrap's dynamic_resources.ads_config).
struct AdsSettings {
  std::string target;  // "host:port" or "unix:/path"
  bool delta = false;
  // TLS on the control-plane channel (google_grpc ssl_credentials, or the envoy_grpc cluster's
  // UpstreamTlsContext): PEM sources, read again at every connection attempt so a rotation is taken.
  struct PemSource {
    std::string filename;  // empty: inline
    std::string inline_data;
  };
  struct Tls {
    PemSource root_certs, private_key, cert_chain;
    std::string sni;  // the name the server's certificate is checked against (else the target's host)
  };
  std::optional<Tls> tls;
  uint64_t initial_fetch_timeout_ms = 15000;
  // dynamic_resources.cds_config is set: every cluster of the control plane is subscribed (wildcard).
  // Unset (as in Envoy): no CDS subscription until on-demand discovery (envoy.filters.http.on_demand)
  // asks for clusters by name, so the process holds only the clusters its traffic has used.
  bool cds_wildcard = true;
};

// Envoy's stats_config.stats_matcher, for the admin's output: every stat (no matcher), none
// (reject_all), only those an inclusion pattern matches, or all but those an exclusion pattern matches.
struct StatsMatcher {
  enum class Mode { RejectAll, Include, Exclude };
  Mode mode = Mode::Exclude;
  std::vector<http::StringMatch> patterns;
  bool shows(std::string_view stat_name) const {
    if (mode == Mode::RejectAll) return false;
    bool any = false;
    for (const auto& p : patterns) {
      if (p.match(stat_name)) {
        any = true;
        break;
      }
    }
    return mode == Mode::Include ? any : !any;
  }
};

struct Snapshot {
  std::string node_id;
  std::string node_cluster;
  // Zone-aware routing is on when both are set: the bootstrap's cluster_manager.local_cluster_name (a
  // static cluster) and node.locality (its zone at least).
  std::string local_cluster_name;
  upstream::Locality node_locality;
  std::optional<network::Address> admin_address;
  std::optional<AdsSettings> ads;
  // xDS route tables by name (RDS) and the raw dynamic resources with their versions, for /config_dump.
  std::map<std::string, std::shared_ptr<const void>> route_tables;
  std::map<uint32_t, std::shared_ptr<const void>> route_tables_by_id;  // by routeIds() index
  // The RouteConfiguration message each table was built from (buildSnapshot reuses a table while it
  // and the set of cluster names are unchanged).
  std::map<std::string, std::shared_ptr<const void>> route_table_sources;
  // True when this snapshot has the same cluster names as the one it was built after (what decides
  // whether route tables and listeners, which check names, may be reused).
  bool same_cluster_names = false;
  // True when every cluster name of the snapshot it was built after is still here (some may have been
  // added). Route tables and listeners name clusters by stable index and check names only to refuse
  // unknown ones, so a table or listener that passed that check passes it again while no name goes:
  // they are reused when this holds (a cluster added leaves them alone).
  bool cluster_names_kept = false;
  std::shared_ptr<const struct ConfigSources> sources;
  std::vector<ListenerConstSharedPtr> listeners;
  std::vector<ClusterConstSharedPtr> clusters;
  ClusterMap clusters_by_name;
  // Each cluster's position in `clusters` by its stable index (kNoCluster: none), made once by the
  // builder (indexClusters()) so that a worker taking a new snapshot copies nothing per cluster: it
  // looks clusters up here, in the snapshot it holds (10,000 clusters: 40 KB read, no atomic).
  static constexpr uint32_t kNoCluster = UINT32_MAX;
  std::vector<uint32_t> cluster_pos_by_index;
  // The cluster with stable index `index` in this snapshot; a null pointer when it has none.
  const ClusterConstSharedPtr& clusterByIndex(uint32_t index) const {
    static const ClusterConstSharedPtr kNone;
    if (index >= cluster_pos_by_index.size() || cluster_pos_by_index[index] == kNoCluster) return kNone;
    return clusters[cluster_pos_by_index[index]];
  }
  // Fills cluster_pos_by_index from `clusters`.
  void indexClusters() {
    uint32_t top = 0;
    for (const auto& c : clusters) top = std::max(top, c->index + 1);
    cluster_pos_by_index.assign(top, kNoCluster);
    for (size_t i = 0; i < clusters.size(); ++i) cluster_pos_by_index[clusters[i]->index] = static_cast<uint32_t>(i);
  }
  // The ClusterLoadAssignment names the EDS clusters want (the EDS subscription), and whether any EDS
  // cluster takes its endpoints under another name than its own (then updates are built in full).
  std::shared_ptr<const std::set<std::string>> eds_names;
  bool eds_aliases = false;
  std::shared_ptr<const google::protobuf::Message> bootstrap;  // as loaded, for /config_dump
  std::string loaded_at;  // RFC 3339, for /config_dump's last_updated
  // The bootstrap's stats_config.stats_matcher: which stats the admin's /stats and /stats/prometheus
  // show. Null: all of them.
  std::shared_ptr<const StatsMatcher> stats_matcher;
  // The bootstrap's stats_config.stats_tags / use_all_default_tags, for /stats/prometheus. Null: the
  // built-in tags alone.
  std::shared_ptr<const stats::TagRules> tag_rules;
};
using SnapshotConstSharedPtr = std::shared_ptr<const Snapshot>;

}  // namespace strait::config
