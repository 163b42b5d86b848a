#include "proxy/server/xds_applier.h"

#include <malloc.h>

#include <chrono>
#include <cinttypes>
#include <ctime>
#include <fstream>
#include <sstream>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "certs/secret_manager.h"
#include "certs/tls_config.h"
#include "proxy/common/log.h"
#include "proxy/network/address.h"
#include "proxy/server/server.h"

namespace strait::server {

namespace {

const char* shortName(const std::string& type_url) {
  if (type_url == xds::kClusterType) return "Cluster";
  if (type_url == xds::kListenerType) return "Listener";
  if (type_url == xds::kRouteType) return "RouteConfiguration";
  if (type_url == xds::kEndpointType) return "ClusterLoadAssignment";
  if (type_url == xds::kSecretType) return "Secret";
  return "resource";
}

// Decodes an Any into a fresh message of the type the type URL names.
absl::StatusOr<std::shared_ptr<const google::protobuf::Message>> decode(const std::string& type_url,
                                                                        const xds::Resource& r) {
  std::shared_ptr<google::protobuf::Message> m;
  if (type_url == xds::kClusterType) {
    m = std::make_shared<envoy::config::cluster::v3::Cluster>();
  } else if (type_url == xds::kListenerType) {
    m = std::make_shared<envoy::config::listener::v3::Listener>();
  } else if (type_url == xds::kRouteType) {
    m = std::make_shared<envoy::config::route::v3::RouteConfiguration>();
  } else if (type_url == xds::kEndpointType) {
    m = std::make_shared<envoy::config::endpoint::v3::ClusterLoadAssignment>();
  } else if (type_url == xds::kSecretType) {
    m = std::make_shared<envoy::extensions::transport_sockets::tls::v3::Secret>();
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unsupported resource type ", type_url));
  }
  if (r.resource.type_url() != type_url || !m->ParseFromString(r.resource.value())) {
    return absl::InvalidArgumentError(absl::StrCat(shortName(type_url), " '", r.name, "': cannot be decoded as ", type_url));
  }
  return std::shared_ptr<const google::protobuf::Message>(m);
}

// Unknown fields that would change what the proxy does if they were ignored: a resource carrying one
// is refused until the field is implemented (Envoy's numbers; the message's full name).
struct BehaviourField {
  const char* message;
  int number;
  const char* name;
};
constexpr BehaviourField kBehaviourFields[] = {
    {"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", 12, "tunneling_config"},
};

// Where the scan below is: the fields (and repeated indices, and typed_config payload types) from the
// resource's root. Kept as pointers and rendered only when an unknown field is found: a 10,000-cluster
// EDS push walks half a million messages, and building each one's path text took most of its decode time.
struct FieldPathSeg {
  const google::protobuf::FieldDescriptor* field = nullptr;  // null: a typed_config payload of type `payload`
  int index = -1;                                            // repeated element, or -1
  const google::protobuf::Descriptor* payload = nullptr;
};

std::string renderPath(const std::vector<FieldPathSeg>& path) {
  std::string out;
  for (const auto& seg : path) {
    if (seg.field == nullptr) {
      absl::StrAppend(&out, "<", seg.payload->name(), ">");
      continue;
    }
    if (!out.empty()) out.push_back('.');
    out += seg.field->name();
    if (seg.index >= 0) absl::StrAppend(&out, "[", seg.index, "]");
  }
  return out;
}

// Paths of fields the message carries that our .proto subset does not know (istiod sends many), also
// inside typed_config payloads of a type we know ("filter_chains[0].filters[0].typed_config<HttpConnectionManager>.#7").
// `behaviour` gets those of kBehaviourFields.
void unknownFields(const google::protobuf::Message& m, std::vector<FieldPathSeg>& path, std::vector<std::string>& out,
                   std::vector<std::string>& behaviour) {
  if (path.size() > 32) return;
  const auto* refl = m.GetReflection();
  const auto& unknown = refl->GetUnknownFields(m);
  for (int i = 0; i < unknown.field_count() && out.size() < 32; ++i) {
    const int number = unknown.field(i).number();
    std::string fp = renderPath(path);
    absl::StrAppend(&fp, fp.empty() ? "" : ".", "#", number);
    for (const auto& b : kBehaviourFields) {
      if (b.number == number && m.GetDescriptor()->full_name() == b.message) {
        behaviour.push_back(absl::StrCat(fp, " (", b.name, ")"));
      }
    }
    out.push_back(std::move(fp));
  }
  if (m.GetDescriptor() == google::protobuf::Any::descriptor()) {
    // A typed_config: its payload is a message of its own, with unknown fields of its own.
    const auto& any = static_cast<const google::protobuf::Any&>(m);
    const std::string& type_url = any.type_url();
    const auto* inner = google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(
        type_url.substr(type_url.rfind('/') + 1));
    if (inner == nullptr) return;
    const auto* proto = google::protobuf::MessageFactory::generated_factory()->GetPrototype(inner);
    if (proto == nullptr) return;
    std::unique_ptr<google::protobuf::Message> payload(proto->New());
    if (!payload->ParseFromString(any.value())) return;
    path.push_back({nullptr, -1, inner});
    unknownFields(*payload, path, out, behaviour);
    path.pop_back();
    return;
  }
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  refl->ListFields(m, &fields);
  for (const auto* f : fields) {
    if (f->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_repeated()) {
      for (int j = 0; j < refl->FieldSize(m, f); ++j) {
        path.push_back({f, j, nullptr});
        unknownFields(refl->GetRepeatedMessage(m, f, j), path, out, behaviour);
        path.pop_back();
      }
    } else {
      path.push_back({f, -1, nullptr});
      unknownFields(refl->GetMessage(m, f), path, out, behaviour);
      path.pop_back();
    }
  }
}

}  // namespace

XdsApplier::XdsApplier(Server& server, stats::Store& store, config::SnapshotConstSharedPtr initial,
                       bool reject_unknown_fields)
    : server_(server), store_(store), snapshot_(std::move(initial)), reject_unknown_(reject_unknown_fields) {
  auto sources = std::make_shared<config::ConfigSources>();
  sources->bootstrap = snapshot_->bootstrap;
  sources_ = sources;
  connected_state_ = store_.gauge("control_plane.connected_state");
  unknown_fields_ = store_.counter("xds.unknown_fields");
  // Envoy's names for the families dashboards look at.
  auto make = [&](const std::string& prefix) {
    return TypeStats{store_.counter(prefix + ".update_attempt"), store_.counter(prefix + ".update_success"),
                     store_.counter(prefix + ".update_rejected")};
  };
  type_stats_[xds::kClusterType] = make("cluster_manager.cds");
  type_stats_[xds::kListenerType] = make("listener_manager.lds");
  type_stats_[xds::kRouteType] = make("xds.rds");
  type_stats_[xds::kEndpointType] = make("xds.eds");
  type_stats_[xds::kSecretType] = make("xds.sds");
}

XdsApplier::~XdsApplier() { stop(); }

void XdsApplier::start() {
  const auto& ads = *snapshot_->ads;
  xds::AdsConfig cfg;
  cfg.target = ads.target;
  // An IP literal goes straight to gRPC's ipv4:/ipv6: resolvers: its DNS resolver would otherwise
  // consult the system's DNS configuration first (seconds where there is none).
  if (cfg.target.find(':') != std::string::npos && cfg.target.rfind("unix:", 0) != 0 &&
      cfg.target.find("://") == std::string::npos && cfg.target.rfind("ipv4:", 0) != 0 &&
      cfg.target.rfind("ipv6:", 0) != 0 && cfg.target.rfind("dns:", 0) != 0) {
    if (auto a = network::Address::parseHostPort(cfg.target)) cfg.target = (a->isV6() ? "ipv6:" : "ipv4:") + a->asString();
  }
  cfg.delta = ads.delta;
  cfg.cds_wildcard = ads.cds_wildcard;
  // Without cds_config there is no first CDS response to wait for: clusters come on demand.
  if (!ads.cds_wildcard) initialized_.insert(xds::kClusterType);
  cfg.initial_fetch_timeout_ms = ads.initial_fetch_timeout_ms;
  if (ads.tls) {
    cfg.tls = [tls = *ads.tls]() -> absl::StatusOr<xds::AdsConfig::Tls> {
      auto read = [](const config::AdsSettings::PemSource& src, std::string* out) -> absl::Status {
        if (src.filename.empty()) {
          *out = src.inline_data;
          return absl::OkStatus();
        }
        std::ifstream f(src.filename, std::ios::binary);
        if (!f) return absl::NotFoundError(absl::StrCat("cannot read '", src.filename, "'"));
        std::ostringstream ss;
        ss << f.rdbuf();
        *out = ss.str();
        return absl::OkStatus();
      };
      xds::AdsConfig::Tls out;
      for (auto st : {read(tls.root_certs, &out.root_certs), read(tls.private_key, &out.private_key),
                      read(tls.cert_chain, &out.cert_chain)}) {
        if (!st.ok()) return st;
      }
      out.target_name_override = tls.sni;
      return out;
    };
  }
  cfg.node = static_cast<const envoy::config::bootstrap::v3::Bootstrap&>(*snapshot_->bootstrap).node();
  cfg.node.set_user_agent_name("strait");
  cfg.node.set_user_agent_version(STRAIT_VERSION);
  cfg.log = [](int level, const std::string& message) {
    STRAIT_LOG(static_cast<common::LogLevel>(level), "xds: %s", message.c_str());
  };
  LOG_INFO("xds: connecting to %s (%s)", cfg.target.c_str(), cfg.delta ? "delta" : "state of the world");
  client_ = std::make_unique<xds::AdsClient>(std::move(cfg), *this);
  // Secrets the bootstrap's own listeners and clusters take over ADS (SDS).
  client_->setResourceNames(xds::kSecretType, certs::SecretManager::get().sdsNames());
  client_->start();
}

void XdsApplier::stop() {
  if (client_) client_->stop();
}

XdsApplier::TypeStats& XdsApplier::statsFor(const std::string& type_url) { return type_stats_[type_url]; }

std::shared_ptr<const config::ConfigSources> XdsApplier::sources() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sources_;
}

