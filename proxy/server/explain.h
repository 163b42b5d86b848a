#pragma once

// The admin's /explain: which listener, filter chain, virtual host, route, cluster and hosts a
// connection or request like the one described would take, and why each alternative tried before them
// was passed over (the first thing that did not fit). The choices are made by the data plane's own
// functions (Listener::match through matchExplained, normalizePath, sanitizeRequestHeaders,
// RouteTable::route through RouteTable::explain, RouteEntry::redirectLocation) on the snapshot the
// admin reads; this file only finds the inputs the worker would have and puts the verdicts into words.
//
// GET /explain?host=H&path=P[&method=M][&header=name:value ...][&scheme=https]
//              [&listener=NAME | &address=IP:PORT | &port=PORT][&source=IP:PORT]
//              [&transport=tls|raw_buffer][&sni=NAME][&alpn=h2,http/1.1][&application=http/1.1|h2c|http/1.0]
//              [&format=json|text]
// Without host, path, method or header it explains a TCP connection (listener, chain, tcp_proxy
// clusters). `address`/`port` is the connection's destination (for a redirected connection, its original
// destination); `listener` the listener that accepted it. A bad query is a 400 naming the parameter.

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "proxy/config/snapshot.h"
#include "proxy/network/address.h"
#include "proxy/server/local_http.h"

namespace strait::server {

class Server;

// Query parameters in the order given, decoded; repeated names are kept (header=...).
using QueryParams = std::vector<std::pair<std::string, std::string>>;

// `bound`: the address each bound listener's socket has (by listener name; a port 0 resolved); a
// listener not in it is taken at its configured address.
LocalHttpResponse explain(const config::Snapshot& snapshot, const std::map<std::string, network::Address>& bound,
                          const QueryParams& params);

// The same on the server's current snapshot and bound listeners (main thread).
LocalHttpResponse explain(Server& server, const QueryParams& params);

}  // namespace strait::server
