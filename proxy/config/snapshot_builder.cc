// Builds a Snapshot from the bootstrap and the accepted xDS resources; the extension registries.
#include "proxy/config/translate_internal.h"


#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "certs/client_hello.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "envoy/config/metrics/v3/stats.pb.h"
#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb.h"
#include "envoy/extensions/filters/listener/original_dst/v3/original_dst.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/common/log.h"
#include "proxy/config/default_bootstrap.h"
#include "proxy/http/matchers.h"
#include "proxy/stats/tag_extraction.h"
#include "re2/re2.h"
#include "proxy/upstream/health_checker.h"
#include "strait/lb/v1/peak_ewma.pb.h"

namespace strait::config {

namespace bootstrap_v3 = envoy::config::bootstrap::v3;
namespace cluster_v3 = envoy::config::cluster::v3;
namespace listener_v3 = envoy::config::listener::v3;
namespace core_v3 = envoy::config::core::v3;
namespace endpoint_v3 = envoy::config::endpoint::v3;
namespace route_v3 = envoy::config::route::v3;

std::map<std::string, NetworkFilterFactoryFn>& networkFilterRegistry() {
  static auto* r = new std::map<std::string, NetworkFilterFactoryFn>;
  return *r;
}
std::map<std::string, NetworkReadFilterFactoryFn>& networkReadFilterRegistry() {
  static auto* r = new std::map<std::string, NetworkReadFilterFactoryFn>;
  return *r;
}
std::map<std::string, TransportSocketFactoryFn>& transportSocketRegistry() {
  static auto* r = new std::map<std::string, TransportSocketFactoryFn>;
  return *r;
}
SecretLoaderFn& secretLoader() {
  static auto* f = new SecretLoaderFn;
  return *f;
}

// A transport_socket (filter chain: server side; cluster: client side) as a factory; null = plaintext.
absl::StatusOr<network::TransportSocketFactorySharedPtr> translateTransportSocket(
    const envoy::config::core::v3::TransportSocket& ts, const std::string& path, bool server) {
  if (!ts.has_typed_config()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ".typed_config: is required (transport sockets are chosen by type URL)"));
  }
  auto it = transportSocketRegistry().find(ts.typed_config().type_url());
  if (it == transportSocketRegistry().end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ".typed_config: unsupported transport socket type '", ts.typed_config().type_url(), "'"));
  }
  return it->second(ts.typed_config(), path + ".typed_config", server);
}

absl::Status fieldError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// ---- validation and translation ---------------------------------------------------------------------

absl::StatusOr<network::Address> translateAddress(const core_v3::Address& a, const std::string& path) {
  if (!a.has_socket_address()) {
    if (a.has_pipe()) return fieldError(path + ".pipe", "unix socket addresses are not supported here");
    return fieldError(path + ".socket_address", "is required");
  }
  const auto& sa = a.socket_address();
  const std::string sp = path + ".socket_address";
  if (sa.protocol() != core_v3::SocketAddress::TCP) return fieldError(sp + ".protocol", "only TCP is supported");
  if (sa.port_specifier_case() == core_v3::SocketAddress::kNamedPort) {
    return fieldError(sp + ".named_port", "named ports are not supported; use port_value");
  }
  if (sa.port_value() > 65535) {
    return fieldError(sp + ".port_value", absl::StrCat(sa.port_value(), " is not a valid port (0-65535)"));
  }
  if (sa.address().empty()) return fieldError(sp + ".address", "is required");
  auto addr = network::Address::parse(sa.address(), sa.port_value());
  if (!addr) {
    return fieldError(sp + ".address", absl::StrCat("'", sa.address(), "' is not a numeric IPv4 or IPv6 address"));
  }
  return *addr;
}

static void flattenRuntime(const google::protobuf::Struct& s, const std::string& prefix, std::map<std::string, std::string>& out) {
  for (const auto& [key, value] : s.fields()) {
    const std::string k = prefix.empty() ? key : prefix + "." + key;
    switch (value.kind_case()) {
      case google::protobuf::Value::kStructValue: flattenRuntime(value.struct_value(), k, out); break;
      case google::protobuf::Value::kNumberValue: {
        const double d = value.number_value();
        out[k] = d == static_cast<double>(static_cast<int64_t>(d)) ? absl::StrCat(static_cast<int64_t>(d)) : absl::StrCat(d);
        break;
      }
      case google::protobuf::Value::kBoolValue: out[k] = value.bool_value() ? "true" : "false"; break;
      case google::protobuf::Value::kStringValue: out[k] = value.string_value(); break;
      default: break;
    }
  }
}

int64_t nowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string formatRfc3339(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  const int ms = static_cast<int>(unix_ms % 1000);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buf;
}

std::string formatNowRfc3339() { return formatRfc3339(nowUnixMs()); }


std::map<std::string, std::string> runtimeValues(const google::protobuf::Message& bootstrap) {
  std::map<std::string, std::string> out;
  const auto& b = static_cast<const bootstrap_v3::Bootstrap&>(bootstrap);
  for (const auto& layer : b.layered_runtime().layers()) {
    if (layer.has_static_layer()) flattenRuntime(layer.static_layer(), "", out);
  }
  return out;
}