std::map<std::string, XdsApplier::TypeStatus> XdsApplier::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

namespace {
// The ADS client's thread writes the last stat shard.
void useXdsShard(stats::Store& store) {
  if (stats::threadShard() == nullptr) stats::setThreadShard(&store.shard(store.shardCount() - 1));
}
}  // namespace

absl::Status XdsApplier::onResources(const std::string& type_url, const std::vector<xds::Resource>& resources,
                                     const std::vector<std::string>& removed, const std::string& version, bool sotw) {
  useXdsShard(store_);
  auto& st = statsFor(type_url);
  stats::inc(st.update_attempt);
  auto result = apply(type_url, resources, removed, version, sotw);
  checkInitialized();  // an EDS or RDS response may complete the initial warming
  std::unique_lock<std::mutex> lock(mu_);
  if (!result.ok()) {
    stats::inc(st.update_rejected);
    status_[type_url].last_error = std::string(result.message());
    status_[type_url].last_error_version = version;
    LOG_WARN("xds: rejected %s version '%s': %s", shortName(type_url), version.c_str(),
             std::string(result.message()).c_str());
    return result;
  }
  stats::inc(st.update_success);
  status_[type_url].version = version;
  if (type_url == xds::kClusterType && !snapshot_->ads->cds_wildcard) {
    lock.unlock();
    reportMissingOnDemand(resources, removed, sotw);
    lock.lock();
  }
  LOG_INFO("xds: applied %s version '%s' (%zu resources, %zu removed)", shortName(type_url), version.c_str(),
           resources.size(), removed.size());
  return absl::OkStatus();
}

