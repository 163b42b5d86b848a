#pragma once

namespace strait::filters::http {

// Registers Istio's ALPN override filter (istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig,
// directly or in a TypedStruct). istiod puts it in every outbound HTTP connection manager of a sidecar:
// for each upstream protocol (HTTP10, HTTP11, HTTP2) a list of ALPN names the upstream TLS connection
// offers instead of its cluster's own (istio-peer-exchange, istio). Istio's inbound HTTP filter chains
// are matched on those names (istio-http/1.0, istio-http/1.1, istio-h2), so without the override an
// HTTP request over Istio mTLS finds no inbound chain. A request through the filter sets the override
// in its StreamInfo; the router picks the list by the protocol of the pool it uses (pools are keyed by
// it, so connections with different lists are never shared). Stats: none of its own.
void registerIstioAlpn();

}  // namespace strait::filters::http
