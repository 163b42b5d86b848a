#include "filters/http/on_demand.h"

#include "absl/strings/str_cat.h"
#include "envoy/extensions/filters/http/on_demand/v3/on_demand.pb.h"
#include "google/protobuf/any.pb.h"
#include "proxy/common/pooled.h"
#include "proxy/config/bootstrap.h"
#include "proxy/event/dispatcher.h"
#include "proxy/stats/stats.h"

namespace strait::filters::http {

namespace {

using namespace strait::http;
namespace od_v3 = envoy::extensions::filters::http::on_demand::v3;

constexpr const char* kTypeUrl = "type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.OnDemand";
constexpr const char* kPerRouteTypeUrl = "type.googleapis.com/envoy.extensions.filters.http.on_demand.v3.PerRouteConfig";

absl::StatusOr<std::shared_ptr<const OdcdsSettings>> translateOdcds(bool present, const od_v3::OnDemandCds& p,
                                                                    const std::string& path) {
  auto out = std::make_shared<OdcdsSettings>();
  if (!present) return std::shared_ptr<const OdcdsSettings>(std::move(out));
  if (!p.has_source()) return absl::InvalidArgumentError(path + ".source: is required");
  if (!p.source().has_ads()) {
    return absl::InvalidArgumentError(path + ".source: only ads: {} is supported (clusters come over the ADS stream)");
  }
  if (!p.resources_locator().empty()) {
    return absl::InvalidArgumentError(path + ".resources_locator: xdstp:// collection locators are not supported");
  }
  if (p.has_timeout()) {
    if (p.timeout().seconds() < 0 || p.timeout().nanos() < 0) {
      return absl::InvalidArgumentError(path + ".timeout: must not be negative");
    }
    out->timeout_ms = config::durationMs(p.timeout());
    if (out->timeout_ms == 0) return absl::InvalidArgumentError(path + ".timeout: must be at least 1 ms");
  }
  out->enabled = true;
  return std::shared_ptr<const OdcdsSettings>(std::move(out));
}

struct OnDemandConfig : HttpFilterFactory {
  void createFilters(FilterChainBuilder& builder) const override;

  std::string filter_name;
  std::shared_ptr<const OdcdsSettings> settings;
  stats::Counter cluster_wait;
  stats::Counter cluster_found;
  stats::Counter cluster_missing;
  stats::Counter cluster_timeout;
  stats::Counter cluster_unavailable;
};

class OnDemandFilter : public StreamDecoderFilter, public config::ClusterWaiter, public common::Pooled<OnDemandFilter> {
 public:
  explicit OnDemandFilter(const OnDemandConfig& config) : config_(config) {}

  void setDecoderFilterCallbacks(DecoderFilterCallbacks& callbacks) override { cb_ = &callbacks; }

  FilterHeadersStatus decodeHeaders(RequestHeaders&, bool) override {
    const RouteEntry* route = cb_->route();
    if (route == nullptr) return FilterHeadersStatus::Continue;
    if (route->kind != RouteEntry::Kind::Cluster && route->kind != RouteEntry::Kind::WeightedClusters) {
      return FilterHeadersStatus::Continue;
    }
    const OdcdsSettings* s = config_.settings.get();
    if (!config_.filter_name.empty()) {
      if (const auto* r = dynamic_cast<const OdcdsSettings*>(route->perFilterConfig(config_.filter_name))) s = r;
    }
    if (!s->enabled) return FilterHeadersStatus::Continue;
    // The common case, every cluster there: one vector load per cluster, nothing else.
    switch (lookAgain(*route, /*request=*/true)) {
      case State::Ready: return FilterHeadersStatus::Continue;
      case State::Missing: return FilterHeadersStatus::Continue;  // the router answers cluster_not_found
      case State::Unavailable:
        stats::inc(config_.cluster_unavailable);
        return FilterHeadersStatus::Continue;
      case State::Waiting: break;
    }
    stats::inc(config_.cluster_wait);
    route_ = route;
    waiting_ = true;
    cb_->worker().addClusterWaiter(*this);
    timer_ = cb_->worker().dispatcher().createTimer([this] {
      stats::inc(config_.cluster_timeout);
      resume();
    });
    timer_->enable(s->timeout_ms);
    return FilterHeadersStatus::StopIteration;
  }

