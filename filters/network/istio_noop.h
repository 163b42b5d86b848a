#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "proxy/config/bootstrap.h"

namespace google::protobuf {
class Any;
}

namespace strait::filters::network {

// Istio's own network filters, which istiod puts in front of tcp_proxy and the HTTP connection manager
// of its sidecar listeners, as faithful no-ops: each is a read filter that admits every connection and
// never touches a byte (Strait's TLS, RBAC and stats do the jobs Istio builds them for). The exception is
// istio.metadata_exchange with a `protocol` (directly typed or in a TypedStruct; istiod always sets
// "istio-peer-exchange"): that is Istio's TCP metadata exchange, run on tcp_proxy connections whose TLS
// negotiated the protocol (metadata_exchange.h); the connections it leaves alone still count in
// istio_inert.metadata_exchange.cx_total. Without a protocol, and in its Wasm forms, it stays inert.
// registerIstioNoopFilters() also registers the exchange as a cluster's upstream filter.
// Recognised, by typed_config type URL:
//   type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange   (istio.metadata_exchange)
//   type.googleapis.com/stats.PluginConfig                                    (istio.stats)
//   type.googleapis.com/io.istio.network.authn.Config                         (istio_authn)
//   type.googleapis.com/udpa.type.v1.TypedStruct or xds.type.v3.TypedStruct   whose type_url is one of
//       these, or the Wasm type below (its Struct value's config.root_id / config.name then decides)
//   type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm        whose config.root_id or
//       config.name names Istio's stats plugin ("stats_inbound", "stats_outbound", "istio.stats") or its
//       metadata exchange ("envoy.wasm.metadata_exchange", "istio.metadata_exchange"), or, naming neither,
//       whose null-VM code (vm_config.code.local.inline_string) is envoy.wasm.stats or
//       envoy.wasm.metadata_exchange; no Wasm is run
// Anything else (another TypedStruct type, another Wasm plugin) is refused, naming it.
// Stats: istio_inert.<kind>.cx_total, kind metadata_exchange | stats | authn: connections that passed
// through such a filter (all listeners together). Each kind logs once, when first configured, that it
// is inert.
void registerIstioNoopFilters();

// The filter for one typed_config (what registerIstioNoopFilters() registers; for tests).
absl::StatusOr<config::NetworkReadFilterConstSharedPtr> createIstioNoopFilter(const google::protobuf::Any& typed_config,
                                                                              const std::string& path,
                                                                              config::TranslationContext& ctx);

}  // namespace strait::filters::network