absl::Status XdsApplier::apply(const std::string& type_url, const std::vector<xds::Resource>& resources,
                               const std::vector<std::string>& removed, const std::string& version, bool sotw) {
  // Where an update's time goes (debug log): copying the held resources, decoding what changed,
  // building the snapshot, the workers taking it, the subscriptions.
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  auto next = std::make_shared<config::ConfigSources>(*sources_);
  const auto t_copy = Clock::now();
  config::ResourceMap* target = nullptr;
  if (type_url == xds::kClusterType) target = &next->clusters;
  if (type_url == xds::kListenerType) target = &next->listeners;
  if (type_url == xds::kRouteType) target = &next->routes;
  if (type_url == xds::kEndpointType) target = &next->endpoints;
  if (type_url == xds::kSecretType) target = &next->secrets;
  if (target == nullptr) return absl::InvalidArgumentError(absl::StrCat("unsupported resource type ", type_url));

  const int64_t now = config::nowUnixMs();
  // Every map is keyed by the name a resource was sent under (SotW: the resource's own name or its
  // discovery.v3.Resource wrapper's; delta: Resource.name): that is the name the client holds it by and
  // the name a removal (delta removed_resources, SotW absence) uses.
  // State of the world for LDS and CDS is the whole set; removals come from the client for the others.
  if (sotw && (type_url == xds::kClusterType || type_url == xds::kListenerType)) target->clear();
  for (const auto& name : removed) target->erase(name);
  const auto* prev_map = type_url == xds::kClusterType ? &sources_->clusters
                         : type_url == xds::kListenerType ? &sources_->listeners
                         : type_url == xds::kRouteType ? &sources_->routes
                         : type_url == xds::kSecretType ? &sources_->secrets : &sources_->endpoints;
  std::map<std::string, std::string> unknown_received;  // name -> unknown field paths ("" for none)
  // Partial acceptance, as Envoy does it: a resource that is refused (here, or when the snapshot is
  // built) is left at the version held before, or left out if it is new; the others are applied; the
  // response is NACKed naming every refused resource. name -> error, in the order found.
  std::vector<std::pair<std::string, std::string>> refused;
  std::set<std::string> refused_names;
  auto refuse = [&](const std::string& name, std::string error) {
    if (!refused_names.insert(name).second) return;
    refused.emplace_back(name, std::move(error));
    auto old = prev_map->find(name);
    if (old != prev_map->end()) {
      target->set(name, old->second);
    } else {
      target->erase(name);
    }
  };
  std::set<std::string> received;
  for (const auto& r : resources) received.insert(r.name);
  for (const auto& r : resources) {
    // The same bytes as the resource held (state of the world resends everything): the held message
    // stays, with the new version; it was decoded and checked when it came.
    const std::string& bytes = r.resource.value();
    const uint64_t h1 = absl::HashOf(std::string_view(bytes));
    const uint64_t h2 = std::hash<std::string_view>{}(bytes);
    auto held = prev_map->find(r.name);
    if (held != prev_map->end() && r.resource.type_url() == type_url && held->second.wire_size == bytes.size() &&
        held->second.wire_hash == h1 && held->second.wire_hash2 == h2) {
      config::DynamicResource res = held->second;
      res.version = r.version.empty() ? version : r.version;
      target->set(r.name, std::move(res));
      continue;
    }
    auto m = decode(type_url, r);
    if (!m.ok()) {
      refuse(r.name, std::string(m.status().message()));
      continue;
    }
    std::string inner;
    const char* field = "name";
    if (type_url == xds::kClusterType) inner = static_cast<const envoy::config::cluster::v3::Cluster&>(**m).name();
    if (type_url == xds::kListenerType) inner = static_cast<const envoy::config::listener::v3::Listener&>(**m).name();
    if (type_url == xds::kRouteType) inner = static_cast<const envoy::config::route::v3::RouteConfiguration&>(**m).name();
    if (type_url == xds::kEndpointType) {
      inner = static_cast<const envoy::config::endpoint::v3::ClusterLoadAssignment&>(**m).cluster_name();
      field = "cluster_name";
    }
    if (type_url == xds::kSecretType) {
      inner = static_cast<const envoy::extensions::transport_sockets::tls::v3::Secret&>(**m).name();
    }
    if (inner.empty()) {
      refuse(r.name, absl::StrCat(shortName(type_url), " '", r.name, "': ", field, ": is required"));
      continue;
    }
    // The name inside must be the name the resource was sent under (as Envoy requires of RDS, EDS and
    // SDS resources, and our SDS streams of secrets): held under one name and named by the config under
    // another, it could be neither found nor removed.
    if (inner != r.name) {
      refuse(r.name, absl::StrCat(shortName(type_url), " '", r.name, "': ", field, ": '", inner,
                                  "' differs from the name the resource was sent under ('", r.name, "')"));
      continue;
    }
    // Fields we do not implement are kept (protobuf holds them as unknown), counted and shown in
    // /config_dump; with --reject-unknown-dynamic-fields they are a NACK.
    std::vector<std::string> unknown;
    std::vector<std::string> behaviour;
    std::vector<FieldPathSeg> path;
    unknownFields(**m, path, unknown, behaviour);
    if (!behaviour.empty()) {
      // Ignoring these would change what the resource does: refused until implemented.
      refuse(r.name, absl::StrCat(shortName(type_url), " '", r.name, "': not implemented, and ignoring it would change ",
                                  "behaviour: ", absl::StrJoin(behaviour, ", ")));
      continue;
    }
    if (!unknown.empty()) {
      stats::inc(unknown_fields_, static_cast<int64_t>(unknown.size()));
      const std::string where = absl::StrCat(shortName(type_url), " '", r.name, "': unknown fields ", absl::StrJoin(unknown, ", "));
      if (reject_unknown_) {
        refuse(r.name, where);
        continue;
      }
    }
    unknown_received[r.name] = absl::StrJoin(unknown, ", ");
    config::DynamicResource res;
    res.version = r.version.empty() ? version : r.version;
    res.wire_hash = h1;
    res.wire_hash2 = h2;
    res.wire_size = bytes.size();
    // Unchanged resources keep the time they were last updated (same message, bytes encoded otherwise).
    bool same = false;
    if (held != prev_map->end()) {
      const std::string encoded = (*m)->SerializeAsString();
      if (held->second.proto) {
        same = held->second.proto->SerializeAsString() == encoded;
      } else if (held->second.wire) {
        std::unique_ptr<google::protobuf::Message> before((*m)->New());
        same = before->ParseFromString(*held->second.wire) && before->SerializeAsString() == encoded;
      }
    }
    res.last_updated_ms = same ? held->second.last_updated_ms : now;
    if (same) {
      // The held message (or bytes) stays, and what was built from it stays.
      res.proto = held->second.proto;
      res.wire = held->second.wire;
    } else if (type_url == xds::kEndpointType || type_url == xds::kClusterType) {
      res.wire = std::make_shared<const std::string>(bytes);  // as it came: see DynamicResource::wire
    } else {
      res.proto = *m;
    }
    target->set(r.name, std::move(res));
  }
  if (type_url == xds::kSecretType) {
    // Secrets do not rebuild the config: the TLS contexts that use one rebuild themselves (a rotation
    // leaves listeners, clusters and open connections alone). Every secret is checked before any is
    // published, so a bad one rejects the update whole.
    std::vector<std::pair<std::string, std::shared_ptr<const google::protobuf::Message>>> changed;
    for (const auto& [name, res] : *target) {
      auto old = sources_->secrets.find(name);
      if (old != sources_->secrets.end() && old->second.proto == res.proto) continue;
      if (old != sources_->secrets.end() && old->second.proto->SerializeAsString() == res.proto->SerializeAsString()) continue;
      changed.emplace_back(name, res.proto);
    }
    for (const auto& [name, proto] : changed) {
      auto st = certs::checkSdsSecret(*proto, absl::StrCat("Secret '", name, "'"));
      if (!st.ok()) refuse(name, std::string(st.message()));
    }
    for (const auto& [name, proto] : changed) {
      if (refused_names.count(name) != 0) continue;
      auto st = certs::applySdsSecret(*proto, absl::StrCat("Secret '", name, "'"));
      if (!st.ok()) refuse(name, std::string(st.message()));
    }
    for (const auto& name : refused_names) unknown_received.erase(name);
    std::lock_guard<std::mutex> lock(mu_);
    sources_ = next;
    commitUnknownFields(type_url, unknown_received, *next);
    return refusal(type_url, resources.size(), refused);
  }
  // A resource of this response that does not translate is refused and the snapshot built again
  // without it (at most a few rounds: each round refuses at least one more). A resource held from
  // before that no longer translates is not this response's fault: it keeps its previous version
  // (buildSnapshot does that) and is reported in the log.
  const auto t_decode = Clock::now();
  // What this update changed, for buildSnapshot to look at only that: the names whose held message is
  // not the one held before (resent bytes keep theirs), and those no longer held.
  config::ChangeHint hint;
  hint.clusters_only = type_url == xds::kClusterType || type_url == xds::kEndpointType;
  if (hint.clusters_only) {
    for (const auto& name : received) {
      const auto* now_held = target->get(name);
      const auto* before = prev_map->get(name);
      if (now_held == nullptr || before == nullptr || now_held->identityKey() != before->identityKey()) {
        hint.names.insert(name);
      }
    }
    for (const auto& name : removed) hint.names.insert(name);
    if (sotw && type_url == xds::kClusterType) {
      // State of the world: what is no longer sent is removed.
      for (const auto& [name, res] : *prev_map) {
        if (target->count(name) == 0) hint.names.insert(name);
      }
    }
  }
  absl::StatusOr<config::BuildResult> built;
  for (int round = 0; round < 4; ++round) {
    built = config::buildSnapshot(next, snapshot_.get(), store_, config::clusterIds(), &hint);
    if (!built.ok()) return built.status();  // the bootstrap's own resources: nothing to keep apart
    bool again = false;
    for (const auto& rj : built->rejected) {
      // A cluster of this CDS response whose held endpoints no longer fit it is the cluster's fault.
      const bool cluster_eds = type_url == xds::kClusterType && rj.type == "ClusterLoadAssignment";
      const std::string& name = cluster_eds ? rj.cluster : rj.name;
      if ((rj.type != shortName(type_url) && !cluster_eds) || received.count(name) == 0 ||
          refused_names.count(name) != 0) {
        continue;
      }
      refuse(name, rj.error);
      again = true;
    }
    if (!again) break;
  }
  for (const auto& rj : built->rejected) {
    if (refused_names.count(rj.name) != 0 && rj.type == shortName(type_url)) continue;
    if (refused_names.count(rj.cluster) != 0 && type_url == xds::kClusterType) continue;
    LOG_WARN("xds: %s '%s' (held from an earlier update) keeps its previous version: %s", rj.type.c_str(),
             rj.name.c_str(), rj.error.c_str());
  }
  for (const auto& name : refused_names) unknown_received.erase(name);
  for (const auto& w : built->warming) LOG_DEBUG("xds: warming: %s", w.c_str());
  const auto t_build = Clock::now();
  auto st = server_.applySnapshot(built->snapshot);
  const auto t_apply = Clock::now();
  if (!st.ok()) return st;
  snapshot_ = built->snapshot;
  // Endpoints and route configurations nothing refers to any more (their cluster or listener went) are
  // dropped with their subscription: neither state of the world nor delta sends a removal for a name we
  // stop asking for, and kept they would pile up with every cluster ever seen.
  // Only when the wanted sets changed (a pass over every held resource otherwise, for nothing).
  const bool rds_changed = built->rds_names != asked_rds_;
  // The EDS names no longer wanted, by one ordered walk of the two sets (a cluster added to 10,000
  // changes the set but removes nothing: no pass over the held endpoints then).
  bool eds_changed = false;
  std::vector<std::string> eds_gone;
  if (built->eds_names != asked_eds_) {
    static const std::set<std::string> kNone;
    const auto& now = built->eds_names ? *built->eds_names : kNone;
    const auto& was = asked_eds_ ? *asked_eds_ : kNone;
    eds_changed = !asked_eds_ || now.size() != was.size();
    auto n = now.begin();
    for (auto w = was.begin(); w != was.end(); ++w) {
      while (n != now.end() && *n < *w) {
        ++n;
        eds_changed = true;
      }
      if (n != now.end() && *n == *w) {
        ++n;
      } else {
        eds_gone.push_back(*w);
        eds_changed = true;
      }
    }
    if (n != now.end()) eds_changed = true;
  }
  for (const auto& name : eds_gone) next->endpoints.erase(name);
  if (!asked_eds_ && built->eds_names) {
    next->endpoints.eraseIf([&](const auto& name, const auto&) { return built->eds_names->count(name) == 0; });
  }
  if (rds_changed) next->routes.eraseIf([&](const auto& name, const auto&) { return built->rds_names.count(name) == 0; });
  const bool shrank = next->clusters.size() < sources_->clusters.size() ||
                      next->listeners.size() < sources_->listeners.size() ||
                      next->endpoints.size() < sources_->endpoints.size() || next->routes.size() < sources_->routes.size();
  {
    std::lock_guard<std::mutex> lock(mu_);
    sources_ = next;
    commitUnknownFields(type_url, unknown_received, *next);
  }
  // When resources went, the previous config's protos, clusters and stats are being freed. glibc keeps
  // freed heap for reuse and RSS would stay at its peak after clusters go: the server hands it back a
  // second later, once connections and admin requests on the previous config have let it go. Not after
  // every update: the trim walks the whole heap (tens of ms at 10,000 clusters), and an update that
  // only changes or adds things frees little.
  if (shrank) server_.trimHeapSoon();
  // Ask for what the new config refers to (full sets, as SotW wants).
  // Only when they changed: most updates leave them as they are, and each is a full list (10,000 names
  // at 10,000 EDS clusters) the client would copy and compare.
  if (rds_changed) {
    asked_rds_ = built->rds_names;
    client_->setResourceNames(xds::kRouteType, {asked_rds_.begin(), asked_rds_.end()});
  }
  if (eds_changed) {
    asked_eds_ = built->eds_names;
    client_->setResourceNames(xds::kEndpointType, {asked_eds_->begin(), asked_eds_->end()});
  }
  client_->setResourceNames(xds::kSecretType, certs::SecretManager::get().sdsNames());
  const auto t_end = Clock::now();
  LOG_DEBUG("xds: %s update took %.2f ms: copy %.2f, decode %.2f, build %.2f, workers %.2f, rest %.2f", shortName(type_url),
            ms(t0, t_end), ms(t0, t_copy), ms(t_copy, t_decode), ms(t_decode, t_build), ms(t_build, t_apply),
            ms(t_apply, t_end));
  if (type_url == xds::kClusterType || type_url == xds::kListenerType) onInitialFetchDone(type_url, false);
  return refusal(type_url, resources.size(), refused);
}