void registerNetworkFilter(const std::string& type_url, NetworkFilterFactoryFn fn) {
  networkFilterRegistry()[type_url] = std::move(fn);
}

void registerNetworkReadFilter(const std::string& type_url, NetworkReadFilterFactoryFn fn) {
  networkReadFilterRegistry()[type_url] = std::move(fn);
}

void registerTransportSocket(const std::string& type_url, TransportSocketFactoryFn fn) {
  transportSocketRegistry()[type_url] = std::move(fn);
}

void registerSecretLoader(SecretLoaderFn fn) { secretLoader() = std::move(fn); }

uint64_t durationMs(const google::protobuf::Duration& d) {
  return static_cast<uint64_t>(d.seconds()) * 1000 + static_cast<uint64_t>(d.nanos()) / 1000000;
}

namespace {

RouteTableFactory& routeTableFactory() {
  static auto* f = new RouteTableFactory;
  return *f;
}

// The bootstrap's ADS settings, and the name of the static cluster that reaches the control plane.
// The xDS channel's TLS from its envoy_grpc cluster's UpstreamTlsContext (gRPC runs its own TLS: the
// settings are handed over as PEM sources; SDS is not possible for the channel that brings SDS).
absl::StatusOr<AdsSettings::Tls> adsTlsFromCluster(const core_v3::TransportSocket& ts, const std::string& path) {
  envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext u;
  if (!ts.has_typed_config() || !ts.typed_config().UnpackTo(&u)) {
    return fieldError(path + ".typed_config", "the xDS cluster takes an UpstreamTlsContext");
  }
  AdsSettings::Tls tls;
  tls.sni = u.sni();
  const auto& c = u.common_tls_context();
  const std::string cp = path + ".typed_config.common_tls_context";
  auto pem = [&](const core_v3::DataSource& ds, const std::string& f, AdsSettings::PemSource& out) -> absl::Status {
    if (ds.has_filename()) {
      out.filename = ds.filename();
    } else if (ds.has_inline_string() || ds.has_inline_bytes()) {
      out.inline_data = ds.has_inline_string() ? ds.inline_string() : ds.inline_bytes();
    } else {
      return fieldError(cp + "." + f, "the xDS channel needs a filename or inline data");
    }
    return absl::OkStatus();
  };
  if (c.tls_certificate_sds_secret_configs_size() > 0 || c.has_validation_context_sds_secret_config() ||
      c.has_combined_validation_context()) {
    return fieldError(cp, "the xDS channel's certificates cannot come over SDS: name files or inline data");
  }
  if (c.tls_certificates_size() > 1) return fieldError(cp + ".tls_certificates", "the xDS channel takes one certificate");
  if (c.tls_certificates_size() == 1) {
    if (auto st = pem(c.tls_certificates(0).certificate_chain(), "tls_certificates[0].certificate_chain", tls.cert_chain); !st.ok()) return st;
    if (auto st = pem(c.tls_certificates(0).private_key(), "tls_certificates[0].private_key", tls.private_key); !st.ok()) return st;
  }
  if (c.has_validation_context() && c.validation_context().has_trusted_ca()) {
    if (auto st = pem(c.validation_context().trusted_ca(), "validation_context.trusted_ca", tls.root_certs); !st.ok()) return st;
  }
  return tls;
}

absl::StatusOr<std::optional<AdsSettings>> translateAds(const bootstrap_v3::Bootstrap& b, std::string* xds_cluster) {
  if (!b.has_dynamic_resources()) return std::optional<AdsSettings>();
  const auto& dr = b.dynamic_resources();
  const std::string p = "dynamic_resources";
  if (!dr.has_ads_config()) {
    return fieldError(p + ".ads_config", "is required: Strait takes LDS and CDS over ADS only");
  }
  for (const auto* cs : {&dr.lds_config(), &dr.cds_config()}) {
    const bool lds = cs == &dr.lds_config();
    const bool present = lds ? dr.has_lds_config() : dr.has_cds_config();
    if (present && !cs->has_ads()) {
      return fieldError(p + (lds ? ".lds_config" : ".cds_config"), "only ads: {} is supported");
    }
  }
  AdsSettings ads;
  const auto& ac = dr.ads_config();
  switch (ac.api_type()) {
    case core_v3::ApiConfigSource::GRPC:
    case core_v3::ApiConfigSource::AGGREGATED_GRPC: ads.delta = false; break;
    case core_v3::ApiConfigSource::DELTA_GRPC:
    case core_v3::ApiConfigSource::AGGREGATED_DELTA_GRPC: ads.delta = true; break;
    default: return fieldError(p + ".ads_config.api_type", "must be GRPC or DELTA_GRPC");
  }
  if (ac.grpc_services_size() != 1) return fieldError(p + ".ads_config.grpc_services", "needs exactly one entry");
  const auto& gs = ac.grpc_services(0);
  if (gs.has_envoy_grpc()) {
    if (gs.envoy_grpc().cluster_name().empty()) {
      return fieldError(p + ".ads_config.grpc_services[0].envoy_grpc.cluster_name", "is required");
    }
    *xds_cluster = gs.envoy_grpc().cluster_name();
  } else if (gs.has_google_grpc()) {
    const std::string gp = p + ".ads_config.grpc_services[0].google_grpc";
    if (gs.google_grpc().target_uri().empty()) return fieldError(gp + ".target_uri", "is required");
    ads.target = gs.google_grpc().target_uri();
    if (gs.google_grpc().has_channel_credentials()) {
      const auto& cc = gs.google_grpc().channel_credentials();
      if (!cc.has_ssl_credentials()) {
        return fieldError(gp + ".channel_credentials", "only ssl_credentials is supported");
      }
      const auto& ssl = cc.ssl_credentials();
      AdsSettings::Tls tls;
      auto pem = [&](const core_v3::DataSource& ds, const std::string& f, AdsSettings::PemSource& out) -> absl::Status {
        if (ds.has_filename()) {
          out.filename = ds.filename();
        } else if (ds.has_inline_string() || ds.has_inline_bytes()) {
          out.inline_data = ds.has_inline_string() ? ds.inline_string() : ds.inline_bytes();
        } else if (ds.specifier_case() != core_v3::DataSource::SPECIFIER_NOT_SET) {
          return fieldError(gp + ".channel_credentials.ssl_credentials." + f, "only filename and inline data are supported");
        }
        return absl::OkStatus();
      };
      for (auto st : {pem(ssl.root_certs(), "root_certs", tls.root_certs), pem(ssl.private_key(), "private_key", tls.private_key),
                      pem(ssl.cert_chain(), "cert_chain", tls.cert_chain)}) {
        if (!st.ok()) return st;
      }
      ads.tls = tls;
    }
  } else {
    return fieldError(p + ".ads_config.grpc_services[0]", "needs envoy_grpc or google_grpc");
  }
  // The longer of the two initial fetch timeouts bounds how long /ready waits (Envoy's default: 15 s).
  std::optional<uint64_t> timeout;
  for (const auto* cs : {&dr.lds_config(), &dr.cds_config()}) {
    if (cs->has_initial_fetch_timeout()) timeout = std::max(timeout.value_or(0), durationMs(cs->initial_fetch_timeout()));
  }
  ads.initial_fetch_timeout_ms = timeout.value_or(15000);
  ads.cds_wildcard = dr.has_cds_config();
  return std::optional<AdsSettings>(ads);
}

}  // namespace

