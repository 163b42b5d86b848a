#pragma once

#include <map>
#include <string>

#include "proxy/server/local_http.h"

namespace strait::server {

class Server;

// The admin's /config_dump in Envoy's shape: `configs` holds one envoy.admin.v3.*ConfigDump per kind,
// each an Any ("@type"), and every resource inside them (listener, cluster, route_config, secret,
// endpoint_config) is an Any too, so tools that unpack Envoy's dump (istioctl proxy-config --file)
// read it. Query parameters, as Envoy's: `resource=<repeated field>` (only those entries, each an Any
// of its entry type), `mask=<paths>` (a field mask, per dump or per entry with `resource`),
// `name_regex=<RE2>` (resources whose name matches), `include_eds` (adds EndpointsConfigDump).
// Private keys are redacted. Main thread.
LocalHttpResponse configDump(Server& server, const std::map<std::string, std::string>& query);

}  // namespace strait::server
