#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <vector>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "proxy/config/name_map.h"
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
  const ClusterMap& clusters;
  // RDS route tables by name (type-erased http::RouteTable); null without xDS.
  const std::map<std::string, std::shared_ptr<const void>>* route_tables = nullptr;
  // Names of RDS route configurations the translated listeners refer to (filled in as they are seen).
  std::set<std::string>* rds_names = nullptr;
  // An xDS resource (LDS listener) is being translated: a cluster it names may be missing, since CDS can
  // remove a cluster a listener still names (Envoy accepts that). The reference is kept by name and
  // answered at run time (tcp_proxy closes the connection, the router answers cluster_not_found) until a
  // later snapshot has the cluster again. Bootstrap (static) resources keep their strict validation.
  bool dynamic = false;
  // The bootstrap's layered_runtime static layers, flattened ("a.b.c" -> value as text), later layers
  // winning. Null: none.
  const std::map<std::string, std::string>* runtime = nullptr;
};

// Flattens layered_runtime's static layers: nested objects join their keys with '.', as Envoy reads them.
std::map<std::string, std::string> runtimeValues(const google::protobuf::Message& bootstrap);

// An xDS resource as accepted: its proto, version, and when it arrived.
struct DynamicResource {
  // The decoded message, or null for a resource held as bytes (`wire`).
  std::shared_ptr<const google::protobuf::Message> proto;
  // EDS assignments and CDS clusters are held as the bytes they came as (which decoded and were
  // accepted; unknown fields included) and `proto` is null: a decoded ClusterLoadAssignment of 10
  // endpoints takes about 3.5 KiB of heap, its bytes about 0.3 KiB (a plain EDS Cluster: 0.7 KiB and
  // under 0.1), and once translated they are read again only when their cluster is translated again
  // or /config_dump shows them. heldAs<T>() gives the message either way.
  std::shared_ptr<const std::string> wire;
  std::string version;
  // When it last changed (Unix time, ms; /config_dump's last_updated, via formatRfc3339()). A number,
  // not the text: at 10,000 clusters the two resources of each held 64 bytes of timestamp.
  int64_t last_updated_ms = 0;
  // The bytes it arrived as (two hashes and the size): a later update that resends the same bytes keeps
  // this very message, so nothing built from it is built again (see buildSnapshot).
  uint64_t wire_hash = 0;
  uint64_t wire_hash2 = 0;
  size_t wire_size = 0;

  // What a translation built from this resource remembers to know, later, that the resource is still
  // the very one it was built from (messages and bytes are shared while unchanged, never mutated).
  std::shared_ptr<const void> identity() const {
    return proto ? std::shared_ptr<const void>(proto) : std::shared_ptr<const void>(wire);
  }
  const void* identityKey() const { return proto ? static_cast<const void*>(proto.get()) : wire.get(); }
};

// The resource's message as a T (the type it was accepted as): the held message itself, or decoded
// from its bytes. The bytes were encoded here from a message that decoded, so they decode.
template <class T>
std::shared_ptr<const T> heldAs(const DynamicResource& r) {
  if (r.proto) return std::static_pointer_cast<const T>(r.proto);
  auto m = std::make_shared<T>();
  if (r.wire) m->ParseFromString(*r.wire);
  return m;
}

// The accepted resources of one type by name. A NameMap: every update copies the whole ConfigSources,
// and that copy costs what changed since the last fold, not the number of resources held.
using ResourceMap = NameMap<DynamicResource>;

// Everything a Snapshot is built from: the bootstrap and the dynamic resources by type and name.
struct ConfigSources {
  std::shared_ptr<const google::protobuf::Message> bootstrap;  // envoy.config.bootstrap.v3.Bootstrap
  ResourceMap listeners;                                       // LDS
  ResourceMap clusters;                                        // CDS
  ResourceMap routes;                                          // RDS
  ResourceMap endpoints;                                       // EDS, by cluster_name
  ResourceMap secrets;                                         // SDS (over ADS)
};

// Stable cluster indices by name, for the life of the process.
// Config-time only (translation asks; the request path holds the indices). Every name ever seen
// stays (about 45 bytes each in a flat table; a std::map node cost 72): indices are not reused, since
// per-worker pools and balancer slots of a removed cluster may outlive it under its index.
class ClusterIds {
 public:
  uint32_t get(const std::string& name);

 private:
  std::mutex mu_;
  absl::flat_hash_map<std::string, uint32_t> ids_;
};

struct BuildResult {
  SnapshotConstSharedPtr snapshot;
  std::set<std::string> rds_names;  // route configurations the listeners want (RDS subscription)
  // Cluster load assignments the EDS clusters want: the snapshot's set (shared with the previous
  // snapshot's while it is the same, so "did it change" is a pointer comparison first).
  std::shared_ptr<const std::set<std::string>> eds_names;
  std::vector<std::string> warming;  // resources held back, waiting for their dependencies
  // xDS resources that did not translate: each was left out, and the version it replaces (if any) kept.
  // Bootstrap (static) resources are never here: a fault there fails the whole build.
  struct Rejection {
    std::string type;  // "Listener", "Cluster", "RouteConfiguration", "ClusterLoadAssignment"
    std::string name;  // the name it was sent under
    std::string error;
    std::string cluster;  // a ClusterLoadAssignment's: the cluster being translated when it failed
  };
  std::vector<Rejection> rejected;
};

