// The translation half of the route table: RouteTable::create validates an
// envoy.config.route.v3.RouteConfiguration and compiles it into the structures route_table.cc reads for
// every request (domains sorted for lookup, compiled matches, header mutations merged level by level,
// retry and hash policies, parsed typed_per_filter_config). Errors name the offending field. Also the
// per-filter config parser registry and the retry_on grammar (parseRetryOn).

#include "proxy/http/route_table.h"

#include <re2/re2.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/type/matcher/v3/string.pb.h"
#include "proxy/config/bootstrap.h"
#include "proxy/http/matchers.h"
#include "proxy/http/route_table_internal.h"

namespace strait::http {

namespace route_v3 = envoy::config::route::v3;
namespace matcher_v3 = envoy::type::matcher::v3;
namespace core_v3 = envoy::config::core::v3;

using route_internal::CompiledRoute;
using route_internal::portColon;
using route_internal::QueryMatch;

// The deprecated fields of our protos (HeaderValueOption.append, HeaderMatcher.prefix_match, ...) are
// still honoured for old configs.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

namespace {

constexpr uint32_t kDefaultMaxDirectResponseBody = 4096;

absl::Status fieldError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

bool hasForbiddenValueChar(std::string_view v) {
  for (char c : v) {
    if (c == '\0' || c == '\r' || c == '\n') return true;
  }
  return false;
}

// Duration in milliseconds; a non-zero duration below 1 ms is 1 ms (so it never turns into "none").
absl::Status durationMs(const google::protobuf::Duration& d, const std::string& path, uint64_t& out) {
  if (d.seconds() < 0 || d.nanos() < 0) return fieldError(path, "must not be negative");
  out = static_cast<uint64_t>(d.seconds()) * 1000 + static_cast<uint64_t>(d.nanos()) / 1000000;
  if (out == 0 && d.nanos() > 0) out = 1;
  return absl::OkStatus();
}

absl::Status headerNameField(const std::string& name, const std::string& path, bool modifiable) {
  if (!isValidHeaderName(name)) return fieldError(path, absl::StrCat("'", name, "' is not a valid header name"));
  if (modifiable && (name[0] == ':' || equalsLower("host", name))) {
    return fieldError(path, absl::StrCat("header '", name, "' cannot be modified"));
  }
  return absl::OkStatus();
}

// Config values are literals; Envoy's "%%" is a literal '%'; other '%' are formatter commands we do not
// evaluate, so the value is rejected rather than sent as text the operator did not mean.
absl::StatusOr<std::string> literalHeaderValue(const std::string& value, const std::string& path) {
  if (hasForbiddenValueChar(value)) return fieldError(path, "header value must not contain NUL, CR or LF");
  std::string out;
  out.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    if (value[i] != '%') {
      out.push_back(value[i]);
    } else if (i + 1 < value.size() && value[i + 1] == '%') {
      out.push_back('%');
      ++i;
    } else {
      return fieldError(path, absl::StrCat("header formatters ('%...%') are not supported in '", value,
                                           "' (write '%%' for a literal '%')"));
    }
  }
  return out;
}

// One level's removals then additions, appended to `out` (Envoy's order within a level).
absl::Status appendLevel(const google::protobuf::RepeatedPtrField<core_v3::HeaderValueOption>& add,
                         const google::protobuf::RepeatedPtrField<std::string>& remove,
                         const std::string& add_path, const std::string& remove_path, HeaderMutation& out) {
  for (int i = 0; i < remove.size(); ++i) {
    const std::string p = absl::StrCat(remove_path, "[", i, "]");
    if (auto st = headerNameField(remove[i], p, true); !st.ok()) return st;
    out.ops.push_back({HeaderMutation::Op::Action::Remove, lowerString(remove[i]), ""});
  }
  for (int i = 0; i < add.size(); ++i) {
    const auto& hvo = add[i];
    const std::string p = absl::StrCat(add_path, "[", i, "]");
    if (auto st = headerNameField(hvo.header().key(), p + ".header.key", true); !st.ok()) return st;
    auto value = literalHeaderValue(hvo.header().value(), p + ".header.value");
    if (!value.ok()) return value.status();
    HeaderMutation::Op::Action action = HeaderMutation::Op::Action::Append;
    if (hvo.has_append()) {
      if (hvo.append_action() != core_v3::HeaderValueOption::APPEND_IF_EXISTS_OR_ADD) {
        return fieldError(p + ".append", "append and append_action cannot both be set");
      }
      action = hvo.append().value() ? HeaderMutation::Op::Action::Append : HeaderMutation::Op::Action::Overwrite;
    } else {
      switch (hvo.append_action()) {
        case core_v3::HeaderValueOption::APPEND_IF_EXISTS_OR_ADD:
          action = HeaderMutation::Op::Action::Append;
          break;
        case core_v3::HeaderValueOption::ADD_IF_ABSENT:
          action = HeaderMutation::Op::Action::AddIfAbsent;
          break;
        case core_v3::HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD:
          action = HeaderMutation::Op::Action::Overwrite;
          break;
        case core_v3::HeaderValueOption::OVERWRITE_IF_EXISTS:
          action = HeaderMutation::Op::Action::OverwriteIfExists;
          break;
        default:
          return fieldError(p + ".append_action", absl::StrCat("unknown value ", hvo.append_action()));
      }
    }
    if (value->empty() && !hvo.keep_empty_value()) continue;  // Envoy skips empty values
    out.ops.push_back({action, lowerString(hvo.header().key()), *std::move(value)});
  }
  return absl::OkStatus();
}

HeaderMutation concat(const HeaderMutation& a, const HeaderMutation& b, const HeaderMutation& c) {
  HeaderMutation out;
  out.ops.reserve(a.ops.size() + b.ops.size() + c.ops.size());
  for (const auto* m : {&a, &b, &c}) out.ops.insert(out.ops.end(), m->ops.begin(), m->ops.end());
  return out;
}

absl::Status buildRetryPolicy(const route_v3::RetryPolicy& p, const std::string& path, RetryPolicy& out) {
  out = RetryPolicy{};
  out.enabled = true;
  if (p.has_num_retries()) out.num_retries = p.num_retries().value();
  std::string bad;
  if (!parseRetryOn(p.retry_on(), out, &bad)) {
    return fieldError(path + ".retry_on", absl::StrCat("unknown retry condition '", bad, "'"));
  }
  for (int i = 0; i < p.retriable_status_codes_size(); ++i) {
    const uint32_t code = p.retriable_status_codes(i);
    if (code < 100 || code > 599) {
      return fieldError(absl::StrCat(path, ".retriable_status_codes[", i, "]"),
                        absl::StrCat(code, " is not an HTTP status code"));
    }
    out.retriable_status_codes.push_back(code);
  }
  // Header matchers of the policy, translated once (shared by every copy of the policy).
  auto matchers = [&](const auto& list, const char* field,
                      std::shared_ptr<const std::vector<HeaderMatch>>& dest) -> absl::Status {
    if (list.empty()) return absl::OkStatus();
    auto v = std::make_shared<std::vector<HeaderMatch>>(list.size());
    for (int i = 0; i < list.size(); ++i) {
      auto st = buildHeaderMatch(list.Get(i), absl::StrCat(path, ".", field, "[", i, "]"), (*v)[i]);
      if (!st.ok()) return st;
    }
    dest = std::move(v);
    return absl::OkStatus();
  };
  if (auto st = matchers(p.retriable_headers(), "retriable_headers", out.retriable_headers); !st.ok()) return st;
  if (auto st = matchers(p.retriable_request_headers(), "retriable_request_headers", out.retriable_request_headers);
      !st.ok()) {
    return st;
  }
  if (p.has_per_try_timeout()) {
    if (auto st = durationMs(p.per_try_timeout(), path + ".per_try_timeout", out.per_try_timeout_ms); !st.ok()) return st;
  }
  if (p.has_per_try_idle_timeout()) {
    if (auto st = durationMs(p.per_try_idle_timeout(), path + ".per_try_idle_timeout", out.per_try_idle_timeout_ms);
        !st.ok()) {
      return st;
    }
  }
  for (int i = 0; i < p.retry_host_predicate_size(); ++i) {
    const auto& pred = p.retry_host_predicate(i);
    const std::string pp = absl::StrCat(path, ".retry_host_predicate[", i, "]");
    const bool previous = pred.name() == "envoy.retry_host_predicates.previous_hosts" ||
                          pred.typed_config().type_url() ==
                              "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate";
    if (!previous) {
      return fieldError(pp, absl::StrCat("unsupported retry host predicate '",
                                         pred.name().empty() ? pred.typed_config().type_url() : pred.name(),
                                         "' (Strait supports envoy.retry_host_predicates.previous_hosts)"));
    }
    out.avoid_previous_hosts = true;
  }
  if (p.host_selection_retry_max_attempts() < 0) {
    return fieldError(path + ".host_selection_retry_max_attempts", "must not be negative");
  }
  if (p.host_selection_retry_max_attempts() > 0) {
    out.host_selection_retry_max_attempts = static_cast<uint32_t>(std::min<int64_t>(p.host_selection_retry_max_attempts(), 16));
  }
  if (p.has_retry_back_off()) {
    const auto& b = p.retry_back_off();
    const std::string bp = path + ".retry_back_off";
    if (!b.has_base_interval()) return fieldError(bp + ".base_interval", "is required");
    if (auto st = durationMs(b.base_interval(), bp + ".base_interval", out.base_interval_ms); !st.ok()) return st;
    if (out.base_interval_ms == 0) return fieldError(bp + ".base_interval", "must be greater than 0");
    out.max_interval_ms = out.base_interval_ms * 10;
    if (b.has_max_interval()) {
      if (auto st = durationMs(b.max_interval(), bp + ".max_interval", out.max_interval_ms); !st.ok()) return st;
      if (out.max_interval_ms < out.base_interval_ms) {
        return fieldError(bp + ".max_interval", "must not be less than base_interval");
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> readDataSource(const core_v3::DataSource& ds, const std::string& path, uint32_t max) {
  std::string body;
  switch (ds.specifier_case()) {
    case core_v3::DataSource::kInlineString:
      body = ds.inline_string();
      break;
    case core_v3::DataSource::kInlineBytes:
      body = ds.inline_bytes();
      break;
    case core_v3::DataSource::kFilename: {
      std::ifstream in(ds.filename(), std::ios::binary);
      if (!in) return fieldError(path + ".filename", absl::StrCat("cannot read '", ds.filename(), "'"));
      std::ostringstream ss;
      ss << in.rdbuf();
      body = ss.str();
      break;
    }
    case core_v3::DataSource::kEnvironmentVariable: {
      const char* v = std::getenv(ds.environment_variable().c_str());
      if (v == nullptr) {
        return fieldError(path + ".environment_variable",
                          absl::StrCat("environment variable '", ds.environment_variable(), "' is not set"));
      }
      body = v;
      break;
    }
    case core_v3::DataSource::SPECIFIER_NOT_SET:
      break;
  }
  if (body.size() > max) {
    return fieldError(path, absl::StrCat("body is ", body.size(), " bytes, over max_direct_response_body_size_bytes (",
                                         max, ")"));
  }
  return body;
}

struct Context {
  const config::ClusterMap& clusters;
  bool validate_clusters;
  bool hcm_websocket_upgrade;
  uint32_t max_direct_body;
};

std::map<std::string, PerFilterConfigParser>& perFilterConfigParsers() {
  static auto* parsers = new std::map<std::string, PerFilterConfigParser>;
  return *parsers;
}

// Parses the entries of a typed_per_filter_config map whose type has a registered parser, in name order
// (so the first error is always the same one).
absl::Status parsePerFilterConfigs(const google::protobuf::Map<std::string, google::protobuf::Any>& configs,
                                   const std::string& path,
                                   std::vector<std::pair<std::string, RouteSpecificFilterConfigConstSharedPtr>>& out) {
  if (configs.empty()) return absl::OkStatus();
  std::vector<const std::string*> names;
  for (const auto& [name, any] : configs) names.push_back(&name);
  std::sort(names.begin(), names.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
  const auto& parsers = perFilterConfigParsers();
  for (const std::string* name : names) {
    const google::protobuf::Any& any = configs.at(*name);
    auto it = parsers.find(any.type_url());
    if (it == parsers.end()) continue;
    auto parsed = it->second(any, absl::StrCat(path, "[\"", *name, "\"]"));
    if (!parsed.ok()) return parsed.status();
    out.emplace_back(*name, *std::move(parsed));
  }
  return absl::OkStatus();
}

// A policy kept in the route configuration itself (VirtualHost.cors, RouteAction.cors): parsed by the
// parser registered for its type and stored under `key`; ignored when no filter registered one.
absl::Status parseEmbeddedPolicy(const google::protobuf::Message& m, std::string_view key, const std::string& path,
                                 std::vector<std::pair<std::string, RouteSpecificFilterConfigConstSharedPtr>>& out) {
  google::protobuf::Any any;
  any.PackFrom(m);
  const auto& parsers = perFilterConfigParsers();
  auto it = parsers.find(any.type_url());
  if (it == parsers.end()) return absl::OkStatus();
  auto parsed = it->second(any, path);
  if (!parsed.ok()) return parsed.status();
  out.emplace_back(std::string(key), *std::move(parsed));
  return absl::OkStatus();
}

// A route names its cluster by index (config::clusterIds()), so the table outlives the cluster's
// versions; with validate_clusters the name must be known now.
absl::Status resolveCluster(const Context& ctx, const std::string& name, const std::string& path, uint32_t& out) {
  if (name.empty()) return fieldError(path, "cluster name must not be empty");
  if (ctx.validate_clusters && ctx.clusters.find(name) == ctx.clusters.end()) {
    return fieldError(path, absl::StrCat("unknown cluster '", name, "'"));
  }
  out = config::clusterIds().get(name);
  return absl::OkStatus();
}

absl::Status buildMatch(const route_v3::RouteMatch& m, const std::string& path, CompiledRoute& r) {
  r.case_sensitive = !m.has_case_sensitive() || m.case_sensitive().value();
  auto literal = [&](RouteEntry::PathMatch kind, const std::string& v) {
    r.path_kind = kind;
    r.path = r.case_sensitive ? v : lowerString(v);
    r.entry.path_match = kind;
    r.entry.matched_prefix = v;
  };
  switch (m.path_specifier_case()) {
    case route_v3::RouteMatch::kPrefix:
      literal(RouteEntry::PathMatch::Prefix, m.prefix());
      break;
    case route_v3::RouteMatch::kPath:
      literal(RouteEntry::PathMatch::Path, m.path());
      break;
    case route_v3::RouteMatch::kPathSeparatedPrefix: {
      const std::string& v = m.path_separated_prefix();
      const std::string p = path + ".path_separated_prefix";
      if (v.empty() || v[0] != '/') return fieldError(p, "must start with '/'");
      if (v.find_first_of("?#") != std::string::npos) return fieldError(p, "must not contain '?' or '#'");
      if (v.size() > 1 && v.back() == '/') return fieldError(p, "must not end with '/'");
      literal(RouteEntry::PathMatch::PathSeparatedPrefix, v);
      break;
    }
    case route_v3::RouteMatch::kSafeRegex: {
      auto re = compileRegex(m.safe_regex().regex(), path + ".safe_regex.regex");
      if (!re.ok()) return re.status();
      r.path_kind = RouteEntry::PathMatch::Regex;
      r.regex = *std::move(re);
      r.entry.path_match = RouteEntry::PathMatch::Regex;
      break;
    }
    case route_v3::RouteMatch::PATH_SPECIFIER_NOT_SET:
      return fieldError(path, "one of prefix, path, safe_regex, path_separated_prefix is required");
  }

  for (int i = 0; i < m.headers_size(); ++i) {
    const auto& hm = m.headers(i);
    const std::string hp = absl::StrCat(path, ".headers[", i, "]");
    HeaderMatch out;
    if (auto st = buildHeaderMatch(hm, hp, out); !st.ok()) return st;
    r.headers.push_back(std::move(out));
  }

  for (int i = 0; i < m.query_parameters_size(); ++i) {
    const auto& qm = m.query_parameters(i);
    const std::string qp = absl::StrCat(path, ".query_parameters[", i, "]");
    if (qm.name().empty()) return fieldError(qp + ".name", "must not be empty");
    QueryMatch out;
    out.name = qm.name();
    switch (qm.query_parameter_match_specifier_case()) {
      case route_v3::QueryParameterMatcher::kStringMatch: {
        out.present_only = false;
        if (auto st = buildStringMatch(qm.string_match(), qp + ".string_match", out.string_match); !st.ok()) return st;
        break;
      }
      case route_v3::QueryParameterMatcher::kPresentMatch:
        if (!qm.present_match()) return fieldError(qp + ".present_match", "must be true when set");
        out.present_only = true;
        break;
      case route_v3::QueryParameterMatcher::QUERY_PARAMETER_MATCH_SPECIFIER_NOT_SET:
        out.present_only = true;
        break;
    }
    r.query_parameters.push_back(std::move(out));
  }
  r.grpc = m.has_grpc();
  return absl::OkStatus();
}

absl::Status buildRouteAction(const route_v3::RouteAction& a, const std::string& path, const Context& ctx,
                              const route_v3::VirtualHost& vh, RouteEntry& e) {
  switch (a.cluster_specifier_case()) {
    case route_v3::RouteAction::kCluster:
      e.kind = RouteEntry::Kind::Cluster;
      e.cluster_name = a.cluster();
      if (auto st = resolveCluster(ctx, a.cluster(), path + ".cluster", e.cluster_index); !st.ok()) return st;
      break;
    case route_v3::RouteAction::kClusterHeader: {
      const std::string p = path + ".cluster_header";
      if (!isValidHeaderName(a.cluster_header()) || a.cluster_header()[0] == ':') {
        return fieldError(p, absl::StrCat("'", a.cluster_header(), "' is not a valid header name"));
      }
      e.kind = RouteEntry::Kind::ClusterHeader;
      e.cluster_header = lowerString(a.cluster_header());
      break;
    }
    case route_v3::RouteAction::kWeightedClusters: {
      e.kind = RouteEntry::Kind::WeightedClusters;
      const auto& wc = a.weighted_clusters();
      const std::string wp = path + ".weighted_clusters";
      if (wc.clusters_size() == 0) return fieldError(wp + ".clusters", "must not be empty");
      for (int i = 0; i < wc.clusters_size(); ++i) {
        const auto& cw = wc.clusters(i);
        const std::string cp = absl::StrCat(wp, ".clusters[", i, "]");
        WeightedTarget t;
        t.name = cw.name();
        if (auto st = resolveCluster(ctx, cw.name(), cp + ".name", t.cluster_index); !st.ok()) return st;
        t.weight = cw.has_weight() ? cw.weight().value() : 0;
        e.total_weight += t.weight;
        // The target's own level; the route's chain is appended once the route's is known.
        if (auto st = appendLevel(cw.request_headers_to_add(), cw.request_headers_to_remove(),
                                  cp + ".request_headers_to_add", cp + ".request_headers_to_remove", t.request_headers);
            !st.ok()) {
          return st;
        }
        if (auto st = appendLevel(cw.response_headers_to_add(), cw.response_headers_to_remove(),
                                  cp + ".response_headers_to_add", cp + ".response_headers_to_remove",
                                  t.response_headers);
            !st.ok()) {
          return st;
        }
        e.weighted.push_back(std::move(t));
      }
      if (e.total_weight == 0) return fieldError(wp, "the total weight of the clusters must be greater than 0");
      break;
    }
    case route_v3::RouteAction::CLUSTER_SPECIFIER_NOT_SET:
      return fieldError(path, "one of cluster, cluster_header, weighted_clusters is required");
  }

  switch (a.cluster_not_found_response_code()) {
    case route_v3::RouteAction::SERVICE_UNAVAILABLE: e.cluster_not_found_status = 503; break;
    case route_v3::RouteAction::NOT_FOUND: e.cluster_not_found_status = 404; break;
    case route_v3::RouteAction::INTERNAL_SERVER_ERROR: e.cluster_not_found_status = 500; break;
    default:
      return fieldError(path + ".cluster_not_found_response_code",
                        absl::StrCat("unknown value ", a.cluster_not_found_response_code()));
  }

  if (!a.prefix_rewrite().empty() && a.has_regex_rewrite()) {
    return fieldError(path + ".regex_rewrite", "cannot be set together with prefix_rewrite");
  }
  if (hasForbiddenValueChar(a.prefix_rewrite())) {
    return fieldError(path + ".prefix_rewrite", "must not contain NUL, CR or LF");
  }
  RouteRewrites rw;
  rw.prefix_rewrite = a.prefix_rewrite();
  if (a.has_regex_rewrite()) {
    const std::string rp = path + ".regex_rewrite";
    auto re = compileRegex(a.regex_rewrite().pattern().regex(), rp + ".pattern.regex");
    if (!re.ok()) return re.status();
    std::string why;
    if (!(*re)->CheckRewriteString(a.regex_rewrite().substitution(), &why)) {
      return fieldError(rp + ".substitution", absl::StrCat("invalid substitution: ", why));
    }
    rw.regex_rewrite = *std::move(re);
    rw.regex_rewrite_substitution = a.regex_rewrite().substitution();
  }

  switch (a.host_rewrite_specifier_case()) {
    case route_v3::RouteAction::kHostRewriteLiteral:
      if (a.host_rewrite_literal().empty() || hasForbiddenValueChar(a.host_rewrite_literal())) {
        return fieldError(path + ".host_rewrite_literal", "must be a non-empty host");
      }
      rw.host_rewrite_literal = a.host_rewrite_literal();
      break;
    case route_v3::RouteAction::kAutoHostRewrite:
      e.auto_host_rewrite = a.auto_host_rewrite().value();
      break;
    case route_v3::RouteAction::kHostRewriteHeader:
      if (!isValidHeaderName(a.host_rewrite_header()) || a.host_rewrite_header()[0] == ':') {
        return fieldError(path + ".host_rewrite_header",
                          absl::StrCat("'", a.host_rewrite_header(), "' is not a valid header name"));
      }
      rw.host_rewrite_header = lowerString(a.host_rewrite_header());
      break;
    case route_v3::RouteAction::HOST_REWRITE_SPECIFIER_NOT_SET:
      break;
  }
  if (!rw.prefix_rewrite.empty() || rw.regex_rewrite || !rw.host_rewrite_literal.empty() ||
      !rw.host_rewrite_header.empty()) {
    e.rewrites = std::make_unique<const RouteRewrites>(std::move(rw));
  }

  if (a.has_timeout()) {
    if (auto st = durationMs(a.timeout(), path + ".timeout", e.timeout_ms); !st.ok()) return st;
  }
  if (a.has_idle_timeout()) {
    if (auto st = durationMs(a.idle_timeout(), path + ".idle_timeout", e.idle_timeout_ms); !st.ok()) return st;
  }
  if (a.has_max_stream_duration()) {
    const auto& msd = a.max_stream_duration();
    const std::string mp = path + ".max_stream_duration";
    uint64_t v = 0;
    if (msd.has_max_stream_duration()) {
      if (auto st = durationMs(msd.max_stream_duration(), mp + ".max_stream_duration", v); !st.ok()) return st;
      e.max_stream_duration_ms = v;
    }
    if (msd.has_grpc_timeout_header_max()) {
      if (auto st = durationMs(msd.grpc_timeout_header_max(), mp + ".grpc_timeout_header_max", v); !st.ok()) return st;
      e.grpc_timeout_header_max_ms = v;
    }
  }

  if (a.has_retry_policy()) {
    if (auto st = buildRetryPolicy(a.retry_policy(), path + ".retry_policy", e.retry); !st.ok()) return st;
  } else if (vh.has_retry_policy()) {
    // Already validated with the virtual host's path; cannot fail here.
    (void)buildRetryPolicy(vh.retry_policy(), "", e.retry);
  }

  switch (a.priority()) {
    case core_v3::RoutingPriority::DEFAULT: e.priority = upstream::ResourcePriority::Default; break;
    case core_v3::RoutingPriority::HIGH: e.priority = upstream::ResourcePriority::High; break;
    default: return fieldError(path + ".priority", absl::StrCat("unknown routing priority ", a.priority()));
  }

  for (int i = 0; i < a.hash_policy_size(); ++i) {
    const auto& hp = a.hash_policy(i);
    const std::string pp = absl::StrCat(path, ".hash_policy[", i, "]");
    HashPolicy h;
    h.terminal = hp.terminal();
    switch (hp.policy_specifier_case()) {
      case route_v3::RouteAction::HashPolicy::kHeader:
        if (!isValidHeaderName(hp.header().header_name())) {
          return fieldError(pp + ".header.header_name", absl::StrCat("'", hp.header().header_name(), "' is not a valid header name"));
        }
        h.kind = HashPolicy::Kind::Header;
        h.name = lowerString(hp.header().header_name());
        break;
      case route_v3::RouteAction::HashPolicy::kCookie:
        if (hp.cookie().name().empty()) return fieldError(pp + ".cookie.name", "is required");
        h.kind = HashPolicy::Kind::Cookie;
        h.name = hp.cookie().name();
        h.cookie_generate = hp.cookie().has_ttl();
        if (h.cookie_generate) {
          if (auto st = durationMs(hp.cookie().ttl(), pp + ".cookie.ttl", h.cookie_ttl_ms); !st.ok()) return st;
        }
        h.cookie_path = hp.cookie().path();
        break;
      case route_v3::RouteAction::HashPolicy::kConnectionProperties:
        if (!hp.connection_properties().source_ip()) continue;  // hashes nothing
        h.kind = HashPolicy::Kind::SourceIp;
        break;
      case route_v3::RouteAction::HashPolicy::kQueryParameter:
        if (hp.query_parameter().name().empty()) return fieldError(pp + ".query_parameter.name", "is required");
        h.kind = HashPolicy::Kind::QueryParameter;
        h.name = hp.query_parameter().name();
        break;
      default:
        return fieldError(pp, "a hash policy needs header, cookie, connection_properties or query_parameter");
    }
    e.hash_policies.push_back(std::move(h));
  }
  e.include_attempt_count = vh.include_request_attempt_count();
  e.include_attempt_count_in_response = vh.include_attempt_count_in_response();

  e.websocket_upgrade = ctx.hcm_websocket_upgrade;
  for (int i = 0; i < a.upgrade_configs_size(); ++i) {
    const auto& uc = a.upgrade_configs(i);
    const bool enabled = !uc.has_enabled() || uc.enabled().value();
    if (equalsLower("websocket", uc.upgrade_type())) {
      e.websocket_upgrade = enabled;
      e.websocket_upgrade_set = true;
    } else if (enabled) {
      return fieldError(absl::StrCat(path, ".upgrade_configs[", i, "].upgrade_type"),
                        absl::StrCat("unsupported upgrade type '", uc.upgrade_type(), "' (Strait supports websocket)"));
    }
  }
  return absl::OkStatus();
}

absl::Status buildRedirect(const route_v3::RedirectAction& r, const std::string& path, RouteEntry& e) {
  e.kind = RouteEntry::Kind::Redirect;
  auto made = std::make_unique<RedirectAction>();
  RedirectAction& out = *made;
  switch (r.scheme_rewrite_specifier_case()) {
    case route_v3::RedirectAction::kHttpsRedirect:
      if (r.https_redirect()) out.scheme = "https";
      break;
    case route_v3::RedirectAction::kSchemeRedirect: {
      const std::string s = lowerString(r.scheme_redirect());
      bool ok = !s.empty() && s[0] >= 'a' && s[0] <= 'z';
      for (char c : s) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.');
      if (!ok) return fieldError(path + ".scheme_redirect", absl::StrCat("'", r.scheme_redirect(), "' is not a URI scheme"));
      out.scheme = s;
      break;
    }
    case route_v3::RedirectAction::SCHEME_REWRITE_SPECIFIER_NOT_SET:
      break;
  }
  if (hasForbiddenValueChar(r.host_redirect()) || r.host_redirect().find_first_of("/?# ") != std::string::npos) {
    return fieldError(path + ".host_redirect", absl::StrCat("'", r.host_redirect(), "' is not a host"));
  }
  out.host = r.host_redirect();
  if (r.port_redirect() > 65535) {
    return fieldError(path + ".port_redirect", absl::StrCat(r.port_redirect(), " is not a valid port"));
  }
  out.port = r.port_redirect();
  switch (r.path_rewrite_specifier_case()) {
    case route_v3::RedirectAction::kPathRedirect:
      if (hasForbiddenValueChar(r.path_redirect())) return fieldError(path + ".path_redirect", "must not contain NUL, CR or LF");
      if (r.path_redirect().empty() || r.path_redirect()[0] != '/') {
        return fieldError(path + ".path_redirect", "must start with '/'");
      }
      out.path_kind = RedirectAction::PathKind::Path;
      out.path = r.path_redirect();
      break;
    case route_v3::RedirectAction::kPrefixRewrite:
      if (hasForbiddenValueChar(r.prefix_rewrite())) return fieldError(path + ".prefix_rewrite", "must not contain NUL, CR or LF");
      out.path_kind = RedirectAction::PathKind::PrefixRewrite;
      out.prefix_rewrite = r.prefix_rewrite();
      break;
    case route_v3::RedirectAction::kRegexRewrite: {
      const std::string rp = path + ".regex_rewrite";
      auto re = compileRegex(r.regex_rewrite().pattern().regex(), rp + ".pattern.regex");
      if (!re.ok()) return re.status();
      std::string why;
      if (!(*re)->CheckRewriteString(r.regex_rewrite().substitution(), &why)) {
        return fieldError(rp + ".substitution", absl::StrCat("invalid substitution: ", why));
      }
      out.path_kind = RedirectAction::PathKind::RegexRewrite;
      out.regex_rewrite = *std::move(re);
      out.regex_substitution = r.regex_rewrite().substitution();
      break;
    }
    case route_v3::RedirectAction::PATH_REWRITE_SPECIFIER_NOT_SET:
      break;
  }
  switch (r.response_code()) {
    case route_v3::RedirectAction::MOVED_PERMANENTLY: out.response_code = 301; break;
    case route_v3::RedirectAction::FOUND: out.response_code = 302; break;
    case route_v3::RedirectAction::SEE_OTHER: out.response_code = 303; break;
    case route_v3::RedirectAction::TEMPORARY_REDIRECT: out.response_code = 307; break;
    case route_v3::RedirectAction::PERMANENT_REDIRECT: out.response_code = 308; break;
    default:
      return fieldError(path + ".response_code", absl::StrCat("unknown value ", r.response_code()));
  }
  out.strip_query = r.strip_query();
  e.redirect = std::move(made);
  return absl::OkStatus();
}

// A domain's kind after validation.
enum class DomainKind { Exact, Suffix, Prefix, Any };

absl::Status classifyDomain(const std::string& d, const std::string& path, DomainKind& kind) {
  if (d.empty()) return fieldError(path, "domain must not be empty");
  if (hasForbiddenValueChar(d) || d.find_first_of(" /?#") != std::string::npos) {
    return fieldError(path, absl::StrCat("'", d, "' is not a valid domain"));
  }
  if (d == "*") {
    kind = DomainKind::Any;
    return absl::OkStatus();
  }
  const size_t stars = static_cast<size_t>(std::count(d.begin(), d.end(), '*'));
  if (stars == 0) {
    kind = DomainKind::Exact;
  } else if (stars > 1) {
    return fieldError(path, absl::StrCat("domain '", d, "' has more than one wildcard"));
  } else if (d.front() == '*') {
    kind = DomainKind::Suffix;
  } else if (d.back() == '*') {
    kind = DomainKind::Prefix;
  } else {
    return fieldError(path, absl::StrCat("domain '", d, "' has a wildcard that is neither first nor last"));
  }
  return absl::OkStatus();
}

void addWildcard(std::vector<std::pair<size_t, std::pair<std::string, const RouteTable::VirtualHost*>>>& tmp,
                 std::string key, const RouteTable::VirtualHost* vh) {
  const size_t len = key.size();
  tmp.push_back({len, {std::move(key), vh}});
}

}  // namespace

absl::StatusOr<std::shared_ptr<const RouteTable>> RouteTable::create(
    const route_v3::RouteConfiguration& proto, const std::string& path, const config::ClusterMap& clusters,
    const Options& options) {
  return create(std::make_shared<const route_v3::RouteConfiguration>(proto), path, clusters, options);
}

absl::StatusOr<std::shared_ptr<const RouteTable>> RouteTable::create(
    std::shared_ptr<const route_v3::RouteConfiguration> proto_in, const std::string& path,
    const config::ClusterMap& clusters, const Options& options) {
  std::shared_ptr<RouteTable> table(new RouteTable());
  table->proto_ = std::move(proto_in);
  const route_v3::RouteConfiguration& proto = *table->proto_;
  table->name_ = proto.name();

  Context ctx{clusters,
              proto.has_validate_clusters() ? proto.validate_clusters().value() : options.validate_clusters,
              options.hcm_websocket_upgrade,
              proto.has_max_direct_response_body_size_bytes() ? proto.max_direct_response_body_size_bytes().value()
                                                              : kDefaultMaxDirectResponseBody};

  for (int i = 0; i < proto.internal_only_headers_size(); ++i) {
    const std::string p = absl::StrCat(path, ".internal_only_headers[", i, "]");
    if (auto st = headerNameField(proto.internal_only_headers(i), p, true); !st.ok()) return st;
    table->internal_only_headers_.push_back(lowerString(proto.internal_only_headers(i)));
    table->internal_only_lengths_ |= uint64_t{1} << std::min<size_t>(table->internal_only_headers_.back().size(), 63);
  }

  HeaderMutation cfg_req, cfg_resp;
  if (auto st = appendLevel(proto.request_headers_to_add(), proto.request_headers_to_remove(),
                            path + ".request_headers_to_add", path + ".request_headers_to_remove", cfg_req);
      !st.ok()) {
    return st;
  }
  if (auto st = appendLevel(proto.response_headers_to_add(), proto.response_headers_to_remove(),
                            path + ".response_headers_to_add", path + ".response_headers_to_remove", cfg_resp);
      !st.ok()) {
    return st;
  }

  std::map<std::string, std::string> vh_names;  // name -> path of its first use
  std::map<std::string, std::string> domains;   // lower-case domain -> virtual host name
  std::vector<std::pair<std::string, const VirtualHost*>> exact;
  std::vector<std::pair<size_t, std::pair<std::string, const VirtualHost*>>> suffix_tmp, prefix_tmp;
  bool any_port = false;

  for (int v = 0; v < proto.virtual_hosts_size(); ++v) {
    const auto& vhp = proto.virtual_hosts(v);
    const std::string vpath = absl::StrCat(path, ".virtual_hosts[", v, "]");
    if (vhp.name().empty()) return fieldError(vpath + ".name", "must not be empty");
    if (!vh_names.emplace(vhp.name(), vpath).second) {
      return fieldError(vpath + ".name", absl::StrCat("duplicate virtual host name '", vhp.name(), "'"));
    }
    auto vh = std::make_unique<VirtualHost>();
    vh->name = vhp.name();
    switch (vhp.require_tls()) {
      case route_v3::VirtualHost::NONE:
      case route_v3::VirtualHost::EXTERNAL_ONLY:
      case route_v3::VirtualHost::ALL:
        vh->require_tls = vhp.require_tls();
        break;
      default:
        return fieldError(vpath + ".require_tls", absl::StrCat("unknown value ", vhp.require_tls()));
    }
    std::vector<std::pair<std::string, RouteSpecificFilterConfigConstSharedPtr>> vh_filter_configs;
    if (auto st = parsePerFilterConfigs(vhp.typed_per_filter_config(), vpath + ".typed_per_filter_config",
                                        vh_filter_configs);
        !st.ok()) {
      return st;
    }
    if (vhp.has_cors()) {
      if (auto st = parseEmbeddedPolicy(vhp.cors(), kVirtualHostCorsPolicyKey, vpath + ".cors", vh_filter_configs);
          !st.ok()) {
        return st;
      }
    }
    if (vh->require_tls != route_v3::VirtualHost::NONE) {
      auto redirect = std::make_unique<RouteEntry>();
      redirect->kind = RouteEntry::Kind::Redirect;
      redirect->name = "https_redirect";
      auto action = std::make_unique<RedirectAction>();
      action->scheme = "https";
      action->response_code = 301;
      redirect->redirect = std::move(action);
      redirect->virtual_host_proto = &vhp;
      redirect->per_filter_configs = vh_filter_configs;
      vh->https_redirect = std::move(redirect);
    }

    if (vhp.domains_size() == 0) return fieldError(vpath + ".domains", "must not be empty");
    for (int d = 0; d < vhp.domains_size(); ++d) {
      const std::string dpath = absl::StrCat(vpath, ".domains[", d, "]");
      DomainKind kind = DomainKind::Exact;
      if (auto st = classifyDomain(vhp.domains(d), dpath, kind); !st.ok()) return st;
      std::string lower = lowerString(vhp.domains(d));
      auto [it, inserted] = domains.emplace(lower, vhp.name());
      if (!inserted && it->second == vhp.name()) {
        return fieldError(dpath, absl::StrCat("duplicate domain '", vhp.domains(d), "'"));
      }
      if (!inserted) {
        return fieldError(dpath, absl::StrCat("domain '", vhp.domains(d), "' is also a domain of virtual host '",
                                              it->second, "'"));
      }
      if (kind != DomainKind::Any && portColon(lower) != std::string::npos) any_port = true;
      switch (kind) {
        case DomainKind::Exact: exact.push_back({std::move(lower), vh.get()}); break;
        case DomainKind::Suffix: addWildcard(suffix_tmp, lower.substr(1), vh.get()); break;
        case DomainKind::Prefix: addWildcard(prefix_tmp, lower.substr(0, lower.size() - 1), vh.get()); break;
        case DomainKind::Any: table->default_ = vh.get(); break;
      }
    }

    if (vhp.has_retry_policy()) {
      RetryPolicy unused;
      if (auto st = buildRetryPolicy(vhp.retry_policy(), vpath + ".retry_policy", unused); !st.ok()) return st;
    }
    HeaderMutation vh_req, vh_resp;
    if (auto st = appendLevel(vhp.request_headers_to_add(), vhp.request_headers_to_remove(),
                              vpath + ".request_headers_to_add", vpath + ".request_headers_to_remove", vh_req);
        !st.ok()) {
      return st;
    }
    if (auto st = appendLevel(vhp.response_headers_to_add(), vhp.response_headers_to_remove(),
                              vpath + ".response_headers_to_add", vpath + ".response_headers_to_remove", vh_resp);
        !st.ok()) {
      return st;
    }

    vh->routes.reserve(static_cast<size_t>(vhp.routes_size()));
    for (int ri = 0; ri < vhp.routes_size(); ++ri) {
      const auto& rp = vhp.routes(ri);
      const std::string rpath = absl::StrCat(vpath, ".routes[", ri, "]");
      CompiledRoute r;
      RouteEntry& e = r.entry;
      e.name = rp.name();
      e.proto = &rp;
      e.virtual_host_proto = &vhp;
      if (!rp.has_match()) return fieldError(rpath + ".match", "is required");
      if (auto st = buildMatch(rp.match(), rpath + ".match", r); !st.ok()) return st;

      switch (rp.action_case()) {
        case route_v3::Route::kRoute:
          if (auto st = buildRouteAction(rp.route(), rpath + ".route", ctx, vhp, e); !st.ok()) return st;
          break;
        case route_v3::Route::kRedirect:
          if (auto st = buildRedirect(rp.redirect(), rpath + ".redirect", e); !st.ok()) return st;
          break;
        case route_v3::Route::kDirectResponse: {
          const auto& dr = rp.direct_response();
          const std::string dp = rpath + ".direct_response";
          if (dr.status() < 200 || dr.status() > 599) {
            return fieldError(dp + ".status", absl::StrCat(dr.status(), " is not in 200-599"));
          }
          e.kind = RouteEntry::Kind::DirectResponse;
          e.direct_status = dr.status();
          if (dr.has_body()) {
            auto body = readDataSource(dr.body(), dp + ".body", ctx.max_direct_body);
            if (!body.ok()) return body.status();
            e.direct_body = *std::move(body);
          }
          break;
        }
        case route_v3::Route::ACTION_NOT_SET:
          return fieldError(rpath, "one of route, redirect, direct_response is required");
      }

      HeaderMutation route_req, route_resp;
      if (auto st = appendLevel(rp.request_headers_to_add(), rp.request_headers_to_remove(),
                                rpath + ".request_headers_to_add", rpath + ".request_headers_to_remove", route_req);
          !st.ok()) {
        return st;
      }
      if (auto st = appendLevel(rp.response_headers_to_add(), rp.response_headers_to_remove(),
                                rpath + ".response_headers_to_add", rpath + ".response_headers_to_remove", route_resp);
          !st.ok()) {
        return st;
      }
      if (auto st = parsePerFilterConfigs(rp.typed_per_filter_config(), rpath + ".typed_per_filter_config",
                                          e.per_filter_configs);
          !st.ok()) {
        return st;
      }
      if (rp.has_route() && rp.route().has_cors()) {
        if (auto st = parseEmbeddedPolicy(rp.route().cors(), kRouteCorsPolicyKey, rpath + ".route.cors", e.per_filter_configs);
            !st.ok()) {
          return st;
        }
      }
      for (const auto& vc : vh_filter_configs) {
        if (e.perFilterConfig(vc.first) == nullptr) e.per_filter_configs.push_back(vc);
      }
      e.request_headers = concat(route_req, vh_req, cfg_req);
      e.response_headers = concat(route_resp, vh_resp, cfg_resp);
      for (auto& t : e.weighted) {
        t.request_headers.ops.insert(t.request_headers.ops.end(), e.request_headers.ops.begin(),
                                     e.request_headers.ops.end());
        t.response_headers.ops.insert(t.response_headers.ops.end(), e.response_headers.ops.begin(),
                                      e.response_headers.ops.end());
      }
      vh->routes.push_back(std::move(r));
    }
    table->virtual_hosts_.push_back(std::move(vh));
  }

  auto byKey = [](const auto& a, const auto& b) { return a.first < b.first; };
  std::sort(exact.begin(), exact.end(), byKey);
  table->exact_ = std::move(exact);
  auto group = [](std::vector<std::pair<size_t, std::pair<std::string, const VirtualHost*>>>& tmp,
                  std::vector<WildcardGroup>& out) {
    std::sort(tmp.begin(), tmp.end(), [](const auto& a, const auto& b) {
      if (a.first != b.first) return a.first > b.first;  // longest first
      return a.second.first < b.second.first;
    });
    for (auto& [len, entry] : tmp) {
      if (out.empty() || out.back().length != len) out.push_back(WildcardGroup{len, {}});
      out.back().entries.push_back(std::move(entry));
    }
  };
  group(suffix_tmp, table->suffix_);
  group(prefix_tmp, table->prefix_);
  table->strip_port_ = !any_port;
  return std::shared_ptr<const RouteTable>(std::move(table));
}

void registerPerFilterConfigParser(const std::string& type_url, PerFilterConfigParser parser) {
  perFilterConfigParsers()[type_url] = std::move(parser);
}

bool parseRetryOn(std::string_view on, RetryPolicy& out, std::string* unknown) {
  bool ok = true;
  while (!on.empty()) {
    const size_t comma = on.find(',');
    std::string_view token = on.substr(0, comma);
    on = comma == std::string_view::npos ? std::string_view() : on.substr(comma + 1);
    while (!token.empty() && (token.front() == ' ' || token.front() == '\t')) token.remove_prefix(1);
    while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.remove_suffix(1);
    if (token.empty()) continue;
    if (token == "5xx") out.on_5xx = true;
    else if (token == "gateway-error") out.on_gateway_error = true;
    else if (token == "reset") out.on_reset = true;
    else if (token == "reset-before-request") out.on_reset_before_request = true;
    else if (token == "connect-failure") out.on_connect_failure = true;
    else if (token == "retriable-4xx") out.on_retriable_4xx = true;
    else if (token == "refused-stream") out.on_refused_stream = true;
    else if (token == "retriable-status-codes") out.on_retriable_status_codes = true;
    else if (token == "envoy-ratelimited") out.on_envoy_ratelimited = true;
    else if (token == "retriable-headers") out.on_retriable_headers = true;
    else if (token == "cancelled") out.on_grpc_cancelled = true;
    else if (token == "deadline-exceeded") out.on_grpc_deadline_exceeded = true;
    else if (token == "internal") out.on_grpc_internal = true;
    else if (token == "resource-exhausted") out.on_grpc_resource_exhausted = true;
    else if (token == "unavailable") out.on_grpc_unavailable = true;
    // Accepted as Envoy accepts it; it never fires here (HTTP/3 is not implemented).
    else if (token == "http3-post-connect-failure") continue;
    else if (ok) {
      ok = false;
      if (unknown) *unknown = std::string(token);
    }
  }
  return ok;
}

}  // namespace strait::http
