#include "proxy/tracing/tracer.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <optional>

#include "absl/strings/str_cat.h"
#include "envoy/config/trace/v3/opentelemetry.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "proxy/common/log.h"
#include "proxy/common/response_flags.h"
#include "proxy/config/bootstrap.h"
#include "proxy/config/translate_internal.h"
#include "proxy/http/header_map.h"
#include "proxy/tracing/span_exporter.h"

namespace strait::tracing {

namespace {

constexpr std::string_view kOtelType = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig";

absl::StatusOr<uint32_t> percentToBasisPoints(const envoy::type::v3::Percent& p, const std::string& path) {
  const double v = p.value();
  if (!(v >= 0.0 && v <= 100.0)) return config::fieldError(path + ".value", absl::StrCat(v, " is not within 0..100"));
  return static_cast<uint32_t>(std::lround(v * 100.0));
}

// http_uri.uri: "http[s]://host[:port]/path". The host is the request's Host; the cluster says where it
// goes and how, as in Envoy: its transport_socket (TLS, mTLS) applies, whatever the scheme says.
absl::Status parseCollectorUri(const std::string& uri, const std::string& path, ExporterSettings& out) {
  std::string_view rest = uri;
  if (rest.substr(0, 7) == "http://") {
    rest.remove_prefix(7);
  } else if (rest.substr(0, 8) == "https://") {
    rest.remove_prefix(8);
  } else if (rest.find("://") != std::string_view::npos) {
    return config::fieldError(path, absl::StrCat("'", uri, "': the scheme must be http or https (OTLP/HTTP)"));
  }
  const size_t slash = rest.find('/');
  if (slash != std::string_view::npos) {
    out.path = std::string(rest.substr(slash));
    rest = rest.substr(0, slash);
  }
  if (!rest.empty()) out.authority = std::string(rest);
  for (char c : uri) {
    if (c == '\r' || c == '\n' || c == ' ') return config::fieldError(path, "must not contain spaces or line breaks");
  }
  return absl::OkStatus();
}

void copyTruncated(char* dst, size_t cap, uint8_t& len, std::string_view a, std::string_view b = {}) {
  const size_t na = std::min(a.size(), cap);
  std::memcpy(dst, a.data(), na);
  const size_t nb = std::min(b.size(), cap - na);
  if (nb > 0) std::memcpy(dst + na, b.data(), nb);
  len = static_cast<uint8_t>(na + nb);
}

// The provider: envoy.tracers.opentelemetry gets an exporter; another tracer none (see below).
absl::StatusOr<std::optional<uint32_t>> translateProvider(const envoy::config::trace::v3::Tracing::Http& provider,
                                                          const std::string& pp, config::TranslationContext& ctx) {
  if (!provider.has_typed_config()) return config::fieldError(pp + ".typed_config", "is required");
  if (provider.typed_config().type_url() != kOtelType) {
    // Istio names Zipkin (or another tracer) on every HCM it sends: refusing it would refuse the
    // mesh's listeners. The context is propagated and sampled as configured; no span is sent.
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true)) {
      LOG_WARN("%s: tracer '%s' is not supported: trace context is propagated, no spans are sent "
               "(Strait exports with envoy.tracers.opentelemetry)",
               pp.c_str(), provider.typed_config().type_url().c_str());
    }
    return std::optional<uint32_t>();
  }
  envoy::config::trace::v3::OpenTelemetryConfig otel;
  if (!provider.typed_config().UnpackTo(&otel)) return config::fieldError(pp + ".typed_config", "cannot decode OpenTelemetryConfig");
  const std::string op = pp + ".typed_config";
  if (otel.has_grpc_service()) {
    return config::fieldError(op + ".grpc_service", "OTLP over gRPC is not supported; use http_service (OTLP/HTTP)");
  }
  if (!otel.has_http_service()) return config::fieldError(op + ".http_service", "is required");
  const auto& uri = otel.http_service().http_uri();
  const std::string up = op + ".http_service.http_uri";
  ExporterSettings es;
  es.cluster = uri.cluster();
  if (es.cluster.empty()) return config::fieldError(up + ".cluster", "is required");
  es.authority = es.cluster;
  if (auto st = parseCollectorUri(uri.uri(), up + ".uri", es); !st.ok()) return st;
  if (uri.has_timeout()) es.timeout_ms = std::max<uint64_t>(1, config::durationMs(uri.timeout()));
  es.service_name = otel.service_name();
  for (int i = 0; i < otel.http_service().request_headers_to_add_size(); ++i) {
    const auto& hv = otel.http_service().request_headers_to_add(i).header();
    const std::string hp = absl::StrCat(op, ".http_service.request_headers_to_add[", i, "].header");
    if (hv.key().empty() || hv.key().find_first_of(":\r\n ") != std::string::npos) {
      return config::fieldError(hp + ".key", "must be a header name");
    }
    if (hv.value().find_first_of("\r\n") != std::string::npos) return config::fieldError(hp + ".value", "must not contain line breaks");
    es.headers.emplace_back(hv.key(), hv.value());
  }
  const auto* cluster = ctx.clusters.get(es.cluster);
  if (cluster == nullptr && !ctx.dynamic) {
    return config::fieldError(up + ".cluster", absl::StrCat("unknown cluster '", es.cluster, "'"));
  }
  if (cluster != nullptr) es.cluster_version = *cluster;
  auto id = SpanExporter::get().add(es, ctx.store);
  if (!id.ok()) return id.status();
  return std::optional<uint32_t>(*id);
}

}  // namespace

