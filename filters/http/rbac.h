#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/route_table.h"

namespace google::protobuf {
class Any;
}

namespace strait::filters::http {

// Registers the RBAC HTTP filter (type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC) and
// its per-route configuration (type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute,
// in a route's or virtual host's typed_per_filter_config under the filter's name). A refused request is
// answered 403 "RBAC: access denied" with the details rbac_access_denied_matched_policy[<policy>|none].
// Stats: http.<hcm stat_prefix>.rbac.allowed|denied and
// http.<hcm stat_prefix>.rbac.<shadow_rules_stat_prefix>shadow_allowed|shadow_denied.
void registerHttpRbac();

// What registerHttpRbac() registers (for tests).
absl::StatusOr<strait::http::HttpFilterFactorySharedPtr> createHttpRbac(const google::protobuf::Any& typed_config,
                                                                        const std::string& path,
                                                                        strait::http::HttpFilterContext& ctx);
absl::StatusOr<strait::http::RouteSpecificFilterConfigConstSharedPtr> createHttpRbacPerRoute(
    const google::protobuf::Any& typed_config, const std::string& path);

}  // namespace strait::filters::http