uint32_t ClusterIds::get(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ids_.find(name);
  if (it != ids_.end()) return it->second;
  uint32_t id = static_cast<uint32_t>(ids_.size());
  ids_.emplace(name, id);
  return id;
}

void setRouteTableFactory(RouteTableFactory f) { routeTableFactory() = std::move(f); }

// stats_config.stats_tags and use_all_default_tags (stats/tag_extraction.h, TagRules).
static absl::StatusOr<std::shared_ptr<const stats::TagRules>> translateTagRules(
    const envoy::config::metrics::v3::StatsConfig& sc, const std::string& path) {
  auto out = std::make_shared<stats::TagRules>();
  out->use_defaults = !sc.has_use_all_default_tags() || sc.use_all_default_tags().value();
  for (int i = 0; i < sc.stats_tags_size(); ++i) {
    const auto& t = sc.stats_tags(i);
    const std::string tp = absl::StrCat(path, ".stats_tags[", i, "]");
    if (t.tag_name().empty()) return absl::InvalidArgumentError(absl::StrCat(tp, ".tag_name: must not be empty"));
    stats::TagRules::Specifier spec;
    spec.label = stats::tagLabel(t.tag_name());
    switch (t.tag_value_case()) {
      case envoy::config::metrics::v3::TagSpecifier::kRegex: {
        // Envoy's rule: the first group is what leaves the name, so there must be one.
        const char* kNeedsGroup = ".regex: needs a capture group (the part of the name that becomes the tag)";
        auto re = std::make_shared<re2::RE2>(t.regex(), re2::RE2::Quiet);
        if (re->ok()) {
          if (re->NumberOfCapturingGroups() < 1) return absl::InvalidArgumentError(absl::StrCat(tp, kNeedsGroup));
          spec.regex = std::move(re);
        } else {
          // Envoy runs tag regexes as ECMAScript (std::regex), and Istio's bootstrap has one with a
          // look-ahead that RE2 refuses: such a one runs as ECMAScript too (scrape time only).
          try {
            auto ecma = std::make_shared<std::regex>(t.regex(), std::regex::ECMAScript);
            if (ecma->mark_count() < 1) return absl::InvalidArgumentError(absl::StrCat(tp, kNeedsGroup));
            spec.ecma = std::move(ecma);
          } catch (const std::regex_error& e) {
            return absl::InvalidArgumentError(absl::StrCat(tp, ".regex: ", re->error(), " (and as ECMAScript: ", e.what(), ")"));
          }
        }
        out->given.insert(spec.label);
        break;
      }
      case envoy::config::metrics::v3::TagSpecifier::kFixedValue:
        spec.fixed = true;
        spec.fixed_value = t.fixed_value();
        out->given.insert(spec.label);
        break;
      default:
        // Only a name: one of Envoy's built-in tags, asked for by name.
        if (t.tag_name().rfind("envoy.", 0) != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              tp, ": '", t.tag_name(), "' has neither regex nor fixed_value and is not one of Envoy's built-in tags (envoy.*)"));
        }
        out->builtins.insert(spec.label);
        break;
    }
    out->specifiers.push_back(std::move(spec));
  }
  return std::shared_ptr<const stats::TagRules>(out);
}

