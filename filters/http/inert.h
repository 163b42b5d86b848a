#pragma once

namespace strait::filters::http {

// Filters Istio inserts whose work Strait does not do (or does elsewhere). Each is accepted, passes
// every request through untouched, counts the requests it sees in
// http.<hcm stat_prefix>.inert.<kind>.requests_total, and says once per process (log level info) that it
// is inert:
//   kind                       typed_config type
//   grpc_stats                 envoy.extensions.filters.http.grpc_stats.v3.FilterConfig
//   istio_alpn                 istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig
//   istio_stats                stats.PluginConfig (Istio's stats filter, native form)   } istio_stats.h: inert
//   peer_metadata              io.istio.http.peer_metadata.Config                      } until the pod turns
//   wasm_<plugin>  (stats and metadata exchange plugins: istio_stats.h as well)        } telemetry on
//   wasm_<plugin>              envoy.extensions.filters.http.wasm.v3.Wasm whose plugin Strait knows by its
//                              root_id (else its name): stats_inbound, stats_outbound, istio.stats,
//                              istio.metadata_exchange ('.' becomes '_'); a plugin with neither (Istio's
//                              HTTP metadata exchange) by the null VM's code: envoy.wasm.metadata_exchange
//                              (wasm_istio_metadata_exchange), envoy.wasm.stats (wasm_istio_stats). No Wasm
//                              is ever run; another plugin is an unsupported filter (skipped only when
//                              is_optional).
void registerInertHttpFilters();

}  // namespace strait::filters::http