absl::Status XdsApplier::refusal(const std::string& type_url, size_t received,
                                 const std::vector<std::pair<std::string, std::string>>& refused) {
  if (refused.empty()) return absl::OkStatus();
  std::vector<std::string> names;
  std::string message = absl::StrCat(refused.size(), " of ", received, " ", shortName(type_url),
                                     " resources refused (the others were applied): ");
  for (size_t i = 0; i < refused.size(); ++i) {
    names.push_back(refused[i].first);
    if (i > 0) message += "; ";
    message += refused[i].second;
  }
  return xds::partiallyAccepted(absl::InvalidArgumentError(message), names);
}

// With mu_ held, once an update is applied: the resources it carried replace their records (none when
// they came without unknown fields), and records of resources no longer held are dropped, whatever took
// them away (a delta removal, SotW absence, an endpoint or route configuration nothing refers to).
void XdsApplier::commitUnknownFields(const std::string& type_url, const std::map<std::string, std::string>& received,
                                     const config::ConfigSources& held) {
  auto& mine = unknown_seen_[type_url];
  for (const auto& [name, fields] : received) {
    if (fields.empty()) {
      mine.erase(name);
    } else {
      mine[name] = fields;
    }
  }
  const std::pair<const char*, const config::ResourceMap*> types[] = {
      {xds::kClusterType, &held.clusters}, {xds::kListenerType, &held.listeners}, {xds::kRouteType, &held.routes},
      {xds::kEndpointType, &held.endpoints}, {xds::kSecretType, &held.secrets}};
  for (const auto& [type, resources] : types) {
    auto it = unknown_seen_.find(type);
    if (it == unknown_seen_.end()) continue;
    std::erase_if(it->second, [&](const auto& kv) { return resources->count(kv.first) == 0; });
    if (it->second.empty()) unknown_seen_.erase(it);
  }
}

