#pragma once

// An HTTP connection manager's `tracing`, translated once at config time, and what a stream does with
// it: read the incoming trace context, decide sampling, give the upstream request this proxy's span as
// the new parent (W3C traceparent, plus B3 in the shape it came in), and record the finished span for
// the exporter (span_exporter.h). Without `tracing` on the HCM none of this runs and the headers pass
// untouched.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

#include "proxy/stats/stats.h"
#include "proxy/tracing/trace_context.h"

namespace envoy::extensions::filters::network::http_connection_manager::v3 {
class HttpConnectionManager_Tracing;
}
namespace strait::config {
struct TranslationContext;
}
namespace strait::http {
struct RequestHeaders;
}
namespace strait::event {
class Dispatcher;
}

namespace strait::tracing {

// http.<stat_prefix>.tracing.* (Envoy's names): why requests were or were not traced.
struct TracingStats {
  stats::Counter random_sampling;
  stats::Counter service_forced;
  stats::Counter client_enabled;
  stats::Counter not_traceable;
};

struct TracingConfig {
  SamplingConfig sampling;
  uint32_t max_path_tag_length = 256;  // the span name (host + path) is cut there
  std::optional<uint32_t> exporter;    // SpanExporter id; none: propagate and decide, send nothing
  TracingStats stats;
};
using TracingConfigConstSharedPtr = std::shared_ptr<const TracingConfig>;

// `path` names the HCM's tracing field in errors. The provider must be envoy.tracers.opentelemetry
// with an http_service whose cluster exists (grpc_service is refused: Strait exports over HTTP only).
absl::StatusOr<TracingConfigConstSharedPtr> translateTracing(
    const envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager_Tracing& proto,
    const std::string& path, const std::string& stat_prefix, config::TranslationContext& ctx);

// A stream's trace: its ids and decision, kept in the stream (no allocation).
struct ActiveTrace {
  uint64_t trace_id_high = 0;
  uint64_t trace_id_low = 0;
  uint64_t span_id = 0;         // ours
  uint64_t parent_span_id = 0;  // the caller's, 0 when we started the trace
  bool sampled = false;
};

// Reads the request's context, decides, and rewrites the trace headers for the upstream (the request
// goes on with them). r1..r4: fresh random numbers (the worker's generator).
ActiveTrace startTrace(const TracingConfig& config, http::RequestHeaders& h, uint64_t r1, uint64_t r2, uint64_t r3,
                       uint64_t r4);

// What the stream knows at its end, for its span.
struct FinishedRequest {
  std::string_view decorator;  // the route's decorator operation; empty: host + path
  std::string_view host;
  std::string_view path;       // the query is cut off
  std::string_view method;
  std::string_view cluster;
  std::string_view request_id;
  uint32_t status = 0;
  uint32_t response_flags = 0;  // common::ResponseFlag bits
  uint8_t protocol = 1;         // 0 HTTP/1.0, 1 HTTP/1.1, 2 HTTP/2
  bool client_kind = false;     // the listener's traffic_direction is OUTBOUND
  uint64_t start_unix_ns = 0;
  uint64_t end_unix_ns = 0;
};
// Records the span of a sampled trace for export (a copy into this thread's buffer).
void finishTrace(const TracingConfig& config, const ActiveTrace& trace, const FinishedRequest& r,
                 event::Dispatcher& dispatcher);

}  // namespace strait::tracing
