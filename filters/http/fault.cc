#include "filters/http/fault.h"

#include <algorithm>
#include <atomic>
#include <charconv>

#include "absl/strings/str_cat.h"
#include "envoy/extensions/filters/http/fault/v3/fault.pb.h"
#include "google/protobuf/any.pb.h"
#include "proxy/common/log.h"
#include "proxy/common/pooled.h"
#include "proxy/config/bootstrap.h"
#include "proxy/event/dispatcher.h"
#include "proxy/stats/stats.h"

namespace strait::filters::http {

namespace {

using namespace strait::http;
namespace fault_v3 = envoy::extensions::filters::http::fault::v3;

constexpr const char* kTypeUrl = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

constexpr std::string_view kDelayHeader = "x-envoy-fault-delay-request";
constexpr std::string_view kDelayPercentHeader = "x-envoy-fault-delay-request-percentage";
constexpr std::string_view kAbortHeader = "x-envoy-fault-abort-request";
constexpr std::string_view kAbortGrpcHeader = "x-envoy-fault-abort-grpc-request";
constexpr std::string_view kAbortPercentHeader = "x-envoy-fault-abort-request-percentage";
constexpr std::string_view kNodeHeader = "x-envoy-downstream-service-node";

std::optional<uint64_t> headerNumber(const RequestHeaders& h, std::string_view name) {
  const std::string* v = h.get(name);
  if (v == nullptr || v->empty()) return std::nullopt;
  uint64_t out = 0;
  auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || end != v->data() + v->size()) return std::nullopt;
  return out;
}

// The configured fraction, lowered by a percentage header when the fault is header-controlled (the
// header's value is a numerator over the configured denominator).
FaultSettings::Fraction withHeaderPercent(FaultSettings::Fraction f, const RequestHeaders& h, std::string_view name) {
  if (auto n = headerNumber(h, name)) f.numerator = static_cast<uint32_t>(std::min<uint64_t>(*n, f.numerator));
  return f;
}

// The filter's configuration: its own settings, its stats and the count of faults in progress (shared by
// the workers; per-route settings count against the filter's).
struct FaultConfig : HttpFilterFactory {
  void createFilters(FilterChainBuilder& builder) const override;

  std::string filter_name;
  std::shared_ptr<const FaultSettings> settings;
  stats::Counter delays_injected;
  stats::Counter aborts_injected;
  stats::Counter faults_overflow;
  stats::Gauge active_faults;
  mutable std::atomic<uint64_t> active{0};
};

class FaultFilter : public StreamDecoderFilter, public common::Pooled<FaultFilter> {
 public:
  explicit FaultFilter(const FaultConfig& config) : config_(config) {}

  void setDecoderFilterCallbacks(DecoderFilterCallbacks& callbacks) override { cb_ = &callbacks; }

  FilterHeadersStatus decodeHeaders(RequestHeaders& headers, bool) override {
    const FaultSettings* s = config_.settings.get();
    const RouteEntry* route = cb_->route();
    if (route != nullptr && !config_.filter_name.empty()) {
      if (const auto* r = dynamic_cast<const FaultSettings*>(route->perFilterConfig(config_.filter_name))) s = r;
    }
    if (!s->applies(headers, route)) return FilterHeadersStatus::Continue;
    settings_ = s;
    if (auto delay = s->delayFor(headers, cb_->worker().random())) {
      if (!activate()) return FilterHeadersStatus::Continue;
      stats::inc(config_.delays_injected);
      cb_->streamInfo().setFlag(common::kDelayInjected);
      delaying_ = true;
      timer_ = cb_->worker().dispatcher().createTimer([this] { onDelayDone(); });
      timer_->enable(*delay);
      return FilterHeadersStatus::StopIteration;
    }
    if (auto abort = s->abortFor(headers, cb_->worker().random())) {
      if (!activate()) return FilterHeadersStatus::Continue;
      sendAbort(*abort);
      return FilterHeadersStatus::StopIteration;
    }
    return FilterHeadersStatus::Continue;
  }

  FilterDataStatus decodeData(common::Buffer&, bool) override {
    if (delaying_) return FilterDataStatus::StopIterationAndBuffer;  // held (the HCM bounds it)
    if (aborted_) return FilterDataStatus::StopIterationNoBuffer;
    return FilterDataStatus::Continue;
  }
  FilterTrailersStatus decodeTrailers(TrailerMap&) override {
    return delaying_ || aborted_ ? FilterTrailersStatus::StopIteration : FilterTrailersStatus::Continue;
  }

  void onDestroy() override {
    timer_.reset();  // a client gone during the delay cancels it
    delaying_ = false;
    if (active_) {
      active_ = false;
      config_.active.fetch_sub(1, std::memory_order_relaxed);
      stats::dec(config_.active_faults);
    }
  }