std::map<std::string, std::string> XdsApplier::unknownFieldsSeen() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::map<std::string, std::string> out;
  for (const auto& [type, by_name] : unknown_seen_) {
    for (const auto& [name, fields] : by_name) out[absl::StrCat(shortName(type), " '", name, "'")] = fields;
  }
  return out;
}

void XdsApplier::onResourceDoesNotExist(const std::string& type_url, const std::string& name) {
  LOG_WARN("xds: %s '%s' does not exist (no answer within the timeout)", shortName(type_url), name.c_str());
  if (type_url == xds::kClusterType) server_.onDemandClusterMissing(name);
}

void XdsApplier::setOnDemandClusters(std::vector<std::string> names) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    on_demand_.insert(names.begin(), names.end());
  }
  if (client_) client_->setResourceNames(xds::kClusterType, std::move(names));
}

void XdsApplier::reportMissingOnDemand(const std::vector<xds::Resource>& resources,
                                       const std::vector<std::string>& removed, bool sotw) {
  std::vector<std::string> missing;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (on_demand_.empty()) return;
    if (sotw) {
      // A state-of-the-world CDS response holds every subscribed cluster that exists: the others do not.
      // Known race: a push already on its way for the previous subscription lacks a name just added, so
      // that name's first request may get cluster_not_found it did not need (the next response brings
      // the cluster, which clears the mark). Delta answers each name itself and has no such race.
      std::set<std::string_view> got;
      for (const auto& r : resources) got.insert(r.name);
      for (const auto& n : on_demand_) {
        if (got.count(n) == 0) missing.push_back(n);
      }
    } else {
      for (const auto& n : removed) {
        if (on_demand_.count(n) != 0) missing.push_back(n);
      }
    }
  }
  for (const auto& n : missing) server_.onDemandClusterMissing(n);
}

