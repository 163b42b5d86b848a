#include "filters/http/rbac.h"

#include <memory>

#include "envoy/extensions/filters/http/rbac/v3/rbac.pb.h"
#include "filters/common/rbac/engine.h"
#include "filters/common/rbac/engine_config.h"
#include "google/protobuf/any.pb.h"
#include "proxy/common/pooled.h"

namespace strait::filters::http {

namespace {

using namespace strait::http;
namespace http_rbac_v3 = envoy::extensions::filters::http::rbac::v3;

constexpr const char* kTypeUrl = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
constexpr const char* kPerRouteTypeUrl = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

// The engines of one RBAC configuration (the filter's, or a route's override).
struct Engines {
  rbac::EngineConstSharedPtr engine;  // null: nothing enforced
  rbac::EngineConstSharedPtr shadow;  // null: no shadow rules
};

absl::StatusOr<Engines> translate(const http_rbac_v3::RBAC& proto, const std::string& path) {
  // track_per_rule_stats (6) only adds stats.
  if (auto st = rbac::refuseUnknownFields(proto, path, {6}); !st.ok()) return st;
  Engines out;
  const rbac::TranslateOptions options;
  if (proto.has_rules()) {
    auto e = rbac::translateEngine(proto.rules(), path + ".rules", options);
    if (!e.ok()) return e.status();
    out.engine = *std::move(e);
  }
  if (proto.has_shadow_rules()) {
    auto e = rbac::translateEngine(proto.shadow_rules(), path + ".shadow_rules", options);
    if (!e.ok()) return e.status();
    out.shadow = *std::move(e);
  }
  return out;
}

// RBACPerRoute: replaces the filter's engines on the routes that carry it (no rbac, or no rules in
// it: those routes are not checked). The filter's stats are kept.
struct RbacPerRoute : RouteSpecificFilterConfig {
  Engines engines;
};

struct RbacConfig : HttpFilterFactory {
  void createFilters(FilterChainBuilder& builder) const override;

  std::string filter_name;  // typed_per_filter_config key
  Engines engines;
  rbac::FilterStats stats;
};

class RbacFilter : public StreamDecoderFilter, public common::Pooled<RbacFilter> {
 public:
  explicit RbacFilter(const RbacConfig& config) : config_(config) {}

  void setDecoderFilterCallbacks(DecoderFilterCallbacks& callbacks) override { cb_ = &callbacks; }

  FilterHeadersStatus decodeHeaders(RequestHeaders& headers, bool) override {
    const Engines* engines = &config_.engines;
    if (const RouteEntry* route = cb_->route(); route != nullptr && !config_.filter_name.empty()) {
      // Another filter's type under this name (a misconfiguration) leaves the filter's own rules.
      if (const auto* r = dynamic_cast<const RbacPerRoute*>(route->perFilterConfig(config_.filter_name))) {
        engines = &r->engines;
      }
    }
    if (!engines->engine && !engines->shadow) return FilterHeadersStatus::Continue;
    rbac::Context ctx = rbac::connectionContext(cb_->connection());
    ctx.headers = &headers;
    std::string_view details;
    if (rbac::enforce(engines->engine.get(), engines->shadow.get(), ctx, config_.stats, &details, "request")) {
      return FilterHeadersStatus::Continue;
    }
    cb_->sendLocalReply(403, "RBAC: access denied", details);
    return FilterHeadersStatus::StopIteration;
  }
  FilterDataStatus decodeData(common::Buffer&, bool) override { return FilterDataStatus::Continue; }
  FilterTrailersStatus decodeTrailers(TrailerMap&) override { return FilterTrailersStatus::Continue; }
  void onDestroy() override {}

 private:
  const RbacConfig& config_;
  DecoderFilterCallbacks* cb_ = nullptr;
};

void RbacConfig::createFilters(FilterChainBuilder& builder) const {
  builder.addDecoderFilter(std::make_unique<RbacFilter>(*this));
}

}  // namespace

absl::StatusOr<HttpFilterFactorySharedPtr> createHttpRbac(const google::protobuf::Any& any, const std::string& path,
                                                          HttpFilterContext& ctx) {
  http_rbac_v3::RBAC proto;
  if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode RBAC");
  auto engines = translate(proto, path);
  if (!engines.ok()) return engines.status();
  auto cfg = std::make_shared<RbacConfig>();
  cfg->filter_name = ctx.filter_name;
  cfg->engines = *std::move(engines);
  cfg->stats = rbac::createFilterStats(ctx.store, "http." + ctx.stat_prefix + ".", proto.shadow_rules_stat_prefix());
  return HttpFilterFactorySharedPtr(std::move(cfg));
}

absl::StatusOr<RouteSpecificFilterConfigConstSharedPtr> createHttpRbacPerRoute(const google::protobuf::Any& any,
                                                                               const std::string& path) {
  http_rbac_v3::RBACPerRoute proto;
  if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode RBACPerRoute");
  if (auto st = rbac::refuseUnknownFields(proto, path); !st.ok()) return st;
  auto out = std::make_shared<RbacPerRoute>();
  if (proto.has_rbac()) {
    auto engines = translate(proto.rbac(), path + ".rbac");
    if (!engines.ok()) return engines.status();
    out->engines = *std::move(engines);
  }
  return RouteSpecificFilterConfigConstSharedPtr(std::move(out));
}

void registerHttpRbac() {
  registerHttpFilter(kTypeUrl, createHttpRbac, false);
  registerPerFilterConfigParser(kPerRouteTypeUrl, createHttpRbacPerRoute);
}

}  // namespace strait::filters::http
