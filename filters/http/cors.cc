#include "filters/http/cors.h"

#include "absl/strings/str_cat.h"
#include "envoy/config/route/v3/route_components.pb.h"
#include "envoy/extensions/filters/http/cors/v3/cors.pb.h"
#include "google/protobuf/any.pb.h"
#include "proxy/common/pooled.h"
#include "proxy/stats/stats.h"

namespace strait::filters::http {

namespace {

using namespace strait::http;
namespace cors_v3 = envoy::extensions::filters::http::cors::v3;

constexpr const char* kTypeUrl = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors";
constexpr const char* kPolicyTypeUrl = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy";
constexpr const char* kRoutePolicyTypeUrl = "type.googleapis.com/envoy.config.route.v3.CorsPolicy";

// Both proto forms have the same field names (with other numbers): one translation for both.
template <typename Proto>
absl::StatusOr<RouteSpecificFilterConfigConstSharedPtr> translatePolicy(const Proto& p, const std::string& path) {
  auto out = std::make_shared<CorsPolicySettings>();
  for (int i = 0; i < p.allow_origin_string_match_size(); ++i) {
    StringMatch m;
    if (auto st = buildStringMatch(p.allow_origin_string_match(i), absl::StrCat(path, ".allow_origin_string_match[", i, "]"), m);
        !st.ok()) {
      return st;
    }
    out->allow_origins.push_back(std::move(m));
  }
  out->allow_methods = p.allow_methods();
  out->allow_headers = p.allow_headers();
  out->expose_headers = p.expose_headers();
  out->max_age = p.max_age();
  if (p.has_allow_credentials()) out->allow_credentials = p.allow_credentials().value();
  if (p.has_filter_enabled()) {
    auto f = translateFraction(p.filter_enabled().default_value(), path + ".filter_enabled.default_value");
    if (!f.ok()) return f.status();
    out->filter_enabled = *f;
  }
  if (p.has_shadow_enabled()) {
    auto f = translateFraction(p.shadow_enabled().default_value(), path + ".shadow_enabled.default_value");
    if (!f.ok()) return f.status();
    out->shadow_enabled = *f;
  }
  if (p.has_allow_private_network_access()) out->allow_private_network_access = p.allow_private_network_access().value();
  if (p.has_forward_not_matching_preflights()) {
    out->forward_not_matching_preflights = p.forward_not_matching_preflights().value();
  }
  return RouteSpecificFilterConfigConstSharedPtr(std::move(out));
}

template <typename Proto>
absl::StatusOr<RouteSpecificFilterConfigConstSharedPtr> parsePolicy(const google::protobuf::Any& any, const std::string& path) {
  Proto p;
  if (!any.UnpackTo(&p)) return absl::InvalidArgumentError(path + ": cannot decode " + p.GetTypeName());
  return translatePolicy(p, path);
}

// Field by field, the first policy that sets it.
template <typename T, typename F>
const T* first(const std::vector<const CorsPolicySettings*>& policies, F get) {
  for (const auto* p : policies) {
    if (const T* v = get(*p)) return v;
  }
  return nullptr;
}

const std::string* firstString(const std::vector<const CorsPolicySettings*>& policies,
                               std::string CorsPolicySettings::*field) {
  return first<std::string>(policies, [&](const CorsPolicySettings& p) { return (p.*field).empty() ? nullptr : &(p.*field); });
}

template <typename T>
const T* firstOptional(const std::vector<const CorsPolicySettings*>& policies, std::optional<T> CorsPolicySettings::*field) {
  return first<T>(policies, [&](const CorsPolicySettings& p) { return (p.*field) ? &*(p.*field) : nullptr; });
}

struct CorsStats {
  stats::Counter origin_valid;
  stats::Counter origin_invalid;
};

struct CorsConfig : HttpFilterFactory {
  void createFilters(FilterChainBuilder& builder) const override;
  std::string filter_name;
  CorsStats stats;
};

// One object sees both directions; the HCM owns its two halves separately, so the encoder half is a
// forwarder (it is destroyed before the decoder half and never touches it then).
class CorsFilter : public StreamDecoderFilter, public common::Pooled<CorsFilter> {
 public:
  explicit CorsFilter(const CorsConfig& config) : config_(config) {}

  void setDecoderFilterCallbacks(DecoderFilterCallbacks& callbacks) override { cb_ = &callbacks; }

  FilterHeadersStatus decodeHeaders(RequestHeaders& headers, bool) override {
    const RouteEntry* route = cb_->route();
    if (route == nullptr || headers.get("origin") == nullptr) return FilterHeadersStatus::Continue;
    std::vector<const CorsPolicySettings*> policies;
    if (!config_.filter_name.empty()) {
      if (const auto* p = dynamic_cast<const CorsPolicySettings*>(route->perFilterConfig(config_.filter_name))) {
        policies.push_back(p);
      }
    }
    if (policies.empty()) {
      for (std::string_view key : {kRouteCorsPolicyKey, kVirtualHostCorsPolicyKey}) {
        if (const auto* p = dynamic_cast<const CorsPolicySettings*>(route->perFilterConfig(key))) policies.push_back(p);
      }
    }
    if (policies.empty()) return FilterHeadersStatus::Continue;
    CorsVerdict v = evaluateCors(policies, headers, cb_->worker().random());
    if (v.counted) stats::inc(v.valid ? config_.stats.origin_valid : config_.stats.origin_invalid);
    switch (v.action) {
      case CorsVerdict::Action::None:
      case CorsVerdict::Action::OriginInvalid: return FilterHeadersStatus::Continue;
      case CorsVerdict::Action::Simple:
        response_headers_ = std::move(v.headers);
        return FilterHeadersStatus::Continue;
      case CorsVerdict::Action::Preflight:
      case CorsVerdict::Action::RejectPreflight: {
        answered_ = true;
        auto h = std::make_unique<ResponseHeaders>();
        h->status = 200;
        for (const auto& [name, value] : v.headers) h->add(name, value);
        h->add("content-length", "0");
        cb_->streamInfo().details = "cors_preflight";
        cb_->encodeHeaders(std::move(h), true);  // may end the stream (and call onDestroy)
        return FilterHeadersStatus::StopIteration;
      }
    }
    return FilterHeadersStatus::Continue;
  }
  FilterDataStatus decodeData(common::Buffer&, bool) override {
    return answered_ ? FilterDataStatus::StopIterationNoBuffer : FilterDataStatus::Continue;
  }
  FilterTrailersStatus decodeTrailers(TrailerMap&) override {
    return answered_ ? FilterTrailersStatus::StopIteration : FilterTrailersStatus::Continue;
  }
  void onDestroy() override {}