void XdsApplier::onRejectedByClient(const std::string& type_url, const std::string& version, const std::string& error) {
  useXdsShard(store_);
  auto& st = statsFor(type_url);
  stats::inc(st.update_attempt);
  stats::inc(st.update_rejected);
  std::lock_guard<std::mutex> lock(mu_);
  status_[type_url].last_error = error;
  status_[type_url].last_error_version = version;
  LOG_WARN("xds: rejected %s version '%s': %s", shortName(type_url), version.c_str(), error.c_str());
}

void XdsApplier::onStreamState(bool connected) {
  useXdsShard(store_);
  stats::set(store_, connected_state_, connected ? 1 : 0);
  LOG_INFO("xds: stream %s", connected ? "connected" : "disconnected");
}

void XdsApplier::onInitialFetchDone(const std::string& type_url, bool timed_out) {
  if (timed_out) LOG_WARN("xds: initial fetch of %s timed out; going on with what there is", shortName(type_url));
  if (type_url != xds::kClusterType && type_url != xds::kListenerType) return;
  initialized_.insert(type_url);
  checkInitialized();
}

size_t XdsApplier::stillWarming(std::vector<std::string>* shown) const {
  size_t n = 0;
  auto note = [&](const char* type, const std::string& name) {
    if (n++ < 5) shown->push_back(absl::StrCat(type, " '", name, "'"));
  };
  for (const auto& [name, res] : sources_->clusters) {
    if (snapshot_->clusters_by_name.count(name) == 0) note("Cluster", name);
  }
  std::set<std::string_view> in_force;
  for (const auto& l : snapshot_->listeners) in_force.insert(l->name);
  for (const auto& [name, res] : sources_->listeners) {
    if (in_force.count(name) == 0) note("Listener", name);
  }
  return n;
}

