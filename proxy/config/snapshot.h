#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proxy/event/dispatcher.h"
#include "proxy/network/address.h"
#include "proxy/network/transport_socket.h"
#include "proxy/stats/stats.h"
#include "proxy/upstream/cluster_runtime.h"
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
  stats::Histogram upstream_rq_time;
  network::SslStats ssl;  // cluster.<name>.ssl.*
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
  enum class Type { Static, OriginalDst, Eds };
  std::string name;
  uint32_t index = 0;  // stable per name for the life of the process: per-worker state (balancers, pools)
  uint64_t version_id = 0;  // unique per translated version, process-wide (workers rebuild balancers on change)
  bool dynamic = false;     // from CDS
  std::string version_info;  // of the CDS resource
  std::string eds_service_name;  // EDS: the ClusterLoadAssignment it takes its hosts from
  std::string eds_version;
  Type type = Type::Static;
  uint64_t connect_timeout_ms = 5000;
  uint32_t buffer_limit = 1024 * 1024;
  // The hosts of this version, in config order, and what each should be while it is in force (weight,
  // EDS health); ClusterRuntime::activate() applies host_params when the version is accepted.
  std::vector<upstream::HostSharedPtr> hosts;
  std::vector<upstream::ClusterRuntime::HostParams> host_params;
  upstream::LbConfig lb;
  // State that outlives versions (hosts by identity, circuit breakers, health generation, outlier
  // detection, health checks); shared by every version of this cluster name.
  upstream::ClusterRuntimeSharedPtr runtime;
  // Where a gRPC client of ours (SDS on its own stream) connects when a config names this cluster:
  // "unix:/path" for a static cluster with a pipe endpoint, else its first host ("ipv4:1.2.3.4:15012").
  std::string grpc_target;
  // TLS to hosts without one of their own (ORIGINAL_DST destinations): the cluster's transport_socket
  // or its first match-all transport_socket_matches entry; null for plaintext. Listed hosts carry
  // theirs (Host::transport_socket). A host that asks for TLS never gets a plaintext connection: when
  // the factory cannot make a socket the attempt fails.
  network::TransportSocketFactorySharedPtr transport_socket;
  // HTTP to this cluster: the protocol (typed_extension_protocol_options HttpProtocolOptions), HTTP/2
  // settings, idle timeout and circuit-breaker limits (Envoy's defaults).
  enum class HttpProtocol { Http1, Http2, UseDownstream };
  HttpProtocol http_protocol = HttpProtocol::Http1;
  uint32_t http2_max_concurrent_streams = 100;
  uint32_t http2_initial_stream_window = 1024 * 1024;
  uint32_t http2_initial_connection_window = 16 * 1024 * 1024;
  uint64_t idle_timeout_ms = 3600 * 1000;
  upstream::ResourceLimits limits;  // circuit_breakers (DEFAULT priority), enforced by runtime->resources()
  std::optional<upstream::OutlierConfig> outlier;  // outlier_detection, run by runtime->outlierDetector()
  // health_checks[0], run on the main thread by the server (server/active_health_checks.cc).
  std::optional<upstream::HealthCheckConfig> health_check;
  uint64_t health_check_hash = 0;  // of its proto: a checker is rebuilt only when it changes
  // Owns the references behind `stats` and the hosts' stat handles: when the last holder of this Cluster
  // (snapshots, route tables, pools, requests in flight) lets go, stats no newer Cluster of the same name
  // holds leave /stats and their slots are reused.
  std::unique_ptr<stats::StatScope> stat_scope;
  ClusterStats stats;
  std::shared_ptr<const google::protobuf::Message> proto;  // for /config_dump
};
using ClusterConstSharedPtr = std::shared_ptr<const Cluster>;

