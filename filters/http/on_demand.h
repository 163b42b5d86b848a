#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/route_table.h"

namespace google::protobuf {
class Any;
}

namespace strait::filters::http {

// Registers on-demand cluster discovery, Envoy's envoy.filters.http.on_demand with `odcds`
// (type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand), and its per-route form
// (...on_demand.v3.PerRouteConfig in a route's or virtual host's typed_per_filter_config under the
// filter's name: its odcds replaces the filter's; one without odcds turns discovery off there).
//
// Why: a sidecar that calls five services should hold five clusters, not the mesh. With a bootstrap
// whose dynamic_resources has ads_config and no cds_config, CDS is not a wildcard subscription: a
// request whose route names a cluster (a route's `cluster`, or any of its weighted_clusters) that the
// worker's config lacks is held here (headers, body within the stream's buffer limit, trailers) while
// the cluster's name is added to the ADS stream's CDS subscription. It goes on to the router as soon as
// the worker takes a config that has every cluster it needs (warmed: an EDS cluster once its endpoints
// came), or when the control plane says one does not exist (a delta removal, a state-of-the-world
// response without it, or the does-not-exist timer), or after odcds.timeout (default 5 s); in the last
// two cases the router answers cluster_not_found (503, flag NC). A cluster the control plane said does
// not exist is not waited for again until a config has it. Names stay subscribed once asked for.
//
// Where discovery cannot happen (no ADS stream, or a bootstrap with cds_config, which subscribes every
// cluster anyway) the filter lets requests through at once. cluster_header routes are not routed by
// Strait yet, so they are not discovered either. Only `source: {ads: {}}` is accepted; a non-empty
// resources_locator (xdstp://) is refused.
//
// Stats (http.<hcm stat_prefix>.on_demand.*): cluster_wait (requests held), cluster_found (went on
// with every cluster there), cluster_missing (the control plane said one does not exist),
// cluster_timeout (gave up waiting), cluster_unavailable (a cluster was missing and this process cannot
// discover clusters on demand).
void registerOnDemand();

// What registerOnDemand() registers as the filter (for tests).
absl::StatusOr<strait::http::HttpFilterFactorySharedPtr> createOnDemand(const google::protobuf::Any& typed_config,
                                                                        const std::string& path,
                                                                        strait::http::HttpFilterContext& ctx);

// OnDemandCds, translated (the filter's or a route's).
struct OdcdsSettings : strait::http::RouteSpecificFilterConfig {
  bool enabled = false;  // false: requests go on without waiting
  uint64_t timeout_ms = 5000;
};

}  // namespace strait::filters::http