void XdsApplier::checkInitialized() {
  if (ready_signalled_ || !initialized_.count(xds::kClusterType) || !initialized_.count(xds::kListenerType)) return;
  // A held resource that is not in force waits for what it depends on (refused ones are not held), as
  // Envoy's initial clusters wait for their ClusterLoadAssignment and its initial listeners for their
  // RouteConfiguration before the server is ready: /ready, and a hot restart child's accepting and
  // its parent's drain, come after them. A scan of the held resources per update, until then only.
  std::vector<std::string> shown;
  const size_t warming = stillWarming(&shown);
  if (warming == 0) {
    if (warming_wait_started_) LOG_INFO("xds: initial clusters and listeners warmed");
    ready_signalled_ = true;
    server_.onXdsInitialized();
    return;
  }
  if (warming_wait_started_) return;
  warming_wait_started_ = true;
  LOG_INFO("xds: first CDS and LDS applied; waiting for %zu resources to warm (%s%s), up to %" PRIu64 " ms",
           warming, absl::StrJoin(shown, ", ").c_str(), warming > shown.size() ? ", ..." : "",
           snapshot_->ads->initial_fetch_timeout_ms);
  // The bound is the initial fetch timeout again (Envoy's EDS and RDS subscriptions each have one);
  // 0 waits as long as it takes.
  server_.onXdsWarming(snapshot_->ads->initial_fetch_timeout_ms);
}

}  // namespace strait::server
