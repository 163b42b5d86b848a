#pragma once

// Every extension the strait binary knows, registered by name (network and HTTP filters, the HTTP
// connection manager, transport sockets): what main() does before loading a config, and what anything
// else that translates configs as the binary does (the fuzz targets) must do too.
#include "certs/tls_config.h"
#include "filters/http/cors.h"
#include "filters/http/fault.h"
#include "filters/http/inert.h"
#include "filters/http/istio_alpn.h"
#include "filters/http/istio_stats.h"
#include "filters/http/on_demand.h"
#include "filters/http/rbac.h"
#include "filters/http/router.h"
#include "filters/network/istio_noop.h"
#include "filters/network/rbac.h"
#include "filters/network/tcp_proxy.h"
#include "proxy/http/conn_manager.h"

namespace strait::server {

inline void registerExtensions() {
  filters::network::registerTcpProxy();
  filters::network::registerNetworkRbac();
  filters::network::registerIstioNoopFilters();
  http::registerHttpConnectionManager();
  filters::http::registerRouter();
  filters::http::registerHttpRbac();
  filters::http::registerHttpFault();
  filters::http::registerHttpCors();
  filters::http::registerOnDemand();
  filters::http::registerInertHttpFilters();
  filters::http::registerIstioAlpn();
  filters::http::registerIstioTelemetryHttpFilters();
  certs::registerTransportSockets();
}

}  // namespace strait::server
