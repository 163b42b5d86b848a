#pragma once

#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

#include "proxy/accesslog/access_log.h"
#include "proxy/config/snapshot.h"
#include "proxy/http/codec.h"
#include "proxy/http/filter.h"
#include "proxy/http/path_util.h"
#include "proxy/http/xfcc.h"
#include "proxy/stats/stats.h"

namespace google::protobuf {
class Any;
}

namespace strait::tracing {
struct TracingConfig;
}

namespace strait::http {

class RouteTable;

struct HcmStats {
  stats::Counter downstream_cx_total;
  stats::Gauge downstream_cx_active;
  stats::Counter downstream_cx_destroy;
  stats::Counter downstream_cx_http1_total;
  stats::Counter downstream_cx_http2_total;
  stats::Counter downstream_cx_protocol_error;
  stats::Counter downstream_cx_idle_timeout;
  stats::Counter downstream_cx_overload_disable_keepalive;  // the overload manager's disable_http_keepalive
  stats::Counter downstream_cx_rx_bytes_total;
  stats::Counter downstream_cx_tx_bytes_total;
  stats::Counter downstream_rq_total;
  stats::Gauge downstream_rq_active;
  stats::Counter downstream_rq_http1_total;
  stats::Counter downstream_rq_http2_total;
  stats::Counter downstream_rq_1xx;
  stats::Counter downstream_rq_2xx;
  stats::Counter downstream_rq_3xx;
  stats::Counter downstream_rq_4xx;
  stats::Counter downstream_rq_5xx;
  stats::Counter downstream_rq_completed;
  stats::Counter downstream_rq_timeout;
  stats::Counter downstream_rq_idle_timeout;
  stats::Counter downstream_rq_header_timeout;
  stats::Counter downstream_rq_rx_reset;
  stats::Counter downstream_rq_tx_reset;
  stats::Counter no_route;
  stats::Histogram downstream_rq_time;
};

// internal_address_config: which trusted client addresses make a request internal.
struct InternalAddressConfig {
  // unix_sockets: unix socket peers are internal. Strait listens on IP sockets only, so it never applies.
  bool unix_sockets = false;
  // Empty: the defaults of Envoy up to 1.32 (the Envoy of our Istio bootstrap): 10/8, 172.16/12,
  // 192.168/16, 127.0.0.1, fd00::/8 and ::1.
  std::vector<config::CidrRange> cidr_ranges;
  bool isInternal(const network::Address& a) const;
};

// The HTTP connection manager's configuration (envoy.filters.network.http_connection_manager),
// translated once at config time.
struct HcmConfig {
  enum class Codec { Auto, Http1, Http2 };
  std::string stat_prefix;
  Codec codec = Codec::Auto;
  std::shared_ptr<const RouteTable> routes;
  std::vector<HttpFilterFactorySharedPtr> filters;  // the router last
  CodecSettings codec_settings;
  PathNormalizeOptions path;
  uint64_t stream_idle_timeout_ms = 300 * 1000;  // Envoy's default: 5 min
  uint64_t request_timeout_ms = 0;               // off unless configured
  uint64_t request_headers_timeout_ms = 10 * 1000;  // Strait's default (Envoy: off); slowloris guard
  uint64_t idle_timeout_ms = 3600 * 1000;        // connection idle: 1 h
  // HTTP/2 drain: time between the first GOAWAY (shutdown notice) and the final one (Envoy: 5 s).
  uint64_t drain_timeout_ms = 5000;
  bool use_remote_address = false;
  bool skip_xff_append = false;
  uint32_t xff_num_trusted_hops = 0;
  InternalAddressConfig internal_addresses;
  bool generate_request_id = true;
  bool preserve_external_request_id = false;  // edge requests get a new x-request-id unless set
  bool always_set_request_id_in_response = false;
  std::string server_name;  // when set, the `server` response header is overwritten
  uint32_t buffer_limit = 1024 * 1024;
  bool hcm_websocket_upgrade = false;
  std::optional<uint32_t> rds_id;  // RDS: the table is looked up per stream (routeIds() index)
  accesslog::AccessLogList access_logs;  // one line per stream at its end
  // forward_client_cert_details / set_current_client_cert_details (x-forwarded-client-cert).
  XfccConfig xfcc;
  // `tracing`: trace context, sampling and spans (proxy/tracing). Null: trace headers pass untouched.
  std::shared_ptr<const tracing::TracingConfig> tracing;
  HcmStats stats;
};
using HcmConfigConstSharedPtr = std::shared_ptr<const HcmConfig>;

// ---- Request header sanitizing (Envoy's rules; the HCM runs it on every request before routing) ----
//
// The trusted client address: with use_remote_address, the connection's peer, or with xff_num_trusted_hops
// N > 0 the Nth address from the right of the client's x-forwarded-for (the peer when there are too few);
// without use_remote_address, the (N+1)th from the right of x-forwarded-for, if any. The request is
// internal when that address is internal (InternalAddressConfig) and: with use_remote_address, the client
// sent no x-forwarded-for; without, x-forwarded-for less the N trusted hops is that one address. An edge
// request is an external one with use_remote_address.
//  - x-forwarded-for: repeated headers become one, joined with "," in order; with use_remote_address the
//    peer's address is appended (unless skip_xff_append).
//  - x-forwarded-proto: the connection's scheme (https on TLS) when absent, and with use_remote_address
//    also when xff_num_trusted_hops is 0 (an untrusted peer's value is overwritten).
//  - x-envoy-internal: a client's never passes; an internal request gets "true".
//  - external requests lose the x-envoy-* headers that steer Envoys (retry-on, retry-grpc-on,
//    max-retries, retriable-status-codes, retriable-header-names, upstream-alt-stat-name,
//    upstream-rq-timeout-ms, upstream-rq-per-try-timeout-ms, upstream-rq-timeout-alt-response,
//    expected-rq-timeout-ms, force-trace, ip-tags, original-url, hedge-on-per-try-timeout) and the
//    route configuration's internal_only_headers; edge requests also lose x-envoy-decorator-operation,
//    -downstream-service-cluster and -downstream-service-node, and get x-envoy-external-address (the
//    trusted client address).
//  - Expect: 100-continue is removed (the HCM answers it).
// Header names are classified by length and first byte; nothing is allocated unless a header is added,
// merged or rewritten.

// Envoy's getLastAddressFromXFF: the address `skip` entries from the right of a comma-separated
// x-forwarded-for value, and whether it is then the only entry left (nothing to its left).
struct XffAddress {
  std::optional<network::Address> address;  // empty: too few entries, or that entry is not an IP address
  bool single = false;
};
XffAddress lastAddressFromXff(std::string_view xff, uint32_t skip);

struct RequestHeaderVerdict {
  bool internal = false;
  bool edge = false;
  bool has_request_id = false;   // a non-empty x-request-id is left
  bool expect_continue = false;  // Expect: 100-continue was there (and is gone)
  // x-envoy-retry-on and the other request controls Envoy honours from internal clients are present and
  // were kept: the router reads them only then (no header scans on the usual request).
  bool envoy_controls = false;
};
// `routes`: the table whose internal_only_headers apply (may be null). `peer`: the connection's remote
// address; `tls`: the connection is TLS.
RequestHeaderVerdict sanitizeRequestHeaders(RequestHeaders& h, const HcmConfig& config, const RouteTable* routes,
                                            const network::Address& peer, bool tls);

// Registers the network filter (type.googleapis.com/envoy.extensions.filters.network.
// http_connection_manager.v3.HttpConnectionManager) with the bootstrap translator.
void registerHttpConnectionManager();

// HTTP filters are chosen by typed_config type URL, like network filters.
struct HttpFilterContext {
  stats::Store& store;
  const config::ClusterMap& clusters;
  const std::string& stat_prefix;  // the HCM's (its stats are http.<stat_prefix>.*)
  // The HttpFilter's `name`: what routes' typed_per_filter_config calls this filter.
  std::string filter_name = {};
};
using HttpFilterFactoryFn = std::function<absl::StatusOr<HttpFilterFactorySharedPtr>(
    const google::protobuf::Any& typed_config, const std::string& field_path, HttpFilterContext& ctx)>;
void registerHttpFilter(const std::string& type_url, HttpFilterFactoryFn fn, bool terminal);

// Creates the HCM session for a connection whose protocol is already known (used by the network
// filter factory; exposed for protocol detection).
void startHttpConnection(const HcmConfigConstSharedPtr& config, config::WorkerContext& worker,
                         std::unique_ptr<network::Connection> conn,
                         const std::shared_ptr<const config::Listener>& listener, uint64_t chain_hash);

}  // namespace strait::http