static absl::StatusOr<std::shared_ptr<const StatsMatcher>> translateStatsMatcher(
    const envoy::config::metrics::v3::StatsMatcher& m, const std::string& path) {
  auto out = std::make_shared<StatsMatcher>();
  const envoy::type::matcher::v3::ListStringMatcher* list = nullptr;
  std::string lp;
  switch (m.stats_matcher_case()) {
    case envoy::config::metrics::v3::StatsMatcher::kRejectAll:
      if (!m.reject_all()) return std::shared_ptr<const StatsMatcher>();  // false: every stat
      out->mode = StatsMatcher::Mode::RejectAll;
      return std::shared_ptr<const StatsMatcher>(out);
    case envoy::config::metrics::v3::StatsMatcher::kInclusionList:
      out->mode = StatsMatcher::Mode::Include;
      list = &m.inclusion_list();
      lp = path + ".inclusion_list";
      break;
    case envoy::config::metrics::v3::StatsMatcher::kExclusionList:
      out->mode = StatsMatcher::Mode::Exclude;
      list = &m.exclusion_list();
      lp = path + ".exclusion_list";
      break;
    default:
      return fieldError(path, "one of reject_all, inclusion_list or exclusion_list is required");
  }
  if (list->patterns_size() == 0) return fieldError(lp + ".patterns", "needs at least one pattern");
  for (int i = 0; i < list->patterns_size(); ++i) {
    http::StringMatch sm;
    auto st = http::buildStringMatch(list->patterns(i), absl::StrCat(lp, ".patterns[", i, "]"), sm);
    if (!st.ok()) return st;
    out->patterns.push_back(std::move(sm));
  }
  return std::shared_ptr<const StatsMatcher>(out);
}

