// Reading a bootstrap: YAML or JSON text into an envoy Bootstrap proto, checked and translated.
#include "proxy/config/translate_internal.h"


#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "certs/client_hello.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
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
#include "proxy/config/node_metadata.h"
#include "proxy/http/matchers.h"
#include "proxy/upstream/health_checker.h"
#include "strait/lb/v1/peak_ewma.pb.h"

namespace strait::config {

namespace bootstrap_v3 = envoy::config::bootstrap::v3;
namespace cluster_v3 = envoy::config::cluster::v3;
namespace listener_v3 = envoy::config::listener::v3;
namespace core_v3 = envoy::config::core::v3;
namespace endpoint_v3 = envoy::config::endpoint::v3;
namespace route_v3 = envoy::config::route::v3;

namespace {

// ---- YAML -> JSON ----------------------------------------------------------------------------------

void mergeYaml(YAML::Node base, const YAML::Node& overlay) {
  for (auto it = overlay.begin(); it != overlay.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    if (base[key] && base[key].IsMap() && it->second.IsMap()) {
      mergeYaml(base[key], it->second);
    } else {
      base[key] = it->second;
    }
  }
}

void jsonString(std::ostringstream& out, const std::string& s) {
  out << '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out << "\\\""; break;
      case '\\': out << "\\\\"; break;
      case '\n': out << "\\n"; break;
      case '\r': out << "\\r"; break;
      case '\t': out << "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out << buf;
        } else {
          out << c;
        }
    }
  }
  out << '"';
}

bool looksNumeric(const std::string& s) {
  if (s.empty()) return false;
  size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i >= s.size()) return false;
  bool digits = false, dot = false, exp = false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c >= '0' && c <= '9') {
      digits = true;
    } else if (c == '.' && !dot && !exp) {
      dot = true;
    } else if ((c == 'e' || c == 'E') && digits && !exp) {
      exp = true;
      if (i + 1 < s.size() && (s[i + 1] == '-' || s[i + 1] == '+')) ++i;
    } else {
      return false;
    }
  }
  // A leading '+' or a leading zero followed by digits is not JSON; keep those as strings.
  if (s[0] == '+') return false;
  if (s.size() > 1 && s[0] == '0' && s[1] != '.') return false;
  return digits;
}

void emitJson(std::ostringstream& out, const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      out << "null";
      break;
    case YAML::NodeType::Scalar: {
      const std::string& v = n.Scalar();
      if (n.Tag() == "!") {  // quoted: always a string
        jsonString(out, v);
      } else if (v == "true" || v == "false") {
        out << v;
      } else if (v == "null" || v == "~") {
        out << "null";
      } else if (looksNumeric(v)) {
        out << v;
      } else {
        jsonString(out, v);
      }
      break;
    }
    case YAML::NodeType::Sequence: {
      out << '[';
      bool first = true;
      for (const auto& e : n) {
        if (!first) out << ',';
        first = false;
        emitJson(out, e);
      }
      out << ']';
      break;
    }
    case YAML::NodeType::Map: {
      out << '{';
      bool first = true;
      for (auto it = n.begin(); it != n.end(); ++it) {
        if (!first) out << ',';
        first = false;
        jsonString(out, it->first.as<std::string>());
        out << ':';
        emitJson(out, it->second);
      }
      out << '}';
      break;
    }
  }
}

}  // namespace

