#pragma once

// The configuration Strait runs on when started without -c: the sidecar's two capture listeners
// (outbound 15001, inbound 15006) forwarding every connection to its original destination, HTTP through
// the HTTP stack (detected by its first bytes) and everything else through tcp_proxy, and the admin on
// loopback. Names follow Istio's, so dashboards and tooling recognise them.
namespace strait::config {

inline constexpr const char* kDefaultBootstrapYaml = R"(
node: {id: strait-default, cluster: strait}
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}
# Server-first protocols (the client waits for the server to speak: FTP, SMTP, POP3, IMAP, MySQL) skip
# protocol detection and go straight to tcp_proxy; everything else waits at most 100 ms for its first
# bytes, then is treated as opaque TCP.
static_resources:
  listeners:
  - name: virtualOutbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    traffic_direction: OUTBOUND
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    - name: envoy.filters.listener.http_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}
      filter_disabled:
        or_match:
          rules:
          - destination_port_range: {start: 21, end: 22}
          - destination_port_range: {start: 25, end: 26}
          - destination_port_range: {start: 110, end: 111}
          - destination_port_range: {start: 143, end: 144}
          - destination_port_range: {start: 3306, end: 3307}
    listener_filters_timeout: 0.1s
    continue_on_listener_filters_timeout: true
    filter_chains:
    - name: outbound_0.0.0.0_15001_http
      filter_chain_match: {application_protocols: [http/1.0, http/1.1, h2c]}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_15001
          codec_type: AUTO
          upgrade_configs: [{upgrade_type: websocket}]
          route_config:
            name: outbound_0.0.0.0_15001
            virtual_hosts:
            - name: passthrough
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: PassthroughCluster, timeout: 0s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
    default_filter_chain:
      name: outbound_0.0.0.0_15001_tcp
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
          idle_timeout: 3600s
  - name: virtualInbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15006}}
    traffic_direction: INBOUND
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst}
    - name: envoy.filters.listener.http_inspector
      typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}
      filter_disabled:
        or_match:
          rules:
          - destination_port_range: {start: 21, end: 22}
          - destination_port_range: {start: 25, end: 26}
          - destination_port_range: {start: 110, end: 111}
          - destination_port_range: {start: 143, end: 144}
          - destination_port_range: {start: 3306, end: 3307}
    listener_filters_timeout: 0.1s
    continue_on_listener_filters_timeout: true
    filter_chains:
    - name: inbound_0.0.0.0_15006_http
      filter_chain_match: {application_protocols: [http/1.0, http/1.1, h2c]}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_0.0.0.0_15006
          codec_type: AUTO
          upgrade_configs: [{upgrade_type: websocket}]
          route_config:
            name: inbound_0.0.0.0_15006
            virtual_hosts:
            - name: passthrough
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: InboundPassthroughCluster, timeout: 0s}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
    default_filter_chain:
      name: inbound_0.0.0.0_15006_tcp
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: InboundPassthroughCluster
          cluster: InboundPassthroughCluster
          idle_timeout: 3600s
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
  - name: InboundPassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 10s
)";

}  // namespace strait::config