  FilterDataStatus decodeData(common::Buffer&, bool) override {
    return waiting_ ? FilterDataStatus::StopIterationAndBuffer : FilterDataStatus::Continue;  // the HCM bounds it
  }
  FilterTrailersStatus decodeTrailers(TrailerMap&) override {
    return waiting_ ? FilterTrailersStatus::StopIteration : FilterTrailersStatus::Continue;
  }

  void onDestroy() override {
    if (waiting_) cb_->worker().cancelClusterWait(*this);  // the client went away while waiting
    waiting_ = false;
    timer_.reset();
  }

  // ClusterWaiter: the worker took a config, or learnt a cluster does not exist.
  void onClusterDiscoveryUpdate() override {
    if (!waiting_) return;
    switch (lookAgain(*route_, /*request=*/false)) {
      case State::Waiting: return;
      case State::Ready: stats::inc(config_.cluster_found); break;
      case State::Missing:
      case State::Unavailable: stats::inc(config_.cluster_missing); break;
    }
    resume();
  }

 private:
  enum class State { Ready, Waiting, Missing, Unavailable };

  // Where the route's clusters stand; with `request`, asks for each one that is neither there nor known
  // to be missing.
  State lookAgain(const RouteEntry& route, bool request) {
    config::WorkerContext& w = cb_->worker();
    State out = State::Ready;
    auto one = [&](uint32_t index, const std::string& name) {
      if (index == UINT32_MAX || w.cluster(index)) return;
      if (w.clusterKnownMissing(index)) {
        out = State::Missing;
        return;
      }
      if (request && !w.requestCluster(index, name)) {
        out = State::Unavailable;
        return;
      }
      if (out == State::Ready) out = State::Waiting;
    };
    if (route.kind == RouteEntry::Kind::Cluster) {
      one(route.cluster_index, route.cluster_name);
    } else {
      for (const auto& t : route.weighted) one(t.cluster_index, t.name);
    }
    return out;
  }

  // May end the stream (the router's local reply) before it returns.
  void resume() {
    waiting_ = false;
    timer_.reset();
    cb_->worker().cancelClusterWait(*this);
    cb_->continueDecoding();
  }

  const OnDemandConfig& config_;
  DecoderFilterCallbacks* cb_ = nullptr;
  const RouteEntry* route_ = nullptr;
  event::TimerPtr timer_;
  bool waiting_ = false;
};

void OnDemandConfig::createFilters(FilterChainBuilder& builder) const {
  builder.addDecoderFilter(std::make_unique<OnDemandFilter>(*this));
}

}  // namespace

absl::StatusOr<HttpFilterFactorySharedPtr> createOnDemand(const google::protobuf::Any& any, const std::string& path,
                                                          HttpFilterContext& ctx) {
  od_v3::OnDemand proto;
  if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode OnDemand");
  auto settings = translateOdcds(proto.has_odcds(), proto.odcds(), path + ".odcds");
  if (!settings.ok()) return settings.status();
  auto cfg = std::make_shared<OnDemandConfig>();
  cfg->filter_name = ctx.filter_name;
  cfg->settings = *std::move(settings);
  const std::string p = "http." + ctx.stat_prefix + ".on_demand.";
  cfg->cluster_wait = ctx.store.counter(p + "cluster_wait");
  cfg->cluster_found = ctx.store.counter(p + "cluster_found");
  cfg->cluster_missing = ctx.store.counter(p + "cluster_missing");
  cfg->cluster_timeout = ctx.store.counter(p + "cluster_timeout");
  cfg->cluster_unavailable = ctx.store.counter(p + "cluster_unavailable");
  return HttpFilterFactorySharedPtr(std::move(cfg));
}

void registerOnDemand() {
  registerHttpFilter(kTypeUrl, createOnDemand, false);
  registerPerFilterConfigParser(kPerRouteTypeUrl, [](const google::protobuf::Any& any, const std::string& path)
                                                      -> absl::StatusOr<RouteSpecificFilterConfigConstSharedPtr> {
    od_v3::PerRouteConfig proto;
    if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode PerRouteConfig");
    auto s = translateOdcds(proto.has_odcds(), proto.odcds(), path + ".odcds");
    if (!s.ok()) return s.status();
    return RouteSpecificFilterConfigConstSharedPtr(*std::move(s));
  });
}

}  // namespace strait::filters::http
