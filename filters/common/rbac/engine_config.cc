#include "filters/common/rbac/engine_config.h"

#include <google/protobuf/unknown_field_set.h>

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "envoy/config/rbac/v3/rbac.pb.h"

namespace strait::filters::rbac {

namespace rbac_v3 = envoy::config::rbac::v3;

// Principal.source_ip is deprecated in Envoy's API and still used by Istio.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace {

// Nesting deeper than this is refused (protobuf's own parse limit is 100 messages deep).
constexpr int kMaxDepth = 32;

absl::Status fieldError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// Names of Envoy's fields that our subset leaves out, for error messages.
std::string_view unknownFieldName(const std::string& message, int number) {
  struct Known {
    std::string_view message;
    int number;
    std::string_view name;
  };
  static constexpr Known kKnown[] = {
      {"envoy.config.rbac.v3.RBAC", 3, "audit_condition"},
      {"envoy.config.rbac.v3.RBAC", 4, "audit_log"},
      {"envoy.config.rbac.v3.Policy", 3, "condition"},
      {"envoy.config.rbac.v3.Policy", 4, "checked_condition"},
      {"envoy.config.rbac.v3.Permission", 7, "metadata"},
      {"envoy.config.rbac.v3.Permission", 12, "matcher"},
      {"envoy.config.rbac.v3.Principal", 7, "metadata"},
      {"envoy.config.rbac.v3.Principal", 12, "filter_state"},
      {"envoy.extensions.filters.network.rbac.v3.RBAC", 6, "matcher"},
      {"envoy.extensions.filters.network.rbac.v3.RBAC", 7, "shadow_matcher"},
      {"envoy.extensions.filters.network.rbac.v3.RBAC", 8, "delay_deny"},
      {"envoy.extensions.filters.http.rbac.v3.RBAC", 4, "matcher"},
      {"envoy.extensions.filters.http.rbac.v3.RBAC", 5, "shadow_matcher"},
      {"envoy.extensions.filters.http.rbac.v3.RBAC", 6, "track_per_rule_stats"},
  };
  for (const auto& k : kKnown) {
    if (k.message == message && k.number == number) return k.name;
  }
  return {};
}

absl::Status cidrRange(const envoy::config::core::v3::CidrRange& r, const std::string& path, config::CidrRange& out) {
  auto a = strait::network::Address::parse(r.address_prefix(), 0);
  if (!a) return fieldError(path + ".address_prefix", absl::StrCat("'", r.address_prefix(), "' is not an IP address"));
  const uint32_t max = a->isV6() ? 128 : 32;
  // As in Envoy, an unset prefix_len is 0 (every address of that family).
  const uint32_t len = r.has_prefix_len() ? r.prefix_len().value() : 0;
  if (len > max) return fieldError(path + ".prefix_len", absl::StrCat(len, " is longer than ", max));
  out = config::CidrRange{*a, len};
  return absl::OkStatus();
}

absl::Status pathMatch(const envoy::type::matcher::v3::PathMatcher& m, const std::string& path,
                       strait::http::StringMatch& out) {
  if (!m.has_path()) return fieldError(path + ".path", "is required");
  return strait::http::buildStringMatch(m.path(), path + ".path", out);
}

absl::Status headerRule(const envoy::config::route::v3::HeaderMatcher& m, const std::string& path,
                        const TranslateOptions& options, strait::http::HeaderMatch& out) {
  if (!options.http) return fieldError(path, "header rules need an HTTP request (use the HTTP RBAC filter)");
  return strait::http::buildHeaderMatch(m, path, out);
}

absl::StatusOr<Permission> permission(const rbac_v3::Permission& p, const std::string& path,
                                      const TranslateOptions& options, int depth);

absl::Status permissionSet(const rbac_v3::Permission::Set& set, const std::string& path,
                           const TranslateOptions& options, int depth, Permission& out) {
  if (auto st = refuseUnknownFields(set, path); !st.ok()) return st;
  if (set.rules_size() == 0) return fieldError(path + ".rules", "must not be empty");
  for (int i = 0; i < set.rules_size(); ++i) {
    auto c = permission(set.rules(i), absl::StrCat(path, ".rules[", i, "]"), options, depth + 1);
    if (!c.ok()) return c.status();
    out.children.push_back(*std::move(c));
  }
  return absl::OkStatus();
}

absl::StatusOr<Permission> permission(const rbac_v3::Permission& p, const std::string& path,
                                      const TranslateOptions& options, int depth) {
  if (depth > kMaxDepth) return fieldError(path, "nested too deeply");
  if (auto st = refuseUnknownFields(p, path); !st.ok()) return st;
  Permission out;
  absl::Status st;
  using P = rbac_v3::Permission;
  switch (p.rule_case()) {
    case P::kAndRules:
      out.kind = Permission::Kind::And;
      st = permissionSet(p.and_rules(), path + ".and_rules", options, depth, out);
      break;
    case P::kOrRules:
      out.kind = Permission::Kind::Or;
      st = permissionSet(p.or_rules(), path + ".or_rules", options, depth, out);
      break;
    case P::kAny:
      if (!p.any()) return fieldError(path + ".any", "must be true");
      out.kind = Permission::Kind::Any;
      break;
    case P::kHeader:
      out.kind = Permission::Kind::Header;
      st = headerRule(p.header(), path + ".header", options, out.header);
      break;
    case P::kUrlPath:
      out.kind = Permission::Kind::UrlPath;
      st = pathMatch(p.url_path(), path + ".url_path", out.string);
      break;
    case P::kDestinationIp:
      out.kind = Permission::Kind::DestinationIp;
      st = cidrRange(p.destination_ip(), path + ".destination_ip", out.cidr);
      break;
    case P::kDestinationPort:
      if (p.destination_port() > 65535) {
        return fieldError(path + ".destination_port", absl::StrCat(p.destination_port(), " is not a valid port"));
      }
      out.kind = Permission::Kind::DestinationPort;
      out.port_start = p.destination_port();
      out.port_end = p.destination_port() + 1;
      break;
    case P::kDestinationPortRange: {
      const auto& r = p.destination_port_range();
      const std::string rp = path + ".destination_port_range";
      if (r.start() < 0 || r.start() > 65536) {
        return fieldError(rp + ".start", absl::StrCat(r.start(), " is out of 0..65536"));
      }
      if (r.end() < 0 || r.end() > 65536) return fieldError(rp + ".end", absl::StrCat(r.end(), " is out of 0..65536"));
      if (r.start() >= r.end()) return fieldError(rp, "start must be below end");
      out.kind = Permission::Kind::DestinationPort;
      out.port_start = static_cast<uint32_t>(r.start());
      out.port_end = static_cast<uint32_t>(r.end());
      break;
    }
    case P::kNotRule: {
      out.kind = Permission::Kind::Not;
      auto c = permission(p.not_rule(), path + ".not_rule", options, depth + 1);
      if (!c.ok()) return c.status();
      out.children.push_back(*std::move(c));
      break;
    }
    case P::kRequestedServerName:
      out.kind = Permission::Kind::RequestedServerName;
      st = strait::http::buildStringMatch(p.requested_server_name(), path + ".requested_server_name", out.string);
      break;
    case P::RULE_NOT_SET:
      return fieldError(path, "one of and_rules, or_rules, any, header, url_path, destination_ip, destination_port, "
                              "destination_port_range, not_rule, requested_server_name is required");
  }
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<Principal> principal(const rbac_v3::Principal& p, const std::string& path,
                                    const TranslateOptions& options, int depth);

absl::Status principalSet(const rbac_v3::Principal::Set& set, const std::string& path, const TranslateOptions& options,
                          int depth, Principal& out) {
  if (auto st = refuseUnknownFields(set, path); !st.ok()) return st;
  if (set.ids_size() == 0) return fieldError(path + ".ids", "must not be empty");
  for (int i = 0; i < set.ids_size(); ++i) {
    auto c = principal(set.ids(i), absl::StrCat(path, ".ids[", i, "]"), options, depth + 1);
    if (!c.ok()) return c.status();
    out.children.push_back(*std::move(c));
  }
  return absl::OkStatus();
}

absl::StatusOr<Principal> principal(const rbac_v3::Principal& p, const std::string& path,
                                    const TranslateOptions& options, int depth) {
  if (depth > kMaxDepth) return fieldError(path, "nested too deeply");
  if (auto st = refuseUnknownFields(p, path); !st.ok()) return st;
  Principal out;
  absl::Status st;
  using P = rbac_v3::Principal;
  switch (p.identifier_case()) {
    case P::kAndIds:
      out.kind = Principal::Kind::And;
      st = principalSet(p.and_ids(), path + ".and_ids", options, depth, out);
      break;
    case P::kOrIds:
      out.kind = Principal::Kind::Or;
      st = principalSet(p.or_ids(), path + ".or_ids", options, depth, out);
      break;
    case P::kAny:
      if (!p.any()) return fieldError(path + ".any", "must be true");
      out.kind = Principal::Kind::Any;
      break;
    case P::kAuthenticated: {
      const std::string ap = path + ".authenticated";
      if (auto u = refuseUnknownFields(p.authenticated(), ap); !u.ok()) return u;
      out.kind = Principal::Kind::Authenticated;
      out.any_principal_name = !p.authenticated().has_principal_name();
      if (!out.any_principal_name) {
        st = strait::http::buildStringMatch(p.authenticated().principal_name(), ap + ".principal_name", out.string);
      }
      break;
    }
    case P::kSourceIp:
      // Strait has no PROXY protocol: the connection's peer, like direct_remote_ip.
      out.kind = Principal::Kind::DirectRemoteIp;
      st = cidrRange(p.source_ip(), path + ".source_ip", out.cidr);
      break;
    case P::kDirectRemoteIp:
      out.kind = Principal::Kind::DirectRemoteIp;
      st = cidrRange(p.direct_remote_ip(), path + ".direct_remote_ip", out.cidr);
      break;
    case P::kRemoteIp:
      out.kind = Principal::Kind::RemoteIp;
      st = cidrRange(p.remote_ip(), path + ".remote_ip", out.cidr);
      break;
    case P::kHeader:
      out.kind = Principal::Kind::Header;
      st = headerRule(p.header(), path + ".header", options, out.header);
      break;
    case P::kUrlPath:
      out.kind = Principal::Kind::UrlPath;
      st = pathMatch(p.url_path(), path + ".url_path", out.string);
      break;
    case P::kNotId: {
      out.kind = Principal::Kind::Not;
      auto c = principal(p.not_id(), path + ".not_id", options, depth + 1);
      if (!c.ok()) return c.status();
      out.children.push_back(*std::move(c));
      break;
    }
    case P::IDENTIFIER_NOT_SET:
      return fieldError(path, "one of and_ids, or_ids, any, authenticated, source_ip, direct_remote_ip, remote_ip, "
                              "header, url_path, not_id is required");
  }
  if (!st.ok()) return st;
  return out;
}

std::string deniedDetails(const std::string& policy) {
  std::string out = absl::StrCat("rbac_access_denied_matched_policy[", policy, "]");
  // As Envoy: whitespace would break space-separated access logs.
  for (char& c : out) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') c = '_';
  }
  return out;
}

}  // namespace