 private:
  // Takes a place among the faults in progress; false (and counted) when max_active_faults are running.
  bool activate() {
    if (settings_->max_active_faults) {
      const uint64_t max = *settings_->max_active_faults;
      uint64_t cur = config_.active.load(std::memory_order_relaxed);
      do {
        if (cur >= max) {
          stats::inc(config_.faults_overflow);
          return false;
        }
      } while (!config_.active.compare_exchange_weak(cur, cur + 1, std::memory_order_relaxed));
    } else {
      config_.active.fetch_add(1, std::memory_order_relaxed);
    }
    active_ = true;
    stats::inc(config_.active_faults);
    return true;
  }

  void onDelayDone() {
    delaying_ = false;
    if (auto abort = settings_->abortFor(cb_->requestHeaders(), cb_->worker().random())) {
      sendAbort(*abort);
      return;
    }
    cb_->continueDecoding();
  }

  // May end the stream (and call onDestroy) before it returns.
  void sendAbort(const FaultSettings::Abort& abort) {
    stats::inc(config_.aborts_injected);
    cb_->streamInfo().setFlag(common::kFaultInjected);
    aborted_ = true;
    if (abort.grpc_status) {
      // gRPC: a trailers-only response, whatever the request's content type.
      auto h = std::make_unique<ResponseHeaders>();
      h->status = 200;
      h->add("content-type", "application/grpc");
      h->add("grpc-status", std::to_string(*abort.grpc_status));
      h->add("grpc-message", "fault filter abort");
      cb_->streamInfo().details = "fault_filter_abort";
      cb_->encodeHeaders(std::move(h), true);
      return;
    }
    cb_->sendLocalReply(abort.http_status, "fault filter abort", "fault_filter_abort");
  }

  const FaultConfig& config_;
  DecoderFilterCallbacks* cb_ = nullptr;
  const FaultSettings* settings_ = nullptr;
  event::TimerPtr timer_;
  bool delaying_ = false;
  bool aborted_ = false;
  bool active_ = false;
};

void FaultConfig::createFilters(FilterChainBuilder& builder) const {
  builder.addDecoderFilter(std::make_unique<FaultFilter>(*this));
}

absl::StatusOr<std::shared_ptr<const FaultSettings>> unpackAndTranslate(const google::protobuf::Any& any,
                                                                       const std::string& path) {
  fault_v3::HTTPFault proto;
  if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode HTTPFault");
  return translateFault(proto, path);
}

}  // namespace

bool FaultSettings::applies(const RequestHeaders& h, const RouteEntry* route) const {
  if (!upstream_cluster.empty()) {
    if (route == nullptr) return false;
    bool match = false;
    switch (route->kind) {
      case RouteEntry::Kind::Cluster: match = route->cluster_name == upstream_cluster; break;
      case RouteEntry::Kind::WeightedClusters:
        match = std::any_of(route->weighted.begin(), route->weighted.end(),
                            [&](const WeightedTarget& t) { return t.name == upstream_cluster; });
        break;
      case RouteEntry::Kind::ClusterHeader: {
        const std::string* c = h.get(route->cluster_header);
        match = c != nullptr && *c == upstream_cluster;
        break;
      }
      default: break;
    }
    if (!match) return false;
  }
  for (const auto& m : headers) {
    if (!m.match(h)) return false;
  }
  if (!downstream_nodes.empty()) {
    const std::string* node = h.get(kNodeHeader);
    if (node == nullptr || std::find(downstream_nodes.begin(), downstream_nodes.end(), *node) == downstream_nodes.end()) {
      return false;
    }
  }
  return true;
}

std::optional<uint64_t> FaultSettings::delayFor(const RequestHeaders& h, uint64_t random) const {
  switch (delay) {
    case DelayKind::None: return std::nullopt;
    case DelayKind::Fixed:
      if (!delay_percent.hit(random)) return std::nullopt;
      return fixed_delay_ms;
    case DelayKind::Header: {
      auto ms = headerNumber(h, kDelayHeader);
      if (!ms || *ms == 0) return std::nullopt;
      if (!withHeaderPercent(delay_percent, h, kDelayPercentHeader).hit(random)) return std::nullopt;
      return ms;
    }
  }
  return std::nullopt;
}

std::optional<FaultSettings::Abort> FaultSettings::abortFor(const RequestHeaders& h, uint64_t random) const {
  Abort out;
  switch (abort) {
    case AbortKind::None: return std::nullopt;
    case AbortKind::Http:
      if (!abort_percent.hit(random)) return std::nullopt;
      out.http_status = http_status;
      return out;
    case AbortKind::Grpc:
      if (!abort_percent.hit(random)) return std::nullopt;
      out.grpc_status = grpc_status;
      return out;
    case AbortKind::Header: {
      auto http = headerNumber(h, kAbortHeader);
      if (http && *http >= 200 && *http < 600) {
        out.http_status = static_cast<uint32_t>(*http);
      } else if (auto grpc = headerNumber(h, kAbortGrpcHeader); grpc && *grpc <= UINT32_MAX) {
        out.grpc_status = static_cast<uint32_t>(*grpc);
      } else {
        return std::nullopt;
      }
      if (!withHeaderPercent(abort_percent, h, kAbortPercentHeader).hit(random)) return std::nullopt;
      return out;
    }
  }
  return std::nullopt;
}