  void onResponseHeaders(ResponseHeaders& h) {
    for (const auto& [name, value] : response_headers_) h.set(name, value);
  }

 private:
  const CorsConfig& config_;
  DecoderFilterCallbacks* cb_ = nullptr;
  std::vector<std::pair<std::string, std::string>> response_headers_;
  bool answered_ = false;
};

void CorsConfig::createFilters(FilterChainBuilder& builder) const {
  addWithResponseHeadersHalf(builder, std::make_unique<CorsFilter>(*this));
}

absl::StatusOr<HttpFilterFactorySharedPtr> createHttpCors(const google::protobuf::Any& any, const std::string& path,
                                                          HttpFilterContext& ctx) {
  cors_v3::Cors proto;
  if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode Cors");
  auto cfg = std::make_shared<CorsConfig>();
  cfg->filter_name = ctx.filter_name;
  const std::string p = "http." + ctx.stat_prefix + ".cors.";
  cfg->stats.origin_valid = ctx.store.counter(p + "origin_valid");
  cfg->stats.origin_invalid = ctx.store.counter(p + "origin_invalid");
  return HttpFilterFactorySharedPtr(std::move(cfg));
}

}  // namespace

CorsVerdict evaluateCors(const std::vector<const CorsPolicySettings*>& policies, const RequestHeaders& h,
                         uint64_t random) {
  CorsVerdict v;
  const std::string* origin = h.get("origin");
  if (origin == nullptr || origin->empty() || policies.empty()) return v;
  const Fraction* enabled = firstOptional(policies, &CorsPolicySettings::filter_enabled);
  const Fraction* shadow = firstOptional(policies, &CorsPolicySettings::shadow_enabled);
  const bool enforced = enabled == nullptr || enabled->hit(random);
  if (!enforced && (shadow == nullptr || !shadow->hit(random))) return v;
  v.counted = true;
  const std::vector<StringMatch>* origins = first<std::vector<StringMatch>>(
      policies, [](const CorsPolicySettings& p) { return p.allow_origins.empty() ? nullptr : &p.allow_origins; });
  if (origins != nullptr) {
    for (const auto& m : *origins) {
      if (m.match(*origin)) {
        v.valid = true;
        break;
      }
    }
  }
  if (!enforced) return v;  // shadow: counted only
  const std::string* request_method = h.get("access-control-request-method");
  const bool preflight = h.method == "OPTIONS" && request_method != nullptr && !request_method->empty();
  const bool* credentials = firstOptional(policies, &CorsPolicySettings::allow_credentials);
  const bool allow_credentials = credentials != nullptr && *credentials;
  if (!v.valid) {
    const bool* forward = firstOptional(policies, &CorsPolicySettings::forward_not_matching_preflights);
    v.action = preflight && forward != nullptr && !*forward ? CorsVerdict::Action::RejectPreflight
                                                            : CorsVerdict::Action::OriginInvalid;
    return v;
  }
  v.headers.emplace_back("access-control-allow-origin", *origin);
  if (allow_credentials) v.headers.emplace_back("access-control-allow-credentials", "true");
  if (preflight) {
    v.action = CorsVerdict::Action::Preflight;
    if (const std::string* s = firstString(policies, &CorsPolicySettings::allow_methods)) {
      v.headers.emplace_back("access-control-allow-methods", *s);
    }
    if (const std::string* s = firstString(policies, &CorsPolicySettings::allow_headers)) {
      v.headers.emplace_back("access-control-allow-headers", *s);
    }
    if (const std::string* s = firstString(policies, &CorsPolicySettings::max_age)) {
      v.headers.emplace_back("access-control-max-age", *s);
    }
    const bool* pna = firstOptional(policies, &CorsPolicySettings::allow_private_network_access);
    const std::string* asks = h.get("access-control-request-private-network");
    if (pna != nullptr && *pna && asks != nullptr && *asks == "true") {
      v.headers.emplace_back("access-control-allow-private-network", "true");
    }
    return v;
  }
  v.action = CorsVerdict::Action::Simple;
  if (const std::string* s = firstString(policies, &CorsPolicySettings::expose_headers)) {
    v.headers.emplace_back("access-control-expose-headers", *s);
  }
  return v;
}

void registerHttpCors() {
  registerHttpFilter(kTypeUrl, createHttpCors, false);
  registerPerFilterConfigParser(kPolicyTypeUrl, parsePolicy<cors_v3::CorsPolicy>);
  registerPerFilterConfigParser(kRoutePolicyTypeUrl, parsePolicy<envoy::config::route::v3::CorsPolicy>);
}

}  // namespace strait::filters::http