absl::StatusOr<TracingConfigConstSharedPtr> translateTracing(
    const envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager_Tracing& proto,
    const std::string& path, const std::string& stat_prefix, config::TranslationContext& ctx) {
  auto cfg = std::make_shared<TracingConfig>();
  struct {
    bool has;
    const envoy::type::v3::Percent& p;
    const char* name;
    uint32_t& out;
  } percents[] = {{proto.has_client_sampling(), proto.client_sampling(), "client_sampling", cfg->sampling.client},
                  {proto.has_random_sampling(), proto.random_sampling(), "random_sampling", cfg->sampling.random},
                  {proto.has_overall_sampling(), proto.overall_sampling(), "overall_sampling", cfg->sampling.overall}};
  for (auto& p : percents) {
    if (!p.has) continue;
    auto v = percentToBasisPoints(p.p, absl::StrCat(path, ".", p.name));
    if (!v.ok()) return v.status();
    p.out = *v;
  }
  if (proto.has_max_path_tag_length()) cfg->max_path_tag_length = proto.max_path_tag_length().value();

  if (proto.has_provider()) {
    auto exporter = translateProvider(proto.provider(), path + ".provider", ctx);
    if (!exporter.ok()) return exporter.status();
    cfg->exporter = *exporter;
  }

  const std::string p = absl::StrCat("http.", stat_prefix, ".tracing.");
  cfg->stats.random_sampling = ctx.store.counter(p + "random_sampling");
  cfg->stats.service_forced = ctx.store.counter(p + "service_forced");
  cfg->stats.client_enabled = ctx.store.counter(p + "client_enabled");
  cfg->stats.not_traceable = ctx.store.counter(p + "not_traceable");
  return TracingConfigConstSharedPtr(std::move(cfg));
}

