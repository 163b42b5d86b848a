#include "proxy/server/config_dump.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <set>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/common/json.h"
#include "proxy/config/bootstrap.h"
#include "proxy/server/server.h"
#include "proxy/server/xds_applier.h"
#include "re2/re2.h"

namespace strait::server {

namespace {

constexpr char kTypePrefix[] = "type.googleapis.com/";
constexpr char kAdminPrefix[] = "type.googleapis.com/envoy.admin.v3.";

std::string jsonEscape(const std::string& s) { return common::jsonString(s); }

// Replaces inline private keys (TlsCertificate.private_key given as inline bytes or string) with
// "[redacted]", also inside Any fields (transport sockets, filters), as Envoy's config_dump does.
// Returns true if anything was changed.
bool redactSecrets(google::protobuf::Message& m) {
  using google::protobuf::FieldDescriptor;
  const auto* d = m.GetDescriptor();
  const auto* r = m.GetReflection();
  bool changed = false;
  if (d->full_name() == "envoy.extensions.transport_sockets.tls.v3.TlsCertificate") {
    const auto* f = d->FindFieldByName("private_key");
    if (f != nullptr && r->HasField(m, f)) {
      auto* ds = r->MutableMessage(&m, f);
      const auto* dd = ds->GetDescriptor();
      const auto* filename = dd->FindFieldByName("filename");
      if (filename != nullptr && !ds->GetReflection()->HasField(*ds, filename)) {
        ds->GetReflection()->SetString(ds, dd->FindFieldByName("inline_string"), "[redacted]");
        changed = true;
      }
    }
  }
  if (d->full_name() == "google.protobuf.Any") {
    const std::string type_url = r->GetString(m, d->FindFieldByName("type_url"));
    const std::string name = type_url.substr(type_url.rfind('/') + 1);
    const auto* inner_d = google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(name);
    if (inner_d == nullptr) return false;
    std::unique_ptr<google::protobuf::Message> inner(
        google::protobuf::MessageFactory::generated_factory()->GetPrototype(inner_d)->New());
    if (!inner->ParseFromString(r->GetString(m, d->FindFieldByName("value")))) return false;
    if (!redactSecrets(*inner)) return false;
    r->SetString(&m, d->FindFieldByName("value"), inner->SerializeAsString());
    return true;
  }
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (f->is_map()) continue;  // no secrets live in maps of our subset's messages
    if (f->is_repeated()) {
      for (int j = 0; j < r->FieldSize(m, f); ++j) changed = redactSecrets(*r->MutableRepeatedMessage(&m, f, j)) || changed;
    } else if (r->HasField(m, f)) {
      changed = redactSecrets(*r->MutableMessage(&m, f)) || changed;
    }
  }
  return changed;
}

std::string protoJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  std::unique_ptr<google::protobuf::Message> copy(m.New());
  copy->CopyFrom(m);
  redactSecrets(*copy);
  if (!google::protobuf::util::MessageToJsonString(*copy, &out, o).ok()) return "{}";
  return out;
}

// The message as the JSON of a google.protobuf.Any holding it: its fields after an "@type".
std::string anyJson(const google::protobuf::Message& m) {
  std::string body = protoJson(m);
  std::string out = absl::StrCat("{\"@type\":\"", kTypePrefix, m.GetDescriptor()->full_name(), "\"");
  if (body.size() > 2) {
    absl::StrAppend(&out, ",", absl::string_view(body).substr(1));  // "{...}" -> ",...}"
  } else {
    out += "}";
  }
  return out;
}

// One element of a repeated field of a *ConfigDump: its fields (JSON members, no braces) and the
// resource name name_regex matches.
struct Entry {
  std::string name;
  std::string fields;
};

struct Section {
  const char* field;       // "dynamic_active_clusters"
  const char* entry_type;  // "ClustersConfigDump.DynamicCluster"
  std::vector<Entry> entries;
};

struct Dump {
  const char* type;  // "ClustersConfigDump"
  std::string head;  // its singular members ("version_info", "bootstrap", ...), JSON, no braces
  std::vector<Section> sections;
  bool envoy = true;  // false: Strait's own (not reachable with resource=)
};

