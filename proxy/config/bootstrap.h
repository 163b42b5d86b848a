#pragma once

#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "proxy/config/snapshot.h"

namespace google::protobuf {
class Any;
class Duration;
}  // namespace google::protobuf

namespace strait::config {

struct LoadOptions {
  std::string path;         // -c; empty: the embedded default
  std::string config_yaml;  // --config-yaml, merged over the file
  bool allow_unknown_static_fields = false;
  std::string service_node;     // overrides node.id
  std::string service_cluster;  // overrides node.cluster
};

// What a filter factory sees while its config is translated.
struct TranslationContext {
  stats::Store& store;
  const std::map<std::string, ClusterConstSharedPtr>& clusters;
};

using NetworkFilterFactoryFn = std::function<absl::StatusOr<std::shared_ptr<const NetworkFilterFactory>>(
    const google::protobuf::Any& typed_config, const std::string& field_path, TranslationContext& ctx)>;

// Extensions are chosen by the typed_config type URL, never by name.
void registerNetworkFilter(const std::string& type_url, NetworkFilterFactoryFn fn);

// Reads, parses, validates and translates a bootstrap. Errors name the field at fault:
// "static_resources.listeners[0].address.socket_address.port_value: 70000 is not a valid port".
absl::StatusOr<SnapshotConstSharedPtr> loadBootstrap(const LoadOptions& options, stats::Store& store);

// Turns YAML (or JSON, which is YAML) text into JSON text; `overlay` (may be empty) is merged over it.
absl::StatusOr<std::string> yamlToJson(const std::string& yaml, const std::string& overlay, const std::string& source);

// Names a listener's stats after its address (Envoy: listener.<ip>_<port>.*) or its stat_prefix.
// Listeners configured on port 0 get theirs from the server once bound, before any worker runs.
void createListenerStats(Listener& l, const network::Address& bound, stats::Store& store);

uint64_t durationMs(const google::protobuf::Duration& d);

}  // namespace strait::config
