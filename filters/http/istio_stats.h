#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "proxy/http/filter.h"

namespace google::protobuf {
class Any;
}
namespace strait::http {
struct HttpFilterContext;
}

namespace strait::filters::http {

// Istio's telemetry HTTP filters (stats in proxy/stats/istio_metrics.h):
//
// Both are off until the pod turns Istio telemetry on (stats::istio::enabled(): node metadata
// STRAIT_ISTIO_METRICS=true); until then they are inert stand-ins counting requests in
// http.<stat_prefix>.inert.<peer_metadata|istio_stats|wasm_...>.requests_total.
//
//   istio.metadata_exchange  type io.istio.http.peer_metadata.Config (directly or in a TypedStruct),
//                            or the Wasm plugin envoy.wasm.metadata_exchange / istio.metadata_exchange.
//     Reads and strips the peer's x-envoy-peer-metadata / x-envoy-peer-metadata-id (base64 of a
//     google.protobuf.Struct of its node metadata, and its node id) and adds this pod's own:
//       downstream_discovery:   from the request (inbound)     downstream_propagation: on the response
//       upstream_discovery:     from the response (outbound)   upstream_propagation:   on the request
//     A config naming none of these (and the Wasm plugin) works by the HCM's direction: a stat_prefix
//     starting with "inbound" is the inbound side (discovers downstream, propagates on the response),
//     anything else the outbound side. The peer learnt goes to StreamInfo::istio_peer.
//
//   istio.stats              type stats.PluginConfig (directly or in a TypedStruct), or the Wasm plugins
//                            stats_inbound / stats_outbound / istio.stats / envoy.wasm.stats.
//     Records istio_requests_total, istio_request_duration_milliseconds, istio_request_bytes and
//     istio_response_bytes for every stream when it ends. reporter: "destination" for root_id
//     stats_inbound or an HCM stat_prefix starting with "inbound", else "source". The PluginConfig's own
//     settings (metric dimensions, tcp_reporting_duration) are accepted and not applied.
void registerIstioTelemetryHttpFilters();

// For inert.cc's Wasm dispatch: the filter for a known Istio Wasm plugin (`plugin` is "stats_inbound",
// "stats_outbound", "stats" or "metadata_exchange"); while telemetry is off it counts requests in
// http.<stat_prefix>.inert.<inert_kind>.requests_total.
absl::StatusOr<strait::http::HttpFilterFactorySharedPtr> createIstioWasmTelemetry(const std::string& plugin,
                                                                                  const std::string& inert_kind,
                                                                                  strait::http::HttpFilterContext& ctx);

}  // namespace strait::filters::http