ActiveTrace startTrace(const TracingConfig& config, http::RequestHeaders& h, uint64_t r1, uint64_t r2, uint64_t r3,
                       uint64_t r4) {
  const TraceHeaders th = scanTraceHeaders(h);
  Sampled sampling_only = Sampled::Deferred;
  const std::optional<SpanContext> in = extract(th, &sampling_only);
  SamplingInput si;
  si.force_trace = th.force_trace;
  si.client_trace_id = th.client_trace_id;
  si.request_id_hash = th.request_id != nullptr ? requestIdHash(*th.request_id) : r4;
  si.overall_random = r4;
  si.incoming = in ? in->sampled : sampling_only;
  const SamplingDecision d = decideSampling(config.sampling, si);
  switch (d.reason) {
    case TraceReason::Forced: stats::inc(config.stats.service_forced); break;
    case TraceReason::Client: stats::inc(config.stats.client_enabled); break;
    case TraceReason::Random: stats::inc(config.stats.random_sampling); break;
    case TraceReason::NotTraceable: stats::inc(config.stats.not_traceable); break;
  }

  ActiveTrace t;
  t.sampled = d.sampled;
  t.span_id = r1 != 0 ? r1 : 1;
  if (in) {
    t.trace_id_high = in->trace_id_high;
    t.trace_id_low = in->trace_id_low;
    t.parent_span_id = in->span_id;
  } else {
    t.trace_id_high = r2;
    t.trace_id_low = r3 != 0 ? r3 : 1;
  }

  // The upstream sees our span as its parent. traceparent always; B3 as it came.
  char buf[kTraceparentLen];
  formatTraceparent(t.trace_id_high, t.trace_id_low, t.span_id, t.sampled, buf);
  h.set("traceparent", std::string_view(buf, kTraceparentLen));
  // B3 headers that came (with or without the W3C header a previous hop added) are rewritten too, so
  // every header the upstream sees names the same span.
  const bool debug = in && in->debug;
  if (th.b3 != nullptr && (!in || in->format != ContextFormat::B3Multi)) {
    // <trace>-<span>-<sampling>[-<parent>]: at most 32 + 1 + 16 + 1 + 1 + 1 + 16.
    char b3[68];
    size_t n = formatHexId(t.trace_id_high, t.trace_id_low, false, b3);
    b3[n++] = '-';
    n += formatHexId(0, t.span_id, false, b3 + n);
    b3[n++] = '-';
    b3[n++] = debug ? 'd' : (t.sampled ? '1' : '0');
    if (t.parent_span_id != 0) {
      b3[n++] = '-';
      n += formatHexId(0, t.parent_span_id, false, b3 + n);
    }
    h.set("b3", std::string_view(b3, n));
  }
  if (th.b3_trace_id != nullptr || th.b3_span_id != nullptr) {
    char id[32];
    h.set("x-b3-traceid", std::string_view(id, formatHexId(t.trace_id_high, t.trace_id_low, false, id)));
    h.set("x-b3-spanid", std::string_view(id, formatHexId(0, t.span_id, false, id)));
    if (t.parent_span_id != 0) {
      h.set("x-b3-parentspanid", std::string_view(id, formatHexId(0, t.parent_span_id, false, id)));
    } else {
      h.remove("x-b3-parentspanid");
    }
    if (!debug) h.set("x-b3-sampled", t.sampled ? "1" : "0");
  }
  return t;
}

void finishTrace(const TracingConfig& config, const ActiveTrace& trace, const FinishedRequest& r,
                 event::Dispatcher& dispatcher) {
  if (!trace.sampled || !config.exporter) return;
  SpanRecord s;
  s.trace_id_high = trace.trace_id_high;
  s.trace_id_low = trace.trace_id_low;
  s.span_id = trace.span_id;
  s.parent_span_id = trace.parent_span_id;
  s.start_unix_ns = r.start_unix_ns;
  s.end_unix_ns = r.end_unix_ns;
  s.exporter = *config.exporter;
  s.status_code = r.status;
  s.client_kind = r.client_kind;
  s.protocol = r.protocol;
  const size_t name_cap = std::min<size_t>(sizeof(s.name), config.max_path_tag_length);
  if (!r.decorator.empty()) {
    copyTruncated(s.name, name_cap, s.name_len, r.decorator);
  } else {
    copyTruncated(s.name, name_cap, s.name_len, r.host, r.path.substr(0, r.path.find('?')));
  }
  copyTruncated(s.method, sizeof(s.method), s.method_len, r.method);
  copyTruncated(s.cluster, sizeof(s.cluster), s.cluster_len, r.cluster);
  copyTruncated(s.request_id, sizeof(s.request_id), s.request_id_len, r.request_id);
  s.flags_len = 0;
  if (r.response_flags != 0) {
    // Rare (failures only): the flags' short names, as the access log prints them.
    std::string flags;
    common::appendResponseFlags(flags, r.response_flags);
    copyTruncated(s.response_flags, sizeof(s.response_flags), s.flags_len, flags);
  }
  SpanExporter::get().record(s, dispatcher);
}

}  // namespace strait::tracing
