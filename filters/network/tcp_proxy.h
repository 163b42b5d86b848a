#pragma once

namespace strait::filters::network {

// Registers the tcp_proxy terminal network filter
// (type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy).
void registerTcpProxy();

}  // namespace strait::filters::network
