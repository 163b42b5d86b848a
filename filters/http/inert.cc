#include "filters/http/inert.h"

#include <mutex>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "envoy/extensions/filters/http/wasm/v3/wasm.pb.h"
#include "filters/http/istio_stats.h"
#include "google/protobuf/any.pb.h"
#include "proxy/common/log.h"
#include "proxy/common/pooled.h"
#include "proxy/http/conn_manager.h"
#include "proxy/stats/stats.h"

namespace strait::filters::http {

namespace {

using namespace strait::http;

struct InertConfig : HttpFilterFactory {
  void createFilters(FilterChainBuilder& builder) const override;
  stats::Counter requests;
};

class InertFilter : public StreamDecoderFilter, public common::Pooled<InertFilter> {
 public:
  explicit InertFilter(const InertConfig& config) : config_(config) {}
  void setDecoderFilterCallbacks(DecoderFilterCallbacks&) override {}
  FilterHeadersStatus decodeHeaders(RequestHeaders&, bool) override {
    stats::inc(config_.requests);
    return FilterHeadersStatus::Continue;
  }
  FilterDataStatus decodeData(common::Buffer&, bool) override { return FilterDataStatus::Continue; }
  FilterTrailersStatus decodeTrailers(TrailerMap&) override { return FilterTrailersStatus::Continue; }
  void onDestroy() override {}

 private:
  const InertConfig& config_;
};

void InertConfig::createFilters(FilterChainBuilder& builder) const {
  builder.addDecoderFilter(std::make_unique<InertFilter>(*this));
}

// Configs are translated again on every xDS update: say it once per kind for the process's life.
void logInertOnce(const std::string& kind, const std::string& what) {
  static std::mutex mu;
  static auto* said = new std::set<std::string>;
  std::lock_guard<std::mutex> lock(mu);
  if (!said->insert(kind).second) return;
  LOG_INFO("HTTP filter %s is inert in Strait: requests pass through untouched (counted in "
           "http.<stat_prefix>.inert.%s.requests_total)",
           what.c_str(), kind.c_str());
}

HttpFilterFactorySharedPtr makeInert(const std::string& kind, const std::string& what, HttpFilterContext& ctx) {
  logInertOnce(kind, what);
  auto cfg = std::make_shared<InertConfig>();
  cfg->requests = ctx.store.counter(absl::StrCat("http.", ctx.stat_prefix, ".inert.", kind, ".requests_total"));
  return cfg;
}

void registerInert(const std::string& type_name, const std::string& kind) {
  registerHttpFilter(
      "type.googleapis.com/" + type_name,
      [type_name, kind](const google::protobuf::Any&, const std::string&,
                        HttpFilterContext& ctx) -> absl::StatusOr<HttpFilterFactorySharedPtr> {
        return makeInert(kind, type_name, ctx);
      },
      false);
}

// Istio's Wasm plugins that Strait stands in for, by root_id or name.
constexpr const char* kKnownWasmPlugins[] = {"stats_inbound", "stats_outbound", "istio.stats", "istio.metadata_exchange"};

absl::StatusOr<HttpFilterFactorySharedPtr> createWasm(const google::protobuf::Any& any, const std::string& path,
                                                      HttpFilterContext& ctx) {
  envoy::extensions::filters::http::wasm::v3::Wasm proto;
  if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode Wasm");
  const auto& plugin = proto.config();
  for (const std::string* id : {&plugin.root_id(), &plugin.name()}) {
    for (const char* known : kKnownWasmPlugins) {
      if (*id != known) continue;
      std::string kind = "wasm_" + *id;
      for (char& c : kind) {
        if (c == '.') c = '_';
      }
      // Istio's telemetry (istio_stats.h): inert while the pod has not turned it on.
      return createIstioWasmTelemetry(*id == "istio.metadata_exchange" ? "metadata_exchange"
                                      : *id == "istio.stats"           ? "stats"
                                                                       : *id,
                                      kind, ctx);
    }
  }
  // Istio's HTTP metadata exchange (and older stats) plugins name neither root_id nor name: the null VM's
  // built-in plugin is then known by its code.
  if (plugin.root_id().empty() && plugin.name().empty() && plugin.has_vm_config() &&
      plugin.vm_config().runtime() == "envoy.wasm.runtime.null") {
    const std::string& code = plugin.vm_config().code().local().inline_string();
    if (code == "envoy.wasm.metadata_exchange") {
      return createIstioWasmTelemetry("metadata_exchange", "wasm_istio_metadata_exchange", ctx);
    }
    if (code == "envoy.wasm.stats") return createIstioWasmTelemetry("stats", "wasm_istio_stats", ctx);
  }
  return absl::UnimplementedError(absl::StrCat(path, ".config: unsupported Wasm plugin (root_id '", plugin.root_id(),
                                                 "', name '", plugin.name(), "'): Strait runs no Wasm"));
}

}  // namespace

void registerInertHttpFilters() {
  registerInert("envoy.extensions.filters.http.grpc_stats.v3.FilterConfig", "grpc_stats");
  registerHttpFilter("type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", createWasm, false);
}

}  // namespace strait::filters::http