absl::StatusOr<BuildResult> buildSnapshot(std::shared_ptr<const ConfigSources> sources, const Snapshot* previous,
                                          stats::Store& store, ClusterIds& ids, const ChangeHint* hint) {
  const auto& bootstrap = static_cast<const bootstrap_v3::Bootstrap&>(*sources->bootstrap);
  BuildResult result;
  std::set<std::string> eds_wanted;  // the EDS names the clusters visited want (made into snap->eds_names)
  auto snap = std::make_shared<Snapshot>();
  snap->node_id = bootstrap.node().id();
  snap->node_cluster = bootstrap.node().cluster();
  snap->local_cluster_name = bootstrap.cluster_manager().local_cluster_name();
  snap->node_locality = {bootstrap.node().locality().region(), bootstrap.node().locality().zone(),
                         bootstrap.node().locality().sub_zone()};
  if (bootstrap.has_admin() && bootstrap.admin().has_address()) {
    auto a = translateAddress(bootstrap.admin().address(), "admin.address");
    if (!a.ok()) return a.status();
    snap->admin_address = *a;
  }
  std::string xds_cluster;
  auto ads = translateAds(bootstrap, &xds_cluster);
  if (!ads.ok()) return ads.status();
  snap->ads = *ads;
  const auto& sr = bootstrap.static_resources();
  for (int i = 0; i < sr.secrets_size(); ++i) {
    const std::string path = absl::StrCat("static_resources.secrets[", i, "]");
    if (!secretLoader()) return fieldError(path, "secrets are not supported in this build");
    auto st = secretLoader()(sr.secrets(i), path);
    if (!st.ok()) return st;
  }

  // Clusters: static ones, then CDS ones (a CDS cluster may not replace a static one).
  bool patching = false;  // the fast path below: the vector is made at its end
  auto addCluster = [&](const ClusterConstSharedPtr& c, const std::string& path) -> absl::Status {
    if (snap->clusters_by_name.count(c->name)) {
      return fieldError(path + ".name", absl::StrCat("duplicate cluster name '", c->name, "'"));
    }
    snap->clusters_by_name.set(c->name, c);
    if (!patching) snap->clusters.push_back(c);
    return absl::OkStatus();
  };
  // Cost follows change: a cluster whose Cluster message (and, for EDS, ClusterLoadAssignment
  // message) is the very one its version in `previous` was built from is that version again: not
  // translated, not re-activated, and workers keep its balancer. Messages are shared between
  // successive ConfigSources while unchanged, so pointer equality is the test.
  auto endpointsOf = [&](const Cluster& c) -> std::shared_ptr<const void> {
    if (c.type != Cluster::Type::Eds) return nullptr;
    auto it = sources->endpoints.find(c.eds_service_name);
    return it == sources->endpoints.end() ? nullptr : it->second.identity();
  };
  auto reusableCluster = [&](const std::string& name, const void* source, bool dynamic) -> ClusterConstSharedPtr {
    if (previous == nullptr) return nullptr;
    auto it = previous->clusters_by_name.find(name);
    if (it == previous->clusters_by_name.end()) return nullptr;
    const Cluster& old = *it->second;
    if (old.dynamic != dynamic || old.sourceKey() != source) return nullptr;
    if (old.type == Cluster::Type::Eds && (old.from_endpoints == nullptr || old.from_endpoints != endpointsOf(old))) {
      return nullptr;
    }
    return it->second;
  };
  const bool same_bootstrap = previous != nullptr && previous->bootstrap == sources->bootstrap;
  // Which dynamic clusters an update may have changed (see ChangeHint): only those are looked at, the
  // others are the previous snapshot's, shared. Else (the first build, a new bootstrap, an update of
  // listeners or routes, many names, a name that is a static cluster's or an EDS service name that is not
  // its cluster's own) every cluster is visited.
  std::set<std::string> affected;
  bool fast = hint != nullptr && hint->clusters_only && same_bootstrap && previous->eds_names &&
              !previous->eds_aliases && hint->names.size() <= kMaxPatchedClusters;
  if (fast) {
    for (const auto& n : hint->names) {
      for (const auto& cp : sr.clusters()) {
        if (cp.name() == n || (cp.type() == cluster_v3::Cluster::EDS && cp.eds_cluster_config().service_name() == n)) fast = false;
      }
      const auto* held = sources->clusters.get(n);
      if (held != nullptr) {
        const auto cp = heldAs<cluster_v3::Cluster>(*held);
        if (!cp->eds_cluster_config().service_name().empty() && cp->eds_cluster_config().service_name() != n) fast = false;
      }
      affected.insert(n);
    }
  }
  if (fast) {
    patching = true;
    snap->ads = previous->ads;
    snap->clusters_by_name = previous->clusters_by_name;  // shared; only the affected names change
    for (const auto& n : affected) snap->clusters_by_name.erase(n);
  }
  for (int i = 0; i < sr.clusters_size() && !fast; ++i) {
    const std::string path = absl::StrCat("static_resources.clusters[", i, "]");
    const auto& cp = sr.clusters(i);
    std::string pipe;
    bool warming = false;
    // Static clusters may name a unix socket: a gRPC service there (Istio's xds-grpc and sds-grpc).
    absl::StatusOr<ClusterConstSharedPtr> c;
    if (auto old = same_bootstrap ? reusableCluster(cp.name(), &cp, false) : nullptr) {
      c = old;
      // The same bootstrap made the same ADS settings (its target may be the cluster's unix socket).
      if (cp.name() == xds_cluster && snap->ads && previous->ads) snap->ads = previous->ads;
    } else {
      c = translateCluster(cp, path, ids.get(cp.name()), store, &sources->endpoints, true, &pipe, &warming);
      if (!c.ok()) return c.status();
      // The bootstrap's own message (it lives as long as the bootstrap): /config_dump's and reuse's.
      auto* mc = const_cast<Cluster*>(c->get());
      mc->proto = std::shared_ptr<const google::protobuf::Message>(sources->bootstrap, &cp);
      mc->from_endpoints = endpointsOf(*mc);
    }
    if (cp.name() == xds_cluster && snap->ads && cp.has_transport_socket() && snap->ads->target.empty()) {
      auto tls = adsTlsFromCluster(cp.transport_socket(), path + ".transport_socket");
      if (!tls.ok()) return tls.status();
      snap->ads->tls = *tls;
    }
    if (cp.name() == xds_cluster && snap->ads && snap->ads->target.empty()) {
      if (!pipe.empty()) {
        snap->ads->target = pipe;
      } else if (!(*c)->hosts.empty()) {
        snap->ads->target = (*c)->hosts[0]->address.asString();
      } else {
        return fieldError(path + ".load_assignment", "the xDS cluster needs an endpoint");
      }
    }
    if (cp.type() == cluster_v3::Cluster::EDS) {
      eds_wanted.insert((*c)->eds_service_name);
      if (warming) continue;
    }
    auto st = addCluster(*c, path);
    if (!st.ok()) return st;
  }
  // Zone-aware routing's local cluster must be a static one (as in Envoy).
  bool local_found = fast || snap->local_cluster_name.empty();
  for (const auto& c : sr.clusters()) local_found = local_found || c.name() == snap->local_cluster_name;
  if (!local_found) {
    return fieldError("cluster_manager.local_cluster_name",
                      absl::StrCat("no static cluster named '", snap->local_cluster_name, "'"));
  }
  if (!fast && !xds_cluster.empty() && snap->ads && snap->ads->target.empty()) {
    return fieldError("dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name",
                      absl::StrCat("no static cluster named '", xds_cluster, "'"));
  }
  // The version a dynamic cluster had in `previous`, kept while the new one warms or was rejected.
  auto keepPrevious = [&](const std::string& name, const std::string& path) {
    if (previous == nullptr) return;
    auto it = previous->clusters_by_name.find(name);
    if (it == previous->clusters_by_name.end() || !it->second->dynamic) return;
    if (it->second->type == Cluster::Type::Eds) eds_wanted.insert(it->second->eds_service_name);
    (void)addCluster(it->second, path);  // a static cluster of the same name wins, as on first arrival
  };
  // One CDS cluster: its previous version again, a new translation, or (rejected, warming) the
  // previous version kept.
  auto dynamicCluster = [&](const std::string& name, const DynamicResource& res) -> absl::Status {
    const std::string path = absl::StrCat("Cluster '", name, "'");
    bool warming = false;
    if (auto old = reusableCluster(name, res.identityKey(), true)) {
      if (old->type == Cluster::Type::Eds) {
        eds_wanted.insert(old->eds_service_name);
        if (old->eds_service_name != name) snap->eds_aliases = true;
      }
      return addCluster(old, path);
    }
    // Held as bytes (DynamicResource::wire): decoded for as long as it is translated.
    const auto held = heldAs<cluster_v3::Cluster>(res);
    const auto& cp = *held;
    const auto& sn = cp.eds_cluster_config().service_name();
    if (!sn.empty() && sn != name) snap->eds_aliases = true;  // warming or rejected ones count too
    auto c = translateCluster(cp, path, ids.get(name), store, &sources->endpoints, false, nullptr, &warming, &res);
    if (!c.ok()) {
      // One bad xDS resource does not sink the others (Envoy's partial acceptance): it is reported, and
      // the version it replaces (if any) keeps serving. A fault in its endpoints is the EDS resource's.
      const std::string msg(c.status().message());
      const std::string eds = cp.eds_cluster_config().service_name().empty() ? name : cp.eds_cluster_config().service_name();
      if (cp.type() == cluster_v3::Cluster::EDS && absl::StartsWith(msg, absl::StrCat("ClusterLoadAssignment '", eds, "'"))) {
        result.rejected.push_back({"ClusterLoadAssignment", eds, msg, name});
        eds_wanted.insert(eds);
      } else {
        result.rejected.push_back({"Cluster", name, msg, ""});
      }
      keepPrevious(name, path);
      return absl::OkStatus();
    }
    auto* mc = const_cast<Cluster*>(c->get());
    mc->dynamic = true;
    mc->version_info = res.version;
    // mc->proto / mc->wire are res's, shared with the sources: no second copy, and the key for reuse.
    mc->from_endpoints = endpointsOf(*mc);
    if (mc->type == Cluster::Type::Eds) eds_wanted.insert(mc->eds_service_name);
    if (warming) {
      // Keeps serving the version it had, if any, until its endpoints arrive.
      result.warming.push_back(path);
      keepPrevious(name, path);
      return absl::OkStatus();
    }
    return addCluster(*c, path);
  };
  if (fast) {
    // The EDS names wanted: the previous set, less the affected clusters' (each wants its own name, if
    // any: aliases took the full path), plus what they want now.
    std::map<std::string, bool> wants;
    bool eds_same = true;
    for (const auto& n : affected) {
      eds_wanted.clear();
      if (const auto* res = sources->clusters.get(n)) {
        auto st = dynamicCluster(n, *res);
        if (!st.ok()) return st;
      }
      const bool is = eds_wanted.count(n) != 0;
      wants[n] = is;
      if ((previous->eds_names->count(n) != 0) != is) eds_same = false;
    }
    if (eds_same) {
      snap->eds_names = previous->eds_names;
    } else {
      auto wanted = std::make_shared<std::set<std::string>>(*previous->eds_names);
      for (const auto& [n, is] : wants) {
        if (is) {
          wanted->insert(n);
        } else {
          wanted->erase(n);
        }
      }
      snap->eds_names = std::move(wanted);
    }
    // The vector: the previous one's order (static clusters, then CDS ones by name) with the affected
    // names taken out and their new versions merged in by name.
    std::vector<ClusterConstSharedPtr> added;
    for (const auto& n : affected) {
      if (const auto* c = snap->clusters_by_name.get(n)) added.push_back(*c);
    }
    snap->clusters.reserve(previous->clusters.size() + added.size());
    auto a = added.begin();
    for (const auto& c : previous->clusters) {
      if (!c->dynamic) {
        snap->clusters.push_back(c);
        continue;
      }
      while (a != added.end() && (*a)->name < c->name) snap->clusters.push_back(*a++);
      if (affected.count(c->name) == 0) snap->clusters.push_back(c);
    }
    while (a != added.end()) snap->clusters.push_back(*a++);
  } else {
    for (const auto& [name, res] : sources->clusters) {
      auto st = dynamicCluster(name, res);
      if (!st.ok()) return st;
    }
  }

  // Route tables and listeners name clusters by index (resolved per request), so a new version of a
  // cluster leaves them as they are; they check cluster names, so they are reused only while the set
  // of names is the same.
  if (fast) {
    snap->same_cluster_names = true;
    snap->cluster_names_kept = true;
    for (const auto& n : affected) {
      const bool was = previous->clusters_by_name.count(n) != 0, is = snap->clusters_by_name.count(n) != 0;
      if (was != is) snap->same_cluster_names = false;
      if (was && !is) snap->cluster_names_kept = false;
    }
  } else {
    snap->same_cluster_names = previous != nullptr && previous->clusters_by_name.size() == snap->clusters_by_name.size() &&
                               std::equal(previous->clusters_by_name.begin(), previous->clusters_by_name.end(),
                                          snap->clusters_by_name.begin(),
                                          [](const auto& a, const auto& b) { return a.first == b.first; });
    snap->cluster_names_kept =
        snap->same_cluster_names ||
        (previous != nullptr && previous->clusters_by_name.size() < snap->clusters_by_name.size() &&
         std::includes(snap->clusters_by_name.begin(), snap->clusters_by_name.end(), previous->clusters_by_name.begin(),
                       previous->clusters_by_name.end(), [](const auto& a, const auto& b) { return a.first < b.first; }));
    auto wanted = std::make_shared<std::set<std::string>>(std::move(eds_wanted));
    if (previous != nullptr && previous->eds_names && *previous->eds_names == *wanted) {
      snap->eds_names = previous->eds_names;
    } else {
      snap->eds_names = std::move(wanted);
    }
    // Dynamic clusters' aliases were noted by dynamicCluster (each held one, whether it is in force,
    // warming or rejected); static ones here.
    for (const auto& c : snap->clusters) {
      if (c->type == Cluster::Type::Eds && c->eds_service_name != c->name) snap->eds_aliases = true;
    }
  }
  eds_wanted.clear();
  // RDS route tables, against the clusters just built (unknown clusters answer 503 at run time).
  std::map<std::string, std::shared_ptr<const void>> tables;
  for (const auto& [name, res] : sources->routes) {
    if (!routeTableFactory()) return absl::InternalError("no route table factory registered");
    if (snap->cluster_names_kept) {
      auto src = previous->route_table_sources.find(name);
      if (src != previous->route_table_sources.end() && src->second == res.proto) {
        tables[name] = previous->route_tables.at(name);
        snap->route_tables_by_id[routeIds().get(name)] = tables[name];
        snap->route_table_sources[name] = res.proto;
        continue;
      }
    }
    auto t = routeTableFactory()(res.proto, absl::StrCat("RouteConfiguration '", name, "'"), snap->clusters_by_name);
    if (!t.ok()) {
      result.rejected.push_back({"RouteConfiguration", name, std::string(t.status().message()), ""});
      if (previous) {
        auto old = previous->route_tables.find(name);
        if (old != previous->route_tables.end()) {
          tables[name] = old->second;
          snap->route_tables_by_id[routeIds().get(name)] = old->second;
          auto src = previous->route_table_sources.find(name);
          if (src != previous->route_table_sources.end()) snap->route_table_sources[name] = src->second;
        }
      }
      continue;
    }
    tables[name] = *t;
    snap->route_tables_by_id[routeIds().get(name)] = *t;
    snap->route_table_sources[name] = res.proto;
  }
  snap->route_tables = tables;

  std::set<std::string> rds_names;
  TranslationContext ctx{store, snap->clusters_by_name, &snap->route_tables, &rds_names};
  const std::map<std::string, std::string> runtime = runtimeValues(bootstrap);
  ctx.runtime = &runtime;
  std::set<std::string> listener_names;
  auto addListener = [&](ListenerConstSharedPtr l, const std::string& path) -> absl::Status {
    if (!listener_names.insert(l->name).second) {
      return fieldError(path + ".name", absl::StrCat("duplicate listener name '", l->name, "'"));
    }
    for (const auto& other : snap->listeners) {
      if (other->address == l->address && l->address.port() != 0) {
        return fieldError(path + ".address", absl::StrCat("listener '", l->name, "' and '", other->name,
                                                          "' both use ", l->address.asString()));
      }
    }
    snap->listeners.push_back(std::move(l));
    return absl::OkStatus();
  };
  // A listener is reused like a route table, and also only while the same route tables exist (a
  // listener waiting for its RouteConfiguration is not built at all).
  const bool same_tables = snap->cluster_names_kept && previous->route_tables.size() == snap->route_tables.size() &&
                           std::equal(previous->route_tables.begin(), previous->route_tables.end(),
                                      snap->route_tables.begin(),
                                      [](const auto& a, const auto& b) { return a.first == b.first; });
  auto reusableListener = [&](const std::string& name, const google::protobuf::Message* proto,
                              bool dynamic) -> ListenerConstSharedPtr {
    if (!same_tables) return nullptr;
    for (const auto& old : previous->listeners) {
      if (old->name == name && old->dynamic == dynamic && old->proto.get() == proto) return old;
    }
    return nullptr;
  };
  // Translates one listener; the RouteConfigurations it names are subscribed even while it waits for them.
  auto translate = [&](const listener_v3::Listener& lp, const std::string& path) {
    std::set<std::string> wants;
    ctx.rds_names = &wants;
    auto l = translateListener(lp, path, ctx);
    rds_names.insert(wants.begin(), wants.end());
    if (l.ok()) const_cast<Listener*>(l->get())->rds_names.assign(wants.begin(), wants.end());
    return l;
  };
  auto addListenerRds = [&](const ListenerConstSharedPtr& l) { rds_names.insert(l->rds_names.begin(), l->rds_names.end()); };
  for (int i = 0; i < sr.listeners_size(); ++i) {
    const std::string path = absl::StrCat("static_resources.listeners[", i, "]");
    if (auto old = same_bootstrap ? reusableListener(sr.listeners(i).name(), &sr.listeners(i), false) : nullptr) {
      addListenerRds(old);
      auto st = addListener(old, path);
      if (!st.ok()) return st;
      continue;
    }
    // A bootstrap listener may have no name (Istio's 15090 and 15021 have none); Envoy then makes one
    // up. Ours is stable: the address ("0.0.0.0_15090"), or the position for a listener without one.
    const listener_v3::Listener* lp = &sr.listeners(i);
    listener_v3::Listener named;
    if (lp->name().empty()) {
      named = *lp;
      const auto& sa = lp->address().socket_address();
      named.set_name(lp->address().has_socket_address() ? absl::StrCat(sa.address(), "_", sa.port_value())
                                                        : absl::StrCat("listener_", i));
      lp = &named;
    }
    auto l = translate(*lp, path);
    if (!l.ok()) {
      if (absl::IsUnavailable(l.status())) {
        result.warming.push_back(path);
        continue;
      }
      return l.status();
    }
    if (lp == &sr.listeners(i)) {
      const_cast<Listener*>(l->get())->proto = std::shared_ptr<const google::protobuf::Message>(sources->bootstrap, lp);
    }
    auto st = addListener(*l, path);
    if (!st.ok()) return st;
  }
  ctx.dynamic = true;  // LDS listeners may name clusters CDS has removed (see TranslationContext)
  auto keepPreviousListener = [&](const std::string& name, const std::string& path) {
    if (previous == nullptr) return;
    for (const auto& old : previous->listeners) {
      // It keeps the route tables it uses subscribed.
      if (old->name == name && old->dynamic && addListener(old, path).ok()) addListenerRds(old);
    }
  };
  // Listeners held before go first: a new listener that wants the address of one already serving is
  // the one refused, whatever the names' order.
  std::set<std::string_view> held_before;
  if (previous) {
    for (const auto& old : previous->listeners) {
      if (old->dynamic) held_before.insert(old->name);
    }
  }
  std::vector<const std::pair<const std::string, DynamicResource>*> lds_order;
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& kv : sources->listeners) {
      if ((held_before.count(kv.first) != 0) == (pass == 0)) lds_order.push_back(&kv);
    }
  }
  for (const auto* entry : lds_order) {
    const auto& [name, res] = *entry;
    const auto& lp = static_cast<const listener_v3::Listener&>(*res.proto);
    const std::string path = absl::StrCat("Listener '", name, "'");
    if (auto old = reusableListener(name, res.proto.get(), true)) {
      addListenerRds(old);
      auto st = addListener(old, path);
      if (!st.ok()) {
        result.rejected.push_back({"Listener", name, std::string(st.message()), ""});
        keepPreviousListener(name, path);
      }
      continue;
    }
    auto l = translate(lp, path);
    if (!l.ok()) {
      if (absl::IsUnavailable(l.status())) {
        // Waiting for its RouteConfiguration: the previous version keeps serving.
        result.warming.push_back(path + ": " + std::string(l.status().message()));
      } else {
        result.rejected.push_back({"Listener", name, std::string(l.status().message()), ""});
      }
      keepPreviousListener(name, path);
      continue;
    }
    auto* ml = const_cast<Listener*>(l->get());
    ml->dynamic = true;
    ml->version_info = res.version;
    ml->proto = res.proto;  // shared with the sources, and the key for reuse
    auto st = addListener(*l, path);
    if (!st.ok()) {
      // Two listeners on one address: the later one (by name) is refused, the other keeps it.
      result.rejected.push_back({"Listener", name, std::string(st.message()), ""});
      keepPreviousListener(name, path);
    }
  }
  result.rds_names = rds_names;
  result.eds_names = snap->eds_names;
  if (bootstrap.stats_config().has_stats_matcher()) {
    auto m = translateStatsMatcher(bootstrap.stats_config().stats_matcher(), "stats_config.stats_matcher");
    if (!m.ok()) return m.status();
    snap->stats_matcher = *m;
  }
  if (bootstrap.stats_config().stats_tags_size() > 0 || bootstrap.stats_config().has_use_all_default_tags()) {
    auto rules = translateTagRules(bootstrap.stats_config(), "stats_config");
    if (!rules.ok()) return rules.status();
    snap->tag_rules = *rules;
  }
  snap->sources = sources;
  snap->bootstrap = sources->bootstrap;
  snap->loaded_at = formatNowRfc3339();
  snap->indexClusters();
  result.snapshot = snap;
  return result;
}

ClusterIds& clusterIds() {
  static auto* ids = new ClusterIds;
  return *ids;
}

std::string nowRfc3339() { return formatNowRfc3339(); }

ClusterIds& routeIds() {
  static auto* ids = new ClusterIds;
  return *ids;
}

}  // namespace strait::config
