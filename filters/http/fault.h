#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "filters/http/percent.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/matchers.h"
#include "proxy/http/route_table.h"

namespace google::protobuf {
class Any;
}
namespace envoy::extensions::filters::http::fault::v3 {
class HTTPFault;
}

namespace strait::filters::http {

// Registers the fault injection filter (type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault)
// and its per-route form (the same type in a route's or virtual host's typed_per_filter_config under the
// filter's name; it replaces the filter's whole configuration on those routes, as in Envoy).
//
// A request the fault applies to (upstream_cluster, headers, downstream_nodes all satisfied) is first
// delayed (a timer on the worker's loop; the request, body included, is held within the stream's buffer
// limit and then goes on; a client that goes away cancels it), then perhaps aborted: HTTP aborts are a
// local reply with body "fault filter abort", gRPC aborts a trailers-only response with grpc-status.
// max_active_faults bounds the faults in progress across all workers (beyond it: no fault,
// faults_overflow). Stats: http.<hcm stat_prefix>.fault.delays_injected|aborts_injected|faults_overflow,
// gauge ...fault.active_faults. response_rate_limit is refused (not implemented); the *_runtime keys
// are accepted and inert.
void registerHttpFault();

// What registerHttpFault() registers as the filter (for tests).
absl::StatusOr<strait::http::HttpFilterFactorySharedPtr> createHttpFault(const google::protobuf::Any& typed_config,
                                                                         const std::string& path,
                                                                         strait::http::HttpFilterContext& ctx);

// One HTTPFault, translated (the filter's own configuration, or a route's).
struct FaultSettings : strait::http::RouteSpecificFilterConfig {
  using Fraction = ::strait::filters::http::Fraction;  // an unset percentage is 0: never
  enum class DelayKind { None, Fixed, Header };
  enum class AbortKind { None, Http, Grpc, Header };
  struct Abort {
    uint32_t http_status = 0;                // when grpc_status is empty
    std::optional<uint32_t> grpc_status;
  };

  DelayKind delay = DelayKind::None;
  uint64_t fixed_delay_ms = 0;
  Fraction delay_percent;
  AbortKind abort = AbortKind::None;
  uint32_t http_status = 0;
  uint32_t grpc_status = 0;
  Fraction abort_percent;
  std::string upstream_cluster;
  std::vector<strait::http::HeaderMatch> headers;
  std::vector<std::string> downstream_nodes;
  std::optional<uint32_t> max_active_faults;

  // upstream_cluster (the route's cluster; for weighted routes, any of its clusters), every header
  // matcher, and downstream_nodes (x-envoy-downstream-service-node).
  bool applies(const strait::http::RequestHeaders& h, const strait::http::RouteEntry* route) const;
  // The delay for this request, if it is to be delayed (`random` decides the percentage). Header delays
  // read x-envoy-fault-delay-request (ms); x-envoy-fault-delay-request-percentage lowers the percentage.
  std::optional<uint64_t> delayFor(const strait::http::RequestHeaders& h, uint64_t random) const;
  // The abort for this request, if it is to be aborted. Header aborts read x-envoy-fault-abort-request
  // (200..599), else x-envoy-fault-abort-grpc-request; x-envoy-fault-abort-request-percentage lowers the
  // percentage.
  std::optional<Abort> abortFor(const strait::http::RequestHeaders& h, uint64_t random) const;
};

// Translates an HTTPFault; errors name `path` or a field below it.
absl::StatusOr<std::shared_ptr<const FaultSettings>> translateFault(
    const envoy::extensions::filters::http::fault::v3::HTTPFault& proto, const std::string& path);

}  // namespace strait::filters::http
