#include "filters/http/istio_alpn.h"

#include <google/protobuf/util/json_util.h>

#include <array>
#include <memory>

#include "absl/strings/str_cat.h"
#include "google/protobuf/any.pb.h"
#include "istio/alpn/config.pb.h"
#include "proxy/common/pooled.h"
#include "proxy/config/typed_struct.h"
#include "proxy/http/conn_manager.h"
#include "proxy/network/transport_socket.h"

namespace strait::filters::http {

namespace {

using namespace strait::http;
using AlpnConfig = istio::envoy::config::filter::http::alpn::v2alpha1::FilterConfig;

struct IstioAlpnConfig : HttpFilterFactory {
  void createFilters(FilterChainBuilder& builder) const override;
  // Interned override ids by http::Protocol (Http10, Http11, Http2); 0: that protocol keeps its own.
  std::array<uint32_t, 3> ids{};
};

class IstioAlpnFilter : public StreamDecoderFilter, public common::Pooled<IstioAlpnFilter> {
 public:
  explicit IstioAlpnFilter(const IstioAlpnConfig& config) : config_(config) {}
  void setDecoderFilterCallbacks(DecoderFilterCallbacks& cb) override { cb_ = &cb; }
  FilterHeadersStatus decodeHeaders(RequestHeaders&, bool) override {
    cb_->streamInfo().alpn_override = config_.ids.data();
    return FilterHeadersStatus::Continue;
  }
  FilterDataStatus decodeData(common::Buffer&, bool) override { return FilterDataStatus::Continue; }
  FilterTrailersStatus decodeTrailers(TrailerMap&) override { return FilterTrailersStatus::Continue; }
  void onDestroy() override {}

 private:
  const IstioAlpnConfig& config_;
  DecoderFilterCallbacks* cb_ = nullptr;
};

void IstioAlpnConfig::createFilters(FilterChainBuilder& builder) const {
  builder.addDecoderFilter(std::make_unique<IstioAlpnFilter>(*this));
}

absl::StatusOr<HttpFilterFactorySharedPtr> create(const google::protobuf::Any& any, const std::string& path,
                                                  HttpFilterContext&) {
  AlpnConfig proto;
  if (auto ts = config::readTypedStruct(any)) {
    std::string json;
    if (!google::protobuf::util::MessageToJsonString(ts->value, &json).ok() ||
        !google::protobuf::util::JsonStringToMessage(json, &proto).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".value: not an istio.alpn FilterConfig"));
    }
  } else if (!any.UnpackTo(&proto)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot decode istio.alpn FilterConfig"));
  }
  auto cfg = std::make_shared<IstioAlpnConfig>();
  for (int i = 0; i < proto.alpn_override_size(); ++i) {
    const auto& o = proto.alpn_override(i);
    const std::string p = absl::StrCat(path, ".alpn_override[", i, "]");
    for (const auto& name : o.alpn_override()) {
      if (name.empty() || name.size() > 255) {
        return absl::InvalidArgumentError(absl::StrCat(p, ".alpn_override: names must be 1 to 255 bytes"));
      }
    }
    const std::vector<std::string> names(o.alpn_override().begin(), o.alpn_override().end());
    switch (o.upstream_protocol()) {
      case AlpnConfig::HTTP10: cfg->ids[static_cast<int>(Protocol::Http10)] = ::strait::network::internAlpnOverride(names); break;
      case AlpnConfig::HTTP11: cfg->ids[static_cast<int>(Protocol::Http11)] = ::strait::network::internAlpnOverride(names); break;
      case AlpnConfig::HTTP2: cfg->ids[static_cast<int>(Protocol::Http2)] = ::strait::network::internAlpnOverride(names); break;
      default: return absl::InvalidArgumentError(absl::StrCat(p, ".upstream_protocol: unknown protocol"));
    }
  }
  return HttpFilterFactorySharedPtr(cfg);
}

}  // namespace

void registerIstioAlpn() {
  registerHttpFilter("type.googleapis.com/istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig", create, false);
}

}  // namespace strait::filters::http
