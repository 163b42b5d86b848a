#include "filters/network/rbac.h"

#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"
#include "filters/common/rbac/engine.h"
#include "filters/common/rbac/engine_config.h"
#include "google/protobuf/any.pb.h"
#include "proxy/network/connection.h"

namespace strait::filters::network {

namespace {

namespace net_rbac_v3 = envoy::extensions::filters::network::rbac::v3;

constexpr const char* kTypeUrl = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

class NetworkRbacFilter : public config::NetworkReadFilter {
 public:
  bool admit(const strait::network::Connection& conn) const override {
    const rbac::Context ctx = rbac::connectionContext(conn);
    return rbac::enforce(engine.get(), shadow.get(), ctx, stats, nullptr, "connection");
  }

  rbac::EngineConstSharedPtr engine;  // null: nothing enforced
  rbac::EngineConstSharedPtr shadow;  // null: no shadow rules
  rbac::FilterStats stats;
};

}  // namespace

absl::StatusOr<config::NetworkReadFilterConstSharedPtr> createNetworkRbac(const google::protobuf::Any& any,
                                                                          const std::string& path,
                                                                          config::TranslationContext& ctx) {
  net_rbac_v3::RBAC proto;
  if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode RBAC");
  // delay_deny (8) only delays the close of a refused connection; enforce_on_transport_ready (9, newer
  // Envoy) is what Strait always does: it decides once the TLS handshake is done, before any byte moves.
  if (auto st = rbac::refuseUnknownFields(proto, path, {8, 9}); !st.ok()) return st;
  if (proto.stat_prefix().empty()) return absl::InvalidArgumentError(path + ".stat_prefix: is required");
  switch (proto.enforcement_type()) {
    case net_rbac_v3::RBAC::ONE_TIME_ON_FIRST_BYTE:
    case net_rbac_v3::RBAC::CONTINUOUS:  // the same without protocol filters that add metadata
      break;
    default:
      return absl::InvalidArgumentError(
          path + ".enforcement_type: unknown value " + std::to_string(static_cast<int>(proto.enforcement_type())));
  }
  auto filter = std::make_shared<NetworkRbacFilter>();
  rbac::TranslateOptions options;
  options.http = false;
  if (proto.has_rules()) {
    auto e = rbac::translateEngine(proto.rules(), path + ".rules", options);
    if (!e.ok()) return e.status();
    filter->engine = *std::move(e);
  }
  if (proto.has_shadow_rules()) {
    auto e = rbac::translateEngine(proto.shadow_rules(), path + ".shadow_rules", options);
    if (!e.ok()) return e.status();
    filter->shadow = *std::move(e);
  }
  filter->stats = rbac::createFilterStats(ctx.store, proto.stat_prefix(), proto.shadow_rules_stat_prefix());
  return config::NetworkReadFilterConstSharedPtr(std::move(filter));
}

void registerNetworkRbac() { config::registerNetworkReadFilter(kTypeUrl, createNetworkRbac); }

}  // namespace strait::filters::network
