#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "proxy/config/bootstrap.h"

namespace google::protobuf {
class Any;
}

namespace strait::filters::network {

// Registers the RBAC network filter, a read filter that stands before the terminal one
// (type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC). It decides once per connection,
// when its transport is up (after the TLS handshake, so the peer certificate is known), and a refused
// connection is closed before any byte of it is forwarded. Stats: <stat_prefix>rbac.allowed|denied,
// <stat_prefix>rbac.<shadow_rules_stat_prefix>shadow_allowed|shadow_denied (Envoy's names; no '.' is
// added after stat_prefix, so Istio's "tcp." gives tcp.rbac.allowed).
void registerNetworkRbac();

// The filter for one typed_config (what registerNetworkRbac() registers; for tests).
absl::StatusOr<config::NetworkReadFilterConstSharedPtr> createNetworkRbac(const google::protobuf::Any& typed_config,
                                                                          const std::string& path,
                                                                          config::TranslationContext& ctx);

}  // namespace strait::filters::network
