#pragma once

// Spans leave the process over OTLP/HTTP (protobuf): POST <path> to a host of the collector cluster,
// content-type application/x-protobuf, an ExportTraceServiceRequest per batch.
//
// Why export never slows a request: a worker only copies its finished span (a SpanRecord, fixed size,
// no pointers) into its own per-thread vector. Once per loop iteration (Dispatcher::queueFlush, the
// same hook the access log uses) it hands the vector to the exporter under a mutex: one lock per
// iteration, however many requests it served. The exporter runs on a thread of its own with its own
// event loop: every second, or at once when kBatchSpans are waiting, it encodes the queue (protobuf's
// generated classes: off the workers) and POSTs it. Memory is bounded: beyond kMaxQueuedSpans waiting
// spans a hand-off is dropped and counted, and a collector that is slow or down holds at most
// kMaxInFlight requests per exporter (further batches are dropped and counted too); each request ends
// at the http_uri timeout.
//
// Stats: tracing.opentelemetry.spans_sent (accepted by a 2xx), spans_dropped (queue full, collector
// busy, or a failed export), timer_flushed (exports the timer started), http_reports_sent,
// http_reports_failed.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"


namespace strait::config {
struct Cluster;
}
namespace strait::event {
class Dispatcher;
}
namespace strait::stats {
class Store;
}

namespace strait::tracing {

inline constexpr size_t kBatchSpans = 512;       // spans per export request
inline constexpr size_t kMaxQueuedSpans = 8192;  // waiting for the exporter, all workers together
inline constexpr uint64_t kFlushIntervalMs = 1000;
inline constexpr size_t kMaxInFlight = 2;         // export requests per exporter

// A finished span as a worker records it: fixed size, so recording is a copy into a reserved vector.
// Strings are truncated to their arrays (the name to max_path_tag_length as well).
struct SpanRecord {
  uint64_t trace_id_high = 0;
  uint64_t trace_id_low = 0;
  uint64_t span_id = 0;
  uint64_t parent_span_id = 0;  // 0: a root span
  uint64_t start_unix_ns = 0;
  uint64_t end_unix_ns = 0;
  uint32_t exporter = 0;        // SpanExporter::add() id
  uint32_t status_code = 0;     // HTTP status (0: none sent)
  bool client_kind = false;     // CLIENT (egress HCM) or SERVER (ingress)
  uint8_t protocol = 0;         // 0 HTTP/1.0, 1 HTTP/1.1, 2 HTTP/2
  uint8_t name_len = 0, method_len = 0, cluster_len = 0, request_id_len = 0, flags_len = 0;
  char name[128];
  char method[16];
  char cluster[96];
  char request_id[40];
  char response_flags[32];
};

// Where one HCM's spans go (config time). Exporters with equal settings are shared.
struct ExporterSettings {
  std::string cluster;
  std::string path = "/v1/traces";
  std::string authority;     // Host of the POST (the URI's host, else the cluster's name)
  std::string service_name;  // resource attribute service.name
  uint64_t timeout_ms = 1000;
  std::vector<std::pair<std::string, std::string>> headers;  // request_headers_to_add
  // The collector cluster's version of the latest translation: its hosts (or, for a DNS cluster, the
  // resolver's current set) are read at each send. Not compared between settings.
  std::shared_ptr<const config::Cluster> cluster_version;
};

class SpanExporter {
 public:
  // The process's one instance (never destroyed: workers hand their last spans over as they end).
  static SpanExporter& get();

  // Config time (any thread): the id of an exporter with these settings, made (and the exporter
  // thread started) on first use. A later call with the same settings takes its cluster_version (a
  // config update of the collector cluster).
  absl::StatusOr<uint32_t> add(const ExporterSettings& settings, stats::Store& store);

  // Worker: queue a finished span. `dispatcher` is the worker's (for the end-of-iteration hand-off).
  void record(const SpanRecord& span, event::Dispatcher& dispatcher);

  // Sends what is queued (bounded by the timeout) and stops the thread (process exit, after the
  // workers joined).
  void shutdown();
};

}  // namespace strait::tracing
