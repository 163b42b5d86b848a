// The admin's /explain for route tables (route_explain.h). The answer is RouteTable::route()'s and the
// virtual host is findVirtualHost()'s; a route passed over is named by CompiledRoute::firstMismatch(),
// the function route() itself matches with. What is written here only puts those verdicts into words:
// it never decides anything the request path decides.

#include "proxy/http/route_explain.h"

#include <re2/re2.h>

#include <compare>
#include <optional>

#include "absl/strings/str_cat.h"
#include "proxy/http/route_table_internal.h"

namespace strait::http {

namespace {

using route_internal::CompiledRoute;
using route_internal::QueryMatch;

// Words, not JSON: the renderers escape the whole text once.
std::string quoted(std::string_view s) { return absl::StrCat("\"", absl::string_view(s.data(), s.size()), "\""); }

// How findVirtualHost ranks a domain (as configured) for a host: exact beats suffix wildcards (the
// longest first), which beat prefix wildcards (the longest first), which beat "*". A wildcard stands
// for at least one character. kind 0: the domain does not match.
struct DomainRank {
  int kind = 0;  // 4 exact, 3 suffix wildcard, 2 prefix wildcard, 1 "*"
  size_t length = 0;
  auto operator<=>(const DomainRank&) const = default;
};

DomainRank rankDomain(std::string_view domain, std::string_view host) {
  if (domain == "*") return {1, 0};
  if (domain.front() == '*') {
    const std::string key = lowerString(domain.substr(1));
    if (host.size() > key.size() && equalsLower(key, host.substr(host.size() - key.size()))) return {3, key.size()};
    return {};
  }
  if (domain.back() == '*') {
    const std::string key = lowerString(domain.substr(0, domain.size() - 1));
    if (host.size() > key.size() && equalsLower(key, host.substr(0, key.size()))) return {2, key.size()};
    return {};
  }
  return equalsLower(lowerString(domain), host) ? DomainRank{4, domain.size()} : DomainRank{};
}

const char* rankName(int kind) {
  switch (kind) {
    case 4: return "exact";
    case 3: return "suffix wildcard";
    case 2: return "prefix wildcard";
    case 1: return "any host";
    default: return "no match";
  }
}

std::string domainList(const envoy::config::route::v3::VirtualHost& vh) {
  std::string out = "domains [";
  for (int d = 0; d < vh.domains_size(); ++d) absl::StrAppend(&out, d ? ", " : "", vh.domains(d));
  return out + "]";
}

// The request's value for a header matcher as HeaderMatch::match sees it (repeated headers joined
// with ","), or none.
std::optional<std::string> headerValue(const RequestHeaders& h, const HeaderMatch& m) {
  auto pseudo = [](const std::string& v) { return v.empty() ? std::nullopt : std::optional<std::string>(v); };
  switch (m.source) {
    case HeaderMatch::Source::Method: return pseudo(h.method);
    case HeaderMatch::Source::Path: return pseudo(h.path);
    case HeaderMatch::Source::Authority: return pseudo(h.authority);
    case HeaderMatch::Source::Scheme: return pseudo(h.scheme);
    case HeaderMatch::Source::Protocol: return pseudo(h.protocol);
    case HeaderMatch::Source::Status: return std::nullopt;
    case HeaderMatch::Source::Map: break;
  }
  std::optional<std::string> out;
  for (const auto& e : h.entries()) {
    if (!equalsLower(m.name, e.name)) continue;
    out = out ? absl::StrCat(*out, ",", e.value) : e.value;
  }
  return out;
}

std::string describeQuery(const QueryMatch& q) {
  return absl::StrCat("query parameter ", q.name, ": ", q.present_only ? "present" : describe(q.string_match));
}

std::string describePath(const CompiledRoute& r) {
  std::string out;
  switch (r.path_kind) {
    case RouteEntry::PathMatch::Prefix: out = absl::StrCat("prefix ", r.path); break;
    case RouteEntry::PathMatch::Path: out = absl::StrCat("path ", r.path); break;
    case RouteEntry::PathMatch::PathSeparatedPrefix: out = absl::StrCat("path_separated_prefix ", r.path); break;
    case RouteEntry::PathMatch::Regex: out = absl::StrCat("safe_regex ", quoted(r.regex->pattern())); break;
  }
  if (!r.case_sensitive && r.path_kind != RouteEntry::PathMatch::Regex) out += " (ignoring case)";
  return out;
}

std::string describeMatch(const CompiledRoute& r) {
  std::string out = describePath(r);
  if (r.grpc) out += ", grpc";
  for (const auto& m : r.headers) absl::StrAppend(&out, ", ", describe(m));
  for (const auto& q : r.query_parameters) absl::StrAppend(&out, ", ", describeQuery(q));
  return out;
}

template <class T>
std::string hasValue(const std::optional<T>& v) {
  return v ? absl::StrCat("the request has ", quoted(*v)) : std::string("the request has none");
}

// Words for what firstMismatch() found.
std::string failure(const CompiledRoute& r, CompiledRoute::Mismatch m, const RequestHeaders& h,
                    const route_internal::PathParts& p) {
  using Kind = CompiledRoute::Mismatch::Kind;
  switch (m.kind) {
    case Kind::None:
      return "";
    case Kind::Path:
      switch (r.path_kind) {
        case RouteEntry::PathMatch::Prefix:
          return absl::StrCat("path ", quoted(p.full), " does not start with ", quoted(r.path));
        case RouteEntry::PathMatch::Path:
          return absl::StrCat("path ", quoted(p.path_only), " is not ", quoted(r.path));
        case RouteEntry::PathMatch::PathSeparatedPrefix:
          return absl::StrCat("path ", quoted(p.path_only), " is neither ", quoted(r.path), " nor below ",
                              quoted(r.path + "/"));
        case RouteEntry::PathMatch::Regex:
          return absl::StrCat("path ", quoted(p.path_only), " does not fully match ", quoted(r.regex->pattern()));
      }
      return "path";
    case Kind::Grpc: {
      const std::string* ct = h.get("content-type");
      return absl::StrCat("grpc: not a gRPC request (content-type ", ct ? quoted(*ct) : std::string("absent"), ")");
    }
    case Kind::Header: {
      const HeaderMatch& hm = r.headers[m.index];
      return absl::StrCat(describe(hm), ": ", hasValue(headerValue(h, hm)));
    }
    case Kind::QueryParameter: {
      const QueryMatch& q = r.query_parameters[m.index];
      return absl::StrCat(describeQuery(q), ": ", hasValue(route_internal::firstQueryValue(p.query, q.name)));
    }
  }
  return "";
}

}  // namespace

std::string describe(const StringMatch& m) {
  const char* kind = "exact";
  switch (m.type) {
    case StringMatch::Type::Exact: kind = "exact"; break;
    case StringMatch::Type::Prefix: kind = "prefix"; break;
    case StringMatch::Type::Suffix: kind = "suffix"; break;
    case StringMatch::Type::Contains: kind = "contains"; break;
    case StringMatch::Type::Regex: return absl::StrCat("regex ", quoted(m.regex->pattern()));
  }
  return absl::StrCat(kind, " ", quoted(m.value), m.ignore_case ? " (ignoring case)" : "");
}

std::string describe(const HeaderMatch& m) {
  std::string spec;
  switch (m.type) {
    case HeaderMatch::Type::Present: spec = m.present ? "present" : "absent"; break;
    case HeaderMatch::Type::Range: spec = absl::StrCat("in range [", m.range_start, ", ", m.range_end, ")"); break;
    case HeaderMatch::Type::String: spec = describe(m.string_match); break;
  }
  return absl::StrCat("header ", m.name, ": ", m.invert ? "not " : "", spec,
                      m.treat_missing_as_empty ? " (missing counts as empty)" : "");
}

void RouteTable::explain(const RequestHeaders& headers, RouteExplanation& out) const {
  out = RouteExplanation{};
  out.route = route(headers);
  const VirtualHost* chosen = findVirtualHost(headers.authority);
  std::string_view host = headers.authority;
  if (strip_port_) {
    const size_t c = route_internal::portColon(host);
    if (c != std::string_view::npos) host = host.substr(0, c);
  }
  out.host = std::string(host);

  // Each virtual host's best domain for the host (virtual_hosts_ is in configuration order).
  std::vector<std::pair<DomainRank, std::string>> best(virtual_hosts_.size());
  DomainRank chosen_rank;
  for (size_t v = 0; v < virtual_hosts_.size(); ++v) {
    const auto& vhp = proto_->virtual_hosts(static_cast<int>(v));
    for (const auto& d : vhp.domains()) {
      const DomainRank r = rankDomain(d, host);
      if (r > best[v].first) best[v] = {r, d};
    }
    if (virtual_hosts_[v].get() == chosen) chosen_rank = best[v].first;
  }
  for (size_t v = 0; v < virtual_hosts_.size(); ++v) {
    const auto& vhp = proto_->virtual_hosts(static_cast<int>(v));
    if (virtual_hosts_[v].get() == chosen) {
      out.virtual_host = chosen->name;
      out.virtual_host_why = absl::StrCat("domain ", quoted(best[v].second), " (", rankName(best[v].first.kind),
                                          ") matches host ", quoted(host));
      continue;
    }
    RouteExplanation::Passed p{v, vhp.name(), domainList(vhp), ""};
    if (best[v].first.kind == 0) {
      p.failed = absl::StrCat(p.match, " do not match host ", quoted(host));
    } else {
      p.failed = absl::StrCat("domain ", quoted(best[v].second), " (", rankName(best[v].first.kind),
                              ") matches too, but the chosen virtual host's ", rankName(chosen_rank.kind),
                              " domain comes first");
    }
    out.virtual_hosts_passed.push_back(std::move(p));
  }
  if (chosen == nullptr) return;
  if (host.size() != headers.authority.size()) out.virtual_host_why += " (the port is dropped: no domain names one)";
  if (chosen->https_redirect != nullptr && out.route == chosen->https_redirect.get()) {
    out.https_redirect = true;
    out.routes_not_tried = chosen->routes.size();
    return;
  }
  const route_internal::PathParts parts(headers.path);
  for (size_t i = 0; i < chosen->routes.size(); ++i) {
    const CompiledRoute& r = chosen->routes[i];
    if (&r.entry == out.route) {
      out.chosen_route = {i, r.entry.name, describeMatch(r), ""};
      out.routes_not_tried = chosen->routes.size() - i - 1;
      return;
    }
    const CompiledRoute::Mismatch m = r.firstMismatch(headers, parts.full, parts.path_only, parts.query);
    out.routes_passed.push_back({i, r.entry.name, describeMatch(r), failure(r, m, headers, parts)});
  }
}

}  // namespace strait::http