absl::StatusOr<std::shared_ptr<const FaultSettings>> translateFault(const fault_v3::HTTPFault& proto,
                                                                     const std::string& path) {
  auto out = std::make_shared<FaultSettings>();
  if (proto.has_response_rate_limit()) {
    return absl::InvalidArgumentError(path + ".response_rate_limit: not implemented");
  }
  if (proto.has_delay()) {
    const auto& d = proto.delay();
    const std::string dp = path + ".delay";
    switch (d.fault_delay_secifier_case()) {
      case envoy::extensions::filters::common::fault::v3::FaultDelay::kFixedDelay:
        if (d.fixed_delay().seconds() < 0 || d.fixed_delay().nanos() < 0 ||
            (d.fixed_delay().seconds() == 0 && d.fixed_delay().nanos() == 0)) {
          return absl::InvalidArgumentError(dp + ".fixed_delay: must be greater than 0");
        }
        out->delay = FaultSettings::DelayKind::Fixed;
        out->fixed_delay_ms = config::durationMs(d.fixed_delay());
        break;
      case envoy::extensions::filters::common::fault::v3::FaultDelay::kHeaderDelay:
        out->delay = FaultSettings::DelayKind::Header;
        break;
      default: return absl::InvalidArgumentError(dp + ": needs fixed_delay or header_delay");
    }
    auto f = translateFraction(d.percentage(), dp + ".percentage");
    if (!f.ok()) return f.status();
    out->delay_percent = *f;
  }
  if (proto.has_abort()) {
    const auto& a = proto.abort();
    const std::string ap = path + ".abort";
    switch (a.error_type_case()) {
      case fault_v3::FaultAbort::kHttpStatus:
        if (a.http_status() < 200 || a.http_status() >= 600) {
          return absl::InvalidArgumentError(absl::StrCat(ap, ".http_status: ", a.http_status(), " is not in 200..599"));
        }
        out->abort = FaultSettings::AbortKind::Http;
        out->http_status = a.http_status();
        break;
      case fault_v3::FaultAbort::kGrpcStatus:
        out->abort = FaultSettings::AbortKind::Grpc;
        out->grpc_status = a.grpc_status();
        break;
      case fault_v3::FaultAbort::kHeaderAbort: out->abort = FaultSettings::AbortKind::Header; break;
      default: return absl::InvalidArgumentError(ap + ": needs http_status, grpc_status or header_abort");
    }
    auto f = translateFraction(a.percentage(), ap + ".percentage");
    if (!f.ok()) return f.status();
    out->abort_percent = *f;
  }
  out->upstream_cluster = proto.upstream_cluster();
  for (int i = 0; i < proto.headers_size(); ++i) {
    HeaderMatch m;
    if (auto st = buildHeaderMatch(proto.headers(i), absl::StrCat(path, ".headers[", i, "]"), m); !st.ok()) return st;
    out->headers.push_back(std::move(m));
  }
  out->downstream_nodes.assign(proto.downstream_nodes().begin(), proto.downstream_nodes().end());
  if (proto.has_max_active_faults()) out->max_active_faults = proto.max_active_faults().value();
  return std::shared_ptr<const FaultSettings>(std::move(out));
}

absl::StatusOr<HttpFilterFactorySharedPtr> createHttpFault(const google::protobuf::Any& any, const std::string& path,
                                                           HttpFilterContext& ctx) {
  auto settings = unpackAndTranslate(any, path);
  if (!settings.ok()) return settings.status();
  auto cfg = std::make_shared<FaultConfig>();
  cfg->filter_name = ctx.filter_name;
  cfg->settings = *std::move(settings);
  const std::string p = "http." + ctx.stat_prefix + ".fault.";
  cfg->delays_injected = ctx.store.counter(p + "delays_injected");
  cfg->aborts_injected = ctx.store.counter(p + "aborts_injected");
  cfg->faults_overflow = ctx.store.counter(p + "faults_overflow");
  cfg->active_faults = ctx.store.gauge(p + "active_faults");
  return HttpFilterFactorySharedPtr(std::move(cfg));
}

void registerHttpFault() {
  registerHttpFilter(kTypeUrl, createHttpFault, false);
  registerPerFilterConfigParser(kTypeUrl, [](const google::protobuf::Any& any, const std::string& path)
                                              -> absl::StatusOr<RouteSpecificFilterConfigConstSharedPtr> {
    auto s = unpackAndTranslate(any, path);
    if (!s.ok()) return s.status();
    return RouteSpecificFilterConfigConstSharedPtr(*std::move(s));
  });
}

}  // namespace strait::filters::http