std::string renderDump(const Dump& d) {
  std::string out = absl::StrCat("{\"@type\":\"", d.envoy ? kAdminPrefix : "type.googleapis.com/strait.admin.", d.type, "\"");
  if (!d.head.empty()) absl::StrAppend(&out, ",", d.head);
  for (const auto& s : d.sections) {
    absl::StrAppend(&out, ",\"", s.field, "\":[");
    bool first = true;
    for (const auto& e : s.entries) {
      absl::StrAppend(&out, first ? "{" : ",{", e.fields, "}");
      first = false;
    }
    out += "]";
  }
  out += "}";
  return out;
}

// A field mask (comma-separated dotted paths) as a tree of field names.
struct MaskNode {
  std::map<std::string, MaskNode> children;
};

MaskNode parseMask(const std::string& mask) {
  MaskNode root;
  for (absl::string_view path : absl::StrSplit(mask, ',', absl::SkipWhitespace())) {
    MaskNode* n = &root;
    for (absl::string_view part : absl::StrSplit(path, '.', absl::SkipEmpty())) n = &n->children[std::string(part)];
  }
  return root;
}

void trimValue(google::protobuf::Value& v, const MaskNode& node);

// Keeps the fields the mask names (and every "@type": an Any stays an Any). A path that reaches a
// repeated field applies to each element.
void trimStruct(google::protobuf::Struct& s, const MaskNode& node) {
  auto* fields = s.mutable_fields();
  for (auto it = fields->begin(); it != fields->end();) {
    if (it->first == "@type") {
      ++it;
      continue;
    }
    auto child = node.children.find(it->first);
    if (child == node.children.end()) {
      it = fields->erase(it);
      continue;
    }
    if (!child->second.children.empty()) trimValue(it->second, child->second);
    ++it;
  }
}

void trimValue(google::protobuf::Value& v, const MaskNode& node) {
  if (v.has_struct_value()) {
    trimStruct(*v.mutable_struct_value(), node);
  } else if (v.has_list_value()) {
    for (auto& e : *v.mutable_list_value()->mutable_values()) trimValue(e, node);
  }
}

// JSON of a Struct value with each object's "@type" first (as protobuf prints an Any) and the other
// members sorted, so masked output reads like the unmasked one.
void appendValue(std::string& out, const google::protobuf::Value& v) {
  switch (v.kind_case()) {
    case google::protobuf::Value::kStructValue: {
      const auto& fields = v.struct_value().fields();
      std::vector<const std::string*> keys;
      for (const auto& [k, unused] : fields) keys.push_back(&k);
      std::sort(keys.begin(), keys.end(), [](const std::string* a, const std::string* b) {
        if ((*a == "@type") != (*b == "@type")) return *a == "@type";
        return *a < *b;
      });
      out.push_back('{');
      for (size_t i = 0; i < keys.size(); ++i) {
        if (i) out.push_back(',');
        common::appendJsonString(out, *keys[i]);
        out.push_back(':');
        appendValue(out, fields.at(*keys[i]));
      }
      out.push_back('}');
      return;
    }
    case google::protobuf::Value::kListValue: {
      out.push_back('[');
      bool first = true;
      for (const auto& e : v.list_value().values()) {
        if (!first) out.push_back(',');
        first = false;
        appendValue(out, e);
      }
      out.push_back(']');
      return;
    }
    case google::protobuf::Value::kStringValue:
      common::appendJsonString(out, v.string_value());
      return;
    case google::protobuf::Value::kBoolValue:
      out += v.bool_value() ? "true" : "false";
      return;
    case google::protobuf::Value::kNumberValue: {
      // Numbers in the dump are 32-bit fields (64-bit ones are strings in proto JSON): exact as doubles.
      const double d = v.number_value();
      char buf[32];
      if (d == static_cast<double>(static_cast<int64_t>(d))) {
        std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(d));
      } else {
        std::snprintf(buf, sizeof(buf), "%.17g", d);
      }
      out += buf;
      return;
    }
    default:
      out += "null";
  }
}

std::string applyMask(const std::string& json, const MaskNode& mask) {
  google::protobuf::Value v;
  if (!google::protobuf::util::JsonStringToMessage(json, &v).ok() || !v.has_struct_value()) return json;
  trimStruct(*v.mutable_struct_value(), mask);
  std::string out;
  appendValue(out, v);
  return out;
}

