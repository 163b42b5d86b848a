// The run-time half of the route table: what runs for every request. RouteTable::route picks the virtual
// host by :authority and the first route whose match fits; HeaderMutation::applyTo and RouteEntry's
// rewrite, pickWeighted and redirectLocation carry out what the chosen entry says. Translating
// RouteConfiguration protos into the table (RouteTable::create) is route_config.cc's job.

#include "proxy/http/route_table.h"

#include <re2/re2.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "proxy/http/matchers.h"
#include "proxy/http/route_table_internal.h"

namespace strait::http {

namespace route_v3 = envoy::config::route::v3;

using route_internal::portColon;

namespace {

// Three-way comparison of a lower-case key with `s` as if `s` were lower-cased.
int compareLower(std::string_view lower, std::string_view s) {
  const size_t n = std::min(lower.size(), s.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char a = static_cast<unsigned char>(lower[i]);
    const unsigned char b = static_cast<unsigned char>(lowerChar(s[i]));
    if (a != b) return a < b ? -1 : 1;
  }
  if (lower.size() == s.size()) return 0;
  return lower.size() < s.size() ? -1 : 1;
}

template <typename T>
const T* findLower(const std::vector<std::pair<std::string, T>>& sorted, std::string_view key) {
  auto it = std::lower_bound(sorted.begin(), sorted.end(), key,
                             [](const auto& e, std::string_view k) { return compareLower(e.first, k) < 0; });
  if (it != sorted.end() && compareLower(it->first, key) == 0) return &it->second;
  return nullptr;
}

re2::StringPiece piece(std::string_view s) { return re2::StringPiece(s.data(), s.size()); }

bool isGrpcRequest(const RequestHeaders& headers) {
  const std::string* ct = headers.get("content-type");
  return ct != nullptr && isGrpcContentType(*ct);
}

// The scheme the client used: x-forwarded-proto (set by the connection manager), else :scheme.
std::string_view requestScheme(const RequestHeaders& headers) {
  if (const std::string* xfp = headers.get("x-forwarded-proto"); xfp != nullptr && !xfp->empty()) return *xfp;
  if (!headers.scheme.empty()) return headers.scheme;
  return "http";
}

std::string_view stripPort(std::string_view host) {
  const size_t c = portColon(host);
  return c == std::string_view::npos ? host : host.substr(0, c);
}

}  // namespace

// ---- RouteTable internals -----------------------------------------------------------------------------

namespace route_internal {

// Position of the ':' before a port, or npos ("[::1]:80" -> 5, "a:80" -> 1, "::1" -> npos).
size_t portColon(std::string_view host) {
  if (!host.empty() && host[0] == '[') {
    const size_t close = host.find(']');
    if (close != std::string_view::npos && close + 1 < host.size() && host[close + 1] == ':') return close + 1;
    return std::string_view::npos;
  }
  const size_t colon = host.find(':');
  if (colon == std::string_view::npos || host.find(':', colon + 1) != std::string_view::npos) {
    return std::string_view::npos;
  }
  return colon;
}

bool QueryMatch::match(std::string_view query) const {  // `query` without the '?'
  // The first occurrence decides, as in Envoy. No '=' means an empty value.
  const std::optional<std::string_view> value = firstQueryValue(query, name);
  return value && (present_only || string_match.match(*value));
}

CompiledRoute::Mismatch CompiledRoute::firstMismatch(const RequestHeaders& h, std::string_view full_path,
                                                     std::string_view path_only, std::string_view query) const {
  using Kind = Mismatch::Kind;
  switch (path_kind) {
    case RouteEntry::PathMatch::Prefix:
      if (!(case_sensitive ? full_path.starts_with(path) : startsWithLower(full_path, path))) return {Kind::Path};
      break;
    case RouteEntry::PathMatch::Path:
      if (!(case_sensitive ? path_only == path : equalsLower(path, path_only))) return {Kind::Path};
      break;
    case RouteEntry::PathMatch::PathSeparatedPrefix:
      if (!(case_sensitive ? path_only.starts_with(path) : startsWithLower(path_only, path))) return {Kind::Path};
      if (path_only.size() != path.size() && path_only[path.size()] != '/') return {Kind::Path};
      break;
    case RouteEntry::PathMatch::Regex:
      if (!re2::RE2::FullMatch(piece(path_only), *regex)) return {Kind::Path};
      break;
  }
  if (grpc && !isGrpcRequest(h)) return {Kind::Grpc};
  for (size_t i = 0; i < headers.size(); ++i) {
    if (!headers[i].match(h)) return {Kind::Header, i};
  }
  for (size_t i = 0; i < query_parameters.size(); ++i) {
    if (!query_parameters[i].match(query)) return {Kind::QueryParameter, i};
  }
  return {};
}

}  // namespace route_internal

RouteTable::RouteTable() = default;
RouteTable::~RouteTable() = default;

// ---- request path ---------------------------------------------------------------------------------------

const RouteTable::VirtualHost* RouteTable::findVirtualHost(std::string_view host) const {
  if (strip_port_) host = stripPort(host);
  if (const auto* const* vh = findLower(exact_, host)) return *vh;
  // A wildcard stands for at least one character, so the key must be shorter than the host.
  for (const auto& g : suffix_) {
    if (host.size() <= g.length) continue;
    if (const auto* const* vh = findLower(g.entries, host.substr(host.size() - g.length))) return *vh;
  }
  for (const auto& g : prefix_) {
    if (host.size() <= g.length) continue;
    if (const auto* const* vh = findLower(g.entries, host.substr(0, g.length))) return *vh;
  }
  return default_;
}

const RouteEntry* RouteTable::route(const RequestHeaders& headers) const {
  const VirtualHost* vh = findVirtualHost(headers.authority);
  if (vh == nullptr) return nullptr;
  if (vh->require_tls != route_v3::VirtualHost::NONE && !equalsLower("https", requestScheme(headers))) {
    if (vh->require_tls == route_v3::VirtualHost::ALL) return vh->https_redirect.get();
    const std::string* internal = headers.get("x-envoy-internal");
    if (internal == nullptr || *internal != "true") return vh->https_redirect.get();
  }
  const route_internal::PathParts p(headers.path);
  for (const auto& r : vh->routes) {
    if (r.matches(headers, p.full, p.path_only, p.query)) return &r.entry;
  }
  return nullptr;
}

// ---- RouteEntry / HeaderMutation ------------------------------------------------------------------------

void HeaderMutation::applyTo(HeaderMap& headers) const {
  for (const auto& op : ops) {
    switch (op.action) {
      case Op::Action::Remove:
        headers.remove(op.name);
        break;
      case Op::Action::Append:
        headers.add(op.name, op.value);
        break;
      case Op::Action::AddIfAbsent:
        if (headers.get(op.name) == nullptr) headers.add(op.name, op.value);
        break;
      case Op::Action::Overwrite:
        headers.set(op.name, op.value);
        break;
      case Op::Action::OverwriteIfExists:
        if (headers.get(op.name) != nullptr) headers.set(op.name, op.value);
        break;
    }
  }
}

namespace {

const std::string& emptyString() {
  static const std::string* const empty = new std::string();
  return *empty;
}

// The path (without query) after replacing what the route matched with `replacement`: the prefix for
// prefix routes, the whole path for path and regex routes.
std::string replaceMatched(const RouteEntry& e, std::string_view path_only, const std::string& replacement) {
  size_t matched = path_only.size();
  if (e.path_match == RouteEntry::PathMatch::Prefix || e.path_match == RouteEntry::PathMatch::PathSeparatedPrefix) {
    matched = std::min(e.matched_prefix.size(), path_only.size());
  }
  return absl::StrCat(replacement, absl::string_view(path_only.data() + matched, path_only.size() - matched));
}

std::string regexReplace(std::string_view path_only, const re2::RE2& re, const std::string& substitution) {
  std::string out(path_only);
  re2::RE2::GlobalReplace(&out, re, substitution);
  return out;
}

void splitPath(std::string_view full, std::string_view& path_only, std::string_view& query_with_mark) {
  const size_t q = full.find('?');
  path_only = full.substr(0, q);
  query_with_mark = q == std::string_view::npos ? std::string_view() : full.substr(q);
}

}  // namespace

const std::string& RouteEntry::virtualHostName() const {
  return virtual_host_proto != nullptr ? virtual_host_proto->name() : emptyString();
}

const std::string& RouteEntry::decoratorOperation() const {
  return proto != nullptr ? proto->decorator().operation() : emptyString();
}

void RouteEntry::rewrite(RequestHeaders& headers, bool insert_original_path) const {
  if (rewrites == nullptr) return;
  const RouteRewrites& rw = *rewrites;
  if (!rw.prefix_rewrite.empty() || rw.regex_rewrite) {
    std::string_view path_only, query;
    splitPath(headers.path, path_only, query);
    std::string new_path = !rw.prefix_rewrite.empty()
                               ? replaceMatched(*this, path_only, rw.prefix_rewrite)
                               : regexReplace(path_only, *rw.regex_rewrite, rw.regex_rewrite_substitution);
    new_path.append(query);
    if (new_path != headers.path) {
      if (insert_original_path) headers.set("x-envoy-original-path", headers.path);
      headers.path = std::move(new_path);
    }
  }
  if (!rw.host_rewrite_literal.empty()) {
    headers.authority = rw.host_rewrite_literal;
  } else if (!rw.host_rewrite_header.empty()) {
    const std::string* v = headers.get(rw.host_rewrite_header);
    if (v != nullptr && !v->empty()) headers.authority = *v;
  }
}

const WeightedTarget* RouteEntry::pickWeighted(uint64_t random) const {
  if (kind != Kind::WeightedClusters || total_weight == 0) return nullptr;
  const uint64_t r = random % total_weight;
  uint64_t end = 0;
  for (const auto& t : weighted) {
    end += t.weight;
    if (r < end) return &t;
  }
  return &weighted.back();  // not reached: r < total_weight
}

std::string RouteEntry::redirectLocation(const RequestHeaders& headers) const {
  if (redirect == nullptr) return {};
  const RedirectAction& rd = *redirect;
  const std::string orig_scheme = lowerString(requestScheme(headers));
  const std::string scheme = rd.scheme.empty() ? orig_scheme : rd.scheme;

  std::string host = rd.host.empty() ? headers.authority : rd.host;
  if (rd.port != 0) {
    host = absl::StrCat(absl::string_view(stripPort(host).data(), stripPort(host).size()), ":", rd.port);
  } else if (rd.host.empty()) {
    // Drop the request's port when it is the default port of either scheme (http://a:80 -> https://a).
    const size_t c = portColon(host);
    if (c != std::string::npos) {
      const std::string_view port = std::string_view(host).substr(c + 1);
      if ((port == "80" && (scheme == "http" || orig_scheme == "http")) ||
          (port == "443" && (scheme == "https" || orig_scheme == "https"))) {
        host.resize(c);
      }
    }
  }

  std::string_view path_only, query;
  splitPath(std::string_view(headers.path).substr(0, headers.path.find('#')), path_only, query);
  std::string path;
  switch (rd.path_kind) {
    case RedirectAction::PathKind::Keep:
      path = std::string(path_only);
      break;
    case RedirectAction::PathKind::Path:
      path = rd.path;
      if (path.find('?') != std::string::npos) query = {};  // the redirect's own query replaces the request's
      break;
    case RedirectAction::PathKind::PrefixRewrite:
      path = replaceMatched(*this, path_only, rd.prefix_rewrite);
      break;
    case RedirectAction::PathKind::RegexRewrite:
      path = regexReplace(path_only, *rd.regex_rewrite, rd.regex_substitution);
      break;
  }
  if (path.empty() || path[0] != '/') path.insert(path.begin(), '/');
  if (rd.strip_query) query = {};
  return absl::StrCat(scheme, "://", host, path, absl::string_view(query.data(), query.size()));
}

}  // namespace strait::http