absl::StatusOr<std::string> yamlToJson(const std::string& yaml, const std::string& overlay, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg));
  }
  if (!overlay.empty()) {
    YAML::Node over;
    try {
      over = YAML::Load(overlay);
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("--config-yaml: line ", e.mark.line + 1, ": ", e.msg));
    }
    if (!over.IsMap()) return absl::InvalidArgumentError("--config-yaml: must be a mapping");
    if (!root.IsDefined() || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    try {
      mergeYaml(root, over);
    } catch (const YAML::Exception& e) {  // a key that is not a scalar, as below
      return absl::InvalidArgumentError(absl::StrCat("--config-yaml: line ", e.mark.line + 1, ": ", e.msg));
    }
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat(source, " is not a mapping of bootstrap fields"));
  std::ostringstream out;
  try {
    emitJson(out, root);
  } catch (const YAML::Exception& e) {
    // A mapping key that is not a scalar (`? [a, b]: c`, `{x: 1}: y`): JSON has no such key.
    return absl::InvalidArgumentError(
        absl::StrCat("line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg));
  }
  return out.str();
}

std::vector<std::string> inertBootstrapFields(const google::protobuf::Message& message) {
  const auto& b = static_cast<const bootstrap_v3::Bootstrap&>(message);
  std::vector<std::string> out;
  auto add = [&](bool present, const char* field, const char* why) {
    if (present) out.push_back(absl::StrCat(field, " (", why, ")"));
  };
  add(b.stats_sinks_size() > 0, "stats_sinks", "stats are pulled from the admin endpoint, never pushed");
  add(b.has_stats_flush_interval(), "stats_flush_interval", "no stats sinks");
  add(b.has_tracing(), "tracing", "no spans are sent from it; tracing is set per HTTP connection manager (tracing.provider)");
  add(b.bootstrap_extensions_size() > 0, "bootstrap_extensions", "none is implemented");
  add(b.has_deferred_stat_options(), "deferred_stat_options", "stats are made at config time");
  add(b.stats_config().histogram_bucket_settings_size() > 0, "stats_config.histogram_bucket_settings",
      "histograms have fixed buckets");
  const auto* log_path = b.admin().GetDescriptor()->FindFieldByName("access_log_path");  // deprecated in Envoy
  add(b.admin().access_log_size() > 0 || b.admin().GetReflection()->HasField(b.admin(), log_path), "admin.access_log",
      "admin requests are not logged");
  add(!b.admin().profile_path().empty(), "admin.profile_path", "no CPU profiler");
  add(b.cluster_manager().has_outlier_detection(), "cluster_manager.outlier_detection.event_log_path",
      "ejections are counted in stats and shown in /clusters, not written to a file");
  add(b.cluster_manager().has_load_stats_config(), "cluster_manager.load_stats_config", "no load reports");
  add(b.cluster_manager().enable_deferred_cluster_creation(), "cluster_manager.enable_deferred_cluster_creation",
      "clusters are made when their config arrives");
  return out;
}

absl::StatusOr<SnapshotConstSharedPtr> loadBootstrap(const LoadOptions& options, stats::Store& store) {
  auto b = parseBootstrap(options);
  if (!b.ok()) return b.status();
  // Accepted, changes nothing here: said once, by name, so nobody believes it works.
  for (const auto& f : inertBootstrapFields(**b)) LOG_WARN("bootstrap: accepted but inert: %s", f.c_str());
  auto sources = std::make_shared<ConfigSources>();
  sources->bootstrap = *b;
  auto r = buildSnapshot(sources, nullptr, store, clusterIds());
  if (!r.ok()) return r.status();
  return r->snapshot;
}

absl::StatusOr<std::shared_ptr<const google::protobuf::Message>> parseBootstrap(const LoadOptions& options) {
  std::string text;
  if (options.path.empty()) {
    text = kDefaultBootstrapYaml;
  } else {
    std::ifstream in(options.path, std::ios::binary);
    if (!in) return absl::NotFoundError("cannot open the file");
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  return parseBootstrapText(text, options.path.empty() ? "default" : options.path, options);
}

namespace {
std::string& environmentNodeMetadata() {
  static auto* json = new std::string;
  return *json;
}
}  // namespace

void setEnvironmentNodeMetadata(std::string json) { environmentNodeMetadata() = std::move(json); }

absl::StatusOr<std::shared_ptr<const google::protobuf::Message>> parseBootstrapText(const std::string& text,
                                                                                   const std::string& source,
                                                                                   const LoadOptions& options) {
  auto json = yamlToJson(text, options.config_yaml, source);
  if (!json.ok()) return json.status();

  auto bootstrap = std::make_shared<bootstrap_v3::Bootstrap>();
  google::protobuf::util::JsonParseOptions parse_options;
  // Envoy takes enum names in any case ("least_request", "strict_dns", Istio's "default"/"high").
  parse_options.case_insensitive_enum_parsing = true;
  parse_options.ignore_unknown_fields = false;
  auto st = google::protobuf::util::JsonStringToMessage(*json, bootstrap.get(), parse_options);
  if (!st.ok()) {
    if (!options.allow_unknown_static_fields) return absl::InvalidArgumentError(std::string(st.message()));
    bootstrap->Clear();
    parse_options.ignore_unknown_fields = true;
    auto st2 = google::protobuf::util::JsonStringToMessage(*json, bootstrap.get(), parse_options);
    if (!st2.ok()) return absl::InvalidArgumentError(std::string(st2.message()));
    LOG_WARN("ignoring unknown fields (--allow-unknown-static-fields): %s", std::string(st.message()).c_str());
  }
  if (!options.service_node.empty()) bootstrap->mutable_node()->set_id(options.service_node);
  if (!options.service_cluster.empty()) bootstrap->mutable_node()->set_cluster(options.service_cluster);
  if (const std::string& env_md = environmentNodeMetadata(); !env_md.empty()) {
    // The pod's STRAIT_META_* / ISTIO_META_* variables (server/pod_env.cc): what the control plane
    // learns about this workload.
    google::protobuf::Struct md;
    auto mst = google::protobuf::util::JsonStringToMessage(env_md, &md);
    if (!mst.ok()) return absl::InvalidArgumentError(absl::StrCat("node.metadata from the environment: ", std::string(mst.message())));
    auto& fields = *bootstrap->mutable_node()->mutable_metadata()->mutable_fields();
    for (auto& [key, value] : *md.mutable_fields()) fields[key] = std::move(value);
  }
  if (auto neg = rejectNegativeDurations(*bootstrap, ""); !neg.ok()) return neg;
  return std::shared_ptr<const google::protobuf::Message>(bootstrap);
}

absl::Status rejectNegativeDurations(const google::protobuf::Message& m, const std::string& path) {
  using google::protobuf::FieldDescriptor;
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  if (d->full_name() == "google.protobuf.Duration") {
    const int64_t secs = r->GetInt64(m, d->FindFieldByName("seconds"));
    const int32_t nanos = r->GetInt32(m, d->FindFieldByName("nanos"));
    if (secs < 0 || nanos < 0) return fieldError(path, "must not be negative");
    return absl::OkStatus();
  }
  if (d->full_name() == "google.protobuf.Any") {
    // Typed configs (filters, transport sockets) are checked too, by their own type.
    const std::string url = r->GetString(m, d->FindFieldByName("type_url"));
    const auto* inner_d = google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(url.substr(url.rfind('/') + 1));
    if (inner_d == nullptr) return absl::OkStatus();
    std::unique_ptr<google::protobuf::Message> inner(google::protobuf::MessageFactory::generated_factory()->GetPrototype(inner_d)->New());
    if (!inner->ParseFromString(r->GetString(m, d->FindFieldByName("value")))) return absl::OkStatus();
    return rejectNegativeDurations(*inner, path);
  }
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const auto* f : fields) {
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE || f->is_map()) continue;
    const std::string fp = path.empty() ? f->name() : path + "." + f->name();
    if (f->is_repeated()) {
      for (int i = 0; i < r->FieldSize(m, f); ++i) {
        if (auto st = rejectNegativeDurations(r->GetRepeatedMessage(m, f, i), absl::StrCat(fp, "[", i, "]")); !st.ok()) return st;
      }
    } else if (auto st = rejectNegativeDurations(r->GetMessage(m, f), fp); !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

}  // namespace strait::config