absl::Status refuseUnknownFields(const google::protobuf::Message& msg, const std::string& path,
                                 std::initializer_list<int> tolerated) {
  const google::protobuf::UnknownFieldSet& unknown = msg.GetReflection()->GetUnknownFields(msg);
  if (unknown.empty()) return absl::OkStatus();
  std::set<int> numbers;
  for (int i = 0; i < unknown.field_count(); ++i) {
    const int n = unknown.field(i).number();
    if (std::find(tolerated.begin(), tolerated.end(), n) == tolerated.end()) numbers.insert(n);
  }
  if (numbers.empty()) return absl::OkStatus();
  std::vector<std::string> names;
  for (int n : numbers) {
    const std::string_view name = unknownFieldName(msg.GetDescriptor()->full_name(), n);
    names.push_back(name.empty() ? absl::StrCat(n) : absl::StrCat(n, " (", std::string(name), ")"));
  }
  return fieldError(path, absl::StrCat("field ", absl::StrJoin(names, ", "),
                                       " of Envoy's API is not supported by Strait"));
}

absl::StatusOr<EngineConstSharedPtr> translateEngine(const rbac_v3::RBAC& proto, const std::string& path,
                                                     const TranslateOptions& options) {
  // audit_condition and audit_log only add audit logging.
  if (auto st = refuseUnknownFields(proto, path, {3, 4}); !st.ok()) return st;
  auto engine = std::make_shared<Engine>();
  switch (proto.action()) {
    case rbac_v3::RBAC::ALLOW: engine->action = Action::Allow; break;
    case rbac_v3::RBAC::DENY: engine->action = Action::Deny; break;
    case rbac_v3::RBAC::LOG: engine->action = Action::Log; break;
    default:
      return fieldError(path + ".action", absl::StrCat("unknown value ", static_cast<int>(proto.action())));
  }
  std::vector<const std::string*> names;
  for (const auto& [name, policy] : proto.policies()) names.push_back(&name);
  std::sort(names.begin(), names.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
  engine->policies.reserve(names.size());
  for (const std::string* name : names) {
    const rbac_v3::Policy& p = proto.policies().at(*name);
    const std::string pp = absl::StrCat(path, ".policies[\"", *name, "\"]");
    if (auto st = refuseUnknownFields(p, pp); !st.ok()) return st;
    Policy policy;
    policy.name = *name;
    policy.denied_details = deniedDetails(*name);
    if (p.permissions_size() == 0) return fieldError(pp + ".permissions", "must not be empty");
    if (p.principals_size() == 0) return fieldError(pp + ".principals", "must not be empty");
    for (int i = 0; i < p.permissions_size(); ++i) {
      auto perm = permission(p.permissions(i), absl::StrCat(pp, ".permissions[", i, "]"), options, 0);
      if (!perm.ok()) return perm.status();
      policy.permissions.push_back(*std::move(perm));
    }
    for (int i = 0; i < p.principals_size(); ++i) {
      auto prin = principal(p.principals(i), absl::StrCat(pp, ".principals[", i, "]"), options, 0);
      if (!prin.ok()) return prin.status();
      policy.principals.push_back(*std::move(prin));
    }
    engine->policies.push_back(std::move(policy));
  }
  return EngineConstSharedPtr(std::move(engine));
}

}  // namespace strait::filters::rbac