inline const network::TransportSocketFactorySharedPtr& transportFor(const Cluster& cluster, const Host* host) {
  return host != nullptr ? host->transport_socket : cluster.transport_socket;
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
  std::optional<uint32_t> destination_port;
  std::vector<CidrRange> prefix_ranges;
  std::string transport_protocol;                 // "raw_buffer" / "tls" (tls_inspector)
  std::vector<std::string> application_protocols;  // "http/1.1", "h2c", ... (http_inspector / ALPN)
  std::vector<std::string> server_names;           // SNI (tls_inspector); "*.example.com" wildcards
  // TLS (DownstreamTlsContext) or none (plaintext); set on the connection once the chain is chosen.
  network::TransportSocketFactorySharedPtr transport_socket;
  uint64_t transport_socket_connect_timeout_ms = 10000;  // the handshake must finish in this time
  std::vector<NetworkReadFilterConstSharedPtr> read_filters;  // in order, before the terminal filter
  uint64_t hash = 0;  // of the chain's config: a listener update keeps the connections of unchanged chains
  std::shared_ptr<const NetworkFilterFactory> terminal;
};

struct ListenerStats {
  stats::Counter downstream_cx_total;
  stats::Gauge downstream_cx_active;
  stats::Counter downstream_cx_destroy;
  stats::Counter no_filter_chain_match;
  stats::Counter downstream_pre_cx_timeout;  // listener filters did not decide in time
  stats::Counter http1_found;                // listener.<addr>.http_inspector.*
  stats::Counter http2_found;
  stats::Counter http_not_found;
  stats::Counter tls_found;  // listener.<addr>.tls_inspector.*
  stats::Counter tls_not_found;
  stats::Counter tls_client_hello_too_large;
  stats::Counter downstream_cx_transport_socket_connect_timeout;
  stats::Counter downstream_cx_no_certificate;  // a TLS chain had no certificate yet: refused
  stats::Counter downstream_cx_overload_reject;  // refused by the overload manager
  stats::Counter downstream_cx_overflow;         // refused: the listener's connection limit
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
  network::Address address;
  bool restore_original_dst = false;
  bool inbound = false;  // traffic_direction INBOUND (/drain_listeners?inboundonly)
  Inspector tls_inspector;
  Inspector http_inspector;
  uint64_t listener_filters_timeout_ms = 15000;  // Envoy's default
  bool continue_on_listener_filters_timeout = false;
  uint32_t buffer_limit = 1024 * 1024;
  // Envoy's runtime key envoy.resource_limits.listener.<name>.connection_limit (0: no limit). The count
  // is per listener name across all workers and survives updates of the listener, so connections
  // accepted before an LDS change still count against the new version.
  uint64_t max_connections = 0;
  std::shared_ptr<std::atomic<int64_t>> open_connections;
  std::vector<FilterChain> filter_chains;
  std::optional<FilterChain> default_filter_chain;
  std::string stat_prefix;
  ListenerStats stats;
  bool stats_ready = false;
  std::shared_ptr<const google::protobuf::Message> proto;
  // The chain for a connection to `dst` with the detected transport / application protocol (empty when
  // not detected), or nullptr when none matches.
  // `alpn`: the protocols a TLS client offered (tls_inspector), matched against application_protocols.
  const FilterChain* match(const network::Address& dst, std::string_view transport = {},
                           std::string_view application = {}, std::string_view server_name = {},
                           const std::vector<std::string>* alpn = nullptr) const;
};
using ListenerConstSharedPtr = std::shared_ptr<const Listener>;

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
};

struct Snapshot {
  std::string node_id;
  std::string node_cluster;
  std::optional<network::Address> admin_address;
  std::optional<AdsSettings> ads;
  // xDS route tables by name (RDS) and the raw dynamic resources with their versions, for /config_dump.
  std::map<std::string, std::shared_ptr<const void>> route_tables;
  std::map<uint32_t, std::shared_ptr<const void>> route_tables_by_id;  // by routeIds() index
  std::shared_ptr<const struct ConfigSources> sources;
  std::vector<ListenerConstSharedPtr> listeners;
  std::vector<ClusterConstSharedPtr> clusters;
  std::map<std::string, ClusterConstSharedPtr> clusters_by_name;
  std::shared_ptr<const google::protobuf::Message> bootstrap;  // as loaded, for /config_dump
  std::string loaded_at;  // RFC 3339, for /config_dump's last_updated
};
using SnapshotConstSharedPtr = std::shared_ptr<const Snapshot>;

}  // namespace strait::config