// Builds a snapshot from `sources`. Resources still waiting for a dependency (an EDS cluster without
// its ClusterLoadAssignment, a listener without its RouteConfiguration) keep their version from
// `previous` if it had one, and are left out otherwise; so do xDS resources that fail to translate,
// which are listed in `rejected`. Errors (of the bootstrap) name the resource and field.
// The factory may keep `route_configuration` (shared, not copied) for as long as the table lives.
using RouteTableFactory = std::function<absl::StatusOr<std::shared_ptr<const void>>(
    const std::shared_ptr<const google::protobuf::Message>& route_configuration, const std::string& path,
    const ClusterMap& clusters)>;
void setRouteTableFactory(RouteTableFactory f);
// What an xDS update may have changed, so that buildSnapshot looks at those clusters only: the update
// is of clusters or endpoints (`clusters_only`), and `names` are the CDS clusters set or removed and
// the ClusterLoadAssignments set or removed (a resource resent with the same bytes is not a change).
struct ChangeHint {
  bool clusters_only = false;
  std::set<std::string> names;
};
// Above this many names an update is built in full (a pass over everything costs less than patching).
constexpr size_t kMaxPatchedClusters = 512;
absl::StatusOr<BuildResult> buildSnapshot(std::shared_ptr<const ConfigSources> sources, const Snapshot* previous,
                                          stats::Store& store, ClusterIds& ids, const ChangeHint* hint = nullptr);
// The process's cluster indices and RDS route table indices (main and xDS threads, never concurrently).
ClusterIds& clusterIds();
ClusterIds& routeIds();

using NetworkFilterFactoryFn = std::function<absl::StatusOr<std::shared_ptr<const NetworkFilterFactory>>(
    const google::protobuf::Any& typed_config, const std::string& field_path, TranslationContext& ctx)>;

// Extensions are chosen by the typed_config type URL, never by name.
void registerNetworkFilter(const std::string& type_url, NetworkFilterFactoryFn fn);

// Transport sockets (TLS) by typed_config type URL. `server`: a filter chain's (DownstreamTlsContext);
// otherwise a cluster's (UpstreamTlsContext). A null factory means plaintext (raw_buffer).
using TransportSocketFactoryFn = std::function<absl::StatusOr<network::TransportSocketFactorySharedPtr>(
    const google::protobuf::Any& typed_config, const std::string& field_path, bool server)>;
void registerTransportSocket(const std::string& type_url, TransportSocketFactoryFn fn);

// Loads one bootstrap static_resources.secrets entry (an envoy Secret) into the secret registry.
using SecretLoaderFn = std::function<absl::Status(const google::protobuf::Message& secret, const std::string& field_path)>;
void registerSecretLoader(SecretLoaderFn fn);

// Non-terminal network filters (RBAC): any number of them may stand before the terminal filter.
using NetworkReadFilterFactoryFn = std::function<absl::StatusOr<NetworkReadFilterConstSharedPtr>(
    const google::protobuf::Any& typed_config, const std::string& field_path, TranslationContext& ctx)>;
void registerNetworkReadFilter(const std::string& type_url, NetworkReadFilterFactoryFn fn);

// Cluster.filters' istio.metadata_exchange (the only upstream network filter Strait runs): `fn` makes
// its config, or null to leave it inert (filters/network/metadata_exchange.cc registers it). Without
// one registered the filter is accepted and inert.
using UpstreamPeerExchangeFn = std::function<absl::StatusOr<std::shared_ptr<const PeerExchangeConfig>>(
    const google::protobuf::Any& typed_config, const std::string& field_path, stats::Store& store)>;
void registerUpstreamPeerExchange(UpstreamPeerExchangeFn fn);

// Reads and parses a bootstrap file (or the embedded default) into an envoy Bootstrap proto.
absl::StatusOr<std::shared_ptr<const google::protobuf::Message>> parseBootstrap(const LoadOptions& options);
// The same from the text itself (YAML, or JSON, which is YAML); `source` names it in errors and
// options.path is not read. No file is opened (the fuzz target's entry, tests/fuzz/bootstrap_fuzz.cc).
absl::StatusOr<std::shared_ptr<const google::protobuf::Message>> parseBootstrapText(const std::string& text,
                                                                                   const std::string& source,
                                                                                   const LoadOptions& options);

// The bootstrap fields present that Strait accepts but does not act on, each with the reason
// ("tracing (no spans are sent from it; ...)"). loadBootstrap() logs them as warnings.
std::vector<std::string> inertBootstrapFields(const google::protobuf::Message& bootstrap);

// Reads, parses, validates and translates a bootstrap. Errors name the field at fault:
// "static_resources.listeners[0].address.socket_address.port_value: 70000 is not a valid port".
absl::StatusOr<SnapshotConstSharedPtr> loadBootstrap(const LoadOptions& options, stats::Store& store);

// Turns YAML (or JSON, which is YAML) text into JSON text; `overlay` (may be empty) is merged over it.
absl::StatusOr<std::string> yamlToJson(const std::string& yaml, const std::string& overlay, const std::string& source);

// Names a listener's stats after its address (Envoy: listener.<ip>_<port>.*) or its stat_prefix.
// Listeners configured on port 0 get theirs from the server once bound, before any worker runs.
void createListenerStats(Listener& l, const network::Address& bound, stats::Store& store);

// The current UTC time as RFC 3339 with milliseconds (config_dump's last_updated).
std::string nowRfc3339();
// A Unix time in milliseconds as that text, and the current one.
std::string formatRfc3339(int64_t unix_ms);
int64_t nowUnixMs();

uint64_t durationMs(const google::protobuf::Duration& d);

// Every google.protobuf.Duration in `m` (also inside typed configs) must not be negative: a negative
// timeout would wrap into "never". The error names the field: "<path>.connect_timeout: must not be
// negative".
absl::Status rejectNegativeDurations(const google::protobuf::Message& m, const std::string& path);

}  // namespace strait::config
