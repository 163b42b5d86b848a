// The xDS translation of one resource type from its wire bytes, as an xDS update runs it
// (proxy/server/xds_applier.cc): the bytes are parsed as the resource's proto, the name checks the applier
// makes are made, and a whole snapshot is built (config::buildSnapshot) from a fixed bootstrap and fixed
// dynamic resources plus this one, against a previous snapshot of those fixed resources (so the reuse
// paths run too). A Secret is checked the way an SDS update checks it (certs::checkSdsSecret) and never
// published. Resources that name a file (DataSource.filename and the like) are not translated.
//
// Built once per resource type, the type chosen by STRAIT_XDS_FUZZ_TYPE: 1 Listener, 2 RouteConfiguration,
// 3 Cluster, 4 ClusterLoadAssignment, 5 Secret. The fixed resources the fuzzed one can refer to: clusters
// "dyn_c" (STATIC) and "dyn_eds" (EDS, its endpoints held), route configuration "dyn_r" (RDS), listener
// "dyn_l" on 127.0.0.1:15001 using dyn_r. A fuzzed RouteConfiguration is held as dyn_r, a fuzzed
// ClusterLoadAssignment as dyn_eds's; a fuzzed Listener or Cluster is held under its own name.

#include <memory>
#include <string>

#include "certs/tls_config.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/config/bootstrap.h"
#include "tests/fuzz/fuzz_support.h"

#ifndef STRAIT_XDS_FUZZ_TYPE
#error "STRAIT_XDS_FUZZ_TYPE must be 1..5 (tests/fuzz/CMakeLists.txt)"
#endif

using namespace strait;

namespace {

constexpr char kBootstrap[] = R"(
node: {id: fuzz, cluster: fuzz}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: xds
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 18000}}}}]}]
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  cds_config: {ads: {}, resource_api_version: V3}
  lds_config: {ads: {}, resource_api_version: V3}
)";

constexpr char kClusterC[] = R"(
name: dyn_c
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: dyn_c
  endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9000}}}}]}]
)";

constexpr char kClusterEds[] = R"(
name: dyn_eds
type: EDS
connect_timeout: 1s
eds_cluster_config: {eds_config: {ads: {}, resource_api_version: V3}}
)";

constexpr char kEndpoints[] = R"(
cluster_name: dyn_eds
endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.2, port_value: 9000}}}}]}]
)";

constexpr char kRoute[] = R"(
name: dyn_r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes: [{match: {prefix: /}, route: {cluster: dyn_c}}]
)";

constexpr char kListener[] = R"(
name: dyn_l
address: {socket_address: {address: 127.0.0.1, port_value: 15001}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: dyn
      rds: {route_config_name: dyn_r, config_source: {ads: {}, resource_api_version: V3}}
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
)";

template <typename T>
std::shared_ptr<const google::protobuf::Message> fromYaml(const char* yaml) {
  auto json = config::yamlToJson(yaml, "", "fuzz");
  auto m = std::make_shared<T>();
  if (!json.ok() || !google::protobuf::util::JsonStringToMessage(*json, m.get()).ok()) {
    std::fprintf(stderr, "xds_fuzz: a fixed resource does not parse: %s\n", yaml);
    std::abort();
  }
  return m;
}

config::DynamicResource held(std::shared_ptr<const google::protobuf::Message> m) {
  config::DynamicResource r;
  r.proto = std::move(m);
  r.version = "1";
  return r;
}

// Holds `r` under `name` (ConfigSources' maps: a NameMap, or a std::map before it).
template <typename Map>
void put(Map& m, const std::string& name, config::DynamicResource r) {
  if constexpr (requires { m.set(name, std::move(r)); }) {
    m.set(name, std::move(r));
  } else {
    m[name] = std::move(r);
  }
}

struct Fixed {
  std::shared_ptr<const config::ConfigSources> sources;
  config::SnapshotConstSharedPtr previous;
};

const Fixed& fixed() {
  static const Fixed* f = [] {
    auto s = std::make_shared<config::ConfigSources>();
    s->bootstrap = fromYaml<envoy::config::bootstrap::v3::Bootstrap>(kBootstrap);
    put(s->clusters, "dyn_c", held(fromYaml<envoy::config::cluster::v3::Cluster>(kClusterC)));
    put(s->clusters, "dyn_eds", held(fromYaml<envoy::config::cluster::v3::Cluster>(kClusterEds)));
    put(s->endpoints, "dyn_eds", held(fromYaml<envoy::config::endpoint::v3::ClusterLoadAssignment>(kEndpoints)));
    put(s->routes, "dyn_r", held(fromYaml<envoy::config::route::v3::RouteConfiguration>(kRoute)));
    put(s->listeners, "dyn_l", held(fromYaml<envoy::config::listener::v3::Listener>(kListener)));
    auto* out = new Fixed;
    auto built = config::buildSnapshot(s, nullptr, fuzz::init(), config::clusterIds());
    if (!built.ok() || !built->rejected.empty() || !built->warming.empty()) {
      std::fprintf(stderr, "xds_fuzz: the fixed resources do not translate cleanly: %s\n",
                   built.ok() ? (built->rejected.empty() ? "warming" : built->rejected[0].error.c_str())
                              : std::string(built.status().message()).c_str());
      std::abort();
    }
    out->sources = s;
    out->previous = built->snapshot;
    return out;
  }();
  return *f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  stats::Store& store = fuzz::init();
  const Fixed& base = fixed();
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  auto next = std::make_shared<config::ConfigSources>(*base.sources);

#if STRAIT_XDS_FUZZ_TYPE == 1
  auto m = std::make_shared<envoy::config::listener::v3::Listener>();
  if (!m->ParseFromString(bytes) || m->name().empty() || fuzz::namesAFile(*m)) return 0;
  put(next->listeners, m->name(), held(m));
#elif STRAIT_XDS_FUZZ_TYPE == 2
  auto m = std::make_shared<envoy::config::route::v3::RouteConfiguration>();
  if (!m->ParseFromString(bytes) || fuzz::namesAFile(*m)) return 0;
  m->set_name("dyn_r");  // the name the listener subscribed to (the applier holds it under that name)
  put(next->routes, "dyn_r", held(m));
#elif STRAIT_XDS_FUZZ_TYPE == 3
  auto m = std::make_shared<envoy::config::cluster::v3::Cluster>();
  if (!m->ParseFromString(bytes) || m->name().empty() || fuzz::namesAFile(*m)) return 0;
  put(next->clusters, m->name(), held(m));
#elif STRAIT_XDS_FUZZ_TYPE == 4
  auto m = std::make_shared<envoy::config::endpoint::v3::ClusterLoadAssignment>();
  if (!m->ParseFromString(bytes) || fuzz::namesAFile(*m)) return 0;
  m->set_cluster_name("dyn_eds");
  put(next->endpoints, "dyn_eds", held(m));
#elif STRAIT_XDS_FUZZ_TYPE == 5
  envoy::extensions::transport_sockets::tls::v3::Secret m;
  if (!m.ParseFromString(bytes) || m.name().empty() || fuzz::namesAFile(m)) return 0;
  (void)certs::checkSdsSecret(m, "Secret '" + m.name() + "'");
  (void)next;
  (void)store;
  return 0;
#else
#error "unknown STRAIT_XDS_FUZZ_TYPE"
#endif

#if STRAIT_XDS_FUZZ_TYPE != 5
  // What the applier builds (a rejected resource would then be taken out, which gives back the fixed
  // snapshot: not worth building again here).
  auto built = config::buildSnapshot(next, base.previous.get(), store, config::clusterIds());
  (void)built;
  return 0;
#endif
}