// Route configurations given inline in a listener's HTTP connection managers (Envoy dumps them as
// static_route_configs, whichever way the listener came).
void inlineRoutes(const google::protobuf::Message& listener_msg,
                  std::vector<std::shared_ptr<envoy::config::route::v3::RouteConfiguration>>& out) {
  const auto* listener = dynamic_cast<const envoy::config::listener::v3::Listener*>(&listener_msg);
  if (listener == nullptr) return;
  auto scan = [&](const envoy::config::listener::v3::FilterChain& chain) {
    for (const auto& f : chain.filters()) {
      envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager hcm;
      if (!f.has_typed_config() || !f.typed_config().Is<decltype(hcm)>() || !f.typed_config().UnpackTo(&hcm)) continue;
      if (!hcm.has_route_config()) continue;
      out.push_back(std::make_shared<envoy::config::route::v3::RouteConfiguration>(hcm.route_config()));
    }
  };
  for (const auto& chain : listener->filter_chains()) scan(chain);
  if (listener->has_default_filter_chain()) scan(listener->default_filter_chain());
}

}  // namespace

LocalHttpResponse configDump(Server& server, const std::map<std::string, std::string>& query) {
  LocalHttpResponse r;
  r.content_type = "application/json";
  const auto get = [&](const char* key) -> const std::string* {
    auto it = query.find(key);
    return it == query.end() ? nullptr : &it->second;
  };
  std::unique_ptr<re2::RE2> name_re;
  if (const std::string* re = get("name_regex"); re != nullptr && !re->empty()) {
    name_re = std::make_unique<re2::RE2>(*re);
    if (!name_re->ok()) {
      return LocalHttpResponse{400, "text/plain", absl::StrCat("name_regex: invalid regex: ", name_re->error(), "\n")};
    }
  }
  const bool include_eds = get("include_eds") != nullptr;
  const std::string* resource = get("resource");
  const std::string* mask = get("mask");
  const auto wanted = [&](const std::string& name) { return !name_re || re2::RE2::FullMatch(name, *name_re); };

  const auto snap = server.snapshot();
  const config::ConfigSources* src = snap->sources.get();
  std::map<std::string, XdsApplier::TypeStatus> status;
  if (server.xds() != nullptr) status = server.xds()->status();
  const auto typeVersion = [&](const char* type) -> std::string {
    auto it = status.find(absl::StrCat(kTypePrefix, type));
    return it == status.end() ? std::string() : it->second.version;
  };
  auto lastUpdated = [&](const config::ResourceMap* m, const std::string& name) {
    if (m) {
      auto it = m->find(name);
      if (it != m->end()) return config::formatRfc3339(it->second.last_updated_ms);
    }
    return snap->loaded_at;
  };
  // A version reused by an update that resent the same bytes under a new version_info shows the new
  // one, as the resource held says.
  auto versionOf = [&](const config::ResourceMap* m, const std::string& name, const std::string& own,
                       const void* source) -> const std::string& {
    if (m) {
      auto it = m->find(name);
      if (it != m->end() && it->second.identityKey() == source) return it->second.version;
    }
    return own;
  };

  std::vector<Dump> dumps;
  {
    Dump d{"BootstrapConfigDump", absl::StrCat("\"bootstrap\":", protoJson(*snap->bootstrap), ",\"last_updated\":\"",
                                               snap->loaded_at, "\""), {}};
    dumps.push_back(std::move(d));
  }
  std::vector<std::shared_ptr<envoy::config::route::v3::RouteConfiguration>> static_routes;
  {
    Dump d{"ClustersConfigDump", "", {{"static_clusters", "ClustersConfigDump.StaticCluster", {}},
                                      {"dynamic_active_clusters", "ClustersConfigDump.DynamicCluster", {}}}};
    const std::string v = typeVersion("envoy.config.cluster.v3.Cluster");
    if (!v.empty()) d.head = absl::StrCat("\"version_info\":", jsonEscape(v));
    for (const auto& c : snap->clusters) {
      if (!wanted(c->name)) continue;
      const config::ResourceMap* m = c->dynamic && src ? &src->clusters : nullptr;
      std::string fields;
      if (c->dynamic) {
        fields = absl::StrCat("\"version_info\":", jsonEscape(versionOf(m, c->name, c->version_info, c->sourceKey())), ",");
      }
      absl::StrAppend(&fields, "\"cluster\":", anyJson(*c->message()), ",\"last_updated\":\"", lastUpdated(m, c->name), "\"");
      d.sections[c->dynamic ? 1 : 0].entries.push_back(Entry{c->name, std::move(fields)});
    }
    dumps.push_back(std::move(d));
  }
  {
    Dump d{"ListenersConfigDump", "", {{"static_listeners", "ListenersConfigDump.StaticListener", {}},
                                       {"dynamic_listeners", "ListenersConfigDump.DynamicListener", {}}}};
    const std::string v = typeVersion("envoy.config.listener.v3.Listener");
    if (!v.empty()) d.head = absl::StrCat("\"version_info\":", jsonEscape(v));
    for (const auto& l : snap->listeners) {
      inlineRoutes(*l->proto, static_routes);
      if (!wanted(l->name)) continue;
      if (l->dynamic) {
        const config::ResourceMap* m = src ? &src->listeners : nullptr;
        d.sections[1].entries.push_back(Entry{
            l->name, absl::StrCat("\"name\":", jsonEscape(l->name), ",\"active_state\":{\"version_info\":",
                                  jsonEscape(versionOf(m, l->name, l->version_info, l->proto.get())),
                                  ",\"listener\":", anyJson(*l->proto), ",\"last_updated\":\"",
                                  lastUpdated(m, l->name), "\"}")});
      } else {
        d.sections[0].entries.push_back(Entry{
            l->name, absl::StrCat("\"listener\":", anyJson(*l->proto), ",\"last_updated\":\"", snap->loaded_at, "\"")});
      }
    }
    dumps.push_back(std::move(d));
  }
  {
    Dump d{"RoutesConfigDump", "", {{"static_route_configs", "RoutesConfigDump.StaticRouteConfig", {}},
                                    {"dynamic_route_configs", "RoutesConfigDump.DynamicRouteConfig", {}}}};
    std::set<std::string> seen;  // a route configuration shared by several listeners' chains is listed once
    for (const auto& rc : static_routes) {
      if (!wanted(rc->name()) || !seen.insert(rc->SerializeAsString()).second) continue;
      d.sections[0].entries.push_back(Entry{
          rc->name(), absl::StrCat("\"route_config\":", anyJson(*rc), ",\"last_updated\":\"", snap->loaded_at, "\"")});
    }
    if (src) {
      for (const auto& [name, res] : src->routes) {
        if (!wanted(name) || !res.proto) continue;
        d.sections[1].entries.push_back(Entry{
            name, absl::StrCat("\"version_info\":", jsonEscape(res.version), ",\"route_config\":", anyJson(*res.proto),
                               ",\"last_updated\":\"", config::formatRfc3339(res.last_updated_ms), "\"")});
      }
    }
    dumps.push_back(std::move(d));
  }
  {
    Dump d{"SecretsConfigDump", "", {{"dynamic_active_secrets", "SecretsConfigDump.DynamicSecret", {}}}};
    // Secrets do not rebuild the snapshot (a rotation leaves the config alone): read the applier's newest.
    std::shared_ptr<const config::ConfigSources> newest = server.xds() != nullptr ? server.xds()->sources() : nullptr;
    if (const config::ConfigSources* sec_src = newest ? newest.get() : src) {
      for (const auto& [name, res] : sec_src->secrets) {
        if (!wanted(name) || !res.proto) continue;
        d.sections[0].entries.push_back(Entry{
            name, absl::StrCat("\"name\":", jsonEscape(name), ",\"version_info\":", jsonEscape(res.version),
                               ",\"last_updated\":\"", config::formatRfc3339(res.last_updated_ms), "\",\"secret\":", anyJson(*res.proto))});
      }
    }
    dumps.push_back(std::move(d));
  }
  if (include_eds) {
    Dump d{"EndpointsConfigDump", "", {{"static_endpoint_configs", "EndpointsConfigDump.StaticEndpointConfig", {}},
                                       {"dynamic_endpoint_configs", "EndpointsConfigDump.DynamicEndpointConfig", {}}}};
    // A static cluster's load_assignment, as Envoy lists it (named after the cluster).
    for (const auto& c : snap->clusters) {
      if (c->dynamic || !wanted(c->name)) continue;
      const auto* d_ = c->proto->GetDescriptor();
      const auto* f = d_->FindFieldByName("load_assignment");
      if (f == nullptr || !c->proto->GetReflection()->HasField(*c->proto, f)) continue;
      envoy::config::endpoint::v3::ClusterLoadAssignment cla;
      cla.CopyFrom(c->proto->GetReflection()->GetMessage(*c->proto, f));
      if (cla.cluster_name().empty()) cla.set_cluster_name(c->name);
      d.sections[0].entries.push_back(Entry{
          c->name, absl::StrCat("\"endpoint_config\":", anyJson(cla), ",\"last_updated\":\"", snap->loaded_at, "\"")});
    }
    if (src) {
      for (const auto& [name, res] : src->endpoints) {
        if (!wanted(name)) continue;
        d.sections[1].entries.push_back(Entry{
            name, absl::StrCat("\"version_info\":", jsonEscape(res.version), ",\"endpoint_config\":",
                               anyJson(*config::heldAs<envoy::config::endpoint::v3::ClusterLoadAssignment>(res)),
                               ",\"last_updated\":\"", config::formatRfc3339(res.last_updated_ms), "\"")});
      }
    }
    dumps.push_back(std::move(d));
  }

  const MaskNode mask_tree = mask != nullptr ? parseMask(*mask) : MaskNode{};
  const bool masked = mask != nullptr && !mask_tree.children.empty();

  if (resource != nullptr) {
    // Only the entries of one repeated field, each an Any of its entry type; the mask applies to each.
    const Section* found = nullptr;
    for (const auto& d : dumps) {
      for (const auto& s : d.sections) {
        if (*resource == s.field) found = &s;
      }
    }
    if (found == nullptr) {
      if (*resource == "bootstrap") {
        return LocalHttpResponse{400, "text/plain",
                                 "resource=bootstrap: not a repeated field; use ?mask=bootstrap instead\n"};
      }
      return LocalHttpResponse{404, "text/plain",
                               absl::StrCat("resource=", *resource, ": no repeated field of that name in any config "
                                            "dump (EndpointsConfigDump's need include_eds)\n")};
    }
    r.body = "{\"configs\":[";
    bool first = true;
    for (const auto& e : found->entries) {
      std::string one = absl::StrCat("{\"@type\":\"", kAdminPrefix, found->entry_type, "\",", e.fields, "}");
      absl::StrAppend(&r.body, first ? "" : ",", masked ? applyMask(one, mask_tree) : one);
      first = false;
    }
    r.body += "]}\n";
    return r;
  }

  {
    // Strait's own section: per type, the accepted version and the last rejected update with its error,
    // and the fields of held resources that Strait does not know.
    std::string xds_status, unknown;
    if (server.xds() != nullptr) {
      for (const auto& [res, fields] : server.xds()->unknownFieldsSeen()) {
        absl::StrAppend(&unknown, unknown.empty() ? "" : ",", jsonEscape(res), ":", jsonEscape(fields));
      }
      for (const auto& [type, st] : status) {
        absl::StrAppend(&xds_status, xds_status.empty() ? "" : ",", jsonEscape(type), ":{\"version_info\":",
                        jsonEscape(st.version), ",\"last_rejected\":{\"version_info\":",
                        jsonEscape(st.last_error_version), ",\"error\":", jsonEscape(st.last_error), "}}");
      }
    }
    Dump d{"XdsStatus", absl::StrCat("\"types\":{", xds_status, "},\"unknown_fields\":{", unknown, "}"), {}, false};
    dumps.push_back(std::move(d));
  }
  r.body = "{\"configs\":[";
  for (size_t i = 0; i < dumps.size(); ++i) {
    std::string one = renderDump(dumps[i]);
    absl::StrAppend(&r.body, i ? "," : "", masked ? applyMask(one, mask_tree) : one);
  }
  r.body += "]}\n";
  return r;
}

}  // namespace strait::server
