#pragma once

// What the config translation files share, and nothing outside proxy/config uses: the bootstrap and
// snapshot builder (snapshot_builder.cc) calls into cluster and listener translation
// (cluster_translation.cc, listener_translation.cc); all of them report errors the same way.

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/core/v3/address.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "proxy/config/bootstrap.h"

namespace strait::config {

// "<path>: <what>" as InvalidArgument: every translation error names the field at fault.
absl::Status fieldError(const std::string& path, const std::string& what);

absl::StatusOr<network::Address> translateAddress(const envoy::config::core::v3::Address& a, const std::string& path);

// A transport_socket (filter chain: server side; cluster: client side) as a factory; null = plaintext.
absl::StatusOr<network::TransportSocketFactorySharedPtr> translateTransportSocket(
    const envoy::config::core::v3::TransportSocket& ts, const std::string& path, bool server);

// The extension registries (filled in at start-up by the filters' registration, read while translating).
std::map<std::string, NetworkFilterFactoryFn>& networkFilterRegistry();
std::map<std::string, NetworkReadFilterFactoryFn>& networkReadFilterRegistry();

// One cluster. `endpoints`: the EDS resources held (an EDS cluster without its own is `*warming`).
// `allow_pipe`: a bootstrap cluster may name a unix socket; `pipe_target` then gets its path.
// `held`: the CDS resource `c` was decoded from; the Cluster shares what it holds (the message, or
// its bytes) as its source. Without it, the Cluster keeps a copy of `c`.
absl::StatusOr<ClusterConstSharedPtr> translateCluster(const envoy::config::cluster::v3::Cluster& c,
                                                     const std::string& path, uint32_t index, stats::Store& store,
                                                     const ResourceMap* endpoints,
                                                     bool allow_pipe, std::string* pipe_target, bool* warming,
                                                     const DynamicResource* held = nullptr);

// One listener. Unavailable: it waits for a RouteConfiguration (warming), not an error.
absl::StatusOr<ListenerConstSharedPtr> translateListener(const envoy::config::listener::v3::Listener& l,
                                                       const std::string& path, TranslationContext& ctx);

// The current UTC time as RFC 3339 with milliseconds.
std::string formatNowRfc3339();

}  // namespace strait::config
